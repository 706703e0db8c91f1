"""The model compiler: an artifact and an accelerator config in; a memory image, its command stream, a C
header and a manifest out.

Address map (DRAM byte addresses from 0, every region 64-byte aligned, in this order):

* ``commands``: the command stream (``hw.commands``), END last;
* ``input``: the sequence, written by the host for every run: ``length`` (u32, valid tokens) at its
  start, the embeddings' int8 output ``[L × H]`` from byte 64 (the embedding gather runs on the host:
  see ``docs/hardware.md``);
* the constants of every layer (linear regions, γ/β, GELU table), the attention constants, the pooler,
  its tanh table and the classifier: ``hw.dram_formats`` gives their byte layouts;
* ``output.*``: what the core stores: every layer's output (and with ``trace`` every boundary tensor of
  every layer), the pooled vector and the logits.

On chip, the compiler places the operands (``scratch``, int8 bytes; ``wide``, 32-bit words) with one
layer's liveness in mind: the layer input ``X`` and the attention norm ``X1`` stay, Q, K, V and the
context share their space with the FFN's hidden rows, and a layer's output overwrites its input.

A model the hardware cannot run (a geometry it lacks, a sequence, head or row too long, scratch or
wide memory too small) is refused with a :class:`CompileError` that names what does not fit and by how
much. :meth:`CompiledModel.write` writes nothing until everything is encoded, then every file atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from core.atomic import write_atomic
from core.encoder import LINEAR_ROLES, IntegerEncoder
from core.pattern import PatternPool, pack_pattern_blocks, padded_shape
from firmware_gen.beats import encode
from hw import dram_formats as fmt
from hw.commands import COMMAND_BYTES, Op, command_layout
from hw.config import AcceleratorConfig
from hw.registers import REGISTER_MAP

#: Alignment of every region.
ALIGN = 64
#: Offset of the int8 rows inside the input region (the length word comes first).
INPUT_ROWS_OFFSET = 64
#: Every boundary tensor of a layer, as :class:`core.encoder.LayerTrace` names them, with its width
#: (``hidden`` or ``ffn``) and whether it lives in wide memory.
TRACE_TENSORS = {
    "query": ("hidden", False), "key": ("hidden", False), "value": ("hidden", False), "context": ("hidden", False),
    "attention_output": ("hidden", True), "attention_norm": ("hidden", False),
    "gelu": ("ffn", False), "ffn_output": ("hidden", True), "output_norm": ("hidden", False),
}
#: The integer encoder's traced tensors that never leave a unit, so no image stores them: the attention's
#: scores, probabilities and pattern ids (inside the attention unit; its own harness checks them) and the
#: FFN's hidden rows, which go through the GELU table inside the linear unit (MATMUL ``activate``).
UNSTORED_TENSORS = ("scores", "probabilities", "pattern_ids", "ffn_hidden")


class CompileError(ValueError):
    """The model does not fit the hardware, or cannot be encoded."""


@dataclass
class Region:
    name: str
    address: int
    size: int
    data: bytes | None = None  # None: written at run time (the input by the host, outputs by the core)


@dataclass
class OutputTensor:
    """Where a stored tensor lands and how to read it back."""

    region: str
    shape: tuple[int, ...]
    wide: bool  # int32 values (little-endian) instead of int8


@dataclass
class CompiledModel:
    config: AcceleratorConfig
    seq_len: int
    hidden: int
    layers: int
    classes: int
    regions: list[Region]
    commands: list[dict] = field(default_factory=list)  # {"op": Op, fields…}
    outputs: dict[str, OutputTensor] = field(default_factory=dict)
    scratch_bytes: int = 0
    wide_words: int = 0

    def region(self, name: str) -> Region:
        for r in self.regions:
            if r.name == name:
                return r
        raise KeyError(f"no region {name!r}")

    @property
    def image_bytes(self) -> int:
        last = self.regions[-1]
        return last.address + last.size

    @property
    def constant_bytes(self) -> int:
        """Bytes the core reads that do not change between runs (everything but input and outputs)."""
        return sum(r.size for r in self.regions if r.name not in ("input",) and not r.name.startswith("output."))

    def image(self) -> bytearray:
        """The whole memory image, run-time regions zero."""
        out = bytearray(self.image_bytes)
        for r in self.regions:
            if r.data is not None:
                out[r.address:r.address + r.size] = r.data
        return out

    def input_bytes(self, rows: torch.Tensor, length: int) -> bytes:
        """The input region for one sequence: int8 embeddings ``[L × H]`` (padded rows included) and the
        number of valid tokens; the tokens after ``length`` are padding."""
        if tuple(rows.shape) != (self.seq_len, self.hidden) or rows.dtype != torch.int8:
            raise ValueError(f"input rows are {rows.dtype} {tuple(rows.shape)}, expected int8 {(self.seq_len, self.hidden)}")
        if not 0 <= length <= self.seq_len:
            raise ValueError(f"length {length} is outside 0…{self.seq_len}")
        data = bytearray(self.region("input").size)
        data[0:4] = length.to_bytes(4, "little")
        data[INPUT_ROWS_OFFSET:INPUT_ROWS_OFFSET + rows.numel()] = rows.numpy().tobytes()
        return bytes(data)

    def read(self, memory: bytes | bytearray, name: str) -> torch.Tensor:
        """The stored tensor ``name`` (a key of :attr:`outputs`) from a memory after a run, as int64."""
        out = self.outputs[name]
        region = self.region(out.region)
        blob = bytearray(memory[region.address:region.address + region.size])
        return torch.frombuffer(blob, dtype=torch.int32 if out.wide else torch.int8).to(torch.int64).reshape(out.shape)

    def mismatches(self, memory: bytes | bytearray, golden) -> dict[str, int]:
        """For every stored tensor, how many of its values differ from ``golden`` (the
        :class:`core.encoder.EncoderOutput` of the same sequence, traced, batch of one): 0 everywhere is a
        bit-exact run."""
        out = {}
        for name in self.outputs:
            if name.startswith("layer"):
                layer, tensor = name.split(".", 1)
                want = getattr(golden.layers[int(layer[len("layer"):])], tensor)[0]
            else:
                want = getattr(golden, name)[0]
            out[name] = int((self.read(memory, name) != want.to(torch.int64)).sum())
        return out

    def command_bytes(self) -> bytes:
        return b"".join(encode_command(c) for c in self.commands)

    # ------------------------------------------------------------------------------------ files

    def manifest(self, files: dict[str, str]) -> dict:
        regions = []
        for r in self.regions:
            entry = {"name": r.name, "address": r.address, "size": r.size}
            if r.data is not None:
                entry.update(file=files[r.name], sha256=hashlib.sha256(r.data).hexdigest())
            regions.append(entry)
        return {
            "format": "tessera-model-image", "version": 1, "seq_len": self.seq_len, "hidden": self.hidden,
            "layers": self.layers, "classes": self.classes, "image_bytes": self.image_bytes,
            "constant_bytes": self.constant_bytes, "commands": len(self.commands), "command_bytes": COMMAND_BYTES,
            "scratch_bytes": self.scratch_bytes, "wide_words": self.wide_words,
            "hardware": json.loads(self.config.to_json()),
            "outputs": {name: {"region": o.region, "shape": list(o.shape), "wide": o.wide} for name, o in self.outputs.items()},
            "regions": regions,
        }

    def c_header(self) -> str:
        lines = ["/* Tessera model image: register offsets and region addresses (generated by firmware_gen). */",
                 "#ifndef TESSERA_MODEL_H", "#define TESSERA_MODEL_H", ""]
        for name, offset, register in REGISTER_MAP:
            lines.append(f"#define TESSERA_REG_{name} 0x{offset:02X}u  /* {register.doc} */")
            for f in register.fields:
                lines.append(f"#define TESSERA_REG_{name}_{f.name.upper()}_SHIFT {f.offset}u")
                lines.append(f"#define TESSERA_REG_{name}_{f.name.upper()}_MASK 0x{((1 << f.width) - 1) << f.offset:08X}u")
        lines.append("")
        for r in self.regions:
            macro = r.name.upper().replace(".", "_")
            lines.append(f"#define TESSERA_{macro}_ADDR 0x{r.address:08X}u")
            lines.append(f"#define TESSERA_{macro}_SIZE {r.size}u")
        lines += ["", f"#define TESSERA_SEQ_LEN {self.seq_len}u", f"#define TESSERA_HIDDEN {self.hidden}u",
                  f"#define TESSERA_LAYERS {self.layers}u", f"#define TESSERA_CLASSES {self.classes}u",
                  f"#define TESSERA_INPUT_ROWS_OFFSET {INPUT_ROWS_OFFSET}u", f"#define TESSERA_COMMANDS {len(self.commands)}u",
                  "", "#endif", ""]
        return "\n".join(lines)

    def write(self, folder: str | os.PathLike) -> Path:
        """``regions/<name>.bin`` for every region with contents, ``tessera_model.h`` and ``manifest.json``
        (last: a folder without it is incomplete)."""
        folder = Path(folder)
        (folder / "regions").mkdir(parents=True, exist_ok=True)
        files = {r.name: f"regions/{r.name}.bin" for r in self.regions if r.data is not None}
        manifest = self.manifest(files)
        header = self.c_header()
        for r in self.regions:
            if r.data is not None:
                write_atomic(folder / files[r.name], r.data)
        write_atomic(folder / "tessera_model.h", header)
        write_atomic(folder / "manifest.json", json.dumps(manifest, indent=2) + "\n")
        return folder


def encode_command(command: dict) -> bytes:
    op = command["op"]
    values = {name: value for name, value in command.items() if name != "op"}
    layout = command_layout(op)
    full = {name: 0 for name, _ in layout}
    full.update(values, op=op.value)
    unknown = set(values) - {name for name, _ in layout}
    if unknown:
        raise CompileError(f"{op.name} has no fields {sorted(unknown)}")
    return encode(layout, full).to_bytes(COMMAND_BYTES, "little")


def decode_command(blob: bytes) -> tuple[Op | None, dict]:
    """A command's op (``None`` when its first byte is not an :class:`Op`) and its fields."""
    word = int.from_bytes(blob[:COMMAND_BYTES], "little")
    try:
        op = Op(word & 0xFF)
    except ValueError:
        return None, {}
    layout = command_layout(op)
    return op, {name: (word >> f.offset) & ((1 << f.width) - 1) for name, f in layout if not name.startswith("_") and name != "op"}


def load_image(folder: str | os.PathLike) -> tuple[dict, bytearray]:
    """Read a written model image back: ``(manifest, memory image)``. Every region file is checked
    against its size and sha256; a missing, truncated or altered region raises :class:`CompileError`
    naming it."""
    folder = Path(folder)
    path = folder / "manifest.json"
    if not path.exists():
        raise CompileError(f"{folder}: no manifest.json (not a model image, or an incomplete one)")
    manifest = json.loads(path.read_text())
    image = bytearray(manifest["image_bytes"])
    for r in manifest["regions"]:
        if "file" not in r:
            continue
        file = folder / r["file"]
        if not file.exists():
            raise CompileError(f"{folder}: region {r['name']} file {r['file']} is missing")
        data = file.read_bytes()
        if len(data) != r["size"]:
            raise CompileError(f"{folder}: region {r['name']} is {len(data)} bytes, the manifest says {r['size']}")
        if hashlib.sha256(data).hexdigest() != r["sha256"]:
            raise CompileError(f"{folder}: region {r['name']} does not match its sha256 (corrupted)")
        image[r["address"]:r["address"] + r["size"]] = data
    return manifest, image


# ------------------------------------------------------------------------------------------ packing


def pack_linear(weight_q: torch.Tensor, bias: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor,
                block_size: int, kept: int, pool: PatternPool | None, pattern_ids: torch.Tensor | None) -> bytes:
    """A linear region (``hw.dram_formats``): pattern mode with ``pool``/``pattern_ids``, dense without."""
    out_features, in_features = weight_q.shape
    dense = pool is None
    n_pad, k_pad = padded_shape(out_features, in_features, block_size)
    nb, kb = n_pad // block_size, k_pad // block_size
    rows = np.zeros(nb, dtype=fmt.block_row_dtype(in_features, block_size, kept, dense))
    channels = np.zeros(n_pad, dtype=fmt.CHANNEL)
    for name, t in (("bias", bias), ("multiplier", multiplier), ("shift", shift)):
        channels[name][:out_features] = t.to(torch.int64).numpy()
    rows["channels"] = channels.reshape(nb, block_size)
    if dense:
        padded = torch.zeros(n_pad, k_pad, dtype=torch.int8)
        padded[:out_features, :in_features] = weight_q
        blocks = padded.reshape(nb, block_size, kb, block_size).permute(0, 2, 1, 3).reshape(nb, kb, -1)
        rows["blocks"]["values"] = blocks.numpy()
        table = b""
    else:
        rows["blocks"]["id"] = pattern_ids.to(torch.int64).numpy()
        rows["blocks"]["values"] = pack_pattern_blocks(weight_q, pattern_ids.to(torch.int64), pool).numpy()
        table = pool.positions().numpy().astype(np.uint8).tobytes()
    return table + rows.tobytes()


def pack_attention_constants(exp_table: torch.Tensor, pool: torch.Tensor | None, block_size: int) -> bytes:
    data = exp_table.to(torch.int64).numpy().astype(fmt.EXP_ENTRY).tobytes()
    if pool is not None:
        bits = np.zeros((pool.shape[0], fmt.attention_pool_bytes(block_size) * 8), dtype=np.uint8)
        bits[:, :pool.shape[1]] = pool.to(torch.uint8).numpy()
        data += np.packbits(bits, axis=1, bitorder="little").tobytes()
    return data


def pack_table(table: torch.Tensor) -> bytes:
    """A 256-entry int8 table, input −128 first."""
    return table.to(torch.int8).numpy().tobytes()


def pack_norm(gamma: torch.Tensor, beta: torch.Tensor) -> bytes:
    params = np.zeros(gamma.shape[0], dtype=fmt.NORM_CHANNEL)
    params["gamma"], params["beta"] = gamma.to(torch.int64).numpy(), beta.to(torch.int64).numpy()
    return params.tobytes()


# ------------------------------------------------------------------------------------------ compiler


class _Builder:
    def __init__(self):
        self.regions: list[Region] = []
        self.next = 0

    def add(self, name: str, data: bytes | None = None, size: int | None = None) -> int:
        size = len(data) if data is not None else size
        address = self.next
        self.regions.append(Region(name, address, size, data))
        self.next = -(-(address + size) // ALIGN) * ALIGN
        return address


def _fits(what: str, need: int, have: int, unit: str = ""):
    if need > have:
        raise CompileError(f"{what}: the model needs {need}{unit}, the hardware has {have}{unit} (short by {need - have}{unit})")


def _check_fit(artifact, encoder: IntegerEncoder, config: AcceleratorConfig, seq_len: int, ffn: int):
    spec = encoder.spec
    hidden, heads, head_dim = spec["hidden"], spec["heads"], spec["head_dim"]
    attn = config.attention.engine.pattern
    _fits("sequence length", seq_len, config.max_seq, " tokens")
    _fits("head dimension", head_dim, config.attention.max_head_dim)
    if head_dim % attn.block_size:
        raise CompileError(f"head dimension {head_dim} is not a multiple of the attention block size {attn.block_size}")
    _fits("LayerNorm row (hidden size)", hidden, config.max_width, " channels")
    _fits("input features of a linear", max(hidden, ffn), config.engine.max_in_features)
    _fits("heads", heads, 255)
    if encoder.attention_pool is not None:
        pool = encoder.attention_pool
        if pool.shape[1] != attn.positions:
            raise CompileError(f"attention pool has {pool.shape[1]}-position patterns, the hardware's block is {attn.block_size}×{attn.block_size}")
        _fits("attention pool", pool.shape[0], attn.pool_size, " patterns")
    for module, entry in artifact.layers.items():
        if "pattern" in entry:
            p = entry["pattern"]
            ours = config.engine.pattern
            if (p["block_size"], p["kept_per_block"]) != (ours.block_size, ours.kept_per_block):
                raise CompileError(f"linear {module}: pattern blocks {p['block_size']}×{p['block_size']} keeping {p['kept_per_block']}, "
                                   f"the hardware's are {ours.block_size}×{ours.block_size} keeping {ours.kept_per_block}")
            _fits(f"linear {module} pattern pool", p["pool_size"], min(ours.pool_size, fmt.MAX_POOL), " patterns")


def encoder_of(artifact, attention_pruning: bool | None = None) -> IntegerEncoder:
    """The artifact's integer encoder; with ``attention_pruning=False``, the same without attention-map
    pruning. Asking for pruning a model was not trained with is an error."""
    encoder = artifact.encoder()
    if attention_pruning is None or attention_pruning == (encoder.attention_pool is not None):
        return encoder
    if attention_pruning:
        raise CompileError(f"{artifact.path}: the model has no attention pool; it cannot run with attention pruning")
    return IntegerEncoder(encoder.t, dict(encoder.spec, attention_pruning=False), encoder.weights, None)


def on_chip_needs(seq_len: int, hidden: int, ffn: int, classes: int) -> tuple[int, int]:
    """Scratch bytes and wide words a model of this shape needs for ``seq_len`` tokens: the layer input
    ``X`` and the attention norm ``X1`` (``L × hidden`` each), then Q, K, V and the context or the FFN's
    hidden rows, whichever is larger; the wide memory holds one linear's int32 rows or the logits."""
    L = seq_len
    return 2 * L * hidden + max(4 * L * hidden, L * ffn), max(L * hidden, classes)


def fitted_config(artifact, seq_len: int, base: AcceleratorConfig | None = None) -> AcceleratorConfig:
    """The smallest accelerator of ``base``'s kind (default :class:`AcceleratorConfig`'s) that runs
    ``artifact`` for ``seq_len`` tokens: the linear engine as wide as the widest input, the attention unit
    as long as the sequence and as wide as a head, LayerNorm rows of the hidden size, and on-chip memories
    of exactly :func:`on_chip_needs` (wide memory rounded up to whole 4-word lines). Whether the model's
    geometry fits the rest is :func:`compile_model`'s check."""
    base = base or AcceleratorConfig()
    encoder = artifact.encoder()
    spec = encoder.spec
    ffn, classes = encoder.weights["0.ffn_input"].shape[0], encoder.weights["classifier"].shape[0]
    scratch, wide = on_chip_needs(seq_len, spec["hidden"], ffn, classes)
    return replace(base, engine=replace(base.engine, max_in_features=max(spec["hidden"], ffn)),
                   attention=replace(base.attention, max_seq=seq_len, max_head_dim=spec["head_dim"]),
                   max_width=spec["hidden"], scratch_bytes=scratch, wide_words=-(-wide // 4) * 4)


def compile_model(artifact, config: AcceleratorConfig, seq_len: int, *, trace: bool = False,
                  attention_pruning: bool | None = None) -> CompiledModel:
    """Compile ``artifact`` (a :class:`core.artifact.Artifact`) for sequences of ``seq_len`` tokens
    (shorter ones are padded at the end; the input region's length word says how many are real).
    ``attention_pruning=False`` runs an attention-pruned model without its attention-map pruning
    (:func:`encoder_of` gives the matching golden model)."""
    encoder = encoder_of(artifact, attention_pruning)
    spec, t, weights = encoder.spec, encoder.t, encoder.weights
    hidden, heads, head_dim, layers = spec["hidden"], spec["heads"], spec["head_dim"], len(spec["layers"])
    ffn = weights["0.ffn_input"].shape[0]
    classes = weights["classifier"].shape[0]
    if seq_len < 1:
        raise CompileError(f"seq_len must be at least 1, got {seq_len}")
    _check_fit(artifact, encoder, config, seq_len, ffn)
    k, kept = config.engine.pattern.block_size, config.engine.pattern.kept_per_block
    L = seq_len

    # on-chip placement
    X, X1, R = 0, L * hidden, 2 * L * hidden
    Q, K, V, C, H = R, R + L * hidden, R + 2 * L * hidden, R + 3 * L * hidden, R
    scratch, wide = on_chip_needs(L, hidden, ffn, classes)
    _fits("scratch memory", scratch, config.scratch_bytes, " bytes")
    _fits("wide memory", wide, config.wide_words, " words")

    b = _Builder()
    commands: list[dict] = []
    # Two passes would be needed to know the command region's size before the rest; its size follows
    # from the model's shape, so count first.
    per_layer = 9 + (len(TRACE_TENSORS) if trace else 1)
    command_count = 1 + layers * per_layer + 4 + 2
    b.add("commands", size=command_count * COMMAND_BYTES)
    input_address = b.add("input", size=INPUT_ROWS_OFFSET + L * hidden)
    attn_pool = encoder.attention_pool
    constants = b.add("attention.constants", pack_attention_constants(t["int.exp_table"], attn_pool, config.attention.engine.pattern.block_size))

    def linear_region(name, weight, prefix, module):
        entry = artifact.layers.get(module, {}) if module else {}
        pool = artifact.pool(module) if "pattern" in entry else None
        ids = artifact.tensor(module, "pattern_ids") if pool is not None else None
        data = pack_linear(weight, t[prefix + "bias"], t[prefix + "multiplier"], t[prefix + "shift"], k, kept, pool, ids)
        return b.add(name, data), pool

    outputs: dict[str, OutputTensor] = {}

    def store(name, local, shape, wide_=False):
        size = int(np.prod(shape)) * (4 if wide_ else 1)
        address = b.add(f"output.{name}", size=size)
        outputs[name] = OutputTensor(f"output.{name}", tuple(shape), wide_)
        commands.append({"op": Op.STORE, "wide": int(wide_), "bytes": size, "dram": address, "local": local})

    def matmul(src, dst, address, pool, n_out, n_in, tokens=L, wide_=False, raw=False, table=None):
        size = fmt.linear_region_bytes(n_out, n_in, block_size=k, kept=kept, pool_size=pool.config.pool_size if pool else 0, dense=pool is None)
        commands.append({"op": Op.MATMUL, "dense": int(pool is None), "raw": int(raw), "wide": int(wide_ or raw), "tokens": tokens,
                         "in_features": n_in, "out_features": n_out, "pool_size": pool.config.pool_size if pool else 0,
                         "src": src, "dst": dst, "weights": address, "weight_bytes": size,
                         "activate": int(table is not None), "table": table or 0})

    commands.append({"op": Op.LOAD, "wide": 0, "bytes": L * hidden, "dram": input_address + INPUT_ROWS_OFFSET, "local": X})
    for i in range(layers):
        entry = spec["layers"][i]
        p = f"int.layer.{i}."
        lin = {role: linear_region(f"layer{i}.{role}", weights[f"{i}.{role}"], p + role + ".", entry["modules"][role]) for role in LINEAR_ROLES}
        norms = {name: b.add(f"layer{i}.{name}", pack_norm(t[p + name + ".gamma"], t[p + name + ".beta"])) for name in ("attention_norm", "output_norm")}
        gelu = b.add(f"layer{i}.gelu_table", pack_table(t[p + "gelu_table"]))
        for role, dst in (("query", Q), ("key", K), ("value", V)):
            matmul(X, dst, *lin[role], hidden, hidden)
        commands.append({"op": Op.ATTENTION, "pruned": int(attn_pool is not None), "tokens": L, "heads": heads, "head_dim": head_dim,
                         "exp_shift": entry["exp_shift"], "context_shift": entry["context_shift"],
                         "exp_multiplier": entry["exp_multiplier"], "context_multiplier": entry["context_multiplier"],
                         "pool_size": attn_pool.shape[0] if attn_pool is not None else 0,
                         "q": Q, "k": K, "v": V, "dst": C, "length": input_address, "constants": constants})
        if trace:
            for name, local in (("query", Q), ("key", K), ("value", V), ("context", C)):
                store(f"layer{i}.{name}", local, (L, hidden))
        matmul(C, 0, *lin["attention_output"], hidden, hidden, wide_=True)
        if trace:
            store(f"layer{i}.attention_output", 0, (L, hidden), True)
        commands.append({"op": Op.NORM, "tokens": L, "width": hidden, "shift": entry["attention_norm_shift"],
                         "wide_src": 0, "residual": X, "dst": X1, "params": norms["attention_norm"]})
        if trace:
            store(f"layer{i}.attention_norm", X1, (L, hidden))
        matmul(X1, H, *lin["ffn_input"], ffn, hidden, table=gelu)
        if trace:
            store(f"layer{i}.gelu", H, (L, ffn))
        matmul(H, 0, *lin["ffn_output"], hidden, ffn, wide_=True)
        if trace:
            store(f"layer{i}.ffn_output", 0, (L, hidden), True)
        commands.append({"op": Op.NORM, "ends_layer": 1, "tokens": L, "width": hidden, "shift": entry["output_norm_shift"],
                         "wide_src": 0, "residual": X1, "dst": X, "params": norms["output_norm"]})
        store(f"layer{i}.output_norm", X, (L, hidden))

    pooler, _ = linear_region("pooler", weights["pooler"], "int.pooler.", None)
    tanh = b.add("pooler.tanh_table", pack_table(t["int.pooler.tanh_table"]))
    classifier_constants = {"int.classifier.bias": t["int.classifier.bias"]}
    zeros = torch.zeros(classes, dtype=torch.int64)
    classifier = b.add("classifier", pack_linear(weights["classifier"], classifier_constants["int.classifier.bias"], zeros, zeros, k, kept, None, None))
    matmul(X, X1, pooler, None, hidden, hidden, tokens=1, table=tanh)
    store("pooled", X1, (hidden,))
    matmul(X1, 0, classifier, None, classes, hidden, tokens=1, raw=True)
    store("logits", 0, (classes,), True)
    commands += [{"op": Op.BARRIER}, {"op": Op.END}]
    if len(commands) != command_count:
        raise AssertionError(f"counted {command_count} commands, emitted {len(commands)}")
    compiled = CompiledModel(config, L, hidden, layers, classes, b.regions, commands, outputs, scratch, wide)
    compiled.regions[0].data = compiled.command_bytes()
    return compiled


def main(argv=None) -> int:
    import argparse

    from core.artifact import ArtifactError, load_artifact

    parser = argparse.ArgumentParser(prog="python -m firmware_gen.compiler", description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", required=True, help="artifact folder (sw.train / sw.export)")
    parser.add_argument("--hw", help="accelerator config JSON (hw.config.AcceleratorConfig); default: the defaults")
    parser.add_argument("--seq-len", type=int, required=True, help="tokens per sequence (shorter ones are padded)")
    parser.add_argument("--out", required=True, help="folder for regions/, manifest.json, tessera_model.h")
    parser.add_argument("--trace", action="store_true", help="store every boundary tensor of every layer")
    args = parser.parse_args(argv)
    try:
        config = AcceleratorConfig.from_json(Path(args.hw).read_text()) if args.hw else AcceleratorConfig()
        compiled = compile_model(load_artifact(args.artifact), config, args.seq_len, trace=args.trace)
    except (ArtifactError, CompileError, ValueError, OSError) as error:
        parser.exit(2, f"error: {error}\n")
    compiled.write(args.out)
    print(f"{args.out}: {len(compiled.commands)} commands, {len(compiled.regions)} regions, image {compiled.image_bytes} bytes "
          f"({compiled.constant_bytes} constant), scratch {compiled.scratch_bytes} bytes, wide {compiled.wide_words} words")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
