"""Pattern pruning of attention maps (seed paper §3.4), as a Hugging Face attention implementation.

Per head, the score map ``S[Lq, Lk]`` is cut into ``k×k`` blocks and every block keeps the ``n`` positions
of one pattern of an attention pattern pool; the kept scores are softmax-normalised among themselves and
every other entry gets probability exactly zero, so that ``P·V`` becomes a pattern-sparse product in
hardware. The pool is fixed (built offline from calibration attention maps); the pattern of each block is
chosen per input, at run time.

Block selection rule (the contract of this module; positions row-major ``p = row·k + col`` as in
:mod:`core.pattern`):

1. Dense probabilities ``A = softmax(S)`` over the valid keys of each query row (keys the attention mask
   allows), computed without gradient. Invalid keys have ``A = 0``.
2. ``A`` is zero-padded at the bottom and the right to multiples of ``k``. Padded keys are invalid (never
   kept); padded query rows are dropped at the end.
3. Every block keeps the pool pattern with the largest kept probability mass ``Σ_{p ∈ pattern} A[p]``,
   computed in float64; ties go to the lower pattern id.
4. The kept set of a query row is the union of its kept positions over all key blocks, intersected with
   the valid keys. The pruned probabilities are the softmax of ``S`` restricted to the kept set: entries
   outside it are ``-inf`` and get probability exactly 0, and gradient flows through the kept scores only
   (the selection itself is not differentiated).
5. Empty rows: a query row whose kept set is empty (every chosen pattern skips it, or keeps only invalid
   keys) gets all-zero probabilities, hence a zero attention output (what an empty row produces in
   hardware), never NaN. Such rows are counted in the statistics.

Attention masks: registered under :data:`ATTENTION_IMPLEMENTATION` together with a mask function, because
transformers (5.x) hands a custom implementation without a registered mask function ``attention_mask=None``
even when the batch has padding. The registered mask function is ``sdpa_mask`` (its causal skip turned off,
as this implementation has no is_causal path), so a BERT forward passes either ``None`` (no padding) or a
boolean ``[B, 1, Lq, Lk]`` mask (True = attend). A 4-D mask given to the model directly reaches the
attention function unchanged, so additive float masks (eager convention: 0 = attend, the dtype's minimum or
``-inf`` = masked, other values are biases added to the scores) are handled too; any entry at or below half
the dtype's minimum counts as masked.

Typical use::

    maps = collect_attention_maps(model, calibration_batches, max_batches=8)
    pool = build_attention_pool(maps, AttentionPruningConfig())
    enable_attention_pruning(model, pool)
    ...  # train / evaluate; attention_pruning_stats(model) after a forward for the logs
    disable_attention_pruning(model)
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from core.pattern import PatternConfig, PatternPool, build_pool_from_energy, from_blocks, pad_to_blocks, to_blocks

ATTENTION_IMPLEMENTATION = "tessera_pattern"

# 4×4 blocks keeping 8 (50 % density, as for the weights) but a pool of 16 rather than 32: attention
# patterns are chosen at run time, so every block is scored against every pool pattern on the device, and
# a 4-bit pattern id halves that work and the id storage.
DEFAULT_ATTENTION_PATTERN = replace(PatternConfig(), pool_size=16)

# Names of the per-module state set by `enable_attention_pruning` (a non-persistent buffer keeps the pool
# on the module's device without entering the state dict).
_MASKS_BUFFER = "tessera_pattern_masks"
_CONFIG_ATTR = "tessera_attention_pruning"
_COUNTS_ATTR = "tessera_attention_counts"
_PREVIOUS_ATTR = "_tessera_previous_attn_implementation"

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids", "inputs_embeds")


@dataclass(frozen=True)
class AttentionPruningConfig:
    """Attention pattern pruning parameters.

    Parameters
    ----------
    pattern : PatternConfig
        Block size ``k``, kept positions per block ``n`` and pool size ``P`` of the attention pattern pool.
        Default 4×4 blocks, 8 kept, a pool of 16 (see :data:`DEFAULT_ATTENTION_PATTERN`).
    enabled : bool
        When False the registered implementation computes dense attention (the pool stays attached), which
        lets training switch pruning on and off without touching the model.
    """

    pattern: PatternConfig = DEFAULT_ATTENTION_PATTERN
    enabled: bool = True

    def to_dict(self) -> dict:
        p = self.pattern
        return {
            "pattern": {"block_size": p.block_size, "kept_per_block": p.kept_per_block, "pool_size": p.pool_size},
            "enabled": self.enabled,
        }

    @classmethod
    def from_dict(cls, data: Mapping) -> AttentionPruningConfig:
        return cls(pattern=PatternConfig(**data["pattern"]), enabled=bool(data.get("enabled", True)))


@dataclass(frozen=True)
class AttentionPruningStats:
    """Counts of one forward (or a sum of several).

    ``valid_entries`` counts the score entries the attention mask allows (padded query rows included, as a
    key-padding mask does not mark them); ``kept_entries`` those that keep a probability; ``empty_rows`` the
    query rows left with no kept key, out of ``rows``.
    """

    kept_entries: int
    valid_entries: int
    empty_rows: int
    rows: int

    @property
    def kept_fraction(self) -> float:
        return self.kept_entries / self.valid_entries if self.valid_entries else float("nan")

    def __add__(self, other: AttentionPruningStats) -> AttentionPruningStats:
        return AttentionPruningStats(
            self.kept_entries + other.kept_entries,
            self.valid_entries + other.valid_entries,
            self.empty_rows + other.empty_rows,
            self.rows + other.rows,
        )

    def to_dict(self) -> dict:
        return {
            "kept_entries": self.kept_entries,
            "valid_entries": self.valid_entries,
            "empty_rows": self.empty_rows,
            "rows": self.rows,
            "kept_fraction": self.kept_fraction,
        }


# ----------------------------------------------------------------------------------------------------------
# Blocks of batched maps
# ----------------------------------------------------------------------------------------------------------


def _block_size(masks: torch.Tensor) -> int:
    k = math.isqrt(masks.shape[-1])
    if masks.dim() != 2 or masks.dtype != torch.bool or k * k != masks.shape[-1]:
        raise ValueError(f"pattern masks must be bool [P, k²], got {masks.dtype} {tuple(masks.shape)}")
    return k


# ----------------------------------------------------------------------------------------------------------
# Selection and the pruned softmax
# ----------------------------------------------------------------------------------------------------------


def select_attention_patterns(probs: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Pattern id of every block: the pool pattern keeping the most probability mass (ties → lower id).

    Parameters
    ----------
    probs : torch.Tensor
        ``[..., Lq, Lk]`` dense probabilities, zero at invalid keys.
    masks : torch.Tensor
        ``[P, k²]`` bool pool patterns (``PatternPool.masks``).

    Returns
    -------
    torch.Tensor
        ``[..., ceil(Lq/k), ceil(Lk/k)]`` int64 pattern ids.
    """
    k = _block_size(masks)
    blocks = to_blocks(pad_to_blocks(probs.detach(), k), k).to(torch.float64)
    kept_mass = blocks @ masks.to(device=blocks.device, dtype=torch.float64).T
    return kept_mass.argmax(-1)  # argmax returns the first maximum: ties → lower id


def attention_keep_mask(probs: torch.Tensor, valid: torch.Tensor | None, masks: torch.Tensor) -> torch.Tensor:
    """Boolean ``[..., Lq, Lk]`` map of the kept entries: the chosen pattern of every block, valid keys only.

    Parameters
    ----------
    probs : torch.Tensor
        ``[..., Lq, Lk]`` dense probabilities, zero at invalid keys.
    valid : torch.Tensor or None
        Bool, broadcastable to ``probs`` (True = the mask allows the entry); None when all are valid.
    masks : torch.Tensor
        ``[P, k²]`` bool pool patterns.
    """
    k = _block_size(masks)
    ids = select_attention_patterns(probs, masks)
    keep = from_blocks(masks.to(ids.device)[ids], k)[..., : probs.shape[-2], : probs.shape[-1]]
    return keep & valid if valid is not None else keep


def _split_attention_mask(attention_mask: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(additive bias, valid bool)`` from any mask form transformers may pass (see the module docstring)."""
    if attention_mask is None:
        return None, None
    if not isinstance(attention_mask, torch.Tensor):
        kind = type(attention_mask).__name__
        raise TypeError(f"{ATTENTION_IMPLEMENTATION} takes a tensor attention mask, got {kind}")
    if attention_mask.dtype == torch.bool:
        return None, attention_mask
    if not attention_mask.is_floating_point():
        raise ValueError(f"4-D attention masks must be bool or additive float, got {attention_mask.dtype}")
    # eager_mask writes the dtype's minimum; half of it leaves room for biases added on top
    return attention_mask, attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _masked_softmax(scores: torch.Tensor, allowed: torch.Tensor | None) -> torch.Tensor:
    """Softmax over the allowed entries of each row; all-zero for a row with none (no NaN, no NaN gradient)."""
    if allowed is None:
        return nn.functional.softmax(scores, dim=-1)
    scores = scores.masked_fill(~allowed, float("-inf"))
    # An all -inf row would softmax to NaN; the final fill hides it, but NaN intermediates (and NaN in the
    # softmax backward) still trip anomaly detection and NaN checks, so such rows get finite scores.
    scores = scores.masked_fill(~allowed.any(-1, keepdim=True), 0.0)
    return nn.functional.softmax(scores, dim=-1).masked_fill(~allowed, 0.0)


def pattern_pruned_softmax(
    scores: torch.Tensor, attention_mask: torch.Tensor | None, masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pattern-pruned attention probabilities of ``scores[B, H, Lq, Lk]`` (already scaled).

    Parameters
    ----------
    scores : torch.Tensor
        ``[B, H, Lq, Lk]`` attention scores ``Q·Kᵀ·scaling``.
    attention_mask : torch.Tensor or None
        None, a bool mask (True = attend) or an additive float mask, broadcastable to ``scores``.
    masks : torch.Tensor
        ``[P, k²]`` bool pool patterns.

    Returns
    -------
    probs : torch.Tensor
        ``[B, H, Lq, Lk]``, zero outside the kept set, rows summing to 1 (or 0 for an empty row).
    keep : torch.Tensor
        ``[B, H, Lq, Lk]`` bool, the kept set.
    """
    bias, valid = _split_attention_mask(attention_mask)
    if bias is not None:
        scores = scores + bias
    with torch.no_grad():
        keep = attention_keep_mask(_masked_softmax(scores, valid), valid, masks)
    return _masked_softmax(scores, keep), keep


def _keep_counts(keep: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """``[kept, valid, empty rows, rows]`` as an int64 tensor (no host sync, so it can run every step)."""
    valid_entries = valid.expand_as(keep).sum() if valid is not None else keep.numel()
    counts = (keep.sum(), valid_entries, (~keep.any(-1)).sum(), keep.shape[:-1].numel())
    return torch.stack([torch.as_tensor(c, dtype=torch.int64, device=keep.device) for c in counts])


def keep_mask_stats(keep: torch.Tensor, attention_mask: torch.Tensor | None = None) -> AttentionPruningStats:
    """Statistics of one kept set (as returned by :func:`pattern_pruned_softmax`) and its attention mask."""
    _, valid = _split_attention_mask(attention_mask)
    return AttentionPruningStats(*(int(c) for c in _keep_counts(keep, valid).tolist()))


# ----------------------------------------------------------------------------------------------------------
# The attention implementation
# ----------------------------------------------------------------------------------------------------------


def pattern_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for ``eager_attention_forward`` that pattern-prunes the attention map.

    The pool and config come from ``module`` (set by :func:`enable_attention_pruning` or
    :func:`attach_attention_pool`); a module without them (e.g. a cross-attention) or with pruning disabled
    computes dense attention, which equals eager attention except that a row with no valid key is all-zero
    (eager spreads it uniformly).

    Parameters
    ----------
    module : nn.Module
        The calling attention module (its ``training`` flag drives dropout).
    query, key, value : torch.Tensor
        ``[B, H, Lq, D]``, ``[B, H, Lk, D]``, ``[B, H, Lk, D]``.
    attention_mask : torch.Tensor or None
        See the module docstring for the accepted forms.
    scaling : float, optional
        Score scale; ``D**-0.5`` when None.
    dropout : float
        Dropout probability on the attention probabilities (applied in training mode only, like eager).

    Returns
    -------
    attn_output : torch.Tensor
        ``[B, Lq, H, D]``.
    attn_weights : torch.Tensor
        ``[B, H, Lq, Lk]`` probabilities after dropout (what ``output_attentions`` reports).
    """
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling

    config = getattr(module, _CONFIG_ATTR, None)
    masks = getattr(module, _MASKS_BUFFER, None)
    if config is None or masks is None or not config.enabled:
        bias, valid = _split_attention_mask(attention_mask)
        attn_weights = _masked_softmax(scores + bias if bias is not None else scores, valid)
    else:
        attn_weights, keep = pattern_pruned_softmax(scores, attention_mask, masks)
        # Kept as a tensor (no host sync in the training step); read by `attention_pruning_stats`.
        setattr(module, _COUNTS_ATTR, _keep_counts(keep, _split_attention_mask(attention_mask)[1]))

    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


def _pattern_attention_mask(*args, **kwargs):
    """``sdpa_mask`` (bool, None without padding) that never skips a causal mask: we have no is_causal path."""
    kwargs["allow_is_causal_skip"] = False
    return sdpa_mask(*args, **kwargs)


AttentionInterface.register(ATTENTION_IMPLEMENTATION, pattern_attention_forward)
AttentionMaskInterface.register(ATTENTION_IMPLEMENTATION, _pattern_attention_mask)


# ----------------------------------------------------------------------------------------------------------
# Model-level switches and statistics
# ----------------------------------------------------------------------------------------------------------


def _attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose outputs transformers records as ``attentions`` (self-attention, e.g. BertSelfAttention)."""
    targets = getattr(model, "_can_record_outputs", None) or {}
    target = targets.get("attentions")
    if target is None:
        raise ValueError(f"{type(model).__name__} does not declare its attention modules (_can_record_outputs)")
    recorders = target if isinstance(target, (list, tuple)) else [target]
    classes = tuple(getattr(r, "target_class", r) for r in recorders)
    modules = [m for m in model.modules() if isinstance(m, classes)]
    if not modules:
        raise ValueError(f"no attention module of {classes} in {type(model).__name__}")
    return modules


def attach_attention_pool(module: nn.Module, pool: PatternPool, config: AttentionPruningConfig | None = None) -> None:
    """Give one attention module the pool and config :func:`pattern_attention_forward` reads from it.

    ``config`` defaults to ``AttentionPruningConfig(pattern=pool.config)``; its pattern must match the pool's.
    The pool masks become a non-persistent buffer on the module's device (absent from the state dict).
    """
    config = config if config is not None else AttentionPruningConfig(pattern=pool.config)
    if config.pattern != pool.config:
        raise ValueError(f"config pattern {config.pattern} does not match the pool's {pool.config}")
    device = next(module.parameters(), pool.masks).device
    module.register_buffer(_MASKS_BUFFER, pool.masks.to(device), persistent=False)
    setattr(module, _CONFIG_ATTR, config)


def detach_attention_pool(module: nn.Module) -> None:
    """Remove what :func:`attach_attention_pool` and the last forward left on ``module``."""
    for name in (_MASKS_BUFFER, _CONFIG_ATTR, _COUNTS_ATTR):
        if hasattr(module, name):
            delattr(module, name)


def enable_attention_pruning(model: nn.Module, pool: PatternPool, config: AttentionPruningConfig | None = None) -> None:
    """Attach ``pool`` to every self-attention module of a HF model and switch it to the pruned implementation.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        The model (e.g. ``BertForSequenceClassification``); its current attention implementation is
        remembered for :func:`disable_attention_pruning`. Enabling again only replaces the pool/config.
    pool : PatternPool
        The attention pattern pool (:func:`build_attention_pool`).
    config : AttentionPruningConfig, optional
        Defaults to ``AttentionPruningConfig(pattern=pool.config)``; its pattern must match the pool's.
    """
    modules = _attention_modules(model)
    for module in modules:
        attach_attention_pool(module, pool, config)
    if model.config._attn_implementation != ATTENTION_IMPLEMENTATION:
        setattr(model, _PREVIOUS_ATTR, model.config._attn_implementation)
        model.set_attn_implementation(ATTENTION_IMPLEMENTATION)


def disable_attention_pruning(model: nn.Module) -> None:
    """Detach the pool and restore the attention implementation the model had before; no-op when not enabled."""
    for module in model.modules():
        detach_attention_pool(module)
    previous = getattr(model, _PREVIOUS_ATTR, None)
    if previous is not None:
        model.set_attn_implementation(previous)
        delattr(model, _PREVIOUS_ATTR)


def attention_pruning_stats(model: nn.Module) -> AttentionPruningStats:
    """Statistics of the last forward, summed over all pruned attention modules (all layers and heads)."""
    counts = [getattr(m, _COUNTS_ATTR) for m in model.modules() if hasattr(m, _COUNTS_ATTR)]
    if not counts:
        return AttentionPruningStats(0, 0, 0, 0)
    total = torch.stack([c.cpu() for c in counts]).sum(0)
    return AttentionPruningStats(*(int(c) for c in total.tolist()))


# ----------------------------------------------------------------------------------------------------------
# Calibration: dense attention maps and the pool
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def collect_attention_maps(
    model: nn.Module, batches: Iterable[Mapping[str, torch.Tensor]], max_batches: int | None = None
) -> list[torch.Tensor]:
    """Dense attention probabilities of a HF model over calibration batches.

    The model runs in eval mode with eager attention (dense, even when pruning is enabled); its mode and
    attention implementation are restored afterwards.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A model that accepts ``output_attentions=True``.
    batches : iterable of mappings
        Tokenizer-style batches; only ``input_ids``, ``attention_mask``, ``token_type_ids``, ``position_ids``
        and ``inputs_embeds`` are passed to the model.
    max_batches : int, optional
        Stop after this many batches.

    Returns
    -------
    list of torch.Tensor
        One float32 CPU ``[B, H, L, L]`` map per (batch, layer), batch-major, with the rows and columns of
        padding tokens zeroed (so they add no mass to any block).
    """
    previous, was_training = model.config._attn_implementation, model.training
    device = next(model.parameters()).device
    model.set_attn_implementation("eager")
    model.eval()
    maps = []
    try:
        for batch in itertools.islice(batches, max_batches):
            inputs = {name: batch[name].to(device) for name in _MODEL_INPUTS if batch.get(name) is not None}
            attentions = model(**inputs, output_attentions=True).attentions
            padding = inputs.get("attention_mask")
            for layer_map in attentions:
                layer_map = layer_map.float()
                if padding is not None:
                    token = padding.to(torch.bool)
                    layer_map = layer_map * (token[:, None, :, None] & token[:, None, None, :])
                maps.append(layer_map.cpu())
    finally:
        model.set_attn_implementation(previous)
        model.train(was_training)
    return maps


def build_attention_pool(
    prob_maps: Iterable[torch.Tensor], config: AttentionPruningConfig | PatternConfig
) -> PatternPool:
    """Attention pattern pool from calibration probability maps.

    Every map ``[..., Lq, Lk]`` (padding rows/columns zero) is zero-padded to multiples of ``k`` and cut into
    blocks; the per-block probabilities are the energies of :func:`core.pattern.build_pool_from_energy`, so the
    pool maximises kept probability mass, the same objective as the run-time selection. Blocks with zero
    mass (all padding) are dropped: they carry no information but would vote for the lowest-index pattern.

    Memory: all blocks are held at once in float64 (8 bytes per map entry); bound it with ``max_batches``.
    """
    pattern = config.pattern if isinstance(config, AttentionPruningConfig) else config
    k = pattern.block_size
    energies = []
    for prob_map in prob_maps:
        blocks = to_blocks(pad_to_blocks(prob_map.detach().to("cpu", torch.float64), k), k).reshape(-1, k * k)
        energies.append(blocks[blocks.sum(-1) > 0])
    energy = torch.cat(energies) if energies else torch.zeros(0, k * k, dtype=torch.float64)
    if energy.shape[0] == 0:
        raise ValueError("no attention block with nonzero probability to build a pool from")
    return build_pool_from_energy(energy, pattern)
