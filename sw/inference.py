"""Inference paths for pruned linear layers: the same ``y = x Wᵀ + b`` computed by different kernels.

Seed 002 asks, for each sparsity structure, which kernel can turn it into speed at inference. Every
path here stores the pruned weight in its own format and computes the product of the dense masked
layer; ``dense_weight()`` gives the dense matrix back exactly.

============  =================================================================================
path          format and kernel
============  =================================================================================
``dense``     the masked weight as a dense matrix, ``F.linear`` (BLAS GEMM); the baseline
``csr``       element-wise: ``torch.sparse_csr`` weight, ``W_csr @ xᵀ`` (MKL sparse × dense)
``bsr``       block-wise: ``torch.sparse_bsr`` with b×b blocks; only nonzero blocks are stored
``ell``       row-compressed gather (ELLPACK): every output row keeps ``L`` (value, column) pairs,
              ``y[t, o] = Σ_l V[o, l] · x[t, C[o, l]]``; N:M and vector-wise sparsity have equal
              counts per row, so ``L`` is exactly the kept count and nothing is padded
``group``     group-wise (seed 002 §4, Algorithms 1–2): ``g`` consecutive output rows share kept
              columns, so each group is ``index_select`` of its columns and a dense GEMM; all
              groups run as one ``bmm``
``pattern``   pattern-grouped: every row of every k×k block keeps a subset ``S`` of the block's k
              columns (a pattern is k such row slices); all row slices with the same ``S``
              (at most 2ᵏ − 1 kinds, 15 for 4×4) are computed together as one gather of
              ``x[:, c·k + S]``, one multiply by the stored values and one scatter-add into
              their output rows. It does exactly the kept multiply-adds, like the accelerator's
              per-block column multiplexer, but on a CPU each kept weight costs a gathered load
              where a GEMM reuses registers and cache: see docs/results/inference.md
============  =================================================================================

Exactness: with integer-valued inputs and weights in float64 every path returns exactly the dense
result (all partial sums are integers below 2⁵³, so the summation order does not matter); with general
float inputs the paths agree to rounding.

The gather paths (``ell``, ``pattern``) gather from the transposed input (each input feature a
contiguous row of tokens) one stored column at a time and accumulate with ``addcmul_`` into token
tiles that stay in cache; nothing of size ``tokens × nonzeros`` is ever materialised.

``convert_model(model, path)`` swaps every selected ``nn.Linear`` of a (pruned) model for the path's
module and ``to_dense_model(model)`` swaps them back.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from core.pattern import PatternConfig

GATHER_ELEMENTS = 1 << 18  # accumulator tile of the gather paths (256 K values: 1 MB in float32)
TILE_TOKENS = 256  # tokens per tile of the gather paths
GROUP_GATHER_ELEMENTS = 1 << 21  # gathered inputs per token tile of the group path (8 MB in float32)


class SparseLinear(nn.Module, ABC):
    """Base of the paths: ``forward`` takes ``[..., in_features]`` and returns ``[..., out_features]``.

    Parameters (all paths)
    ----------------------
    in_features, out_features : int
    bias : Tensor ``[out_features]`` or None
    """

    path = ""

    def __init__(self, in_features: int, out_features: int, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"{self.path} linear: input has {x.shape[-1]} features, layer takes {self.in_features}")
        y = self._matmul(x.reshape(-1, self.in_features))
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    @abstractmethod
    def _matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, in] → [T, out]`` without the bias, in the path's own way."""

    @abstractmethod
    def dense_weight(self) -> torch.Tensor:
        """The dense masked weight ``[out, in]`` the path stores, exactly."""

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def _check_weight(weight: torch.Tensor, path: str) -> torch.Tensor:
    if weight.dim() != 2:
        raise ValueError(f"{path} linear: weight must be 2-D [out, in], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise ValueError(f"{path} linear: weight must be floating point, got {weight.dtype}")
    return weight.detach()


def _support(weight: torch.Tensor, mask: torch.Tensor | None, path: str) -> torch.Tensor:
    """The kept positions: ``mask`` when given (kept weights that happen to be 0 stay kept), else ``W ≠ 0``."""
    if mask is None:
        return weight != 0
    if mask.shape != weight.shape:
        raise ValueError(f"{path} linear: mask shape {tuple(mask.shape)} differs from weight shape {tuple(weight.shape)}")
    outside = (weight != 0) & ~mask.bool()
    if outside.any():
        raise ValueError(f"{path} linear: {int(outside.sum())} nonzero weights lie outside the mask")
    return mask.bool()


def _token_tiles(x: torch.Tensor):
    """``(token slice, xs)`` per tile of up to ``TILE_TOKENS`` tokens, ``xs = x[tile].T`` contiguous
    (``[in, t]``): a gathered input feature is then a contiguous run of tokens."""
    for t0 in range(0, x.shape[0], TILE_TOKENS):
        tokens = slice(t0, min(t0 + TILE_TOKENS, x.shape[0]))
        yield tokens, x[tokens].T.contiguous()


def _gather_dot(xs: torch.Tensor, columns_t: torch.Tensor, values_t: torch.Tensor):
    """``acc[r, :] = Σ_l values[r, l] · xs[columns[r, l], :]``, yielded per tile of stored rows.

    ``columns_t``/``values_t`` are the transposed ``[width, rows]`` (values ``[width, rows, 1]``).
    Each tile is one gather + fused multiply-add (``addcmul_``) per ``l`` into an accumulator of at most
    ``GATHER_ELEMENTS`` values, which stays in cache; gathering all ``rows × width × t`` operands first
    and reducing them with ``bmm`` measured 7× slower here. Yields ``(row slice, acc [r, t])``.
    """
    width, rows = columns_t.shape
    tile_rows = max(1, GATHER_ELEMENTS // xs.shape[1])
    for r0 in range(0, rows, tile_rows):
        part = slice(r0, min(r0 + tile_rows, rows))
        acc = xs.new_zeros(part.stop - part.start, xs.shape[1])
        for lane in range(width):
            acc.addcmul_(values_t[lane, part], xs.index_select(0, columns_t[lane, part]))
        yield part, acc


def _lanes_first(columns: torch.Tensor, values: torch.Tensor):
    return columns.T.contiguous(), values.T.unsqueeze(2).contiguous()


class DenseLinear(SparseLinear):
    """The masked weight as a dense matrix: one BLAS GEMM, zeros multiplied like any weight."""

    path = "dense"

    def __init__(self, weight, bias=None, mask=None):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        self.register_buffer("weight", weight * _support(weight, mask, self.path))

    def _matmul(self, x):
        return F.linear(x, self.weight)

    def dense_weight(self):
        return self.weight.clone()


class CSRLinear(SparseLinear):
    """Element-wise sparsity: compressed sparse rows, ``W_csr @ xᵀ`` (MKL on CPU)."""

    path = "csr"

    def __init__(self, weight, bias=None, mask=None):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        support = _support(weight, mask, self.path)
        rows = support.sum(1)
        self.register_buffer("crow", torch.cat([rows.new_zeros(1), rows.cumsum(0)]))
        self.register_buffer("col", support.nonzero()[:, 1].contiguous())
        self.register_buffer("values", weight[support].contiguous())

    def _csr(self) -> torch.Tensor:
        return torch.sparse_csr_tensor(self.crow, self.col, self.values, (self.out_features, self.in_features), check_invariants=False)

    def _matmul(self, x):
        return (self._csr() @ x.T).T

    def dense_weight(self):
        return self._csr().to_dense()


class BSRLinear(SparseLinear):
    """Block-wise sparsity: blocks of ``block_size × block_size``; only blocks with a kept weight are stored."""

    path = "bsr"

    def __init__(self, weight, bias=None, mask=None, block_size: int = PatternConfig.block_size):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        b = block_size
        if b < 1 or weight.shape[0] % b or weight.shape[1] % b:
            raise ValueError(f"bsr linear: weight {tuple(weight.shape)} is not a whole number of {b}×{b} blocks")
        support = _support(weight, mask, self.path)
        blocks = support.reshape(weight.shape[0] // b, b, weight.shape[1] // b, b).any(3).any(1)
        nonzero = blocks.nonzero()
        per_row = blocks.sum(1)
        self.block_size = b
        self.register_buffer("crow", torch.cat([per_row.new_zeros(1), per_row.cumsum(0)]))
        self.register_buffer("col", nonzero[:, 1].contiguous())
        values = (weight * support).reshape(weight.shape[0] // b, b, weight.shape[1] // b, b).permute(0, 2, 1, 3)
        self.register_buffer("values", values[nonzero[:, 0], nonzero[:, 1]].contiguous())

    def _bsr(self) -> torch.Tensor:
        return torch.sparse_bsr_tensor(self.crow, self.col, self.values, (self.out_features, self.in_features), check_invariants=False)

    def _matmul(self, x):
        return (self._bsr() @ x.T).T

    def dense_weight(self):
        return self._bsr().to_dense()


class ELLLinear(SparseLinear):
    """Row-compressed gather (ELLPACK): ``L`` (value, column) pairs per output row, zero-valued padding.

    N:M and vector-wise (along the input) sparsity keep the same count in every row, so they pad
    nothing; ``padding`` reports how many stored pairs are padding.
    """

    path = "ell"

    def __init__(self, weight, bias=None, mask=None):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        support = _support(weight, mask, self.path)
        counts = support.sum(1)
        width = int(counts.max()) if counts.numel() else 0
        # stable sort puts each row's kept columns first, in column order; the rest is padding (value 0)
        order = torch.sort((~support).to(torch.int8), dim=1, stable=True).indices[:, :width]
        valid = torch.arange(width).unsqueeze(0) < counts.unsqueeze(1)
        self.register_buffer("columns", torch.where(valid, order, 0).contiguous())
        self.register_buffer("values", torch.where(valid, weight.gather(1, order), 0).contiguous())
        self.padding = int((~valid).sum())

    def _matmul(self, x):
        columns_t, values_t = _lanes_first(self.columns, self.values)
        out = x.new_empty(x.shape[0], self.out_features)
        for tokens, xs in _token_tiles(x):
            for rows, acc in _gather_dot(xs, columns_t, values_t):
                out[tokens, rows] = acc.T
        return out

    def dense_weight(self):
        w = self.values.new_zeros(self.out_features, self.in_features)
        return w.scatter_add(1, self.columns, self.values)


class GroupLinear(SparseLinear):
    """Group-wise sparsity (seed 002 §4): ``group_size`` consecutive output rows share their kept columns.

    Each group stores its column list ``C_g`` and a dense ``[g, |C_g|]`` weight; the product is
    ``x[:, C_g] @ W_gᵀ`` for every group, batched as one ``bmm`` (groups with fewer kept columns are
    padded with zero-weight columns; a shorter last group with zero rows).
    """

    path = "group"

    def __init__(self, weight, bias=None, mask=None, group_size: int = 16):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        if group_size < 1:
            raise ValueError(f"group linear: group_size must be positive, got {group_size}")
        support = _support(weight, mask, self.path)
        out, g = weight.shape[0], group_size
        groups = -(-out // g)
        padded = torch.zeros(groups * g, weight.shape[1], dtype=torch.bool)
        padded[:out] = support
        used = padded.view(groups, g, -1).any(1)  # [G, in]: the union of the group's kept columns
        width = int(used.sum(1).max())
        order = torch.sort((~used).to(torch.int8), dim=1, stable=True).indices[:, :width]
        w = weight.new_zeros(groups * g, weight.shape[1])
        w[:out] = weight * support
        self.group_size = g
        self.register_buffer("columns", order.contiguous())  # padding columns carry zero weights
        self.register_buffer("weights", w.view(groups, g, -1).gather(2, order.unsqueeze(1).expand(groups, g, width)).contiguous())

    def _matmul(self, x):
        groups, g, width = self.weights.shape
        tokens = x.shape[0]
        xt = x.T  # gathering rows of the transposed input copies contiguous runs of tokens
        out = x.new_empty(groups, g, tokens)
        tile = min(tokens, max(1, GROUP_GATHER_ELEMENTS // max(groups * width, 1)))
        for t0 in range(0, tokens, tile):
            xs = xt[:, t0:t0 + tile].contiguous()
            selected = xs.index_select(0, self.columns.reshape(-1)).view(groups, width, -1)  # [G, L, t]
            out[:, :, t0:t0 + tile] = torch.bmm(self.weights, selected)  # [G, g, L] @ [G, L, t]
        return out.view(groups * g, tokens)[: self.out_features].T

    def dense_weight(self):
        groups, g, width = self.weights.shape
        w = self.weights.new_zeros(groups, g, self.in_features)
        w.scatter_(2, self.columns.unsqueeze(1).expand(groups, g, width), self.weights)
        return w.reshape(groups * g, -1)[: self.out_features].clone()


class PatternLinear(SparseLinear):
    """Pattern sparsity, computed grouped by row slice (see the module docstring).

    A k×k block's row ``i`` keeps a subset ``S`` of the block's columns; ``(S, output row o, column
    block c)`` triples with the same ``S`` are stored together: their output rows, input columns
    ``c·k + S`` and the ``|S|`` weights. The weight's dimensions must be multiples of ``block_size``.
    """

    path = "pattern"

    def __init__(self, weight, bias=None, mask=None, block_size: int = PatternConfig.block_size):
        weight = _check_weight(weight, self.path)
        super().__init__(weight.shape[1], weight.shape[0], bias)
        k = block_size
        if k < 1 or weight.shape[0] % k or weight.shape[1] % k:
            raise ValueError(f"pattern linear: weight {tuple(weight.shape)} is not a whole number of {k}×{k} blocks")
        support = _support(weight, mask, self.path)
        out, cb = weight.shape[0], weight.shape[1] // k
        slices = support.view(out, cb, k)  # row o, column block c → kept columns of that row slice
        codes = (slices.to(torch.int64) << torch.arange(k)).sum(-1)  # the subset S as a k-bit number
        self.block_size = k
        self.slice_kinds = []
        for code in sorted(set(codes.unique().tolist()) - {0}):
            offsets = torch.tensor([j for j in range(k) if code >> j & 1])
            rows, blocks = (codes == code).nonzero(as_tuple=True)
            columns = blocks.unsqueeze(1) * k + offsets  # [count, |S|]
            name = f"slice{code}"
            self.register_buffer(f"{name}_rows", rows.contiguous())
            self.register_buffer(f"{name}_columns", columns.contiguous())
            self.register_buffer(f"{name}_values", weight[rows.unsqueeze(1), columns].contiguous())
            self.slice_kinds.append(name)

    def _groups(self):
        for name in self.slice_kinds:
            yield getattr(self, f"{name}_rows"), getattr(self, f"{name}_columns"), getattr(self, f"{name}_values")

    def _matmul(self, x):
        kinds = [(rows, *_lanes_first(columns, values)) for rows, columns, values in self._groups()]
        out = x.new_empty(x.shape[0], self.out_features)
        for tokens, xs in _token_tiles(x):
            acc_out = xs.new_zeros(self.out_features, xs.shape[1])  # [out, t]: one token tile
            for rows, columns_t, values_t in kinds:
                for part, acc in _gather_dot(xs, columns_t, values_t):
                    acc_out.index_add_(0, rows[part], acc)
            out[tokens] = acc_out.T
        return out

    def dense_weight(self):
        w = torch.zeros(self.out_features, self.in_features, dtype=self.bias.dtype if self.bias is not None else torch.float32)
        for rows, columns, values in self._groups():
            w = w.to(values.dtype)
            w[rows.unsqueeze(1), columns] = values
        return w


PATHS: dict[str, type[SparseLinear]] = {
    cls.path: cls for cls in (DenseLinear, CSRLinear, BSRLinear, ELLLinear, GroupLinear, PatternLinear)
}


def sparse_linear(path: str, weight: torch.Tensor, bias: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  **options) -> SparseLinear:
    """Build the module of ``path`` (one of :data:`PATHS`) from a pruned weight; ``options`` are the
    path's own (``block_size`` for bsr/pattern, ``group_size`` for group)."""
    if path not in PATHS:
        raise ValueError(f"unknown inference path {path!r}; known: {', '.join(PATHS)}")
    try:
        return PATHS[path](weight, bias, mask, **options)
    except TypeError as error:
        raise ValueError(f"inference path {path!r}: bad options {options}: {error}") from None


# ----------------------------------------------------------------------------------- whole models


def convert_model(model: nn.Module, path: str, include: Iterable[str] = (r"encoder\.layer\.\d+\.",),
                  exclude: Iterable[str] = (), **options) -> list[str]:
    """Replace every selected ``nn.Linear`` (regexes on module names, as in ``sw.pipeline``) by the
    ``path`` module built from its weight, in place. Masks from ``sw.masking`` parametrizations are
    baked in first. Returns the converted names."""
    from sw.masking import bake_masks

    bake_masks(model)
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)
             and any(re.search(p, n) for p in include) and not any(re.search(p, n) for p in exclude)]
    if not names:
        raise ValueError(f"no linear layer matches include={list(include)} / exclude={list(exclude)}")
    for name in names:
        linear = model.get_submodule(name)
        _replace(model, name, sparse_linear(path, linear.weight, linear.bias, **options))
    return names


def to_dense_model(model: nn.Module) -> list[str]:
    """Replace every :class:`SparseLinear` by an equal ``nn.Linear``, in place; returns their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, SparseLinear)]
    for name in names:
        module = model.get_submodule(name)
        weight = module.dense_weight()
        linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                           dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if module.bias is not None:
                linear.bias.copy_(module.bias)
        _replace(model, name, linear)
    return names


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)
