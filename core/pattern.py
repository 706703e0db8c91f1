"""Semi-structured pattern pruning of weight matrices.

A weight matrix ``W[N, K]`` (out × in) is cut into ``k×k`` blocks; every block keeps exactly ``n``
positions, and the kept positions of every block are one of ``P`` patterns of a pool built from the
matrix's own weights.

Conventions (shared with the hardware and the firmware image):

* Positions inside a block are numbered row-major: ``p = row·k + col`` (row = output channel within the
  block, col = input feature within the block).
* A pattern is a boolean mask of ``k²`` positions with exactly ``n`` set; its kept values are stored in
  ascending position order.
* Padding: when ``N`` or ``K`` is not a multiple of ``k``, the matrix is zero-padded at the bottom
  (extra output rows) and at the right (extra input columns) up to the next multiple. Padded entries
  are zero, so they never add to a block's energy; a pattern may still keep a padded position, whose
  value is then zero. Outputs of padded rows are dropped by the consumer.
* Ties are broken towards the lower index everywhere (top-n positions, pattern choice, pool order).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PatternConfig:
    """Pattern sparsity parameters: ``block_size`` k, ``kept_per_block`` n, ``pool_size`` P."""

    block_size: int = 4
    kept_per_block: int = 8
    pool_size: int = 32

    def __post_init__(self):
        k, n, p = self.block_size, self.kept_per_block, self.pool_size
        for name, value in (("block_size", k), ("kept_per_block", n), ("pool_size", p)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if n > k * k:
            raise ValueError(f"kept_per_block={n} exceeds the {k * k} positions of a {k}×{k} block")
        if p > math.comb(k * k, n):
            raise ValueError(
                f"pool_size={p} exceeds the {math.comb(k * k, n)} distinct patterns of {n} kept in a {k}×{k} block"
            )

    @property
    def positions(self) -> int:
        return self.block_size**2

    @property
    def density(self) -> float:
        return self.kept_per_block / self.positions


def padded_shape(out_features: int, in_features: int, block_size: int) -> tuple[int, int]:
    k = block_size
    return -(-out_features // k) * k, -(-in_features // k) * k


def pad_to_blocks(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """Zero-pad ``matrix[..., R, C]`` at the bottom and right to multiples of ``block_size`` (leading dims
    are a batch: weight matrices are ``[N, K]``, attention maps ``[B, H, Lq, Lk]``)."""
    if matrix.dim() < 2:
        raise ValueError(f"need a matrix [..., rows, cols], got shape {tuple(matrix.shape)}")
    pad_rows, pad_cols = -matrix.shape[-2] % block_size, -matrix.shape[-1] % block_size
    return torch.nn.functional.pad(matrix, (0, pad_cols, 0, pad_rows)) if pad_rows or pad_cols else matrix


def to_blocks(matrix: torch.Tensor, block_size: int) -> torch.Tensor:
    """``[..., R, C]`` (multiples of k) → ``[..., R/k, C/k, k²]``, positions row-major inside each block."""
    k = block_size
    *lead, rows, cols = matrix.shape
    blocks = matrix.reshape(*lead, rows // k, k, cols // k, k).transpose(-3, -2)
    return blocks.reshape(*lead, rows // k, cols // k, k * k)


def from_blocks(blocks: torch.Tensor, block_size: int) -> torch.Tensor:
    """Inverse of :func:`to_blocks`."""
    k = block_size
    *lead, rb, cb, _ = blocks.shape
    return blocks.reshape(*lead, rb, cb, k, k).transpose(-3, -2).reshape(*lead, rb * k, cb * k)


def top_n_masks(energy: torch.Tensor, n: int) -> torch.Tensor:
    """Boolean masks keeping the ``n`` largest entries of each row of ``energy[B, k²]`` (ties → lower index)."""
    order = torch.sort(energy, dim=-1, descending=True, stable=True).indices[..., :n]
    mask = torch.zeros_like(energy, dtype=torch.bool)
    mask.scatter_(-1, order, True)
    return mask


def _mask_codes(masks: torch.Tensor) -> torch.Tensor:
    weights = 2 ** torch.arange(masks.shape[-1], dtype=torch.int64)
    return (masks.to(torch.int64) * weights).sum(-1)


def _codes_to_masks(codes: torch.Tensor, positions: int) -> torch.Tensor:
    return (codes[:, None] >> torch.arange(positions)) & 1 == 1


@dataclass
class PatternPool:
    """A pool of ``P`` patterns: ``masks[P, k²]`` boolean, exactly ``n`` set per row."""

    config: PatternConfig
    masks: torch.Tensor

    def __post_init__(self):
        c = self.config
        m = self.masks
        if m.dtype != torch.bool or m.shape != (c.pool_size, c.positions):
            raise ValueError(f"pattern masks must be bool [{c.pool_size}, {c.positions}], got {m.dtype} {tuple(m.shape)}")
        counts = m.sum(1)
        if not bool((counts == c.kept_per_block).all()):
            bad = int(torch.nonzero(counts != c.kept_per_block)[0])
            raise ValueError(f"pattern {bad} keeps {int(counts[bad])} positions, expected {c.kept_per_block}")
        if len(set(_mask_codes(m).tolist())) != c.pool_size:
            raise ValueError("pattern pool contains duplicate patterns")

    def positions(self) -> torch.Tensor:
        """``[P, n]`` kept positions of each pattern, ascending (the storage order of kept values)."""
        return torch.stack([torch.nonzero(row).flatten() for row in self.masks])


POOL_METHODS = ("frequent", "greedy")
POOL_CANDIDATES = 256  # distinct top-n masks the greedy seeding chooses from (most frequent first)


def build_pattern_pool(weight: torch.Tensor, config: PatternConfig, refine_iterations: int = 10,
                       method: str = "frequent", candidates: int = POOL_CANDIDATES) -> PatternPool:
    """Build a pool of ``P`` patterns from the weights themselves.

    Clustering: every block's top-n mask (by magnitude) is a candidate. The pool is seeded by ``method``:

    * ``"frequent"``: the ``P`` most frequent masks (ties → smaller mask code);
    * ``"greedy"``: greedy maximization of the projection objective itself (the total squared magnitude
      kept, ``Σ_blocks max_{pattern} kept energy``, a facility-location objective: monotone submodular,
      so greedy is within 1 − 1/e of the best pool drawn from the candidates). The candidates are the
      ``candidates`` most frequent distinct masks; each step adds the one that adds the most kept energy
      (ties → the more frequent candidate).

    The seed is then refined by k-means in the projection objective: assign every block to the pattern
    keeping most of its squared magnitude, and replace each pattern by the top-n positions of the summed
    squared magnitudes of its blocks. Both steps never decrease the total kept energy; a step that would
    duplicate another pattern is skipped. When the matrix has fewer than ``P`` distinct masks, the pool
    is filled with the lowest unused masks in lexicographic order of kept positions.
    """
    k = config.block_size
    energy = to_blocks(pad_to_blocks(weight.detach().to(torch.float64), k), k).reshape(-1, k * k) ** 2
    return build_pool_from_energy(energy, config, refine_iterations, method, candidates)


def _greedy_seed(energy: torch.Tensor, masks: torch.Tensor, p: int, batch: int = 16) -> list[int]:
    """Indices of ``p`` rows of ``masks`` chosen greedily for ``Σ_b max_chosen energy_b · mask``.

    Lazy greedy (Minoux): a candidate's gain never grows as the pool grows (submodularity), so its last
    computed gain bounds its gain now. Each step recomputes the gains of the ``batch`` candidates with
    the highest bounds and takes the best of them once it is at least every other bound; the result is
    the plain greedy pool (ties → the lower candidate index) at a fraction of the work.
    """
    kept = (masks.to(torch.float64) @ energy.T).contiguous()  # [C, B]: a candidate's kept energy per block
    best = torch.zeros(kept.shape[1], dtype=torch.float64)
    bound = kept.sum(1)  # exact gains of the first step
    taken = torch.zeros(kept.shape[0], dtype=torch.bool)
    chosen: list[int] = []
    for _ in range(min(p, kept.shape[0])):
        fresh = torch.zeros_like(taken)
        while True:
            stale = torch.nonzero(~taken & ~fresh).flatten()
            if stale.numel():
                top = stale[torch.sort(-bound[stale], stable=True).indices[:batch]]
                bound[top] = (kept[top] - best).clamp_min(0).sum(1)
                fresh[top] = True
            open_ = torch.nonzero(~taken).flatten()
            leader = open_[torch.sort(-bound[open_], stable=True).indices[0]]
            if fresh[leader]:
                break
        chosen.append(int(leader))
        taken[leader] = True
        best = torch.maximum(best, kept[leader])
    return chosen


def build_pool_from_energy(energy: torch.Tensor, config: PatternConfig, refine_iterations: int = 10,
                           method: str = "frequent", candidates: int = POOL_CANDIDATES) -> PatternPool:
    """The clustering of :func:`build_pattern_pool` on per-block energies ``energy[B, k²]`` (non-negative).

    Weight pools use squared magnitudes; attention-map pools use attention probabilities.
    """
    if method not in POOL_METHODS:
        raise ValueError(f"pool method must be one of {', '.join(POOL_METHODS)}, got {method!r}")
    if candidates < 1:
        raise ValueError(f"pool candidates must be >= 1, got {candidates}")
    k, n, p = config.block_size, config.kept_per_block, config.pool_size
    energy = energy.detach().to(torch.float64).reshape(-1, k * k)
    codes, counts = torch.unique(_mask_codes(top_n_masks(energy, n)), return_counts=True)  # codes ascending
    order = torch.sort(-counts, stable=True).indices  # most frequent first, ties keep ascending code
    if method == "greedy":
        pool_candidates = codes[order][: max(candidates, p)]
        picks = _greedy_seed(energy, _codes_to_masks(pool_candidates, k * k), p)
        chosen = pool_candidates[picks].tolist()
    else:
        chosen = codes[order][:p].tolist()
    if len(chosen) < p:
        present = set(chosen)
        for combo in itertools.combinations(range(k * k), n):
            code = sum(1 << q for q in combo)
            if code not in present:
                chosen.append(code)
                present.add(code)
                if len(chosen) == p:
                    break
    masks = _codes_to_masks(torch.tensor(chosen, dtype=torch.int64), k * k)

    for _ in range(refine_iterations):
        assignment = (energy @ masks.to(torch.float64).T).argmax(1)
        cluster_energy = torch.zeros(p, k * k, dtype=torch.float64).index_add_(0, assignment, energy)
        used = torch.bincount(assignment, minlength=p) > 0
        proposed = top_n_masks(cluster_energy, n)
        changed = False
        codes_now = _mask_codes(masks).tolist()
        for i in torch.nonzero(used).flatten().tolist():
            code = int(_mask_codes(proposed[i : i + 1])[0])
            if code != codes_now[i] and code not in codes_now:
                masks[i] = proposed[i]
                codes_now[i] = code
                changed = True
        if not changed:
            break
    return PatternPool(config, masks)


@dataclass
class PatternProjection:
    """Result of projecting a matrix onto a pool: the pruned matrix and one pattern id per block."""

    weight: torch.Tensor  # [N, K], pruned (unpadded)
    pattern_ids: torch.Tensor  # [N/k, K/k] int64 (padded block grid)


def project_onto_pool(weight: torch.Tensor, pool: PatternPool) -> PatternProjection:
    """Euclidean projection of ``weight`` onto the set of matrices whose every block follows a pool pattern.

    For each block the pattern keeping the most squared magnitude is the nearest point (ties → lowest
    pattern id); entries outside it are set to zero.
    """
    k = pool.config.block_size
    padded = pad_to_blocks(weight.detach(), k)
    blocks = to_blocks(padded, k)
    kept_energy = (blocks.to(torch.float64) ** 2) @ pool.masks.to(torch.float64).T
    ids = kept_energy.argmax(-1)
    pruned = from_blocks(blocks * pool.masks[ids].to(blocks.dtype), k)
    return PatternProjection(pruned[: weight.shape[0], : weight.shape[1]].contiguous(), ids)


def pack_pattern_blocks(weight: torch.Tensor, pattern_ids: torch.Tensor, pool: PatternPool) -> torch.Tensor:
    """Kept values of every block in pattern order: ``[N/k, K/k, n]`` (same dtype as ``weight``).

    Refuses a matrix with a nonzero entry outside its block's pattern (nothing is dropped silently).
    """
    k = pool.config.block_size
    blocks = to_blocks(pad_to_blocks(weight, k), k)
    if pattern_ids.shape != blocks.shape[:2]:
        raise ValueError(f"pattern_ids has shape {tuple(pattern_ids.shape)}, expected {tuple(blocks.shape[:2])}")
    masks = pool.masks[pattern_ids]
    outside = (blocks != 0) & ~masks
    if bool(outside.any()):
        bn, bk, pos = (int(v) for v in torch.nonzero(outside)[0])
        raise ValueError(f"block ({bn}, {bk}) has a nonzero weight at position {pos}, outside its pattern {int(pattern_ids[bn, bk])}")
    positions = pool.positions()[pattern_ids]  # [Nb, Kb, n]
    return torch.gather(blocks, -1, positions)


def unpack_pattern_blocks(values: torch.Tensor, pattern_ids: torch.Tensor, pool: PatternPool, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_pattern_blocks`: the dense ``[N, K]`` matrix."""
    k = pool.config.block_size
    positions = pool.positions()[pattern_ids]
    blocks = values.new_zeros(*pattern_ids.shape, k * k).scatter(-1, positions, values)
    return from_blocks(blocks, k)[: shape[0], : shape[1]].contiguous()
