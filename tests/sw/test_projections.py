"""Every projection is the exact Euclidean projection: compared with brute-force enumeration of its set."""

import itertools

import pytest
import torch

from core.pattern import PatternConfig, PatternPool
from sw.projections import (
    NM, BlockWise, Channels, Columns, GroupWise, Pattern, PatternQuantize, Quantize, Rows, Unstructured, VectorWise,
    projection_from_dict,
)


def all_masks(shape):
    """Every boolean mask of ``shape`` (2^numel of them), as ``[M, *shape]``."""
    numel = torch.Size(shape).numel()
    codes = torch.arange(2**numel)
    return ((codes[:, None] >> torch.arange(numel)) & 1).bool().reshape(-1, *shape)


def nearest_support(weight, allowed):
    """The support among ``allowed`` masks whose restriction of ``weight`` is nearest to it."""
    masks = all_masks(weight.shape)
    masks = masks[allowed(masks)]
    pruned_energy = ((~masks) * weight.to(torch.float64) ** 2).flatten(1).sum(1)
    best = pruned_energy.argmin()
    assert int((pruned_energy == pruned_energy[best]).sum()) == 1, "random weights should have a unique optimum"
    return masks[best]


def constant_on(masks, groups):
    """True where every group of flat positions is all-kept or all-pruned."""
    flat = masks.flatten(1)
    return torch.stack([(flat[:, g] == flat[:, g[:1]]).all(1) for g in groups]).all(0)


def count_le(masks, dims, limit):
    return (masks.sum(dims) <= limit).flatten(1).all(1)


W44 = torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
ROWS = [list(range(r * 4, r * 4 + 4)) for r in range(4)]
COLS = [list(range(c, 16, 4)) for c in range(4)]
BLOCKS = [[r * 4 + c for r in rows for c in cols] for rows in ((0, 1), (2, 3)) for cols in ((0, 1), (2, 3))]

CASES = {
    "unstructured": (Unstructured(0.5), lambda m: m.flatten(1).sum(1) <= 8),
    "nm 2:4": (NM(n=2, m=4), lambda m: count_le(m, (2,), 2)),
    "vector axis 0": (VectorWise(vector_size=2, kept_per_vector=1, axis=0), lambda m: count_le(m.reshape(-1, 2, 2, 4), (2,), 1)),
    "rows": (Rows(0.5), lambda m: constant_on(m, ROWS) & (m.any(2).sum(1) <= 2)),
    "columns": (Columns(0.5), lambda m: constant_on(m, COLS) & (m.any(1).sum(1) <= 2)),
    "channels": (Channels(0.25), lambda m: constant_on(m, COLS) & (m.any(1).sum(1) <= 1)),
    "blocks 2x2": (BlockWise(2, 2, 0.5), lambda m: constant_on(m, BLOCKS) & (m.flatten(1).sum(1) <= 8)),
    "groups of 2 rows": (
        GroupWise(group_size=2, density=0.5),
        lambda m: (m[:, 0] == m[:, 1]).all(1) & (m[:, 2] == m[:, 3]).all(1) & count_le(m, (2,), 2),
    ),
}


@pytest.mark.parametrize("name", CASES)
def test_sparsity_projection_is_nearest_point(name):
    projection, allowed = CASES[name]
    for seed in range(3):
        weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        result = projection(weight)
        best = nearest_support(weight, allowed)
        assert torch.equal(result.mask, best)
        assert torch.equal(result.value, weight * best)


def test_nd_rows_channels_columns_are_nearest_point():
    weight = torch.randn(2, 3, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rows = [list(range(a * 6, a * 6 + 6)) for a in range(2)]
    channels = [[a * 6 + b * 2 + d for a in range(2) for d in range(2)] for b in range(3)]
    fibers = [[a * 6 + j for a in range(2)] for j in range(6)]
    cases = [
        (Rows(0.5), lambda m: constant_on(m, rows) & (m.flatten(2).any(2).sum(1) <= 1)),
        (Channels(1 / 3), lambda m: constant_on(m, channels) & (m.any(3).any(1).sum(1) <= 1)),
        (Columns(0.5), lambda m: constant_on(m, fibers) & (m.any(1).flatten(1).sum(1) <= 3)),
    ]
    for projection, allowed in cases:
        assert torch.equal(projection(weight).mask, nearest_support(weight, allowed))


def test_partial_blocks_and_groups_at_the_edges():
    weight = torch.randn(5, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    blocks = [[r * 3 + c for r in rows for c in cols] for rows in ((0, 1), (2, 3), (4,)) for cols in ((0, 1), (2,))]
    best = nearest_support(weight, lambda m: constant_on(m, blocks) & (torch.stack([m.flatten(1)[:, b[0]] for b in blocks], 1).sum(1) <= 3))
    assert torch.equal(BlockWise(2, 2, 0.5)(weight).mask, best)
    groups = lambda m: (m[:, 0] == m[:, 1]).all(1) & (m[:, 2] == m[:, 3]).all(1) & count_le(m, (2,), 2)
    assert torch.equal(GroupWise(2, 2 / 3)(weight).mask, nearest_support(weight, groups))


def small_pool():
    config = PatternConfig(block_size=2, kept_per_block=2, pool_size=3)
    masks = torch.tensor([[1, 1, 0, 0], [1, 0, 0, 1], [0, 1, 1, 0]], dtype=torch.bool)
    return PatternPool(config, masks)


def test_pattern_projection_is_nearest_point_for_a_fixed_pool():
    pool = small_pool()
    subsets = torch.stack([(all_masks((4,)) & ~p).any(1) == 0 for p in pool.masks]).any(0)  # masks ⊆ some pattern

    def allowed(m):
        ok = torch.ones(m.shape[0], dtype=torch.bool)
        for br in range(2):
            for bc in range(2):
                codes = sum(m[:, br * 2 + r, bc * 2 + c].long() << (r * 2 + c) for r in range(2) for c in range(2))
                ok &= subsets[codes]
        return ok

    for seed in range(3):
        weight = torch.randn(4, 4, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        projection = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool)
        result = projection(weight)
        best = nearest_support(weight, allowed)
        assert torch.equal(result.value != 0, best)
        assert torch.equal(result.value, weight * best)
        assert torch.equal(pool.masks[projection.pattern_ids].sum(-1), torch.full((2, 2), 2))


def pool_points(weight, pool):
    """Every point of the pattern set of a fixed pool for a 2×2-block ``weight``: one pattern per block,
    kept values copied. Returns ``(points [M, *shape], pattern ids [M, blocks])``."""
    rows, cols = weight.shape[0] // 2, weight.shape[1] // 2
    points, ids = [], []
    for choice in itertools.product(range(pool.masks.shape[0]), repeat=rows * cols):
        mask = torch.zeros_like(weight, dtype=torch.bool)
        for b, pattern in enumerate(choice):
            r, c = divmod(b, cols)
            mask[2 * r:2 * r + 2, 2 * c:2 * c + 2] = pool.masks[pattern].reshape(2, 2)
        points.append(weight * mask)
        ids.append(choice)
    return torch.stack(points), torch.tensor(ids)


def test_activation_weighted_pattern_projection_is_nearest_point_in_the_weighted_norm():
    """``weighting: "activation"``: the nearest point of the pattern set in ‖(W − Z)·diag(s)‖, by brute force
    over every pattern assignment; it can differ from the plain projection, and uniform scales give it."""
    pool = small_pool()
    differs = 0
    for seed in range(6):
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(4, 4, generator=g, dtype=torch.float64)
        scale = torch.rand(4, generator=g, dtype=torch.float64) * 3
        projection = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool, weighting="activation")
        projection.set_column_scale(scale)
        result = projection(weight)
        points, ids = pool_points(weight, pool)
        distance = (((points - weight) * scale) ** 2).flatten(1).sum(1)
        best = distance.argmin()
        assert int((distance == distance[best]).sum()) == 1
        assert torch.equal(result.value, points[best]) and torch.equal(projection.pattern_ids.flatten(), ids[best])
        plain = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool)
        differs += not torch.equal(plain(weight).value, result.value)
        uniform = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool, weighting="activation")
        uniform.set_column_scale(torch.full((4,), 0.3, dtype=torch.float64))
        assert torch.equal(uniform(weight).value, plain(weight).value)
    assert differs > 0  # the weighting does change choices on these weights
    assert torch.equal(projection.column_scale.pow(2).mean(), torch.tensor(1.0, dtype=torch.float64))


def test_activation_weighted_pattern_quantize_is_nearest_point_of_the_intersection():
    pool = small_pool()
    differs = 0
    for seed in range(8):
        g = torch.Generator().manual_seed(20 + seed)
        weight = torch.randn(2, 4, generator=g, dtype=torch.float64)
        scale = torch.rand(4, generator=g, dtype=torch.float64) ** 3 * 4
        points = grid_points(weight, 2)
        ok = torch.ones(points.shape[0], dtype=torch.bool)
        for bc in range(2):
            support = points[:, :, bc * 2 : bc * 2 + 2].reshape(-1, 4) != 0
            ok &= ((support[:, None, :] & ~pool.masks[None]).any(-1) == 0).any(1)
        points = points[ok]
        projection = PatternQuantize(block_size=2, kept_per_block=2, pool_size=3, bits=2, pool=pool, weighting="activation")
        projection.set_column_scale(scale)
        s = projection.column_scale  # normalized; the argmin does not depend on the normalization
        distance = (((points - weight) * s) ** 2).flatten(1).sum(1)
        value = projection(weight).value
        assert torch.equal(value, points[distance.argmin()])
        plain = PatternQuantize(block_size=2, kept_per_block=2, pool_size=3, bits=2, pool=pool)
        differs += not torch.equal(plain(weight).value, value)
    assert differs > 0  # the weighting does change choices on these weights


def test_activation_weighting_needs_valid_column_scales():
    weight = torch.randn(8, 8)
    with pytest.raises(ValueError, match="needs the column scales first"):
        Pattern(4, 8, 4, weighting="activation")(weight)
    projection = Pattern(4, 8, 4, weighting="activation")
    for bad, message in [(torch.tensor([1.0, -1.0] * 4), "finite, ≥ 0 and not all zero"), (torch.zeros(8), "not all zero"),
                         (torch.full((8,), float("nan")), "finite")]:
        with pytest.raises(ValueError, match=message):
            projection.set_column_scale(bad)
    projection.set_column_scale(torch.ones(6))
    with pytest.raises(ValueError, match="6 column scales for a weight of 8 input columns"):
        projection(weight)
    with pytest.raises(ValueError, match="column scales are for weighting 'activation'"):
        Pattern(4, 8, 4).set_column_scale(torch.ones(8))
    with pytest.raises(ValueError, match="weighting must be one of magnitude, activation, got 'hessian'"):
        Pattern(4, 8, 4, weighting="hessian")
    assert "weighting" not in Pattern(4, 8, 32).to_dict()
    assert projection_from_dict(Pattern(4, 8, 32, weighting="activation").to_dict()).weighting == "activation"


def grid_points(weight, bits):
    """All matrices with every entry on its row's level grid (row scale max|row| / q)."""
    q = 2 ** (bits - 1) - 1
    scale = weight.abs().amax(1) / q
    levels = torch.arange(-q, q + 1, dtype=torch.float64)
    points = torch.cartesian_prod(*[levels] * weight.numel()).reshape(-1, *weight.shape)
    return points * scale[None, :, None]


def test_quantization_projection_is_nearest_grid_point():
    weight = torch.randn(2, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for bits in (2, 3):
        points = grid_points(weight, bits)
        distance = ((points - weight) ** 2).flatten(1).sum(1)
        best = points[distance.argmin()]
        assert torch.equal(Quantize(bits)(weight).value, best)


def test_pattern_quantize_is_nearest_point_of_the_intersection():
    pool = small_pool()
    for seed in range(4):
        weight = torch.randn(2, 4, generator=torch.Generator().manual_seed(10 + seed), dtype=torch.float64)
        points = grid_points(weight, 2)  # levels {-1, 0, 1}·s: 3^8 points
        ok = torch.ones(points.shape[0], dtype=torch.bool)
        for bc in range(2):
            support = points[:, :, bc * 2 : bc * 2 + 2].reshape(-1, 4) != 0
            ok &= ((support[:, None, :] & ~pool.masks[None]).any(-1) == 0).any(1)
        points = points[ok]
        distance = ((points - weight) ** 2).flatten(1).sum(1)
        result = PatternQuantize(block_size=2, kept_per_block=2, pool_size=3, bits=2, pool=pool)(weight)
        assert float(((result.value - weight) ** 2).sum()) == pytest.approx(float(distance.min()), abs=0, rel=1e-12)
        assert torch.equal(result.value, points[distance.argmin()])


def test_pattern_quantize_can_choose_another_pattern_than_plain_pattern():
    # Row scales 1 and 0.45 at 2 bits: 0.51 rounds to 1 (gain 0.02), 0.45 is exact (gain 0.2025), so the
    # joint projection keeps {0, 2} while the largest kept energy is {0, 1}.
    config = PatternConfig(block_size=2, kept_per_block=2, pool_size=3)
    pool = PatternPool(config, torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1]], dtype=torch.bool))
    weight = torch.tensor([[1.0, 0.51], [0.45, 0.0]], dtype=torch.float64)
    plain = Pattern(block_size=2, kept_per_block=2, pool_size=3, pool=pool)
    joint = PatternQuantize(block_size=2, kept_per_block=2, pool_size=3, bits=2, pool=pool)
    plain(weight)
    value = joint(weight).value
    assert int(plain.pattern_ids[0, 0]) == 0 and int(joint.pattern_ids[0, 0]) == 1
    points = grid_points(weight, 2)
    ok = ((((points.reshape(-1, 4) != 0)[:, None, :]) & ~pool.masks[None]).any(-1) == 0).any(1)
    distance = ((points[ok] - weight) ** 2).flatten(1).sum(1)
    assert torch.equal(value, points[ok][distance.argmin()])


def test_bad_input_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="density"):
        Unstructured(1.5)
    with pytest.raises(ValueError, match="not a multiple of vector size 4"):
        NM(n=2, m=4)(torch.randn(4, 6))
    with pytest.raises(ValueError, match="unknown projection kind 'bogus'"):
        projection_from_dict({"kind": "bogus"})
    with pytest.raises(ValueError, match="bad parameters for projection 'nm'"):
        projection_from_dict({"kind": "nm", "q": 3})


def test_pattern_spec_names_the_pool_method_only_when_not_the_default():
    assert "pool_method" not in Pattern(4, 8, 32).to_dict()  # specs written before the option keep their form
    assert Pattern(4, 8, 32, pool_method="greedy").to_dict()["pool_method"] == "greedy"
    with pytest.raises(ValueError, match="pool_method must be one of frequent, greedy, got 'kmeans'"):
        Pattern(4, 8, 32, pool_method="kmeans")


def test_round_trip_through_dict():
    for projection in [Unstructured(0.3), NM(n=1, m=4), VectorWise(8, 3, 0), Rows(0.25), Channels(0.5), Columns(0.5),
                       BlockWise(2, 8, 0.4), GroupWise(32, 0.5), Pattern(4, 6, 16), Pattern(4, 8, 32, pool_method="greedy"),
                       Quantize(4), PatternQuantize(4, 8, 32, bits=8), PatternQuantize(4, 8, 32, pool_method="greedy", bits=8)]:
        again = projection_from_dict(projection.to_dict())
        assert type(again) is type(projection) and again.to_dict() == projection.to_dict()
        weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
        assert torch.equal(again(weight).value, projection(weight).value)


@pytest.mark.parametrize("n", [1, 2, 3])
def test_nm_positional_arguments_are_n_and_m(n):
    # NM(n, m) once bound n, m to the inherited vector fields and silently fell back to 2:4
    mask = NM(n, 4)(torch.randn(6, 16)).mask
    assert torch.equal(mask.view(6, 4, 4).sum(-1), torch.full((6, 4), n))
