"""Symmetric integer quantization rules and the compression of one linear layer.

Weights: per output channel, ``s_w[n] = max|W[n, :]| / 127`` and ``W_q = clamp(round_half_even(W / s_w),
-127, 127)``; an all-zero row gets ``s_w = 1`` (:func:`quantize_rows`, the one definition every side uses:
the ADMM projection, the fake-quantized retraining and the export). Activations: one calibrated scale per tensor,
``s = max|x| / 127``. Bias: int32 in units of ``s_x · s_w[n]``. Requantization parameters come from
:func:`core.golden.quantize_multiplier` applied to ``s_x · s_w[n] / s_y``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from core import golden
from core.pattern import PatternConfig, PatternPool, build_pattern_pool, pack_pattern_blocks, project_onto_pool


def level_max(bits: int) -> int:
    """Largest level ``q = 2^(bits−1) − 1`` of symmetric ``bits``-bit quantization (levels −q … q)."""
    if not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    return 2 ** (bits - 1) - 1


def row_scales(weight: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """Per-row (output channel) scale ``max|W[a]| / q``; 1 for an all-zero row. Rows are ``W[a]``
    flattened, so N-D weights ``[out, in, *kernel]`` work too. Same dtype as ``weight``, no gradient."""
    peak = weight.detach().reshape(weight.shape[0], -1).abs().amax(1)
    scale = peak / level_max(bits)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def quantize_rows(weight: torch.Tensor, bits: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """The rule for every quantized weight: ``weight[N, K]`` → ``(levels int8 [N, K], scale float64 [N])``
    with ``levels = clamp(round_half_even(W / scale), −q, q)`` and the scale of :func:`row_scales`
    (computed in float64)."""
    if bits > 8:
        raise ValueError(f"quantize_rows stores int8 levels; bits={bits} does not fit")
    w = weight.detach().to(torch.float64)
    scale = row_scales(w, bits)
    q = level_max(bits)
    return torch.round(w / scale[:, None]).clamp(-q, q).to(torch.int8), scale


def calibrate_scale(tensor: torch.Tensor, name: str = "tensor") -> float:
    """Per-tensor symmetric scale ``max|x| / 127``; refuses an all-zero or non-finite calibration tensor."""
    t = tensor.detach().to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values; cannot calibrate a scale")
    peak = float(t.abs().max()) if t.numel() else 0.0
    if peak == 0.0:
        raise ValueError(f"{name} is all zero; cannot calibrate a scale")
    return peak / golden.INT8_MAX


def quantize_bias(bias: torch.Tensor, input_scale: float, weight_scale: torch.Tensor) -> torch.Tensor:
    q = torch.round(bias.detach().to(torch.float64) / (input_scale * weight_scale))
    if bool((q < golden.ACC_MIN).any() or (q > golden.ACC_MAX).any()):
        raise ValueError("quantized bias does not fit int32 (bias too large for the input × weight scale)")
    return q.to(torch.int32)


@dataclass
class QuantizedPatternLinear:
    """A pattern-pruned, int8-quantized linear layer: everything the golden model and firmware need."""

    pool: PatternPool
    pattern_ids: torch.Tensor  # [N/k, K/k] int64
    weight_q: torch.Tensor  # [N, K] int8, zero outside the patterns
    weight_scale: torch.Tensor  # [N] float64
    bias_q: torch.Tensor  # [N] int32
    input_scale: float
    output_scale: float
    multiplier: torch.Tensor  # [N] int64
    shift: torch.Tensor  # [N] int64

    @property
    def config(self) -> PatternConfig:
        return self.pool.config

    @property
    def out_features(self) -> int:
        return self.weight_q.shape[0]

    @property
    def in_features(self) -> int:
        return self.weight_q.shape[1]

    def packed_values(self) -> torch.Tensor:
        """Kept int8 values per block in pattern order, ``[N/k, K/k, n]``."""
        return pack_pattern_blocks(self.weight_q, self.pattern_ids, self.pool)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        return golden.quantize_activations(x, self.input_scale)

    def forward_int(self, x_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Golden model of this layer: ``(int32 accumulators, int8 outputs)``."""
        return golden.linear(x_q, self.weight_q, self.bias_q, self.multiplier, self.shift)

    def dequantize_output(self, y_q: torch.Tensor) -> torch.Tensor:
        return y_q.to(torch.float64) * self.output_scale


def requant_parameters(input_scale: float, weight_scale: torch.Tensor, output_scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = [golden.quantize_multiplier(input_scale * float(s) / output_scale) for s in weight_scale]
    return torch.tensor([m for m, _ in pairs], dtype=torch.int64), torch.tensor([s for _, s in pairs], dtype=torch.int64)


def compress_linear(layer: torch.nn.Linear, calibration_inputs: torch.Tensor, config: PatternConfig = PatternConfig(),
                    pool: PatternPool | None = None) -> QuantizedPatternLinear:
    """Pattern-prune (one-shot projection onto a pool built from the layer) and int8-quantize ``layer``.

    ``calibration_inputs[..., K]`` sets the input scale and, through the pruned float layer, the output
    scale. Pass ``pool`` to reuse a pool instead of building one.
    """
    weight = layer.weight.detach()
    if not isinstance(calibration_inputs, torch.Tensor) or calibration_inputs.dim() < 1 or calibration_inputs.shape[-1] != weight.shape[1]:
        shape = tuple(calibration_inputs.shape) if isinstance(calibration_inputs, torch.Tensor) else type(calibration_inputs).__name__
        raise ValueError(f"calibration_inputs must be [..., {weight.shape[1]}] (the layer's in_features), got {shape}")
    pool = pool or build_pattern_pool(weight, config)
    projection = project_onto_pool(weight, pool)
    weight_q, weight_scale = quantize_rows(projection.weight)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros(weight.shape[0])
    input_scale = calibrate_scale(calibration_inputs, "calibration_inputs")
    pruned_out = torch.nn.functional.linear(calibration_inputs.to(torch.float64), projection.weight.to(torch.float64), bias.to(torch.float64))
    output_scale = calibrate_scale(pruned_out, "calibration output")
    multiplier, shift = requant_parameters(input_scale, weight_scale, output_scale)
    return QuantizedPatternLinear(
        pool=pool,
        pattern_ids=projection.pattern_ids,
        weight_q=weight_q,
        weight_scale=weight_scale,
        bias_q=quantize_bias(bias, input_scale, weight_scale),
        input_scale=input_scale,
        output_scale=output_scale,
        multiplier=multiplier,
        shift=shift,
    )
