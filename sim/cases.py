"""Random and extreme test cases for the engine: images built directly, covering the whole contract."""

from __future__ import annotations

import math

import torch

from firmware_gen.image import LinearImage
from core import golden
from core.pattern import PatternConfig, padded_shape


def random_pool_positions(config: PatternConfig, generator: torch.Generator) -> torch.Tensor:
    """``[P, n]`` ascending positions of P distinct random patterns."""
    seen, rows = set(), []
    while len(rows) < config.pool_size:
        pos = tuple(sorted(torch.randperm(config.positions, generator=generator)[: config.kept_per_block].tolist()))
        if pos not in seen:
            seen.add(pos)
            rows.append(pos)
    return torch.tensor(rows, dtype=torch.int64)


def random_pool_masks(config: PatternConfig, seed: int, count: int | None = None) -> torch.Tensor:
    """``[count, k²]`` bool masks of random patterns keeping ``kept_per_block`` (``count`` defaults to
    the pool size; patterns may repeat)."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(config.pool_size if count is None else count, config.positions, dtype=torch.bool)
    for mask in masks:
        mask[torch.randperm(config.positions, generator=g)[: config.kept_per_block]] = True
    return masks


def random_case(tokens: int, in_features: int, out_features: int, config: PatternConfig, seed: int,
                extremes: bool = False) -> tuple[LinearImage, torch.Tensor]:
    """A random image and int8 activations. ``extremes`` draws values from {-128/-127, 0, 127} only,
    zeroes some whole weight rows and activation rows, and uses the extreme requantization settings."""
    g = torch.Generator().manual_seed(seed)
    k, n, p = config.block_size, config.kept_per_block, config.pool_size
    n_pad, k_pad = padded_shape(out_features, in_features, k)
    nb, kb = n_pad // k, k_pad // k
    positions = random_pool_positions(config, g)
    ids = torch.randint(0, p, (nb, kb), generator=g)
    if extremes:
        values = torch.tensor([-golden.WEIGHT_MAX, 0, golden.WEIGHT_MAX])[torch.randint(0, 3, (nb, kb, n), generator=g)]
        x_q = torch.tensor([golden.INT8_MIN, 0, golden.INT8_MAX])[torch.randint(0, 3, (tokens, in_features), generator=g)]
        x_q[torch.randint(0, tokens, (max(1, tokens // 4),), generator=g)] = 0
    else:
        values = torch.randint(-golden.WEIGHT_MAX, golden.WEIGHT_MAX + 1, (nb, kb, n), generator=g)
        x_q = torch.randint(golden.INT8_MIN, golden.INT8_MAX + 1, (tokens, in_features), generator=g)
    image = LinearImage(config, out_features, in_features, 1.0, 1.0, positions, ids, values.to(torch.int8),
                        torch.zeros(n_pad, dtype=torch.int64), torch.zeros(n_pad, dtype=torch.int64),
                        torch.zeros(n_pad, dtype=torch.int64))
    # Values at padded positions must be zero (the image stores the padded grid): rebuild from the dense matrix.
    weight = image.weight_q()
    if extremes:
        weight[torch.randint(0, out_features, (max(1, out_features // 4),), generator=g)] = 0
    image.values = _repack(weight, image)
    # Bias and requantization: scale chosen so outputs span int8 with some saturation.
    peak = max(1, int(in_features * 64 * 100 / math.sqrt(max(1, in_features))))
    image.bias[:out_features] = torch.randint(-peak, peak + 1, (out_features,), generator=g)
    for c in range(out_features):
        if extremes and c % 3 == 0:
            image.multiplier[c], image.shift[c] = (golden.MULTIPLIER_MAX, 0) if c % 2 else (1, golden.SHIFT_MAX)
        else:
            image.multiplier[c], image.shift[c] = golden.quantize_multiplier(127 / (peak * (0.5 + torch.rand(1, generator=g).item())))
    return image, x_q.to(torch.int8)


def _repack(weight: torch.Tensor, image: LinearImage) -> torch.Tensor:
    from core.pattern import pack_pattern_blocks
    return pack_pattern_blocks(weight, image.pattern_ids, image.pool())
