"""Integer operators of the encoder beyond the linear layer: the arithmetic contract of attention,
residual adds, LayerNorm and the table activations.

Every function takes and returns integer tensors (int8 data, int64 arithmetic) and is exact: no value
is derived from floats at run time. The constants they take (multipliers, shifts, tables) are computed
once at export (:mod:`core.encoder`) and stored in the artifact. ``docs/arithmetic.md`` states the same
rules in prose, with the reason for each choice.

Rounding is named everywhere: :func:`rounding_shift` and :func:`div_round` round half up (toward +∞),
:func:`isqrt` and the integer exponential floor.
"""

from __future__ import annotations

import math

import torch

from core.golden import INT8_MAX, INT8_MIN, int_matmul, require_int
from core.pattern import from_blocks, pad_to_blocks, to_blocks

#: Probabilities are unsigned integers in [0, PROB_ONE]; PROB_ONE stands for 1.0 (scale 1/255).
PROB_ONE = 255
#: Fractional bits of the dense probabilities the attention pattern selection compares.
SELECTION_BITS = 16
#: Bits of the per-row reciprocal that normalizes a softmax row (:func:`row_reciprocal`): the reciprocal
#: lies in [2^16, 2^17], an 18-bit unsigned multiplier input, and is within 2^-16 of exact (relative).
RECIPROCAL_BITS = 17


def rounding_shift(x: torch.Tensor, shift) -> torch.Tensor:
    """``x / 2^shift`` rounded half up: ``(x + 2^(shift−1)) >> shift`` for ``shift > 0`` (arithmetic
    shift), ``x`` for ``shift = 0``. ``shift`` is an int or an int64 tensor broadcastable to ``x``."""
    shift = torch.as_tensor(shift, dtype=torch.int64)
    half = torch.where(shift > 0, torch.ones_like(shift) << (shift - 1).clamp(min=0), torch.zeros_like(shift))
    return (x + half) >> shift


def div_round(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` rounded half up, for ``den > 0``: ``floor((2·num + den) / (2·den))``; 0 where
    ``den = 0`` (the empty-row and constant-row rule of the callers)."""
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, torch.div(2 * num + safe, 2 * safe, rounding_mode="floor"), torch.zeros_like(num))


def isqrt(x: torch.Tensor) -> torch.Tensor:
    """``floor(√x)`` of every entry of an int64 tensor ``0 ≤ x < 2^62`` (``math.isqrt``, vectorized).

    A float64 square root is within one of the answer over this range; one correction step each way
    in exact int64 arithmetic makes it exact.
    """
    x = require_int("isqrt input", x, 0, 2**62 - 1)
    r = torch.sqrt(x.to(torch.float64)).floor().to(torch.int64)
    r = torch.where(r * r > x, r - 1, r)
    return torch.where((r + 1) * (r + 1) <= x, r + 1, r)


def saturate_int8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(INT8_MIN, INT8_MAX).to(torch.int8)


# --------------------------------------------------------------------------------------- sums


def scaled_sum(terms: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """``Σ xᵢ · mᵢ`` of int8 tensors ``xᵢ`` with integer multipliers ``mᵢ`` (each broadcastable to
    ``xᵢ``: one multiplier per embedding row): the embedding sum. The result is an int64 tensor at the
    common fine scale ``s_ref / 2^b`` of :func:`core.encoder.sum_multipliers`; it feeds LayerNorm
    directly, which is scale-invariant, so no rounding happens between the sum and the normalization."""
    total = None
    for i, (x, m) in enumerate(terms):
        term = require_int(f"sum term {i}", x, INT8_MIN, INT8_MAX) * require_int(f"sum multiplier {i}", m, 0, 2**16)
        total = term if total is None else total + term
    return total


def residual_add(wide: torch.Tensor, x: torch.Tensor, shift: int) -> torch.Tensor:
    """The residual add of an encoder layer: ``wide + x · 2^shift``.

    ``wide`` is the wide (24-bit) output of the linear layer that ends a branch, requantized straight to
    the residual's fine scale ``s_x / 2^shift``; ``x`` is the branch's int8 input at scale ``s_x``, which
    enters by a shift. The int64 sum feeds LayerNorm with no rounding in between.
    """
    wide = require_int("residual branch", wide, -(2**23), 2**23 - 1)
    return wide + (require_int("residual input", x, INT8_MIN, INT8_MAX) << shift)


# --------------------------------------------------------------------------------------- LayerNorm


def layer_norm(r: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, shift: int, z_bits: int) -> torch.Tensor:
    """Integer LayerNorm over the last dimension of ``r[..., n]`` (int64, |r| < 2^24) → int8.

    1. ``μ = div_round(Σ r, n)``; ``d = r − μ``.
    2. ``V = Σ d²`` (exact int64); ``σ = isqrt(V)``.
    3. ``z = div_round(d · 2^z_bits, σ)`` — the normalized value ``(r − μ)/√(n·var)`` with ``z_bits``
       fractional bits; ``z = 0`` on a constant row (``σ = 0``), which then outputs β alone.
    4. ``y = saturate_int8(rounding_shift(z · γ + β, shift))`` with per-channel integers ``γ``
       (the LayerNorm weight times √n, in output units · 2^(shift − z_bits)) and ``β`` (the bias in output
       units · 2^shift).
    """
    r = require_int("layer_norm input", r, -(2**24), 2**24)
    n = r.shape[-1]
    mean = div_round(r.sum(-1, keepdim=True), torch.tensor(n))
    d = r - mean
    sigma = isqrt((d * d).sum(-1, keepdim=True))
    z = div_round(d << z_bits, sigma.expand_as(d))
    return saturate_int8(rounding_shift(z * gamma + beta, shift))


# --------------------------------------------------------------------------------------- tables


def table_lookup(x: torch.Tensor, table: torch.Tensor, name: str = "table input") -> torch.Tensor:
    """``table[x + 128]`` for int8 ``x``: the GELU and tanh activations (256-entry int8 tables)."""
    x = require_int(name, x, INT8_MIN, INT8_MAX)
    return table[x + 128]


# --------------------------------------------------------------------------------------- softmax


def int_exp(delta: torch.Tensor, multiplier: int, shift: int, table: torch.Tensor) -> torch.Tensor:
    """Base-2 integer exponential ``≈ 2^out_bits · exp(−delta · c)`` of ``delta ≥ 0`` (int64).

    ``t = rounding_shift(delta · multiplier, shift)`` is the exponent ``delta · c · log2(e)`` in fixed
    point with ``F = log2(len(table))`` fractional bits; its integer part ``i`` becomes a right shift and
    its fraction ``f`` indexes ``table[f] = round(2^(out_bits − f/2^F))``: ``e = table[f] >> i``
    (floor). ``i`` beyond the table's width gives 0.
    """
    fraction_bits = int(table.shape[0]).bit_length() - 1
    t = rounding_shift(delta * multiplier, shift)
    whole = (t >> fraction_bits).clamp(max=62)
    return table[t & ((1 << fraction_bits) - 1)] >> whole


def select_patterns(weights: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Attention-map pattern of every k×k block of ``weights[..., Lq, Lk]`` (non-negative integers):
    the pool pattern with the largest kept sum, ties to the lower id (seed 000 §3.4). Returns int64
    ``[..., ceil(Lq/k), ceil(Lk/k)]``; the map is zero-padded at the bottom and right."""
    k = math.isqrt(masks.shape[-1])
    blocks = to_blocks(pad_to_blocks(weights, k), k)
    kept = int_matmul(blocks, masks.to(torch.int64).T)
    return kept.argmax(-1)  # the first maximum: ties → lower id


def attention_probabilities(scores: torch.Tensor, valid: torch.Tensor, exp_multiplier: int, exp_shift: int,
                            exp_table: torch.Tensor, pool_masks: torch.Tensor | None = None):
    """Integer softmax of ``scores[B, H, L, L]`` (int32 Q·Kᵀ) with pattern pruning of the map.

    ``valid[B, L]`` marks real tokens: an entry is valid when its query and its key are both real, so
    padding never reaches a real token and a sequence's result does not depend on how far it is padded.

    1. ``e = int_exp(max_row − S)`` over the valid entries of each row, 0 elsewhere.
    2. With ``pool_masks[P, k²]``: the dense probabilities ``scale_by_reciprocal(e, Σ_row e, 2^16)``
       choose every block's pattern (:func:`select_patterns`); the kept set is the chosen patterns ∩ valid.
    3. ``prob = scale_by_reciprocal(255 · e, Σ_kept e, 1, rounded)`` over the kept entries
       (``PROB_ONE = 255`` is 1.0), 0 elsewhere; a row with nothing kept is all zero.

    Both normalizations divide by the row's sum through one reciprocal per row, as the hardware does.

    Returns ``(probs int64 [B, H, L, L] in [0, 255], pattern_ids int64 [B, H, ⌈L/k⌉, ⌈L/k⌉] or None)``.
    """
    s = require_int("scores", scores, -(2**31), 2**31 - 1)
    length = s.shape[-1]
    entry = valid[:, None, :, None] & valid[:, None, None, :]
    row_max = s.masked_fill(~entry, torch.iinfo(torch.int64).min).amax(-1, keepdim=True)
    delta = torch.where(entry, row_max - s, torch.zeros_like(s))
    e = torch.where(entry, int_exp(delta, exp_multiplier, exp_shift, exp_table), torch.zeros_like(s))
    ids = None
    keep = entry
    if pool_masks is not None:
        dense = scale_by_reciprocal(e, e.sum(-1, keepdim=True), SELECTION_BITS)
        ids = select_patterns(dense, pool_masks)
        k = math.isqrt(pool_masks.shape[-1])
        keep = from_blocks(pool_masks[ids], k)[..., :length, :length] & entry
    kept = torch.where(keep, e, torch.zeros_like(e))
    return scale_by_reciprocal(PROB_ONE * kept, kept.sum(-1, keepdim=True), 0, rounded=True), ids


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, exp_multiplier: int, exp_shift: int,
              exp_table: torch.Tensor, context_multiplier: int, context_shift: int,
              pool_masks: torch.Tensor | None = None):
    """Self-attention of int8 heads ``q, k, v [B, H, L, d]``: ``S = q·kᵀ`` (int32), the probabilities of
    :func:`attention_probabilities`, and the context ``saturate_int8(rounding_shift(P·v · M, sh))``.

    Returns ``(scores, probs, pattern_ids or None, context int8 [B, H, L, d])``.
    """
    scores = int_matmul(q, k.transpose(-1, -2))
    probs, ids = attention_probabilities(scores, valid, exp_multiplier, exp_shift, exp_table, pool_masks)
    context = saturate_int8(rounding_shift(int_matmul(probs, v) * context_multiplier, context_shift))
    return scores, probs, ids, context


def bit_length(x: torch.Tensor) -> torch.Tensor:
    """``int.bit_length`` of every entry of an int64 tensor ``0 ≤ x < 2^53`` (exact through float64)."""
    return torch.frexp(x.to(torch.float64)).exponent.to(torch.int64)


def row_reciprocal(total: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(r, ℓ)``: ``ℓ = bit_length(total)`` and ``r = floor(2^(ℓ−1+RECIPROCAL_BITS) / total)``, so
    ``2^(RECIPROCAL_BITS−1) ≤ r ≤ 2^RECIPROCAL_BITS``; ``r = 0`` where ``total = 0``. ``0 ≤ total < 2^36``."""
    total = require_int("softmax row sum", total, 0, 2**36 - 1)
    ell = bit_length(total)
    numerator = torch.ones_like(total) << (ell - 1 + RECIPROCAL_BITS).clamp(min=0)
    return torch.where(total > 0, numerator // total.clamp(min=1), torch.zeros_like(total)), ell


def scale_by_reciprocal(x: torch.Tensor, total: torch.Tensor, fraction_bits: int, *, rounded: bool = False) -> torch.Tensor:
    """``x / total`` with ``fraction_bits`` fractional bits, through the row's reciprocal
    (:func:`row_reciprocal`): ``(x · r) >> (ℓ − 1 + RECIPROCAL_BITS − fraction_bits)``, floor or (with
    ``rounded``) half up. ``total`` broadcasts along rows; 0 where it is 0. For ``0 ≤ x ≤ total`` the
    result is at most ``2^fraction_bits``, and the floor is at most ``2^(fraction_bits+1−RECIPROCAL_BITS)``
    (one unit at 16 fractional bits) below the exact ``floor(x · 2^fraction_bits / total)``."""
    r, ell = row_reciprocal(total)
    shift = ell - 1 + RECIPROCAL_BITS - fraction_bits
    product = x * r
    return rounding_shift(product, shift) if rounded else product >> shift
