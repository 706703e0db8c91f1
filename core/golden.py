"""The integer golden model: Tessera's arithmetic contract.

Every operator the accelerator implements is defined here, in exact integer arithmetic on
``torch.int64`` tensors; the RTL and the firmware are checked against these functions bit for bit.
``docs/arithmetic.md`` states the same contract in prose.

Linear layer (``y = requantize(x_q · W_qᵀ + b_q)``):

* ``x_q`` int8 activations (per-tensor scale ``s_x``), ``W_q`` int8 weights in [-127, 127]
  (per-output-channel scale ``s_w[n]``), ``b_q`` int32 bias in units of ``s_x · s_w[n]``.
* The accumulator is 32-bit two's complement. The golden model sums exactly in int64 and refuses
  (``AccumulatorOverflowError``) any result outside int32, so a result it returns is always the exact
  sum; since wrap-around addition is associative, the hardware's partial-sum order does not matter.
* Requantization per output channel: ``t = acc · multiplier`` (exact), then
  ``t = (t + 2**(shift-1)) >> shift`` for ``shift > 0`` (arithmetic shift: rounds half up, i.e. toward
  +inf), then saturation to [-128, 127]. ``multiplier`` is unsigned 16-bit, ``shift`` in [0, 47].
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch

ACC_BITS = 32
ACC_MIN, ACC_MAX = -(2 ** (ACC_BITS - 1)), 2 ** (ACC_BITS - 1) - 1
INT8_MIN, INT8_MAX = -128, 127
WEIGHT_MAX = 127  # symmetric weights: -128 is never produced by quantization
MULTIPLIER_BITS = 16
MULTIPLIER_MAX = 2**MULTIPLIER_BITS - 1
SHIFT_MAX = 47


class AccumulatorOverflowError(OverflowError):
    """An exact accumulator value does not fit the 32-bit hardware accumulator."""


#: Sums of integer products below this bound are exact in float64 (every partial sum is an integer of
#: magnitude < 2^53), whatever the order of summation.
FLOAT64_EXACT = 2**53


def require_int(name: str, tensor: torch.Tensor, lo: int | None = None, hi: int | None = None) -> torch.Tensor:
    """``tensor`` as int64 after checking it is an integer tensor within ``[lo, hi]``; the error names it."""
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dtype.is_floating_point or tensor.dtype.is_complex or tensor.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor, got dtype {tensor.dtype}")
    t = tensor.to(torch.int64)
    if t.numel() and ((lo is not None and int(t.min()) < lo) or (hi is not None and int(t.max()) > hi)):
        raise ValueError(f"{name} has values in [{int(t.min())}, {int(t.max())}], outside [{lo}, {hi}]")
    return t


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact ``a @ b`` of integer tensors as int64 (batched like ``torch.matmul``).

    When ``K · max|a| · max|b| < 2^53`` every partial sum is an integer that float64 holds exactly, so
    the product runs on the BLAS path and converts back without loss; otherwise it runs in int64.
    """
    peak_a = int(a.abs().max()) if a.numel() else 0
    peak_b = int(b.abs().max()) if b.numel() else 0
    if a.shape[-1] * peak_a * peak_b < FLOAT64_EXACT:
        return torch.matmul(a.to(torch.float64), b.to(torch.float64)).to(torch.int64)
    return torch.matmul(a.to(torch.int64), b.to(torch.int64))


def linear_accumulate(x_q: torch.Tensor, w_q: torch.Tensor, bias_q: torch.Tensor | None = None) -> torch.Tensor:
    """Exact ``x_q · w_qᵀ + bias_q`` as int32 (shape ``[..., N]``).

    ``x_q``: int8 ``[..., K]``; ``w_q``: int8 ``[N, K]``; ``bias_q``: int32 ``[N]`` or None.
    Raises :class:`AccumulatorOverflowError` when any exact result leaves int32.
    """
    x = require_int("x_q", x_q, INT8_MIN, INT8_MAX)
    w = require_int("w_q", w_q, INT8_MIN, INT8_MAX)
    if w.dim() != 2 or x.shape[-1] != w.shape[1]:
        raise ValueError(f"x_q {tuple(x.shape)} and w_q {tuple(w.shape)} do not multiply (need x[..., K], w[N, K])")
    acc = int_matmul(x, w.T)
    if bias_q is not None:
        b = require_int("bias_q", bias_q, ACC_MIN, ACC_MAX)
        if b.shape != (w.shape[0],):
            raise ValueError(f"bias_q has shape {tuple(b.shape)}, expected ({w.shape[0]},)")
        acc = acc + b
    if acc.numel() and (int(acc.min()) < ACC_MIN or int(acc.max()) > ACC_MAX):
        raise AccumulatorOverflowError(
            f"accumulator range [{int(acc.min())}, {int(acc.max())}] exceeds int32; the hardware would wrap"
        )
    return acc.to(torch.int32)


def requantize(acc: torch.Tensor, multiplier: torch.Tensor, shift: torch.Tensor, out_bits: int = 8) -> torch.Tensor:
    """int32 accumulators ``[..., N]`` → int8 with per-channel ``multiplier[N]`` and ``shift[N]``.

    ``round_half_up(acc · multiplier / 2**shift)``, saturated to [-128, 127]. With ``out_bits`` > 8 the
    result saturates to that signed width instead and is int32 (the wide outputs that feed a residual
    add, see ``core.encoder``).
    """
    a = require_int("acc", acc, ACC_MIN, ACC_MAX)
    mult = require_int("multiplier", multiplier, 0, MULTIPLIER_MAX)
    sh = require_int("shift", shift, 0, SHIFT_MAX)
    if mult.shape != sh.shape or mult.shape[-1:] != a.shape[-1:]:
        raise ValueError(
            f"multiplier {tuple(mult.shape)} and shift {tuple(sh.shape)} must both be [N] with N = acc.shape[-1] = {a.shape[-1]}"
        )
    prod = a * mult  # |prod| < 2**47: exact in int64
    rounding = torch.where(sh > 0, torch.ones_like(sh) << (sh - 1).clamp(min=0), torch.zeros_like(sh))
    out = (prod + rounding) >> sh  # >> on int64 is an arithmetic shift (floor)
    if out_bits == 8:
        return out.clamp(INT8_MIN, INT8_MAX).to(torch.int8)
    if not 8 < out_bits <= 32:
        raise ValueError(f"out_bits must be in 8..32, got {out_bits}")
    return out.clamp(-(2 ** (out_bits - 1)), 2 ** (out_bits - 1) - 1).to(torch.int32)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """Represent a positive real scale ratio as ``multiplier · 2**-shift`` (round half to even).

    The multiplier is normalized into [2**15, 2**16) for the most precision; ratios too small for
    ``SHIFT_MAX`` lose precision (and are refused when nothing is left), ratios ≥ 2**16 are refused.
    """
    if not math.isfinite(real) or real <= 0:
        raise ValueError(f"requantization scale ratio must be a positive finite number, got {real!r}")
    exact = Fraction(real)
    shift = MULTIPLIER_BITS - 1 - math.floor(math.log2(real))
    shift = min(shift, SHIFT_MAX)
    if shift < 0:
        raise ValueError(f"requantization scale ratio {real!r} is too large (must be < 2**{MULTIPLIER_BITS})")
    mult = round(exact * 2**shift)  # Fraction rounds half to even
    if mult > MULTIPLIER_MAX:  # rounding carried into bit 16
        mult, shift = round(exact * 2 ** (shift - 1)), shift - 1
    if mult == 0:
        raise ValueError(f"requantization scale ratio {real!r} is too small to represent with shift ≤ {SHIFT_MAX}")
    return int(mult), int(shift)


def quantize_activations(x: torch.Tensor, scale: float) -> torch.Tensor:
    """float → int8: ``clamp(round_half_even(x / scale), -128, 127)``."""
    if not scale > 0:
        raise ValueError(f"activation scale must be positive, got {scale!r}")
    return torch.round(x.to(torch.float64) / scale).clamp(INT8_MIN, INT8_MAX).to(torch.int8)


def linear(x_q, w_q, bias_q, multiplier, shift, out_bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The whole quantized linear layer: returns ``(acc int32, y int8)`` (``y`` of ``out_bits``, see
    :func:`requantize`)."""
    acc = linear_accumulate(x_q, w_q, bias_q)
    return acc, requantize(acc, multiplier, shift, out_bits)
