"""Masked retraining after hard pruning: SR-STE with fixed masks, optional int-b fake quantization.

The effective weight of a masked layer is ``W̃ = M ⊙ W`` (then, with ``bits``, rounded to the per-row
grid ``s_a · {−q…q}``, ``s_a = max|W̃[a]| / q``). Gradients follow SR-STE (sparse-refined straight-through
estimator, the formulation of the N:M-sparsity reference implementation)::

    ∂L/∂W = ∂L/∂W̃ + λ · (1 − M) ⊙ W

i.e. the gradient of the masked weight passes straight through to the dense weight, and pruned weights
additionally decay towards zero with rate ``λ`` (``decay``). Rounding is straight-through as well.

Masks live in ``torch.nn.utils.parametrize`` parametrizations, as buffers: they are part of the
module's ``state_dict`` and of the exported artifact, so save → load → continue training keeps them.
"""

from __future__ import annotations

import torch
from torch.nn.utils import parametrize

from core.quantize import level_max, row_scales


class _SRSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, mask, decay):
        ctx.save_for_backward(weight, mask)
        ctx.decay = decay
        return weight * mask

    @staticmethod
    def backward(ctx, grad_output):
        weight, mask = ctx.saved_tensors
        return grad_output + ctx.decay * (~mask) * weight, None, None


def sr_ste(weight: torch.Tensor, mask: torch.Tensor, decay: float) -> torch.Tensor:
    """``mask ⊙ weight`` in the forward pass; SR-STE gradient (see module docstring) in the backward."""
    return _SRSTE.apply(weight, mask, decay)


class _RoundSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad_output):
        return grad_output


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """``round(x)`` forward, identity gradient (straight-through)."""
    return _RoundSTE.apply(x)


def fake_quantize_rows(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-row symmetric ``bits``-bit rounding (the rule of ``core.quantize.row_scales``), straight-through."""
    q = level_max(bits)
    scale = row_scales(weight, bits)[:, None]
    return round_ste(weight / scale).clamp(-q, q) * scale


class MaskedWeight(torch.nn.Module):
    """Parametrization ``W ↦ W̃`` of a masked, optionally fake-quantized weight.

    Parameters
    ----------
    mask : bool tensor of the weight's shape (True = kept), stored as a buffer.
    decay : SR-STE decay λ of the pruned weights.
    bits : fake-quantize the masked weight to ``bits``-bit per-row levels; ``None`` for float.
    """

    def __init__(self, mask: torch.Tensor, decay: float = 2e-4, bits: int | None = None):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.decay = decay
        self.bits = bits

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        w = sr_ste(weight, self.mask, self.decay)
        return fake_quantize_rows(w, self.bits) if self.bits else w


def apply_masks(model: torch.nn.Module, masks: dict[str, torch.Tensor], decay: float = 2e-4, bits: int | None = None) -> None:
    """Put :class:`MaskedWeight` on ``<module>.weight`` for every ``"<module>.weight": mask`` entry."""
    for name, mask in masks.items():
        module_name, _, attr = name.rpartition(".")
        module = model.get_submodule(module_name)
        weight = getattr(module, attr)
        if mask.shape != weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, the weight is {tuple(weight.shape)}")
        if parametrize.is_parametrized(module, attr):
            parametrize.remove_parametrizations(module, attr, leave_parametrized=False)
        parametrize.register_parametrization(module, attr, MaskedWeight(mask.to(weight.device), decay, bits))


def masked_weights(model: torch.nn.Module) -> dict[str, MaskedWeight]:
    """``{"<module>.weight": MaskedWeight}`` of every masked weight in ``model``."""
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for attr, plist in module.parametrizations.items():
                for p in plist:
                    if isinstance(p, MaskedWeight):
                        found[f"{module_name}.{attr}"] = p
    return found


def bake_masks(model: torch.nn.Module) -> None:
    """Replace every masked parametrization by its effective weight (a plain parameter again)."""
    for name in masked_weights(model):
        module_name, _, attr = name.rpartition(".")
        parametrize.remove_parametrizations(model.get_submodule(module_name), attr, leave_parametrized=True)
