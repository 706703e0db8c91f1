"""Per-block sparsity analysis of weight matrices before and after ADMM (the paper's Fig. 4 and 5).

The claim checked here: a fine-tuned dense matrix has an uneven, polarized spread of per-block sparsity,
while after ADMM every ``k×k`` block has about ``k² − n`` (near-)zero entries, so pattern pruning to
``n`` kept per block removes almost nothing.

Two per-block measures, both on the block grid of :mod:`core.pattern` (zero padding at the bottom and
right when a side is not a multiple of ``k``):

* :func:`block_sparsity`: the fraction of a block's real entries that count as zero, relative to the
  layer's RMS (threshold 0 counts exact zeros only, for pruned matrices).
* :func:`pruned_energy_fraction`: the share of a block's squared magnitude outside its ``n`` largest
  entries, i.e. what the best pattern for that block would remove. Threshold-free.

The plot writers render with :class:`matplotlib.figure.Figure` (no pyplot global state, no display)
and write the PNG atomically, creating parent folders.
"""

from __future__ import annotations

import io
import math
import os
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from core.atomic import write_atomic
from core.pattern import PatternConfig, pad_to_blocks, to_blocks

DEFAULT_NEAR_ZERO_THRESHOLD = 0.1
"""Default ``threshold`` of :func:`block_sparsity`: ``|w| ≤ 0.1 · RMS(W)`` counts as zero.

For a dense, roughly Gaussian fine-tuned matrix about 8 % of the entries fall below a tenth of the RMS
(P(|z| < 0.1) ≈ 0.080), so dense blocks read 0–3 zeros of 16, spread out. Weights that ADMM drives
towards zero end up orders of magnitude below the kept ones, well under a tenth of the RMS; the RMS
itself is set by the kept weights, so the threshold stays on the layer's scale after pruning (it only
drops by about √(n/k²)). The RMS is used instead of the maximum so that a few outliers do not move it.
"""

_DPI = 100


def _check_matrix(weight, name: str = "weight") -> torch.Tensor:
    if not isinstance(weight, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"{name} must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(weight.shape)})")
    if weight.is_complex():
        raise ValueError(f"{name} must be real-valued, got dtype {weight.dtype}")
    return weight.detach().to("cpu", torch.float64)


def _check_block_size(block_size) -> int:
    if not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    return block_size


def _check_kept(kept, block_size: int) -> int:
    if not isinstance(kept, int) or isinstance(kept, bool) or not 1 <= kept <= block_size**2:
        raise ValueError(f"kept must be an integer in 1..{block_size**2} for {block_size}×{block_size} blocks, got {kept!r}")
    return kept


def _check_threshold(threshold) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number ≥ 0, got {threshold!r}")
    return float(threshold)


def _real_positions(shape: tuple[int, int], block_size: int) -> torch.Tensor:
    """``[N/k, K/k, k²]`` boolean: which positions of each block hold a real (non-padding) entry."""
    ones = torch.ones(shape, dtype=torch.float64)
    return to_blocks(pad_to_blocks(ones, block_size), block_size) > 0


def block_sparsity(weight: torch.Tensor, block_size: int = PatternConfig.block_size, threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD) -> torch.Tensor:
    """Fraction of each block's entries that count as zero.

    Parameters
    ----------
    weight : Tensor
        ``[N, K]`` (out × in) weight matrix.
    block_size : int
        Block side ``k``.
    threshold : float
        An entry counts as zero when ``|w| ≤ threshold · RMS(W)``, RMS over the whole matrix. The
        default, :data:`DEFAULT_NEAR_ZERO_THRESHOLD` = 0.1, suits dense and ADMM-trained matrices (see
        its docstring); ``threshold=0`` counts exact zeros only, for pruned matrices.

    Returns
    -------
    Tensor
        ``[ceil(N/k), ceil(K/k)]`` float64 in [0, 1]. Padding is not counted: the fraction is over the
        real entries of each block (a bottom-right block of a 10×7 matrix with k=4 has 2·3 of them).
    """
    w = _check_matrix(weight)
    k = _check_block_size(block_size)
    limit = _check_threshold(threshold) * float(w.pow(2).mean().sqrt())
    real = _real_positions(tuple(w.shape), k)
    near_zero = (to_blocks(pad_to_blocks(w, k), k).abs() <= limit) & real
    return near_zero.sum(-1, dtype=torch.float64) / real.sum(-1, dtype=torch.float64)


def pruned_energy_fraction(weight: torch.Tensor, block_size: int = PatternConfig.block_size, kept: int = PatternConfig.kept_per_block) -> torch.Tensor:
    """Share of each block's squared magnitude outside its ``kept`` largest entries.

    This is what pattern pruning of the block removes at best (with its own top-n pattern); ADMM
    drives it towards 0. Padded positions are zero, as in :mod:`core.pattern`, so a partial block with
    at most ``kept`` real entries gives 0. Blocks of all zeros give 0.

    Parameters
    ----------
    weight : Tensor
        ``[N, K]`` (out × in) weight matrix.
    block_size : int
        Block side ``k``.
    kept : int
        Entries kept per block ``n`` (1..k²).

    Returns
    -------
    Tensor
        ``[ceil(N/k), ceil(K/k)]`` float64 in [0, 1 − n/k²].
    """
    w = _check_matrix(weight)
    k = _check_block_size(block_size)
    n = _check_kept(kept, k)
    energy = to_blocks(pad_to_blocks(w, k), k).pow(2)
    ascending = torch.sort(energy, dim=-1).values
    removed = ascending[..., : k * k - n].sum(-1)  # summed directly: exactly 0 when only zeros are removed
    total = energy.sum(-1)
    return torch.where(total > 0, removed / torch.where(total > 0, total, 1.0), torch.zeros_like(total))


def sparsity_summary(weight: torch.Tensor, block_size: int = PatternConfig.block_size, kept: int = PatternConfig.kept_per_block,
                     threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD) -> dict:
    """Scalar per-block sparsity statistics of one matrix, JSON-ready.

    Returns
    -------
    dict
        ``blocks``, ``full_blocks`` (blocks without padding), ``threshold``, ``target_sparsity``
        (1 − n/k²), ``near_zero_fraction_mean`` / ``near_zero_fraction_std`` (population std) of
        :func:`block_sparsity` at ``threshold``, ``on_target_block_fraction``: the fraction of full
        blocks with exactly k² − n exact zeros (partial blocks are left out, since a pattern may keep
        padded positions; ``None`` when there are no full blocks), and ``pruned_energy_fraction_mean``.
    """
    w = _check_matrix(weight)
    k = _check_block_size(block_size)
    n = _check_kept(kept, k)
    near_zero = block_sparsity(w, k, threshold)
    full = _real_positions(tuple(w.shape), k).all(-1)
    exact_zeros = block_sparsity(w, k, 0.0) * (k * k)
    on_target = (exact_zeros.round() == k * k - n) & full
    full_blocks = int(full.sum())
    return {
        "blocks": near_zero.numel(),
        "full_blocks": full_blocks,
        "threshold": float(threshold),
        "target_sparsity": 1 - n / (k * k),
        "near_zero_fraction_mean": float(near_zero.mean()),
        "near_zero_fraction_std": float(near_zero.std(correction=0)),
        "on_target_block_fraction": float(on_target.sum()) / full_blocks if full_blocks else None,
        "pruned_energy_fraction_mean": float(pruned_energy_fraction(w, k, n).mean()),
    }


# ----------------------------------------------------------------------------------------------- plots


def _check_before_after(before: dict, after: dict) -> list[str]:
    for which, layers in (("before", before), ("after", after)):
        if not isinstance(layers, dict) or not layers:
            raise ValueError(f"{which} must be a non-empty dict of layer name → weight matrix")
    if set(before) != set(after):
        raise ValueError(f"before and after name different layers: only before {sorted(set(before) - set(after))}, "
                         f"only after {sorted(set(after) - set(before))}")
    for name in before:
        b = _check_matrix(before[name], f"before[{name!r}]")
        a = _check_matrix(after[name], f"after[{name!r}]")
        if a.shape != b.shape:
            raise ValueError(f"layer {name!r} has shape {tuple(b.shape)} before but {tuple(a.shape)} after")
    return list(before)


def _short(name: str) -> str:
    """A layer name short enough for a subplot title: no model prefix, no ``.weight``."""
    name = re.sub(r"^(\w+\.)?encoder\.", "", name)
    return name.removesuffix(".weight").replace("attention.self.", "attention.")


def save_png(fig: Figure, path) -> Path:
    """Render ``fig`` to ``path`` as PNG, atomically, creating parent folders."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, buffer.getvalue())


def _sparsity_bins(block_size: int) -> list[float]:
    """Bar edges centred on multiples of 1/k², so each count of zeros in a full block is one bar."""
    positions = block_size**2
    return [(i - 0.5) / positions for i in range(positions + 2)]


def _overlaid_hist(ax, before: torch.Tensor, after: torch.Tensor, bins) -> None:
    for values, label, colour in ((before, "before ADMM", "tab:blue"), (after, "after ADMM", "tab:orange")):
        flat = values.flatten().numpy()
        # weights turn counts into the share of blocks, so before and after compare at any size
        ax.hist(flat, bins=bins, weights=np.full(flat.size, 1.0 / flat.size), alpha=0.55, color=colour, label=label)


def plot_block_sparsity(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], path: str | os.PathLike,
                        title: str = "Per-block sparsity before and after ADMM", block_size: int = PatternConfig.block_size, kept: int = PatternConfig.kept_per_block,
                        threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD) -> Path:
    """Histograms of per-block sparsity before vs after ADMM, one row per layer; writes a PNG.

    Left panel: :func:`block_sparsity` at ``threshold`` (bars at multiples of 1/k², the target sparsity
    1 − n/k² marked). Right panel: :func:`pruned_energy_fraction` (target 0 marked). The y axis is the
    share of the layer's blocks.

    Parameters
    ----------
    before, after : dict[str, Tensor]
        Layer name (e.g. ``"layer 0 query"``) → ``[N, K]`` weight; same names and shapes in both.
    path : str or PathLike
        PNG destination; parent folders are created, the write is atomic.

    Returns
    -------
    Path
        ``path``.
    """
    names = _check_before_after(before, after)
    k = _check_block_size(block_size)
    n = _check_kept(kept, k)
    _check_threshold(threshold)
    target = 1 - n / (k * k)
    fig = Figure(figsize=(11, 3.2 * len(names) + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(names), 2, squeeze=False)
    for row, name in enumerate(names):
        ax = axes[row, 0]
        _overlaid_hist(ax, block_sparsity(before[name], k, threshold), block_sparsity(after[name], k, threshold),
                       _sparsity_bins(k))
        ax.axvline(target, color="black", linestyle="--", linewidth=1, label=f"target {target:.0%}")
        ax.set_xlim(-0.5 / (k * k), 1 + 0.5 / (k * k))
        ax.set_xlabel(f"near-zero fraction per {k}×{k} block (|w| ≤ {threshold:g}·RMS)")
        ax.set_ylabel("share of blocks")
        ax.set_title(f"{_short(name)}: block sparsity", fontsize="small")
        ax.legend(fontsize="small")

        ax = axes[row, 1]
        energy_bins = torch.linspace(0, max(target, 1e-6), 41).tolist()
        _overlaid_hist(ax, pruned_energy_fraction(before[name], k, n), pruned_energy_fraction(after[name], k, n),
                       energy_bins)
        ax.axvline(0, color="black", linestyle="--", linewidth=1, label="target 0")
        ax.set_xlabel(f"energy outside the top {n} of each block")
        ax.set_ylabel("share of blocks")
        ax.set_title(f"{_short(name)}: pruned-energy fraction", fontsize="small")
        ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_weight_distribution(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor], path: str | os.PathLike,
                             title: str = "Weight distribution before and after ADMM", bins: int = 101) -> Path:
    """Histograms of the weight values before vs after ADMM (Fig. 4 style), one panel per layer; writes a PNG.

    The bins are symmetric around 0 with an odd count, so one bar is centred on 0 where pruned weights
    pile up; the y axis is logarithmic.

    Parameters
    ----------
    before, after : dict[str, Tensor]
        Layer name → ``[N, K]`` weight; same names and shapes in both.
    path : str or PathLike
        PNG destination; parent folders are created, the write is atomic.
    bins : int
        Number of bars (made odd if even).

    Returns
    -------
    Path
        ``path``.
    """
    names = _check_before_after(before, after)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    bins += 1 - bins % 2
    fig = Figure(figsize=(6, 3.2 * len(names) + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(len(names), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        b, a = _check_matrix(before[name]), _check_matrix(after[name])
        reach = max(float(b.abs().max()), float(a.abs().max())) or 1.0
        edges = torch.linspace(-reach, reach, bins + 1).tolist()
        for values, label, colour in ((b, "before ADMM", "tab:blue"), (a, "after ADMM", "tab:orange")):
            ax.hist(values.flatten().numpy(), bins=edges, alpha=0.55, color=colour, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("weight value")
        ax.set_ylabel("count")
        ax.set_title(_short(name), fontsize="small")
        ax.legend(fontsize="small")
    return save_png(fig, path)


def plot_submatrix_sparsity(before: torch.Tensor, after: torch.Tensor, path: str | os.PathLike, grid: int = 3,
                            title: str = "Per-block sparsity of each sub-matrix before and after ADMM",
                            block_size: int = PatternConfig.block_size, kept: int = PatternConfig.kept_per_block, threshold: float = DEFAULT_NEAR_ZERO_THRESHOLD,
                            measure: str = "near_zero") -> Path:
    """Fig. 5 style: the matrix split into ``grid×grid`` sub-matrices, one histogram panel per part; writes a PNG.

    The split is made on the block grid, so no block is cut: the ``[ceil(N/k), ceil(K/k)]`` map of
    per-block values is divided with :func:`torch.tensor_split` along each axis (part sizes differ by
    at most one block, the first parts getting the extra one). A 768×768 matrix with k=4 has 192
    blocks per side, i.e. 3×3 parts of 64×64 blocks = 256×256 weights.

    Parameters
    ----------
    before, after : Tensor
        ``[N, K]`` weight of the same shape.
    path : str or PathLike
        PNG destination; parent folders are created, the write is atomic.
    grid : int
        Parts per side; at most the number of blocks along each side.
    measure : {"near_zero", "pruned_energy"}
        Per-block value shown: :func:`block_sparsity` at ``threshold`` (target 1 − n/k² marked) or
        :func:`pruned_energy_fraction` (target 0 marked).

    Returns
    -------
    Path
        ``path``.
    """
    _check_before_after({"matrix": before}, {"matrix": after})
    k = _check_block_size(block_size)
    n = _check_kept(kept, k)
    _check_threshold(threshold)
    block_rows, block_cols = -(-before.shape[0] // k), -(-before.shape[1] // k)
    if isinstance(grid, bool) or not isinstance(grid, int) or not 1 <= grid <= min(block_rows, block_cols):
        raise ValueError(f"grid must be an integer in 1..{min(block_rows, block_cols)} (blocks per side of the "
                         f"{block_rows}×{block_cols} block grid), got {grid!r}")
    target = 1 - n / (k * k)
    if measure == "near_zero":
        maps = [block_sparsity(w, k, threshold) for w in (before, after)]
        bins, mark, xlabel = _sparsity_bins(k), target, "near-zero fraction per block"
    elif measure == "pruned_energy":
        maps = [pruned_energy_fraction(w, k, n) for w in (before, after)]
        bins, mark, xlabel = torch.linspace(0, max(target, 1e-6), 31).tolist(), 0.0, "pruned-energy fraction"
    else:
        raise ValueError(f"measure must be 'near_zero' or 'pruned_energy', got {measure!r}")
    parts = [[list(torch.tensor_split(rows, grid, dim=1)) for rows in torch.tensor_split(m, grid, dim=0)]
             for m in maps]

    fig = Figure(figsize=(3.2 * grid, 2.6 * grid + 0.6), layout="constrained")
    fig.suptitle(title)
    axes = fig.subplots(grid, grid, squeeze=False, sharex=True)
    row_start = 0
    for i in range(grid):
        col_start = 0
        for j in range(grid):
            part_before, part_after = parts[0][i][j], parts[1][i][j]
            ax = axes[i, j]
            _overlaid_hist(ax, part_before, part_after, bins)
            ax.axvline(mark, color="black", linestyle="--", linewidth=1, label="target")
            rows = slice(row_start * k, min((row_start + part_before.shape[0]) * k, before.shape[0]))
            cols = slice(col_start * k, min((col_start + part_before.shape[1]) * k, before.shape[1]))
            ax.set_title(f"rows {rows.start}–{rows.stop - 1}, cols {cols.start}–{cols.stop - 1}", fontsize="small")
            if i == grid - 1:
                ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel("share of blocks")
            col_start += part_before.shape[1]
        row_start += parts[0][i][0].shape[0]
    axes[0, 0].legend(fontsize="x-small")
    return save_png(fig, path)
