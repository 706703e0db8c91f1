import json
import math

import matplotlib.image
import pytest
import torch

from sw.analysis import (DEFAULT_NEAR_ZERO_THRESHOLD, block_sparsity, plot_block_sparsity, plot_submatrix_sparsity,
                         plot_weight_distribution, pruned_energy_fraction, sparsity_summary)
from core.pattern import PatternConfig, build_pattern_pool, project_onto_pool

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _blocks_of(weight, k):
    """Python lists of the real entries of each block, by a plain loop (no padding)."""
    rows, cols = weight.shape
    return [[[float(weight[r, c]) for r in range(bi, min(bi + k, rows)) for c in range(bj, min(bj + k, cols))]
             for bj in range(0, cols, k)] for bi in range(0, rows, k)]


def _loop_block_sparsity(weight, k, threshold):
    rms = float(weight.double().pow(2).mean().sqrt())
    return [[sum(abs(v) <= threshold * rms for v in block) / len(block) for block in row] for row in _blocks_of(weight, k)]


def _loop_pruned_energy(weight, k, kept):
    out = []
    for row in _blocks_of(weight, k):
        out.append([])
        for block in row:
            squares = sorted((v * v for v in block), reverse=True)
            total = sum(squares)
            out[-1].append(sum(squares[kept:]) / total if total > 0 else 0.0)
    return out


def _pattern_pruned(rows, cols, seed=0):
    weight = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    pool = build_pattern_pool(weight, PatternConfig(block_size=4, kept_per_block=8, pool_size=16))
    return weight, project_onto_pool(weight, pool).weight


@pytest.mark.parametrize("threshold", [0.0, DEFAULT_NEAR_ZERO_THRESHOLD, 0.5, 1.0])
def test_block_sparsity_matches_loop_on_ragged_matrix(threshold):
    weight = torch.randn(10, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    weight[weight.abs() < 0.3] = 0  # some exact zeros, so threshold 0 is not trivial
    got = block_sparsity(weight, block_size=4, threshold=threshold)
    assert got.shape == (3, 2)
    assert got.tolist() == _loop_block_sparsity(weight, 4, threshold)


def test_block_sparsity_ignores_padding():
    weight = torch.zeros(5, 5)
    assert block_sparsity(weight, 4, threshold=0).tolist() == [[1.0, 1.0], [1.0, 1.0]]
    weight = torch.ones(5, 5)
    assert block_sparsity(weight, 4, threshold=0).tolist() == [[0.0, 0.0], [0.0, 0.0]]


@pytest.mark.parametrize("kept", [1, 5, 8, 16])
def test_pruned_energy_fraction_matches_loop_on_ragged_matrix(kept):
    weight = torch.randn(10, 7, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    weight[:4, :4] = 0  # one all-zero block
    got = pruned_energy_fraction(weight, block_size=4, kept=kept)
    expected = torch.tensor(_loop_pruned_energy(weight, 4, kept), dtype=torch.float64)
    assert got.shape == (3, 2)
    assert got[0, 0] == 0
    # the loop sums the smallest squares in another order than torch.sort + sum: float64 round-off only
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-15)


def test_pattern_pruned_matrix_is_on_target_and_dense_is_not():
    dense, pruned = _pattern_pruned(16, 24)
    assert torch.equal(pruned_energy_fraction(pruned, 4, 8), torch.zeros(4, 6, dtype=torch.float64))
    assert torch.equal(block_sparsity(pruned, 4, threshold=0) * 16, torch.full((4, 6), 8.0, dtype=torch.float64))
    assert bool((pruned_energy_fraction(dense, 4, 8) > 0).all())
    assert bool((block_sparsity(dense, 4, threshold=0) == 0).all())

    summary = sparsity_summary(pruned, 4, 8)
    assert summary["on_target_block_fraction"] == 1.0
    assert summary["pruned_energy_fraction_mean"] == 0.0
    assert summary["target_sparsity"] == 0.5
    dense_summary = sparsity_summary(dense, 4, 8)
    assert dense_summary["on_target_block_fraction"] == 0.0
    assert dense_summary["pruned_energy_fraction_mean"] > 0.05
    json.dumps(summary)
    json.dumps(dense_summary)


def test_ragged_pattern_pruned_matrix_full_blocks_keep_exactly_n():
    _, pruned = _pattern_pruned(10, 7)
    zeros = block_sparsity(pruned, 4, threshold=0) * 16
    assert zeros[:2, :1].tolist() == [[8.0], [8.0]]  # the full blocks
    assert bool((pruned_energy_fraction(pruned, 4, 8) == 0).all())
    summary = sparsity_summary(pruned, 4, 8)
    assert (summary["blocks"], summary["full_blocks"], summary["on_target_block_fraction"]) == (6, 2, 1.0)


def test_default_threshold_separates_dense_from_admm_like_weights():
    """Dense Gaussian: ~8 % near zero. ADMM-like (kept half of each block away from 0, the rest shrunk 1000×
    but not exactly 0): exactly 50 % in every block."""
    dense, pruned = _pattern_pruned(64, 64, seed=3)
    admm_like = torch.where(pruned != 0, dense.sign() * (0.5 + dense.abs()), dense * 1e-3)
    dense_sparsity = block_sparsity(dense)
    assert abs(float(dense_sparsity.mean()) - 0.08) < 0.03
    assert torch.equal(block_sparsity(admm_like), torch.full((16, 16), 0.5, dtype=torch.float64))
    assert float(pruned_energy_fraction(admm_like).max()) < 1e-5
    assert sparsity_summary(admm_like)["near_zero_fraction_std"] == 0.0


def _read_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[2] in (3, 4)
    return image


def _layers(rows=24, cols=20, names=("layer 0 query", "layer 0 key")):
    before, after = {}, {}
    for seed, name in enumerate(names):
        before[name], after[name] = _pattern_pruned(rows, cols, seed)
    return before, after


def test_plot_block_sparsity_writes_png(tmp_path):
    before, after = _layers()
    path = tmp_path / "new" / "deeper" / "sparsity.png"
    assert plot_block_sparsity(before, after, path, title="test") == path
    image = _read_png(path)
    assert 300 < image.shape[1] < 3000 and 300 < image.shape[0] < 3000
    assert list((tmp_path / "new" / "deeper").iterdir()) == [path]

    one_layer = {"layer 0 query": before["layer 0 query"]}
    single = tmp_path / "single.png"
    plot_block_sparsity(one_layer, {"layer 0 query": after["layer 0 query"]}, single)
    taller = _read_png(single)
    assert taller.shape[0] < image.shape[0] and taller.shape[1] == image.shape[1]  # one row per layer


def test_plot_weight_distribution_writes_png(tmp_path):
    before, after = _layers()
    path = tmp_path / "a" / "weights.png"
    plot_weight_distribution(before, after, path)
    image = _read_png(path)
    assert image.shape[0] > image.shape[1] > 300  # two stacked panels
    assert list(path.parent.iterdir()) == [path]


@pytest.mark.parametrize("measure", ["near_zero", "pruned_energy"])
def test_plot_submatrix_sparsity_writes_png_for_non_divisible_grid(tmp_path, measure):
    before, after = _pattern_pruned(50, 38)  # 13×10 blocks: split 5/4/4 × 4/3/3
    path = tmp_path / "b" / "parts.png"
    plot_submatrix_sparsity(before, after, path, grid=3, measure=measure)
    image = _read_png(path)
    assert 500 < image.shape[1] < 2000 and 500 < image.shape[0] < 2000
    assert list(path.parent.iterdir()) == [path]


def test_write_replaces_existing_file(tmp_path):
    before, after = _layers(names=("q",))
    path = tmp_path / "w.png"
    path.write_bytes(b"old")
    plot_weight_distribution(before, after, path)
    _read_png(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.png"]


@pytest.mark.parametrize("call, message", [
    (lambda: block_sparsity(torch.zeros(4)), "must be 2-D"),
    (lambda: block_sparsity(torch.zeros(2, 3, 4)), "must be 2-D"),
    (lambda: block_sparsity(torch.zeros(0, 4)), "is empty"),
    (lambda: block_sparsity(torch.zeros(4, 4), block_size=0), "block_size must be a positive integer"),
    (lambda: block_sparsity(torch.zeros(4, 4), threshold=-1), "threshold must be"),
    (lambda: block_sparsity(torch.zeros(4, 4), threshold=math.nan), "threshold must be"),
    (lambda: pruned_energy_fraction(torch.zeros(4, 4), block_size=0), "block_size must be a positive integer"),
    (lambda: pruned_energy_fraction(torch.zeros(4, 4), kept=17), "kept must be an integer in 1..16"),
    (lambda: pruned_energy_fraction([[1.0]]), "must be a torch.Tensor"),
    (lambda: sparsity_summary(torch.zeros(4)), "must be 2-D"),
])
def test_metrics_reject_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("plot", [plot_block_sparsity, plot_weight_distribution])
@pytest.mark.parametrize("before, after, message", [
    ({}, {"q": torch.zeros(4, 4)}, "before must be a non-empty dict"),
    ({"q": torch.zeros(4, 4)}, {}, "after must be a non-empty dict"),
    ({"q": torch.zeros(4, 4)}, {"k": torch.zeros(4, 4)}, r"only before \['q'\], only after \['k'\]"),
    ({"q": torch.zeros(4, 4)}, {"q": torch.zeros(4, 8)}, r"layer 'q' has shape \(4, 4\) before but \(4, 8\) after"),
    ({"q": torch.zeros(4)}, {"q": torch.zeros(4)}, r"before\['q'\] must be 2-D"),
])
def test_plots_reject_bad_layers(tmp_path, plot, before, after, message):
    with pytest.raises(ValueError, match=message):
        plot(before, after, tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, message", [
    (dict(after=torch.zeros(16, 12)), r"shape \(16, 16\) before but \(16, 12\) after"),
    (dict(grid=5), r"grid must be an integer in 1..4"),
    (dict(grid=0), r"grid must be an integer in 1..4"),
    (dict(block_size=0), "block_size must be a positive integer"),
    (dict(measure="energy"), "measure must be"),
    (dict(before=torch.zeros(64)), "must be 2-D"),
])
def test_plot_submatrix_sparsity_rejects_bad_input(tmp_path, kwargs, message):
    args = dict(before=torch.zeros(16, 16), after=torch.zeros(16, 16), path=tmp_path / "x.png") | kwargs
    with pytest.raises(ValueError, match=message):
        plot_submatrix_sparsity(**args)
    assert not any(tmp_path.iterdir())


def test_plot_block_sparsity_rejects_bad_block_size(tmp_path):
    before, after = _layers(names=("q",))
    with pytest.raises(ValueError, match="block_size must be a positive integer"):
        plot_block_sparsity(before, after, tmp_path / "x.png", block_size=0)
