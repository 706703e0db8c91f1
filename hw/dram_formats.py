"""Byte layouts of the regions the accelerator reads from external memory (all little-endian).

One definition for three readers: the hardware's fetch units take sizes and offsets from here,
firmware_gen packs regions with these dtypes, and the command model (``sim/command_model.py``) unpacks
them with the same dtypes.

Linear region (``MATMUL.weights``), for ``N × K`` weights in ``k×k`` blocks, ``Nb = ⌈N/k⌉`` block rows
and ``Kb = ⌈K/k⌉`` block columns (padding rule of ``core.pattern``)::

    pattern table   P × n u8       pattern mode only: kept positions (row·k + col), ascending
    per block row   k × CHANNEL    bias i32, multiplier u16, shift u8, 0 u8 of its k output channels
                    Kb × block     pattern mode: id u8, n × i8 values in the pattern's position order;
                                   dense mode: k² × i8 values, row-major

Attention constants region (``ATTENTION.constants``)::

    exp table       2^F × u16      core.encoder.exp_table (F = EXP_FRACTION_BITS)
    attention pool  Pa × ⌈k²/8⌉ u8 pruning on only: mask of each pattern, bit i = position i

Norm region (``NORM.params``): ``width × (γ i32, β i32)``. Table region (``TABLE.table``, ``MATMUL.table``): 256 × i8,
input −128 first. Length word (``ATTENTION.length``): u32, the valid tokens; the rest is padding.
"""

from __future__ import annotations

import numpy as np

from core.encoder import EXP_FRACTION_BITS

#: Bias, multiplier and shift of one output channel.
CHANNEL = np.dtype([("bias", "<i4"), ("multiplier", "<u2"), ("shift", "u1"), ("reserved", "u1")])
#: γ and β of one LayerNorm channel.
NORM_CHANNEL = np.dtype([("gamma", "<i4"), ("beta", "<i4")])
#: One exp table entry.
EXP_ENTRY = np.dtype("<u2")
#: Largest pool a u8 pattern id can name.
MAX_POOL = 256


def blocks(features: int, block_size: int) -> int:
    return -(-features // block_size)


def pattern_block_dtype(kept: int) -> np.dtype:
    return np.dtype([("id", "u1"), ("values", "i1", (kept,))])


def dense_block_dtype(block_size: int) -> np.dtype:
    return np.dtype([("values", "i1", (block_size * block_size,))])


def block_row_dtype(in_features: int, block_size: int, kept: int, dense: bool) -> np.dtype:
    """One block row: its ``k`` channels' parameters, then its ``Kb`` blocks."""
    block = dense_block_dtype(block_size) if dense else pattern_block_dtype(kept)
    return np.dtype([("channels", CHANNEL, (block_size,)), ("blocks", block, (blocks(in_features, block_size),))])


def pattern_table_bytes(pool_size: int, kept: int, dense: bool) -> int:
    return 0 if dense else pool_size * kept


def linear_region_bytes(out_features: int, in_features: int, *, block_size: int, kept: int, pool_size: int, dense: bool) -> int:
    """Size of a linear region: the pattern table, then every block row."""
    rows = blocks(out_features, block_size)
    return pattern_table_bytes(pool_size, kept, dense) + rows * block_row_dtype(in_features, block_size, kept, dense).itemsize


def attention_pool_bytes(block_size: int) -> int:
    """Bytes of one attention pattern's mask."""
    return -(-block_size * block_size // 8)


def attention_constants_bytes(pool_size: int, block_size: int, pruned: bool) -> int:
    return 2**EXP_FRACTION_BITS * EXP_ENTRY.itemsize + (pool_size * attention_pool_bytes(block_size) if pruned else 0)


def norm_region_bytes(width: int) -> int:
    return width * NORM_CHANNEL.itemsize
