"""The integer encoder: a BERT-family classifier from token ids to int32 logits in exact integer
arithmetic — the golden model of the whole accelerator.

Two halves:

* **Export** (:func:`build_integer_encoder`, run once when the artifact is written): float parameters
  and calibrated per-edge scales become integers — int8 weights and embedding tables, int32 biases,
  requantization multipliers and shifts, LayerNorm constants, the exponential, GELU and tanh tables.
  Floats are used here and only here.
* **Run** (:class:`IntegerEncoder`): reads those integers (from the artifact) and nothing else;
  :meth:`IntegerEncoder.forward` returns the logits and, on request, every layer-boundary tensor the
  RTL checks compare against.

Dataflow of one layer (scales: one per tensor edge, ``s[edge]``; the output scale of an op is the input
scale of the next)::

    x (int8, s[in]) ─┬─ query/key/value linears ─► Q, K, V (int8)
                     │   per head: S = Q·Kᵀ (int32) → integer softmax + pattern pruning → P (0…255)
                     │   P·V (int32) → requantize → context (int8) → output linear → a (24-bit, scale s[in]/2^8)
                     └─ residual: a + x·2^8 → LayerNorm → x1 (int8)
    x1 ─┬─ FFN-in linear → h (int8) → GELU table → g (int8, zero point) → FFN-out linear → f (24-bit, scale s[x1]/2^8)
        └─ residual: f + x1·2^8 → LayerNorm → x2 (int8, the next layer's input)

The two linears that end a branch requantize straight to the residual's fine scale (24-bit, no int8
step): their outputs carry BERT's outlier channels (values of ~200 beside typical ~1), which an int8
grid cannot hold without losing the other channels (docs/results/integer.md measures it).

Embeddings: int8 word/position/token-type rows (per-row scales) summed with per-row multipliers, then
LayerNorm. Head: the first token's x → pooler linear → tanh table (scale 1/127) → classifier with one
weight scale, so the int32 logits share one scale and their argmax is the prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from core import golden
from core.integer import (PROB_ONE, attention, layer_norm, require_int, residual_add, saturate_int8, scaled_sum,
                          table_lookup)
from core.quantize import quantize_bias, quantize_rows, requant_parameters

#: Roles of the six linear layers of an encoder layer, in dataflow order.
LINEAR_ROLES = ("query", "key", "value", "attention_output", "ffn_input", "ffn_output")
#: Fine-scale bits of the embedding sum: the largest operand scale gets multiplier 2^EMBEDDING_SUM_BITS.
EMBEDDING_SUM_BITS = 12
#: The residual's fine scale is its int8 input's scale / 2^RESIDUAL_SHIFT.
RESIDUAL_SHIFT = 8
#: Width of the branch outputs requantized to the residual's fine scale.
WIDE_BITS = 24
#: The roles of the linear layers whose outputs are wide (they end a residual branch).
BRANCH_ENDS = ("attention_output", "ffn_output")
#: Fractional bits of the normalized LayerNorm value.
NORM_Z_BITS = 15
#: LayerNorm γ multipliers are signed 16-bit.
NORM_GAMMA_MAX = 2**15 - 1
#: Integer exponential: table of 2^EXP_FRACTION_BITS entries, values up to 2^EXP_OUT_BITS.
EXP_FRACTION_BITS = 8
EXP_OUT_BITS = 15
#: Scale of the tanh table's output (tanh ∈ (−1, 1) → int8).
TANH_SCALE = 1 / golden.INT8_MAX


def edge_names(layers: int) -> list[str]:
    """Every tensor edge that carries a calibrated scale, in dataflow order."""
    per_layer = ("query", "key", "value", "context", "attention_output", "attention_norm",
                 "ffn_hidden", "gelu", "ffn_output", "output_norm")
    return ["embeddings"] + [f"{i}.{e}" for i in range(layers) for e in per_layer] + ["pooler"]


def layer_input_edge(index: int) -> str:
    return "embeddings" if index == 0 else f"{index - 1}.output_norm"


def wide_edges(layers: int) -> list[str]:
    """The edges that are not int8: the outputs of the linears that end a residual branch."""
    return [linear_edges(i)[role][1] for i in range(layers) for role in BRANCH_ENDS]


def residual_input_edge(index: int, branch_end: str) -> str:
    """The int8 edge that a branch's residual add takes as its second operand."""
    return layer_input_edge(index) if branch_end == "attention_output" else f"{index}.attention_norm"


def linear_edges(index: int) -> dict[str, tuple[str, str]]:
    """Role → (input edge, output edge) of the six linear layers of layer ``index``: Q, K and V read the
    same edge, and each output edge is the next op's input edge."""
    x, i = layer_input_edge(index), index
    return {"query": (x, f"{i}.query"), "key": (x, f"{i}.key"), "value": (x, f"{i}.value"),
            "attention_output": (f"{i}.context", f"{i}.attention_output"),
            "ffn_input": (f"{i}.attention_norm", f"{i}.ffn_hidden"), "ffn_output": (f"{i}.gelu", f"{i}.ffn_output")}


# =========================================================================================== export


@dataclass
class LayerFloats:
    """The float parameters of one encoder layer that are not in the artifact's ``linear.*`` tensors."""

    modules: dict[str, str]  # role → artifact module name of the linear layer
    attention_norm: tuple[torch.Tensor, torch.Tensor]  # (γ, β)
    output_norm: tuple[torch.Tensor, torch.Tensor]


@dataclass
class EncoderFloats:
    """Float parameters of a BERT-family classifier, model-library neutral (the training side fills it)."""

    heads: int
    word: torch.Tensor  # [V, H]
    position: torch.Tensor  # [Lmax, H]
    token_type: torch.Tensor  # [T, H]
    embedding_norm: tuple[torch.Tensor, torch.Tensor]
    layers: list[LayerFloats]
    pooler: tuple[torch.Tensor, torch.Tensor]  # (weight [H, H], bias [H])
    classifier: tuple[torch.Tensor, torch.Tensor]  # (weight [C, H], bias [C])


def sum_multipliers(scales: list[torch.Tensor], bits: int = EMBEDDING_SUM_BITS) -> tuple[list[torch.Tensor], float]:
    """Integer multipliers of :func:`core.integer.scaled_sum`: ``m = round(2^bits · s / s_ref)`` with
    ``s_ref`` the largest scale of all operands; returns ``(multipliers, s_ref / 2^bits)``. A scale of 0
    (an all-zero embedding row) gets multiplier 0; a nonzero scale whose multiplier rounds to 0 is refused
    (its operand would vanish from the sum)."""
    reference = max(float(s.max()) for s in scales)
    out = []
    for i, s in enumerate(scales):
        m = torch.round(s.to(torch.float64) / reference * 2**bits).to(torch.int64)
        if bool(((m == 0) & (s > 0)).any()):
            raise ValueError(f"sum operand {i} has a scale below 2^-{bits + 1} of the largest operand's; it would vanish")
        out.append(m)
    return out, reference / 2**bits


def norm_constants(gamma: torch.Tensor, beta: torch.Tensor, output_scale: float, name: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``(γ_int, β_int, shift)`` of :func:`core.integer.layer_norm` for an int8 output at ``output_scale``.

    ``y/s_out = z · γ·√n / (s_out · 2^z_bits) + β/s_out``: the shift is the largest that keeps every
    ``|γ_int| ≤ 2^15 − 1``; β is rounded at the same shift and must fit int32.
    """
    n = gamma.shape[0]
    real = gamma.to(torch.float64) * math.sqrt(n) / output_scale
    peak = float(real.abs().max())
    if not math.isfinite(peak) or not output_scale > 0:
        raise ValueError(f"{name}: LayerNorm weight or output scale is not finite")
    extra = math.floor(math.log2(NORM_GAMMA_MAX / peak)) if peak > 0 else 0
    shift = NORM_Z_BITS + extra
    if shift < 0:
        raise ValueError(f"{name}: LayerNorm weight too large for the output scale {output_scale!r}")
    gamma_int = torch.round(real * 2.0**extra).to(torch.int64)
    beta_int = torch.round(beta.to(torch.float64) / output_scale * 2.0**shift).to(torch.int64)
    if bool((beta_int.abs() > golden.ACC_MAX).any()):
        raise ValueError(f"{name}: LayerNorm bias does not fit int32 at shift {shift}")
    return gamma_int, beta_int, shift


def activation_table(function, input_scale: float, output_scale: float, zero_point: int = 0) -> torch.Tensor:
    """256-entry int8 table ``saturate(round_half_even(f(x · s_in) / s_out) + zero_point)`` for x = −128 … 127."""
    x = torch.arange(golden.INT8_MIN, golden.INT8_MAX + 1, dtype=torch.float64) * input_scale
    return saturate_int8(torch.round(function(x) / output_scale).to(torch.int64) + zero_point)


def gelu_minimum() -> float:
    """GELU's global minimum (≈ −0.16997, at x ≈ −0.7518), to 1e-12."""
    x = torch.linspace(-0.76, -0.74, 200_001, dtype=torch.float64)
    return float(gelu(x).min())


def gelu_grid(scale: float) -> tuple[float, int]:
    """The asymmetric int8 grid of a GELU output calibrated (symmetrically) at ``scale``: the same top,
    ``127 · scale``, and GELU's minimum at −128 instead of a bottom GELU never reaches. Returns
    ``(s, z)`` with ``g ≈ s · (q − z)``: ``s = (127·scale − min) / 255``, ``z = −128 − round(min / s)``.
    The FFN-out linear absorbs ``z`` into its bias, so the MACs see plain int8."""
    low = gelu_minimum()
    step = (golden.INT8_MAX * scale - low) / 255
    return step, golden.INT8_MIN - round(low / step)


def gelu(x: torch.Tensor) -> torch.Tensor:
    """The exact (erf) GELU of BERT."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


def exp_table(fraction_bits: int = EXP_FRACTION_BITS, out_bits: int = EXP_OUT_BITS) -> torch.Tensor:
    """``table[f] = round(2^(out_bits − f / 2^fraction_bits))`` (int64), the integer exponential's table."""
    f = torch.arange(2**fraction_bits, dtype=torch.float64)
    return torch.round(torch.exp2(out_bits - f / 2**fraction_bits)).to(torch.int64)


def exp_parameters(query_scale: float, key_scale: float, head_dim: int, fraction_bits: int = EXP_FRACTION_BITS) -> tuple[int, int]:
    """Multiplier and shift turning a score difference into the base-2 exponent with ``fraction_bits``
    fractional bits: ``s_q · s_k / √d · log2(e) · 2^F`` — the 1/√d scaling folded into one rescale."""
    return golden.quantize_multiplier(query_scale * key_scale / math.sqrt(head_dim) * math.log2(math.e) * 2**fraction_bits)


def _linear_constants(weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor, input_scale: float,
                      output_scale: float, prefix: str, input_zero_point: int = 0) -> dict[str, torch.Tensor]:
    """Bias, multiplier and shift of one linear; an input with a zero point ``z`` (real value
    ``s · (q − z)``) folds ``−z · Σ_k W_q[n, k]`` into the bias."""
    scales = f"(input scale {input_scale!r}, output scale {output_scale!r})"
    multiplier, shift = _named(prefix + "multiplier", lambda: requant_parameters(input_scale, weight_scale, output_scale), scales)
    bias_q = _named(prefix + "bias", lambda: quantize_bias(bias, input_scale, weight_scale), scales).to(torch.int64)
    bias_q = bias_q - input_zero_point * weight_q.to(torch.int64).sum(1)
    if bool((bias_q < golden.ACC_MIN).any() or (bias_q > golden.ACC_MAX).any()):
        raise ValueError(f"{prefix}bias: with the input zero point {input_zero_point} it does not fit int32")
    return {prefix + "bias": bias_q.to(torch.int32), prefix + "multiplier": multiplier.to(torch.int32), prefix + "shift": shift.to(torch.int32)}


def _named(name: str, make, context: str = ""):
    """``make()``, its ValueError prefixed with the name of what it was making."""
    try:
        return make()
    except ValueError as error:
        raise ValueError(f"{name}: {error}{' ' + context if context else ''}") from None


def build_integer_encoder(linears: dict[str, dict[str, torch.Tensor]], floats: EncoderFloats, scales: dict[str, float],
                          attention_pool: torch.Tensor | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Every integer the encoder runs on: ``(tensors, manifest section)`` for artifact format 2.

    ``linears``: per artifact module name, its ``weight_q`` (int8), ``weight_scale`` (float64) and ``bias``
    (float), as the artifact stores them. ``scales``: one float per :func:`edge_names` entry.
    ``attention_pool``: bool ``[P, k²]`` when attention-map pruning is on.
    """
    layers = len(floats.layers)
    missing = [e for e in edge_names(layers) if e not in scales]
    if missing:
        raise ValueError(f"calibrated scales missing for edges {missing[:5]}")
    for edge, value in scales.items():
        if not (isinstance(value, float) and math.isfinite(value) and value > 0):
            raise ValueError(f"scale of edge {edge} must be a positive finite float, got {value!r}")
    hidden = floats.word.shape[1]
    if hidden % floats.heads:
        raise ValueError(f"hidden size {hidden} is not a multiple of {floats.heads} heads")
    head_dim = hidden // floats.heads
    tensors: dict[str, torch.Tensor] = {}

    # embeddings: int8 rows, one multiplier per row into the common fine scale, LayerNorm
    tables = {name: quantize_rows(t) for name, t in (("word", floats.word), ("position", floats.position), ("token_type", floats.token_type))}
    # an all-zero row (e.g. [PAD]) has the placeholder scale 1: it must not set the common scale
    multipliers, _ = sum_multipliers([torch.where((q != 0).any(1), scale, torch.zeros_like(scale)) for q, scale in tables.values()])
    for (name, (q, _)), m in zip(tables.items(), multipliers):
        tensors[f"int.embeddings.{name}"] = q
        tensors[f"int.embeddings.{name}_multiplier"] = m.to(torch.int32)
    gamma, beta, embedding_shift = norm_constants(*floats.embedding_norm, scales["embeddings"], "embeddings LayerNorm")
    tensors["int.embeddings.norm.gamma"], tensors["int.embeddings.norm.beta"] = gamma.to(torch.int32), beta.to(torch.int32)

    layer_entries = []
    edge_scales = {e: scales[e] for e in edge_names(layers)}  # branch ends: their fine scales; GELU: its grid's
    zero_points = {}
    for i, layer in enumerate(floats.layers):
        p = f"int.layer.{i}."
        gelu_scale, gelu_zero = gelu_grid(scales[f"{i}.gelu"])
        edge_scales[f"{i}.gelu"], zero_points[f"{i}.gelu"] = gelu_scale, gelu_zero
        out_scales = dict(scales, **{f"{i}.gelu": gelu_scale})
        for role, (edge_in, edge_out) in linear_edges(i).items():
            if role in BRANCH_ENDS:  # wide output at the residual's fine scale
                out_scales[edge_out] = scales[residual_input_edge(i, role)] / 2**RESIDUAL_SHIFT
            module = layer.modules[role]
            if module not in linears:
                raise ValueError(f"layer {i} {role}: no int8 linear {module!r} in the artifact")
            lin = linears[module]
            tensors.update(_linear_constants(lin["weight_q"], lin["weight_scale"], lin["bias"], out_scales[edge_in], out_scales[edge_out],
                                             f"{p}{role}.", zero_points.get(edge_in, 0)))
        edge_scales.update({linear_edges(i)[role][1]: out_scales[linear_edges(i)[role][1]] for role in BRANCH_ENDS})
        exp_multiplier, exp_shift = _named(f"layer {i} exp_multiplier", lambda: exp_parameters(scales[f"{i}.query"], scales[f"{i}.key"], head_dim))
        context_multiplier, context_shift = _named(f"layer {i} context_multiplier", lambda: golden.quantize_multiplier(
            scales[f"{i}.value"] / PROB_ONE / scales[f"{i}.context"]))
        g1, b1, shift1 = norm_constants(*layer.attention_norm, scales[f"{i}.attention_norm"], f"layer {i} attention LayerNorm")
        g2, b2, shift2 = norm_constants(*layer.output_norm, scales[f"{i}.output_norm"], f"layer {i} output LayerNorm")
        tensors.update({p + "attention_norm.gamma": g1.to(torch.int32), p + "attention_norm.beta": b1.to(torch.int32),
                        p + "output_norm.gamma": g2.to(torch.int32), p + "output_norm.beta": b2.to(torch.int32),
                        p + "gelu_table": activation_table(gelu, scales[f"{i}.ffn_hidden"], gelu_scale, gelu_zero)})
        layer_entries.append({
            "modules": dict(layer.modules),
            "exp_multiplier": exp_multiplier, "exp_shift": exp_shift,
            "context_multiplier": context_multiplier, "context_shift": context_shift,
            "attention_norm_shift": shift1, "output_norm_shift": shift2,
        })

    # head: pooler (per-row int8) → tanh table → classifier (one weight scale) → int32 logits
    s_last = scales[layer_input_edge(layers)]
    pooler_q, pooler_scale = quantize_rows(floats.pooler[0])
    tensors["int.pooler.weight"] = pooler_q
    tensors.update(_linear_constants(pooler_q, pooler_scale, floats.pooler[1], s_last, scales["pooler"], "int.pooler."))
    tensors["int.pooler.tanh_table"] = activation_table(torch.tanh, scales["pooler"], TANH_SCALE)
    weight = floats.classifier[0].detach().to(torch.float64)
    classifier_scale = float(weight.abs().max()) / golden.WEIGHT_MAX or 1.0
    tensors["int.classifier.weight"] = torch.round(weight / classifier_scale).clamp(-golden.WEIGHT_MAX, golden.WEIGHT_MAX).to(torch.int8)
    tensors["int.classifier.bias"] = quantize_bias(floats.classifier[1], TANH_SCALE, torch.full((weight.shape[0],), classifier_scale))
    tensors["int.exp_table"] = exp_table().to(torch.int32)

    manifest = {
        "heads": floats.heads, "head_dim": head_dim, "hidden": hidden, "layers": layer_entries,
        "embedding_norm_shift": embedding_shift, "norm_z_bits": NORM_Z_BITS, "embedding_sum_bits": EMBEDDING_SUM_BITS,
        "residual_shift": RESIDUAL_SHIFT, "wide_bits": WIDE_BITS,
        "exp": {"fraction_bits": EXP_FRACTION_BITS, "out_bits": EXP_OUT_BITS}, "prob_one": PROB_ONE,
        "attention_pruning": attention_pool is not None,
        "logit_scale": TANH_SCALE * classifier_scale, "scales": edge_scales, "zero_points": zero_points,
    }
    return {name: t.contiguous() for name, t in tensors.items()}, manifest


# =========================================================================================== run


@dataclass
class LayerTrace:
    """Every boundary tensor of one encoder layer (int64 unless noted), for exact comparisons."""

    query: torch.Tensor  # int8 [B, L, H·d]
    key: torch.Tensor
    value: torch.Tensor
    scores: torch.Tensor  # int32 values [B, heads, L, L]
    pattern_ids: torch.Tensor | None  # [B, heads, ⌈L/k⌉, ⌈L/k⌉] when attention pruning is on
    probabilities: torch.Tensor  # [B, heads, L, L] in [0, 255]
    context: torch.Tensor  # int8 [B, L, H·d]
    attention_output: torch.Tensor  # 24-bit [B, L, H] at the residual's fine scale
    attention_norm: torch.Tensor  # int8 [B, L, H]
    ffn_hidden: torch.Tensor  # int8 [B, L, F] (before GELU)
    gelu: torch.Tensor  # int8 [B, L, F]
    ffn_output: torch.Tensor  # 24-bit [B, L, H] at the residual's fine scale
    output_norm: torch.Tensor  # int8 [B, L, H]


@dataclass
class EncoderOutput:
    logits: torch.Tensor  # int64 [B, C] (int32 values) at scale ``logit_scale``
    embeddings: torch.Tensor  # int8 [B, L, H]
    pooled: torch.Tensor  # int8 [B, H] (tanh output, scale 1/127)
    layers: list[LayerTrace] = field(default_factory=list)


def _tensor(tensors: dict, name: str, dtype: torch.dtype, shape: tuple | None = None, lo=None, hi=None) -> torch.Tensor:
    if name not in tensors:
        raise ValueError(f"integer encoder: tensor {name} is missing")
    t = tensors[name]
    if t.dtype != dtype or (shape is not None and tuple(t.shape) != tuple(shape)):
        raise ValueError(f"integer encoder: tensor {name} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
    return require_int(name, t, lo, hi)


class IntegerEncoder:
    """The integer golden model of a whole BERT-family classifier.

    Built from an artifact's tensors and its manifest's ``integer`` section (:meth:`from_tensors`), which
    it validates: a missing table, a wrong dtype or shape, an out-of-range constant is an error naming the
    tensor. :meth:`forward` runs a batch.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], spec: dict, weights: dict[str, torch.Tensor],
                 attention_pool: torch.Tensor | None):
        self.spec = spec
        self.t = tensors
        self.weights = weights
        self.attention_pool = attention_pool

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], spec: dict) -> "IntegerEncoder":
        """Validate and gather what :meth:`forward` reads: ``int.*`` tensors, ``linear.<module>.weight_q`` of
        every layer's six linears, and ``attention.pool`` when the spec says pruning is on."""
        try:
            hidden, heads = int(spec["hidden"]), int(spec["heads"])
            layers = spec["layers"]
            exp_bits = spec["exp"]["fraction_bits"]
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"integer encoder: manifest section is incomplete ({error!r})") from None
        t: dict[str, torch.Tensor] = {}
        u16, i32 = (0, 2**16 - 1), (golden.ACC_MIN, golden.ACC_MAX)
        for name in ("word", "position", "token_type"):
            table = _tensor(tensors, f"int.embeddings.{name}", torch.int8, lo=-golden.WEIGHT_MAX, hi=golden.WEIGHT_MAX)
            if table.dim() != 2 or table.shape[1] != hidden:
                raise ValueError(f"integer encoder: int.embeddings.{name} has shape {tuple(table.shape)}, expected [rows, {hidden}]")
            t[f"int.embeddings.{name}"] = table
            t[f"int.embeddings.{name}_multiplier"] = _tensor(tensors, f"int.embeddings.{name}_multiplier", torch.int32, (table.shape[0],), 0, 2**16)
        for norm in ["int.embeddings.norm"] + [f"int.layer.{i}.{n}" for i in range(len(layers)) for n in ("attention_norm", "output_norm")]:
            t[norm + ".gamma"] = _tensor(tensors, norm + ".gamma", torch.int32, (hidden,), -golden.MULTIPLIER_MAX, golden.MULTIPLIER_MAX)
            t[norm + ".beta"] = _tensor(tensors, norm + ".beta", torch.int32, (hidden,))
        weights = {}
        for i, entry in enumerate(layers):
            for role in LINEAR_ROLES:
                module = entry["modules"][role]
                w = _tensor(tensors, f"linear.{module}.weight_q", torch.int8, lo=-golden.WEIGHT_MAX, hi=golden.WEIGHT_MAX)
                weights[f"{i}.{role}"] = w
                p = f"int.layer.{i}.{role}."
                t[p + "bias"] = _tensor(tensors, p + "bias", torch.int32, (w.shape[0],))
                t[p + "multiplier"] = _tensor(tensors, p + "multiplier", torch.int32, (w.shape[0],), *u16)
                t[p + "shift"] = _tensor(tensors, p + "shift", torch.int32, (w.shape[0],), 0, golden.SHIFT_MAX)
            t[f"int.layer.{i}.gelu_table"] = _tensor(tensors, f"int.layer.{i}.gelu_table", torch.int8, (256,))
            for key in ("exp_multiplier", "context_multiplier"):
                if not (isinstance(entry.get(key), int) and 0 < entry[key] <= golden.MULTIPLIER_MAX):
                    raise ValueError(f"integer encoder: layer {i} {key} {entry.get(key)!r} is not a 16-bit multiplier")
            for key in ("exp_shift", "context_shift"):
                if not (isinstance(entry.get(key), int) and 0 <= entry[key] <= golden.SHIFT_MAX):
                    raise ValueError(f"integer encoder: layer {i} {key} {entry.get(key)!r} is outside 0…{golden.SHIFT_MAX}")
        weights["pooler"] = _tensor(tensors, "int.pooler.weight", torch.int8, (hidden, hidden), -golden.WEIGHT_MAX, golden.WEIGHT_MAX)
        t["int.pooler.bias"] = _tensor(tensors, "int.pooler.bias", torch.int32, (hidden,))
        t["int.pooler.multiplier"] = _tensor(tensors, "int.pooler.multiplier", torch.int32, (hidden,), *u16)
        t["int.pooler.shift"] = _tensor(tensors, "int.pooler.shift", torch.int32, (hidden,), 0, golden.SHIFT_MAX)
        t["int.pooler.tanh_table"] = _tensor(tensors, "int.pooler.tanh_table", torch.int8, (256,))
        weights["classifier"] = _tensor(tensors, "int.classifier.weight", torch.int8, None, -golden.WEIGHT_MAX, golden.WEIGHT_MAX)
        t["int.classifier.bias"] = _tensor(tensors, "int.classifier.bias", torch.int32, (weights["classifier"].shape[0],), *i32)
        t["int.exp_table"] = _tensor(tensors, "int.exp_table", torch.int32, (2**exp_bits,), 0, 2**31 - 1)
        pool = None
        if spec.get("attention_pruning"):
            if "attention.pool" not in tensors:
                raise ValueError("integer encoder: attention pruning is on but tensor attention.pool is missing")
            pool = tensors["attention.pool"]
        if hidden % heads:
            raise ValueError(f"integer encoder: hidden {hidden} is not a multiple of {heads} heads")
        for edge, zero in spec.get("zero_points", {}).items():
            if not (isinstance(zero, int) and golden.INT8_MIN <= zero <= golden.INT8_MAX):
                raise ValueError(f"integer encoder: zero point of edge {edge} is {zero!r}, not an int8")
        expected = {"residual_shift": RESIDUAL_SHIFT, "wide_bits": WIDE_BITS, "norm_z_bits": NORM_Z_BITS}
        for key, value in expected.items():
            if spec.get(key) != value:
                raise ValueError(f"integer encoder: {key} is {spec.get(key)!r}; this contract defines {value}")
        return cls(t, spec, weights, pool)

    # ------------------------------------------------------------------------------------------------

    def _linear(self, x: torch.Tensor, weight: torch.Tensor, prefix: str, out_bits: int = 8) -> torch.Tensor:
        t = self.t
        return golden.linear(x, weight, t[prefix + "bias"], t[prefix + "multiplier"], t[prefix + "shift"], out_bits)[1]

    def _norm(self, r: torch.Tensor, prefix: str, shift: int) -> torch.Tensor:
        return layer_norm(r, self.t[prefix + ".gamma"], self.t[prefix + ".beta"], shift, self.spec["norm_z_bits"])

    def embed(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        t = self.t
        length = input_ids.shape[1]
        for name, ids, rows in (("input_ids", input_ids, t["int.embeddings.word"].shape[0]),
                                ("token_type_ids", token_type_ids, t["int.embeddings.token_type"].shape[0])):
            require_int(name, ids, 0, rows - 1)
        if length > t["int.embeddings.position"].shape[0]:
            raise ValueError(f"input_ids has {length} tokens; the model has {t['int.embeddings.position'].shape[0]} positions")
        positions = torch.arange(length)
        r = scaled_sum([
            (t["int.embeddings.word"][input_ids], t["int.embeddings.word_multiplier"][input_ids][..., None]),
            (t["int.embeddings.position"][positions], t["int.embeddings.position_multiplier"][positions][:, None]),
            (t["int.embeddings.token_type"][token_type_ids], t["int.embeddings.token_type_multiplier"][token_type_ids][..., None]),
        ])
        return self._norm(r, "int.embeddings.norm", self.spec["embedding_norm_shift"])

    def layer(self, index: int, x: torch.Tensor, valid: torch.Tensor) -> LayerTrace:
        t, w, entry = self.t, self.weights, self.spec["layers"][index]
        p = f"int.layer.{index}."
        heads, batch, length = self.spec["heads"], x.shape[0], x.shape[1]
        q, k, v = (self._linear(x, w[f"{index}.{role}"], f"{p}{role}.") for role in ("query", "key", "value"))

        def split(y):  # [B, L, H·d] → [B, heads, L, d]
            return y.to(torch.int64).reshape(batch, length, heads, -1).transpose(1, 2)

        scores, probs, ids, context = attention(split(q), split(k), split(v), valid, entry["exp_multiplier"], entry["exp_shift"],
                                                t["int.exp_table"].to(torch.int64), entry["context_multiplier"],
                                                entry["context_shift"], self.attention_pool)
        context = context.transpose(1, 2).reshape(batch, length, -1)
        wide, shift = self.spec["wide_bits"], self.spec["residual_shift"]
        a = self._linear(context, w[f"{index}.attention_output"], p + "attention_output.", wide)
        x1 = self._norm(residual_add(a, x, shift), p + "attention_norm", entry["attention_norm_shift"])
        h = self._linear(x1, w[f"{index}.ffn_input"], p + "ffn_input.")
        g = table_lookup(h, t[p + "gelu_table"])
        f = self._linear(g, w[f"{index}.ffn_output"], p + "ffn_output.", wide)
        x2 = self._norm(residual_add(f, x1, shift), p + "output_norm", entry["output_norm_shift"])
        return LayerTrace(q, k, v, scores, ids, probs, context, a, x1, h, g, f, x2)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, trace: bool = False) -> EncoderOutput:
        """Run a batch ``[B, L]`` of token ids; ``attention_mask`` 1 = token, 0 = padding (default all
        tokens). With ``trace`` every layer's boundary tensors are returned too."""
        input_ids = require_int("input_ids", input_ids, 0)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {tuple(input_ids.shape)}")
        mask = torch.ones_like(input_ids) if attention_mask is None else require_int("attention_mask", attention_mask, 0, 1)
        types = torch.zeros_like(input_ids) if token_type_ids is None else require_int("token_type_ids", token_type_ids, 0)
        for name, other in (("attention_mask", mask), ("token_type_ids", types)):
            if other.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(other.shape)}, input_ids {tuple(input_ids.shape)}")
        valid = mask.bool()
        x = self.embed(input_ids, types)
        out = EncoderOutput(logits=torch.empty(0), embeddings=x, pooled=torch.empty(0))
        for i in range(len(self.spec["layers"])):
            layer = self.layer(i, x, valid)
            x = layer.output_norm
            if trace:
                out.layers.append(layer)
        pooled = table_lookup(self._linear(x[:, 0], self.weights["pooler"], "int.pooler."), self.t["int.pooler.tanh_table"])
        out.pooled = pooled
        out.logits = golden.linear_accumulate(pooled, self.weights["classifier"], self.t["int.classifier.bias"]).to(torch.int64)
        return out

    __call__ = forward
