"""The command model: what the accelerator does with a memory image, one command at a time, in Python.

It reads the command stream (``hw.commands``) and the regions (``hw.dram_formats``) the way the
hardware does, and computes every operation with the arithmetic contract (``core``). It is the
reference the RTL top is compared with, and it checks the compiler on its own: a compiled model run
here must give the integer encoder's tensors at every layer boundary. It also counts the DRAM bytes
each kind of command reads and writes.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch

from core import golden
from core.encoder import NORM_Z_BITS, RESIDUAL_SHIFT, WIDE_BITS
from core.integer import attention, layer_norm, residual_add, table_lookup
from firmware_gen.compiler import decode_command
from hw import dram_formats as fmt
from hw.commands import (COMMAND_BYTES, ErrorCause, Op, attention_misaligned, matmul_activation_bad, matmul_misaligned,
                         matmul_tokens_beyond_engine, norm_shape_bad,
                         table_misaligned, transfer_misaligned)
from hw.config import AcceleratorConfig
from hw.table_activation import TABLE_ENTRIES


class CommandError(RuntimeError):
    """A run stopped with an error: its :class:`ErrorCause` and the index of the failing command."""

    def __init__(self, cause: ErrorCause, index: int, message: str):
        super().__init__(f"command {index}: {cause.name}: {message}")
        self.cause, self.index = cause, index


@dataclass
class RunStats:
    commands: int = 0
    layers: int = 0
    read: Counter = field(default_factory=Counter)  # DRAM bytes read, per op name
    written: int = 0


class CommandModel:
    """DRAM (a bytearray), scratch (int8) and wide (int32) memories, and the command interpreter."""

    def __init__(self, config: AcceleratorConfig, dram: bytearray):
        self.config = config
        self.dram = dram
        self.scratch = np.zeros(config.scratch_bytes, dtype=np.int8)
        self.wide = np.zeros(config.wide_words, dtype=np.int64)
        self.stats = RunStats()
        self._index = 0

    # ---------------------------------------------------------------------------------- memories

    def _fail(self, cause: ErrorCause, message: str):
        raise CommandError(cause, self._index, message)

    def _read(self, op: Op | str, address: int, size: int) -> bytes:
        if address + size > len(self.dram):
            self._fail(ErrorCause.BUS_ERROR, f"DRAM read {address:#x}+{size} past the end of memory ({len(self.dram)} bytes)")
        self.stats.read[op if isinstance(op, str) else op.name] += size
        return bytes(self.dram[address:address + size])

    def _local(self, wide: bool, address: int, count: int) -> slice:
        memory = self.wide if wide else self.scratch
        if address + count > memory.size:
            self._fail(ErrorCause.OUT_OF_RANGE, f"{'wide' if wide else 'scratch'} {address}+{count} past its {memory.size} entries")
        return slice(address, address + count)

    def _rows(self, address: int, rows: int, width: int, wide: bool = False) -> torch.Tensor:
        memory = self.wide if wide else self.scratch
        return torch.from_numpy(memory[self._local(wide, address, rows * width)].astype(np.int64).reshape(rows, width))

    def _put(self, address: int, values: torch.Tensor, wide: bool = False):
        memory = self.wide if wide else self.scratch
        memory[self._local(wide, address, values.numel())] = values.flatten().numpy()

    # ---------------------------------------------------------------------------------- run

    def run(self, command_address: int = 0, max_commands: int = 1 << 16) -> RunStats:
        for self._index in range(max_commands):
            blob = self._read("COMMANDS", command_address + self._index * COMMAND_BYTES, COMMAND_BYTES)
            op, f = decode_command(blob)
            if op is None:
                self._fail(ErrorCause.BAD_OPCODE, f"op byte {blob[0]:#04x} is not an operation")
            self.stats.commands += 1
            if op is Op.END:
                return self.stats
            getattr(self, f"_{op.name.lower()}")(op, f)
        self._fail(ErrorCause.OUT_OF_RANGE, f"no END within {max_commands} commands")

    def _matmul(self, op: Op, f: dict):
        engine = self.config.engine
        k, kept = engine.pattern.block_size, engine.pattern.kept_per_block
        n, kin, dense = f["out_features"], f["in_features"], bool(f["dense"])
        size = fmt.linear_region_bytes(n, kin, block_size=k, kept=kept, pool_size=f["pool_size"], dense=dense)
        if matmul_misaligned(kin, n, f["tokens"], f["src"], f["dst"], k):
            self._fail(ErrorCause.BAD_SIZE, f"MATMUL operands are not word-aligned (K {kin}, N {n}, src {f['src']}, dst {f['dst']})")
        if matmul_activation_bad(f["activate"], f["wide"], f["raw"]):
            self._fail(ErrorCause.BAD_SIZE, "MATMUL maps wide or raw outputs through a table")
        if f["weight_bytes"] != size:
            self._fail(ErrorCause.BAD_SIZE, f"linear region is {f['weight_bytes']} bytes, a {n}×{kin} layer's is {size}")
        if (min(f["tokens"], n, kin) == 0 or kin > engine.max_in_features or matmul_tokens_beyond_engine(f["tokens"], engine.lanes)
                or (not dense and not 1 <= f["pool_size"] <= engine.pattern.pool_size)):
            self._fail(ErrorCause.OUT_OF_RANGE, f"MATMUL shape {f['tokens']}×{kin}→{n} (pool {f['pool_size']}) is beyond the engine")
        self._local(False, f["src"], f["tokens"] * kin)
        self._local(bool(f["wide"] or f["raw"]), f["dst"], f["tokens"] * n)
        activation = self._table_of(op, f["table"]) if f["activate"] else None  # read before the weights, as the unit does
        blob = self._read(op, f["weights"], size)
        table_bytes = fmt.pattern_table_bytes(f["pool_size"], kept, dense)
        rows = np.frombuffer(blob[table_bytes:], dtype=fmt.block_row_dtype(kin, k, kept, dense))
        nb, kb = rows.shape[0], fmt.blocks(kin, k)
        values = torch.from_numpy(rows["blocks"]["values"].astype(np.int64))
        if dense:
            blocks = values
        else:
            positions = torch.from_numpy(np.frombuffer(blob[:table_bytes], dtype=np.uint8).astype(np.int64).reshape(-1, kept))
            ids = torch.from_numpy(rows["blocks"]["id"].astype(np.int64))
            if int(ids.max()) >= f["pool_size"]:
                self._fail(ErrorCause.OUT_OF_RANGE, f"pattern id {int(ids.max())} beyond the pool of {f['pool_size']}")
            blocks = torch.zeros(nb, kb, k * k, dtype=torch.int64).scatter(-1, positions[ids], values)
        weight = blocks.reshape(nb, kb, k, k).permute(0, 2, 1, 3).reshape(nb * k, kb * k)[:n, :kin]
        channels = rows["channels"].reshape(-1)[:n]
        bias, multiplier, shift = (torch.from_numpy(channels[name].astype(np.int64)) for name in ("bias", "multiplier", "shift"))
        x = self._rows(f["src"], f["tokens"], kin)
        if f["raw"]:
            y = golden.linear_accumulate(x, weight, bias).to(torch.int64)
        else:
            y = golden.linear(x, weight, bias, multiplier, shift, WIDE_BITS if f["wide"] else 8)[1].to(torch.int64)
            if activation is not None:
                y = table_lookup(y, activation)
        self._put(f["dst"], y, bool(f["wide"] or f["raw"]))

    def _attention(self, op: Op, f: dict):
        heads, d, length_tokens = f["heads"], f["head_dim"], f["tokens"]
        unit = self.config.attention
        ka = unit.engine.pattern.block_size
        pruned = bool(f["pruned"])
        if attention_misaligned(d, f["q"], f["k"], f["v"], f["dst"]):
            self._fail(ErrorCause.BAD_SIZE, f"ATTENTION operands are not word-aligned (head_dim {d})")
        if (not 1 <= length_tokens <= unit.max_seq or not 1 <= d <= unit.max_head_dim or heads == 0
                or (pruned and not 1 <= f["pool_size"] <= unit.engine.pattern.pool_size)):
            self._fail(ErrorCause.OUT_OF_RANGE, f"ATTENTION of {heads} heads × {d} over {length_tokens} tokens "
                                                f"(pool {f['pool_size']}) is beyond the unit")
        for name in ("q", "k", "v", "dst"):
            self._local(False, f[name], length_tokens * heads * d)
        blob = self._read(op, f["constants"], fmt.attention_constants_bytes(f["pool_size"], ka, pruned))
        table_bytes = fmt.attention_constants_bytes(0, ka, False)
        exp_table = torch.from_numpy(np.frombuffer(blob[:table_bytes], dtype=fmt.EXP_ENTRY).astype(np.int64))
        pool = None
        if pruned:
            packed = np.frombuffer(blob[table_bytes:], dtype=np.uint8).reshape(f["pool_size"], -1)
            pool = torch.from_numpy(np.unpackbits(packed, axis=1, bitorder="little")[:, :ka * ka].astype(bool))
        valid_tokens = int.from_bytes(self._read(op, f["length"], 4), "little")
        if valid_tokens > length_tokens:
            self._fail(ErrorCause.OUT_OF_RANGE, f"{valid_tokens} valid tokens in a sequence of {length_tokens}")
        valid = (torch.arange(length_tokens) < valid_tokens)[None]

        def heads_of(address):  # [L, H·d] → [1, heads, L, d]
            return self._rows(address, length_tokens, heads * d).reshape(length_tokens, heads, d).transpose(0, 1)[None]

        _, _, _, context = attention(heads_of(f["q"]), heads_of(f["k"]), heads_of(f["v"]), valid, f["exp_multiplier"], f["exp_shift"],
                                     exp_table, f["context_multiplier"], f["context_shift"], pool)
        self._put(f["dst"], context[0].transpose(0, 1).reshape(length_tokens, heads * d).to(torch.int64))

    def _norm(self, op: Op, f: dict):
        width, rows = f["width"], f["tokens"]
        if norm_shape_bad(width, rows, self.config.max_width):
            self._fail(ErrorCause.OUT_OF_RANGE, f"NORM of {rows} rows of {width} entries (rows of 1…{self.config.max_width})")
        self._local(True, f["wide_src"], rows * width)
        self._local(False, f["residual"], rows * width)
        self._local(False, f["dst"], rows * width)
        params = np.frombuffer(self._read(op, f["params"], fmt.norm_region_bytes(width)), dtype=fmt.NORM_CHANNEL)
        gamma, beta = (torch.from_numpy(params[name].astype(np.int64)) for name in ("gamma", "beta"))
        r = residual_add(self._rows(f["wide_src"], rows, width, wide=True), self._rows(f["residual"], rows, width), RESIDUAL_SHIFT)
        self._put(f["dst"], layer_norm(r, gamma, beta, f["shift"], NORM_Z_BITS).to(torch.int64))
        self.stats.layers += f["ends_layer"]

    def _table(self, op: Op, f: dict):
        if table_misaligned(f["count"], f["src"], f["dst"]):
            self._fail(ErrorCause.BAD_SIZE, f"TABLE of {f['count']} bytes from {f['src']} to {f['dst']} is not whole words")
        self._local(False, f["src"], f["count"])
        self._local(False, f["dst"], f["count"])
        table = self._table_of(op, f["table"])
        x = self._rows(f["src"], 1, f["count"])
        self._put(f["dst"], table_lookup(x, table))

    def _table_of(self, op: Op, address: int) -> torch.Tensor:
        return torch.from_numpy(np.frombuffer(self._read(op, address, TABLE_ENTRIES), dtype=np.int8).astype(np.int64))

    def _check_transfer(self, op: Op, f: dict) -> int:
        """The LOAD/STORE rules of the hardware: alignment, then range. Returns the entries moved."""
        wide = bool(f["wide"])
        if transfer_misaligned(op, wide, f["bytes"], f["local"]):
            self._fail(ErrorCause.BAD_SIZE, f"{op.name} of {f['bytes']} bytes at {'wide' if wide else 'scratch'} {f['local']} is not word-aligned")
        count = f["bytes"] // 4 if wide else -(-f["bytes"] // 4) * 4
        self._local(wide, f["local"], count)
        return f["bytes"] // 4 if wide else f["bytes"]

    def _load(self, op: Op, f: dict):
        self._check_transfer(op, f)
        blob = self._read(op, f["dram"], f["bytes"])
        values = np.frombuffer(blob, dtype="<i4" if f["wide"] else np.int8)
        self._put(f["local"], torch.from_numpy(values.astype(np.int64)), bool(f["wide"]))

    def _store(self, op: Op, f: dict):
        wide = bool(f["wide"])
        count = self._check_transfer(op, f)
        memory = self.wide if wide else self.scratch
        values = memory[self._local(wide, f["local"], count)]
        blob = values.astype("<i4").tobytes() if wide else values.tobytes()
        if f["dram"] + len(blob) > len(self.dram):
            self._fail(ErrorCause.BUS_ERROR, f"DRAM write {f['dram']:#x}+{len(blob)} past the end of memory")
        self.dram[f["dram"]:f["dram"] + len(blob)] = blob
        self.stats.written += len(blob)

    def _barrier(self, op: Op, f: dict):
        """Every command here has finished before the next starts: nothing to wait for."""
