import itertools

import pytest
import torch

from core.pattern import (POOL_METHODS, PatternConfig, PatternPool, build_pattern_pool, from_blocks, pack_pattern_blocks, pad_to_blocks,
                        _greedy_seed, _mask_codes, build_pool_from_energy, project_onto_pool, to_blocks, top_n_masks,
                        unpack_pattern_blocks)
from core.quantize import quantize_rows


@pytest.mark.parametrize("kwargs, message", [
    (dict(kept_per_block=17), "exceeds the 16 positions"),
    (dict(block_size=2, kept_per_block=2, pool_size=7), "exceeds the 6 distinct patterns"),
    (dict(pool_size=0), "pool_size must be a positive integer"),
    (dict(block_size=0), "block_size must be a positive integer"),
])
def test_config_rejects_invalid(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PatternConfig(**kwargs)


def test_top_n_breaks_ties_towards_lower_position():
    energy = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]])
    assert top_n_masks(energy, 2).tolist() == [[False, True, True, False, False]]


def test_blocks_are_row_major_and_invert():
    w = torch.arange(8 * 12).reshape(8, 12)
    blocks = to_blocks(w, 4)
    assert blocks[0, 1].tolist() == [4, 5, 6, 7, 16, 17, 18, 19, 28, 29, 30, 31, 40, 41, 42, 43]
    assert torch.equal(from_blocks(blocks, 4), w)


def test_projection_is_the_euclidean_projection_by_brute_force():
    # Integer-valued weights make every squared distance exact, so the comparison is exact.
    g = torch.Generator().manual_seed(3)
    config = PatternConfig(block_size=2, kept_per_block=2, pool_size=4)
    w = torch.randint(-9, 10, (6, 7), generator=g).to(torch.float64)
    pool = build_pattern_pool(w, config)
    projection = project_onto_pool(w, pool)
    padded = to_blocks(pad_to_blocks(w, 2), 2)
    for bn, bk in itertools.product(range(padded.shape[0]), range(padded.shape[1])):
        block = padded[bn, bk]
        distances = [float(((block - block * mask) ** 2).sum()) for mask in pool.masks.to(torch.float64)]
        chosen = int(projection.pattern_ids[bn, bk])
        assert distances[chosen] == min(distances)
        assert chosen == distances.index(min(distances))  # ties → lowest id
    # The pruned matrix is the chosen pattern applied to every block, nothing else.
    expected = from_blocks(padded * pool.masks[projection.pattern_ids].to(torch.float64), 2)[:6, :7]
    assert torch.equal(projection.weight, expected)


def test_exhaustive_pool_projection_equals_unstructured_top_n():
    # With every possible pattern in the pool the nearest point is each block's own top-n.
    config = PatternConfig(block_size=2, kept_per_block=2, pool_size=6)
    masks = torch.tensor([[i in c for i in range(4)] for c in itertools.combinations(range(4), 2)])
    pool = PatternPool(config, masks)
    w = torch.randint(-50, 50, (8, 8), generator=torch.Generator().manual_seed(0)).to(torch.float64)
    blocks = to_blocks(w, 2)
    expected = from_blocks(blocks * top_n_masks(blocks.abs(), 2), 2)
    assert torch.equal(project_onto_pool(w, pool).weight, expected)


def test_padding_rule_for_shapes_not_divisible_by_k():
    w = torch.randn(10, 13, generator=torch.Generator().manual_seed(1))
    config = PatternConfig()
    pool = build_pattern_pool(w, config)
    projection = project_onto_pool(w, pool)
    assert projection.weight.shape == (10, 13)
    assert projection.pattern_ids.shape == (3, 4)  # ceil(10/4) × ceil(13/4)
    padded = pad_to_blocks(w, 4)
    assert padded.shape == (12, 16)
    assert torch.equal(padded[10:], torch.zeros(2, 16)) and torch.equal(padded[:, 13:], torch.zeros(12, 3))
    values = pack_pattern_blocks(projection.weight, projection.pattern_ids, pool)
    assert values.shape == (3, 4, 8)
    assert torch.equal(unpack_pattern_blocks(values, projection.pattern_ids, pool, (10, 13)), projection.weight)


def test_pack_refuses_weights_outside_their_pattern():
    config = PatternConfig(block_size=2, kept_per_block=1, pool_size=2)
    pool = PatternPool(config, torch.tensor([[True, False, False, False], [False, True, False, False]]))
    w = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    with pytest.raises(ValueError, match="outside its pattern"):
        pack_pattern_blocks(w, torch.zeros(1, 1, dtype=torch.int64), pool)


def test_pool_is_deterministic_distinct_and_filled():
    w = torch.randn(64, 64, generator=torch.Generator().manual_seed(5))
    a, b = build_pattern_pool(w, PatternConfig()), build_pattern_pool(w.clone(), PatternConfig())
    assert torch.equal(a.masks, b.masks)
    # A matrix with a single block has one distinct mask: the rest of the pool is filled deterministically.
    for method in POOL_METHODS:
        tiny = build_pattern_pool(torch.randn(4, 4), PatternConfig(), method=method)
        assert tiny.masks.shape == (32, 16) and bool((tiny.masks.sum(1) == 8).all())


def test_refinement_never_loses_kept_energy():
    w = torch.randn(128, 128, generator=torch.Generator().manual_seed(7))
    kept = {}
    for iterations in (0, 10):
        projection = project_onto_pool(w, build_pattern_pool(w, PatternConfig(), refine_iterations=iterations))
        kept[iterations] = float((projection.weight ** 2).sum())
    assert kept[10] >= kept[0]


def _kept_energy(w, pool):
    return float((project_onto_pool(w, pool).weight.to(torch.float64) ** 2).sum())


def test_lazy_greedy_seed_is_plain_greedy():
    # Plain greedy over the facility-location objective, written out: at every step the candidate adding
    # the most kept energy (ties -> lower index). Integer energies keep every sum exact.
    g = torch.Generator().manual_seed(11)
    energy = torch.randint(0, 50, (300, 16), generator=g).to(torch.float64)
    masks = torch.stack([torch.randperm(16, generator=g)[:8] for _ in range(60)])
    masks = torch.zeros(60, 16, dtype=torch.bool).scatter_(1, masks, True)
    kept = energy @ masks.to(torch.float64).T
    best, expected = torch.zeros(300, dtype=torch.float64), []
    for _ in range(12):
        gains = [float((kept[:, c] - best).clamp_min(0).sum()) if c not in expected else -1.0 for c in range(60)]
        pick = max(range(60), key=lambda c: (gains[c], -c))
        expected.append(pick)
        best = torch.maximum(best, kept[:, pick])
    assert _greedy_seed(energy, masks, 12) == expected


def test_greedy_pool_recovers_planted_patterns():
    # Every block follows one of 32 planted patterns exactly: the greedy pool must keep all the energy.
    g = torch.Generator().manual_seed(12)
    config = PatternConfig()
    planted = build_pool_from_energy(torch.rand(4096, 16, generator=g, dtype=torch.float64), config).masks
    which = torch.randint(0, 32, (32, 32), generator=g)
    blocks = torch.randn(32, 32, 16, generator=g, dtype=torch.float64) * planted[which]
    w = from_blocks(blocks, 4)
    pool = build_pattern_pool(w, config, method="greedy", refine_iterations=0)
    assert sorted(_mask_codes(pool.masks).tolist()) == sorted(_mask_codes(planted).tolist())
    assert _kept_energy(w, pool) == float((w ** 2).sum())


def test_greedy_pool_keeps_more_than_the_frequent_seed():
    # Gaussian weights have no dominant masks, so seeding by frequency is close to arbitrary; the greedy
    # seed chooses for the projection objective itself (measured on all-MiniLM-L6-v2: 81.5 % -> 82.8 %).
    w = torch.randn(256, 256, generator=torch.Generator().manual_seed(13))
    kept = {m: _kept_energy(w, build_pattern_pool(w, PatternConfig(), method=m)) for m in POOL_METHODS}
    assert kept["greedy"] > kept["frequent"]
    again = build_pattern_pool(w.clone(), PatternConfig(), method="greedy")
    assert torch.equal(again.masks, build_pattern_pool(w, PatternConfig(), method="greedy").masks)


def test_pool_builder_refuses_bad_arguments():
    with pytest.raises(ValueError, match="pool method must be one of frequent, greedy, got 'best'"):
        build_pattern_pool(torch.randn(8, 8), PatternConfig(), method="best")
    with pytest.raises(ValueError, match="pool candidates must be >= 1, got 0"):
        build_pattern_pool(torch.randn(8, 8), PatternConfig(), method="greedy", candidates=0)


def test_weight_quantization_is_symmetric_per_channel():
    w = torch.tensor([[0.5, -1.0, 0.25], [0.0, 0.0, 0.0], [3.0, 1.5, -0.75]])
    q, scale = quantize_rows(w)
    assert q.dtype == torch.int8
    assert q.abs().amax(1).tolist() == [127, 0, 127]
    assert scale[1] == 1.0  # all-zero row
    assert torch.equal(q[0], torch.round(w[0].double() / (1.0 / 127)).to(torch.int8))


def test_compress_linear_names_a_wrong_width_calibration_input():
    from core.quantize import compress_linear

    with pytest.raises(ValueError, match=r"calibration_inputs must be \[\.\.\., 30\] \(the layer's in_features\), got \(16, 29\)"):
        compress_linear(torch.nn.Linear(30, 8), torch.randn(16, 29))
