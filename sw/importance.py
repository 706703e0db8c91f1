"""Per-input-channel activation scales of linear layers, for the activation-aware pattern projection.

``input_rms(model, targets, batches, max_batches)`` runs the model on the first ``max_batches`` batches
(eval mode, no gradients) and returns, for every target ``nn.Linear``, the root mean square of each input
feature over the real tokens (padding, ``attention_mask`` 0, excluded), in float64. A pattern projection
with ``weighting: "activation"`` counts position (a, b) of the weight as ``s_b² · W[a, b]²``
(``sw.projections``), the squared output error per token that pruning the weight causes.

The batches must be the same on every process of a data-parallel run (the recipe passes its
``train_global`` loader, whose global batches every rank draws alike), so the scales, and with them the
projections, agree without communication.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


@torch.no_grad()
def input_rms(model: torch.nn.Module, targets: list[str], batches: Iterable[Mapping[str, torch.Tensor]],
              max_batches: int) -> dict[str, torch.Tensor]:
    """``{target: RMS of each input feature over the real tokens of the first max_batches batches}``."""
    if max_batches < 1:
        raise ValueError(f"input_rms needs at least one batch, got max_batches={max_batches}")
    sums: dict[str, torch.Tensor] = {}
    tokens = 0.0
    keep: torch.Tensor | None = None  # the real tokens of the batch being run

    def hook(name):
        def record(module, inputs):
            x = inputs[0].detach().to(torch.float64)
            x = x.reshape(-1, x.shape[-1])
            if x.shape[0] != keep.numel():
                raise ValueError(f"input_rms: the input of {name} has {x.shape[0]} rows, not one per token "
                                 f"({keep.numel()}); only token-wise linear layers can be weighed")
            x = x[keep]
            sums[name] = sums.get(name, 0) + x.pow(2).sum(0)
        return record

    handles = [model.get_submodule(t).register_forward_pre_hook(hook(t)) for t in targets]
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    seen = 0
    try:
        for batch in batches:
            if seen == max_batches:
                break
            mask = batch["attention_mask"].to(device)
            keep = mask.reshape(-1).bool()
            tokens += float(keep.sum())
            model(input_ids=batch["input_ids"].to(device), attention_mask=mask,
                  **{k: batch[k].to(device) for k in ("token_type_ids",) if k in batch})
            seen += 1
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    if seen == 0 or tokens == 0:
        raise ValueError("input_rms: the batches hold no real token")
    return {name: (total / tokens).sqrt() for name, total in sums.items()}
