"""The artifact of a compressed model: ``tensors.safetensors`` + ``manifest.json`` (format version 2).

One folder per trained model::

    tensors.safetensors
      linear.<module>.weight_q      int8  [N, K]   per-row symmetric levels, zero outside the mask
      linear.<module>.weight_scale  f64   [N]      weight ≈ weight_q · weight_scale[:, None]
      linear.<module>.bias          f32   [N]
      linear.<module>.mask          bool  [N, K]   the fixed support of retraining
      linear.<module>.pool          bool  [P, k²]  pattern kinds only: the layer's pattern pool
      linear.<module>.pattern_ids   i32   [N/k, K/k] pattern kinds only: pattern id per block (padded grid)
      attention.pool                bool  [Pa, ka²] when attention-map pruning is on
      dense.<parameter>             f32            every other parameter/buffer (embeddings, LayerNorms,
                                                   pooler, classifier)
      int.<name>                    int8/int32     every integer of the integer encoder beyond the int8
                                                   linear weights (embedding tables, biases, multipliers,
                                                   shifts, LayerNorm constants, exp/GELU/tanh tables):
                                                   see :mod:`core.encoder`
    tokenizer/                      the tokenizer files, when the exporter had a tokenizer
    manifest.json
      format, version, model (config dict, architecture), task and metrics, training config,
      layers: {module: out/in features, bits, projection spec, input/output scales of its edges},
      attention_pruning config, integer: the integer encoder's scalars, module map and per-edge scales,
      sha256 of the tensors file

Version 2 added the integer encoder (``int.*`` and ``integer``); version 1 artifacts are refused with
the command that re-exports them (:data:`REEXPORT`), which reads their float part
(``load_artifact(path, integer=False)``).

The manifest is written last and holds the tensors' hash, so an interrupted export is refused on
load. :func:`load_artifact` checks everything it can (hash, version, shapes, dtypes, level range, values
inside masks, ids within the pool, every block's mask equal to its pattern) and raises
:class:`ArtifactError` naming the tensor and the problem.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from core.atomic import write_atomic
from core.encoder import IntegerEncoder
from core.pattern import PatternConfig, PatternPool, from_blocks, padded_shape
from core.quantize import QuantizedPatternLinear, quantize_bias, requant_parameters

FORMAT = "tessera-artifact"
VERSION = 2
READABLE_FLOAT_VERSIONS = (1, 2)  # versions whose float part (linear.*, dense.*) this reader understands
REEXPORT = "python -m sw.export --artifact {path} --out NEW_DIR --task TASK --data-dir GLUE_DIR"
TENSORS = "tensors.safetensors"
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer"


class ArtifactError(ValueError):
    """An artifact is missing, corrupt, of another version, or inconsistent."""


def write_artifact(path, tensors: dict[str, torch.Tensor], manifest: dict) -> Path:
    """Write ``tensors`` and ``manifest`` (format, version and the tensors' hash are filled in) into the
    folder ``path``: the tensors file first, the manifest last, each atomically."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    blob = save_safetensors(tensors)
    write_atomic(path / TENSORS, blob)
    manifest = {"format": FORMAT, "version": VERSION, **{k: v for k, v in manifest.items() if k not in ("format", "version", "tensors")},
                "tensors": {"file": TENSORS, "sha256": hashlib.sha256(blob).hexdigest()}}
    write_atomic(path / MANIFEST, json.dumps(manifest, indent=1, default=str))
    return path


# --------------------------------------------------------------------------------------------- load


@dataclass
class Artifact:
    path: Path
    manifest: dict
    tensors: dict[str, torch.Tensor]

    @property
    def layers(self) -> dict[str, dict]:
        return self.manifest["layers"]

    def tensor(self, module: str, field: str) -> torch.Tensor:
        return self.tensors[f"linear.{module}.{field}"]

    def weight(self, module: str) -> torch.Tensor:
        """Dequantized weight ``weight_q · scale`` (float32)."""
        return (self.tensor(module, "weight_q").to(torch.float64) * self.tensor(module, "weight_scale")[:, None]).float()

    def masks(self) -> dict[str, torch.Tensor]:
        return {f"{m}.weight": self.tensor(m, "mask") for m in self.layers}

    def pool(self, module: str) -> PatternPool:
        spec = self.layers[module]["pattern"]
        return PatternPool(PatternConfig(spec["block_size"], spec["kept_per_block"], spec["pool_size"]), self.tensor(module, "pool"))

    def encoder(self):
        """The integer golden model of the whole classifier (:class:`core.encoder.IntegerEncoder`)."""
        try:
            return IntegerEncoder.from_tensors(self.tensors, self.manifest["integer"])
        except (ValueError, TypeError, KeyError) as error:
            raise ArtifactError(f"{self.path}: {error}") from None

    def quantized_linear(self, module: str):
        """The layer as ``core.quantize.QuantizedPatternLinear`` (what firmware_gen and the golden model take)."""
        entry = self.layers[module]
        if "pattern" not in entry or entry["bits"] != 8:
            raise ArtifactError(f"layer {module} is not an 8-bit pattern layer (projection {entry['projection']['kind']}, {entry['bits']} bits)")
        scale = self.tensor(module, "weight_scale")
        multiplier, shift = requant_parameters(entry["input_scale"], scale, entry["output_scale"])
        return QuantizedPatternLinear(
            pool=self.pool(module), pattern_ids=self.tensor(module, "pattern_ids").to(torch.int64),
            weight_q=self.tensor(module, "weight_q"), weight_scale=scale,
            bias_q=quantize_bias(self.tensor(module, "bias"), entry["input_scale"], scale),
            input_scale=entry["input_scale"], output_scale=entry["output_scale"], multiplier=multiplier, shift=shift,
        )


def load_artifact(path, integer: bool = True) -> Artifact:
    """Load and validate an artifact folder; raises :class:`ArtifactError` on anything wrong.

    ``integer=False`` reads the float part only (and accepts version 1): what a re-export needs.
    """
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise ArtifactError(f"{path}: no {MANIFEST} (not an artifact, or its export was interrupted)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ArtifactError(f"{manifest_path}: not valid JSON ({error})") from None
    if manifest.get("format") != FORMAT:
        raise ArtifactError(f"{manifest_path}: format is {manifest.get('format')!r}, expected {FORMAT!r}")
    version = manifest.get("version")
    if version != VERSION and not (not integer and version in READABLE_FLOAT_VERSIONS):
        hint = (f"; version 1 lacks the integer encoder: re-export it with `{REEXPORT.format(path=path)}`"
                if version in READABLE_FLOAT_VERSIONS else "")
        raise ArtifactError(f"{manifest_path}: version {version!r} is not supported (this reader knows {VERSION}){hint}")
    for key in ("model", "layers", "tensors", "task"):
        if key not in manifest:
            raise ArtifactError(f"{manifest_path}: missing key {key!r}")
    tensors_path = path / manifest["tensors"]["file"]
    if not tensors_path.is_file():
        raise ArtifactError(f"{path}: tensors file {tensors_path.name} is missing")
    blob = tensors_path.read_bytes()
    if hashlib.sha256(blob).hexdigest() != manifest["tensors"]["sha256"]:
        raise ArtifactError(f"{tensors_path}: sha256 does not match the manifest (corrupt or replaced file)")
    try:
        tensors = load_safetensors(blob)
    except Exception as error:  # safetensors raises its own error types
        raise ArtifactError(f"{tensors_path}: unreadable safetensors ({error})") from None
    artifact = Artifact(path, manifest, tensors)
    for module, entry in manifest["layers"].items():
        _validate_layer(artifact, module, entry)
    if manifest.get("attention_pruning") is not None and "attention.pool" not in tensors:
        raise ArtifactError(f"{path}: attention pruning is configured but attention.pool is missing")
    if integer:
        if not isinstance(manifest.get("integer"), dict):
            raise ArtifactError(f"{manifest_path}: missing the integer encoder section 'integer'")
        artifact.encoder()  # validates every int.* tensor and scalar
    return artifact


def _expect(artifact: Artifact, name: str, dtype: torch.dtype, shape: tuple) -> torch.Tensor:
    if name not in artifact.tensors:
        raise ArtifactError(f"{artifact.path}: tensor {name} is missing")
    t = artifact.tensors[name]
    if t.dtype != dtype or tuple(t.shape) != tuple(shape):
        raise ArtifactError(f"{artifact.path}: tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {tuple(shape)}")
    return t


def _validate_layer(artifact: Artifact, module: str, entry: dict) -> None:
    n, k, bits = entry["out_features"], entry["in_features"], entry["bits"]
    p = f"linear.{module}."
    weight_q = _expect(artifact, p + "weight_q", torch.int8, (n, k))
    scale = _expect(artifact, p + "weight_scale", torch.float64, (n,))
    _expect(artifact, p + "bias", torch.float32, (n,))
    mask = _expect(artifact, p + "mask", torch.bool, (n, k))
    limit = 2 ** (bits - 1) - 1
    if bool((weight_q.to(torch.int16).abs() > limit).any()):  # int8 abs(-128) wraps to -128
        raise ArtifactError(f"{artifact.path}: {p}weight_q has values outside ±{limit} ({bits}-bit levels)")
    if bool((weight_q[~mask] != 0).any()):
        raise ArtifactError(f"{artifact.path}: {p}weight_q has nonzero weights outside its mask")
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ArtifactError(f"{artifact.path}: {p}weight_scale must be finite and positive")
    for key in ("input_scale", "output_scale"):
        value = entry.get(key)
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ArtifactError(f"{artifact.path}: layer {module} has a bad {key} {value!r}")
    if "pattern" not in entry:
        return
    spec = entry["pattern"]
    kb = spec["block_size"]
    try:
        pool = PatternPool(PatternConfig(kb, spec["kept_per_block"], spec["pool_size"]), _expect(artifact, p + "pool", torch.bool, (spec["pool_size"], kb * kb)))
    except ValueError as error:
        raise ArtifactError(f"{artifact.path}: {p}pool is not a valid pattern pool: {error}") from None
    n_pad, k_pad = padded_shape(n, k, kb)
    ids = _expect(artifact, p + "pattern_ids", torch.int32, (n_pad // kb, k_pad // kb))
    if bool(((ids < 0) | (ids >= spec["pool_size"])).any()):
        raise ArtifactError(f"{artifact.path}: {p}pattern_ids has ids outside the pool of {spec['pool_size']}")
    expected = from_blocks(pool.masks[ids.to(torch.int64)], kb)[:n, :k]
    if not torch.equal(expected, mask):
        rows, cols = torch.nonzero(expected != mask)[0].tolist()
        raise ArtifactError(f"{artifact.path}: {p}mask does not follow its block patterns (first difference at [{rows}, {cols}], block ({rows // kb}, {cols // kb}))")
