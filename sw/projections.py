"""Euclidean projections onto the structured-sparsity and quantization sets of ADMM training.

ADMM's Z-update is ``Z ← Π_S(W + U)``: the point of the constraint set ``S`` nearest to ``W + U`` in
Frobenius norm. Every class here computes that point exactly (tests compare against brute-force
enumeration of ``S`` on small matrices). Sparsity projections keep a support and copy the values on it,
so the nearest point of a support set is the support that keeps the most squared magnitude.

Weights are ``[out, in]`` (``torch.nn.Linear`` layout). Row, column and channel projections also accept
N-D weights ``[out, in, *kernel]``: a row is ``W[a]`` (a filter), a channel ``W[:, b]`` and a column
(filter shape) ``W[:, b, c, d]``; on 2-D weights channels and columns coincide.

Activation-aware pattern projection: with ``weighting: "activation"`` a :class:`Pattern` projects in the
norm ``‖(W − Z) · diag(s)‖_F`` instead, ``s`` a per-input-channel scale (the RMS of the layer's input
over calibration tokens, normalized to mean square 1; see ``sw.importance``): position (a, b) counts
``s_b² · W[a, b]²``, so a weight that reads a loud input channel is worth more than one of the same
magnitude on a quiet channel (the output error of pruning it is ``|W[a, b]| · s_b`` per token, the
measure of Wanda, Sun et al. 2023). ADMM then runs in the same norm (its penalty and proximal step).

Counts: a density ``d`` over ``T`` candidates keeps ``floor(d·T + 0.5)`` of them. Ties go to the lower
index everywhere (stable sorts), so every projection is deterministic: ADMM replicas in several
processes compute the same ``Z`` from the same ``W + U`` without talking to each other.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field

import torch

from core.quantize import level_max, row_scales
from core.pattern import POOL_METHODS, PatternConfig, PatternPool, build_pattern_pool, from_blocks, pad_to_blocks, to_blocks


WEIGHTINGS = ("magnitude", "activation")  # Pattern: the plain Frobenius norm, or the activation-scaled one


def kept_count(total: int, density: float) -> int:
    return int(math.floor(density * total + 0.5))


def _check_density(density: float) -> None:
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")


def _top_k_mask(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of the last dim (ties → lower index)."""
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :k]
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(-1, order, True)


@dataclass
class Projected:
    """``value``: the nearest point of the set; ``mask``: its structural support (True = may be nonzero)."""

    value: torch.Tensor
    mask: torch.Tensor


class Projection(ABC):
    """Base class: ``project(weight) -> Projected``; ``to_dict()`` / :func:`projection_from_dict`."""

    kind: str = ""

    @abstractmethod
    def project(self, weight: torch.Tensor) -> Projected:
        """The nearest point of the set and its support."""

    def __call__(self, weight: torch.Tensor) -> Projected:
        return self.project(weight)

    def to_dict(self) -> dict:
        return {"kind": self.kind, **asdict(self)}

    def _support(self, weight: torch.Tensor, mask: torch.Tensor) -> Projected:
        return Projected(weight * mask.to(weight.dtype), mask)


@dataclass
class _DensityProjection(Projection):
    """A projection whose only parameter is the kept ``density``."""

    density: float = 0.5

    def __post_init__(self):
        _check_density(self.density)


@dataclass
class Unstructured(_DensityProjection):
    """At most ``density·numel`` nonzeros in the whole layer (per-layer, not global, sparsity)."""

    kind = "unstructured"

    def project(self, weight):
        flat = weight.detach().reshape(-1)
        mask = _top_k_mask(flat.abs(), kept_count(flat.numel(), self.density))
        return self._support(weight, mask.reshape(weight.shape))


@dataclass
class VectorWise(Projection):
    """Vectors of ``vector_size`` consecutive weights along ``axis`` each keep ``kept_per_vector``.

    ``axis=1`` cuts every row (input features) into vectors; ``axis=0`` every column. The matrix
    dimension along ``axis`` must be a multiple of ``vector_size``.
    """

    vector_size: int = 4
    kept_per_vector: int = 2
    axis: int = 1
    kind = "vector"

    def __post_init__(self):
        if not 0 <= self.kept_per_vector <= self.vector_size or self.vector_size < 1:
            raise ValueError(f"need 0 ≤ kept_per_vector ≤ vector_size, got {self.kept_per_vector} of {self.vector_size}")
        if self.axis not in (0, 1):
            raise ValueError(f"axis must be 0 or 1, got {self.axis}")

    def project(self, weight):
        if weight.dim() != 2:
            raise ValueError(f"{self.kind} projection needs a 2-D weight, got shape {tuple(weight.shape)}")
        w = weight.detach() if self.axis == 1 else weight.detach().T
        if w.shape[1] % self.vector_size:
            raise ValueError(
                f"{self.kind} projection: dimension {w.shape[1]} along axis {self.axis} is not a multiple of "
                f"vector size {self.vector_size}"
            )
        vectors = w.reshape(w.shape[0], -1, self.vector_size)
        mask = _top_k_mask(vectors.abs(), self.kept_per_vector).reshape(w.shape)
        return self._support(weight, mask if self.axis == 1 else mask.T)


@dataclass
class NM(VectorWise):
    """N:M sparsity: every ``m`` consecutive input weights of a row keep ``n`` (vector-wise along rows).

    ``NM(n, m)``: the vector fields are derived from ``n`` and ``m`` and are not arguments, so
    ``NM(1, 4)`` means 1 of 4 (not a vector size of 1).
    """

    vector_size: int = field(default=4, init=False)
    kept_per_vector: int = field(default=2, init=False)
    axis: int = field(default=1, init=False)
    n: int = 2
    m: int = 4
    kind = "nm"

    def __post_init__(self):
        self.vector_size, self.kept_per_vector, self.axis = self.m, self.n, 1
        super().__post_init__()

    def to_dict(self):
        return {"kind": self.kind, "n": self.n, "m": self.m}


def _slice_energy(weight: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    return (weight.detach().to(torch.float64) ** 2).sum(dim=dims)


@dataclass
class Rows(_DensityProjection):
    """Filter-wise: at most ``density`` of the rows (output channels) are nonzero."""

    kind = "rows"

    def project(self, weight):
        energy = _slice_energy(weight, tuple(range(1, weight.dim())))
        keep = _top_k_mask(energy, kept_count(energy.numel(), self.density))
        return self._support(weight, keep.reshape(-1, *[1] * (weight.dim() - 1)).expand(weight.shape))


@dataclass
class Channels(_DensityProjection):
    """Channel-wise: at most ``density`` of the input channels ``W[:, b]`` are nonzero."""

    kind = "channels"

    def project(self, weight):
        dims = (0, *range(2, weight.dim()))
        energy = _slice_energy(weight, dims)
        keep = _top_k_mask(energy, kept_count(energy.numel(), self.density))
        return self._support(weight, keep.reshape(1, -1, *[1] * (weight.dim() - 2)).expand(weight.shape))


@dataclass
class Columns(_DensityProjection):
    """Shape-wise / column: at most ``density`` of the fibers ``W[:, b, c, d]`` (columns in 2-D) are nonzero."""

    kind = "columns"

    def project(self, weight):
        energy = _slice_energy(weight, (0,)).reshape(-1)
        keep = _top_k_mask(energy, kept_count(energy.numel(), self.density))
        return self._support(weight, keep.reshape(1, *weight.shape[1:]).expand(weight.shape))


@dataclass
class BlockWise(Projection):
    """Block-wise: the matrix is cut into ``block_rows × block_cols`` blocks, ``density`` of them are kept.

    Blocks at the bottom/right edge may be partial (the matrix is zero-padded for the cut); every block,
    partial or not, is one candidate.
    """

    block_rows: int = 4
    block_cols: int = 4
    density: float = 0.5
    kind = "blocks"

    def __post_init__(self):
        _check_density(self.density)
        if self.block_rows < 1 or self.block_cols < 1:
            raise ValueError(f"block shape must be positive, got {self.block_rows}×{self.block_cols}")

    def project(self, weight):
        if weight.dim() != 2:
            raise ValueError(f"blocks projection needs a 2-D weight, got shape {tuple(weight.shape)}")
        rows, cols = weight.shape
        br, bc = self.block_rows, self.block_cols
        nr, nc = -(-rows // br), -(-cols // bc)
        padded = weight.detach().new_zeros(nr * br, nc * bc)
        padded[:rows, :cols] = weight.detach()
        energy = _slice_energy(padded.reshape(nr, br, nc, bc), (1, 3)).reshape(-1)
        keep = _top_k_mask(energy, kept_count(energy.numel(), self.density)).reshape(nr, nc)
        mask = keep.repeat_interleave(br, 0).repeat_interleave(bc, 1)[:rows, :cols]
        return self._support(weight, mask)


@dataclass
class GroupWise(Projection):
    """Group-wise: consecutive ``group_size`` output rows share one set of kept input columns.

    Each group keeps ``density`` of the columns (those with the largest norm over the group's rows), so
    at inference a group is an ``index_select`` of its columns followed by a dense GEMM. ``group_size``
    equal to the output size is column pruning; a last, shorter group is allowed.
    """

    group_size: int = 16
    density: float = 0.5
    kind = "groups"

    def __post_init__(self):
        _check_density(self.density)
        if self.group_size < 1:
            raise ValueError(f"group_size must be positive, got {self.group_size}")

    def project(self, weight):
        if weight.dim() != 2:
            raise ValueError(f"groups projection needs a 2-D weight, got shape {tuple(weight.shape)}")
        rows, cols = weight.shape
        g = self.group_size
        groups = -(-rows // g)
        padded = weight.detach().new_zeros(groups * g, cols)
        padded[:rows] = weight.detach()
        energy = _slice_energy(padded.reshape(groups, g, cols), (1,))
        keep = _top_k_mask(energy, kept_count(cols, self.density))
        return self._support(weight, keep.repeat_interleave(g, 0)[:rows])


@dataclass
class Pattern(Projection):
    """Pattern sparsity (``core.pattern``): every k×k block keeps one of the ``pool_size`` patterns.

    The pool is built from the matrix it first projects (clustering of per-block top-n masks, seeded by
    ``pool_method``: ``"frequent"`` or ``"greedy"``, see :func:`core.pattern.build_pattern_pool`). Pool
    rebuilding during ADMM is the caller's choice (``ADMM`` rebuilds it from ``W + U`` every
    ``pool_rebuild_every`` Z-updates and freezes it at hard pruning): given a pool, the projection is
    exact. ``pool`` and ``pattern_ids`` of the last projection are kept for export.
    """

    block_size: int = PatternConfig.block_size
    kept_per_block: int = PatternConfig.kept_per_block
    pool_size: int = PatternConfig.pool_size
    pool_method: str = "frequent"
    weighting: str = "magnitude"
    pool: PatternPool | None = field(default=None, repr=False, compare=False)
    column_scale: torch.Tensor | None = field(default=None, repr=False, compare=False)
    pattern_ids: torch.Tensor | None = field(default=None, repr=False, compare=False)
    kind = "pattern"

    def __post_init__(self):
        self.config = PatternConfig(self.block_size, self.kept_per_block, self.pool_size)
        if self.pool_method not in POOL_METHODS:
            raise ValueError(f"pattern pool_method must be one of {', '.join(POOL_METHODS)}, got {self.pool_method!r}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"pattern weighting must be one of {', '.join(WEIGHTINGS)}, got {self.weighting!r}")

    def to_dict(self):
        spec = {"kind": self.kind, "block_size": self.block_size, "kept_per_block": self.kept_per_block, "pool_size": self.pool_size}
        # defaults stay out, so specs (and study fingerprints) written before these options are unchanged
        if self.pool_method != "frequent":
            spec["pool_method"] = self.pool_method
        if self.weighting != "magnitude":
            spec["weighting"] = self.weighting
        return spec

    def set_column_scale(self, scale: torch.Tensor) -> None:
        """The per-input-channel scale ``s`` of ``weighting: "activation"`` (any positive scale; it is
        normalized to mean square 1, so ADMM's ρ keeps its meaning)."""
        if self.weighting != "activation":
            raise ValueError(f"column scales are for weighting 'activation'; this projection weighs by {self.weighting!r}")
        scale = scale.detach().to(torch.float64).flatten()
        if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()) or not bool((scale > 0).any()):
            raise ValueError("column scales must be finite, ≥ 0 and not all zero")
        self.column_scale = scale / scale.pow(2).mean().sqrt()

    def metric(self, weight: torch.Tensor) -> torch.Tensor | None:
        """The per-entry factor ``s`` (broadcasting over ``weight``'s rows) of the projection's norm, or
        None for the plain Frobenius norm."""
        if self.weighting == "magnitude":
            return None
        if self.column_scale is None:
            raise ValueError("pattern weighting 'activation' needs the column scales first (set_column_scale; the "
                             "recipe measures them on calibration batches)")
        if self.column_scale.numel() != weight.shape[-1]:
            raise ValueError(f"{self.column_scale.numel()} column scales for a weight of {weight.shape[-1]} input columns")
        return self.column_scale.to(weight.device, weight.dtype)

    def _scored(self, weight: torch.Tensor) -> torch.Tensor:
        """``W · diag(s)``: the matrix whose squared entries are the projection's per-position costs."""
        s = self.metric(weight)
        return weight if s is None else weight * s

    def rebuild_pool(self, weight: torch.Tensor) -> None:
        self.pool = build_pattern_pool(self._scored(weight.detach()), self.config, method=self.pool_method)

    def _choose(self, blocks: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """Pattern id per block: the pattern keeping the most (weighted) squared magnitude."""
        return ((scored.to(torch.float64) ** 2) @ self.pool.masks.to(torch.float64).T).argmax(-1)

    def project(self, weight):
        if weight.dim() != 2:
            raise ValueError(f"pattern projection needs a 2-D weight, got shape {tuple(weight.shape)}")
        if self.pool is None:
            self.rebuild_pool(weight)
        k = self.block_size
        blocks = to_blocks(pad_to_blocks(weight.detach(), k), k)
        scored = to_blocks(pad_to_blocks(self._scored(weight.detach()), k), k)
        self.pattern_ids = self._choose(blocks, scored)
        value_blocks = self._block_values(blocks)
        masks = self.pool.masks[self.pattern_ids]
        rows, cols = weight.shape
        mask = from_blocks(masks, k)[:rows, :cols]
        value = from_blocks(value_blocks * masks.to(blocks.dtype), k)[:rows, :cols]
        return Projected(value.contiguous(), mask.contiguous())

    def _block_values(self, blocks: torch.Tensor) -> torch.Tensor:
        return blocks


@dataclass
class Quantize(Projection):
    """Symmetric integer levels per output channel: ``Z[a] ∈ s_a · {−q, …, q}``, ``q = 2^(bits−1) − 1``.

    The scale of each row is fixed from the point being projected (``s_a = max|W[a]| / q``, 1 for an
    all-zero row), as the int8 export does; for that scale the nearest level is rounding with
    saturation, so the projection onto the grid is exact. (Optimizing the scales too has no closed form.)
    """

    bits: int = 8
    kind = "quantize"

    def __post_init__(self):
        level_max(self.bits)  # validates

    def scales(self, weight: torch.Tensor) -> torch.Tensor:
        return row_scales(weight, self.bits)

    def quantize(self, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        q = level_max(self.bits)
        s = scale.reshape(-1, *[1] * (weight.dim() - 1))
        return torch.round(weight.detach() / s).clamp(-q, q) * s

    def project(self, weight):
        return Projected(self.quantize(weight, self.scales(weight)), torch.ones_like(weight, dtype=torch.bool))


@dataclass
class PatternQuantize(Pattern):
    """Pattern sparsity and ``bits``-bit levels together: the exact projection onto the intersection.

    With the row scales fixed (as in :class:`Quantize`), keeping position p costs ``(w_p − q(w_p))²`` and
    pruning it costs ``w_p²``; the nearest point picks, per block, the pattern with the largest summed gain
    ``w_p² − (w_p − q(w_p))²`` over its kept positions — not always the pattern of largest kept energy.
    """

    bits: int = 8
    kind = "pattern_quantize"

    def __post_init__(self):
        super().__post_init__()
        self.quantizer = Quantize(self.bits)

    def to_dict(self):
        return {**super().to_dict(), "kind": self.kind, "bits": self.bits}

    def project(self, weight):
        if weight.dim() != 2:
            raise ValueError(f"pattern projection needs a 2-D weight, got shape {tuple(weight.shape)}")
        self._quantized = self.quantizer.quantize(weight, self.quantizer.scales(weight))
        return super().project(weight)

    def _choose(self, blocks, scored):
        k = self.block_size
        q = to_blocks(pad_to_blocks(self._quantized, k), k).to(torch.float64)
        w = blocks.to(torch.float64)
        gain = w**2 - (w - q) ** 2
        s = self.metric(self._quantized)
        if s is not None:  # the weighted norm: every position's gain times s_b²
            gain = gain * to_blocks(pad_to_blocks(s.to(torch.float64).expand_as(self._quantized) ** 2, k), k)
        return (gain @ self.pool.masks.to(torch.float64).T).argmax(-1)

    def _block_values(self, blocks):
        k = self.block_size
        return to_blocks(pad_to_blocks(self._quantized.to(blocks.dtype), k), k)


PROJECTIONS: dict[str, type[Projection]] = {
    cls.kind: cls
    for cls in (Unstructured, VectorWise, NM, Rows, Channels, Columns, BlockWise, GroupWise, Pattern, Quantize, PatternQuantize)
}


def projection_from_dict(spec: dict) -> Projection:
    """Build a projection from ``{"kind": ..., **parameters}`` (the JSON form of ``to_dict``)."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in PROJECTIONS:
        raise ValueError(f"unknown projection kind {kind!r}; known: {', '.join(sorted(PROJECTIONS))}")
    try:
        return PROJECTIONS[kind](**spec)
    except TypeError as error:
        raise ValueError(f"bad parameters for projection {kind!r}: {error}") from None
