"""Payload layouts of the engine's streams, derived from an :class:`EngineConfig`.

firmware_gen encodes beats with these same layouts (field offsets are read from them), so the
hardware and the memory images cannot drift apart.
"""

from amaranth import signed, unsigned
from amaranth.lib import data, enum

from hw.config import COUNT_BITS, EngineConfig
from core import golden


class Opcode(enum.Enum, shape=2):
    NOP = 0
    LOAD_PATTERN = 1  #: write ``positions`` into pattern table entry ``pattern_id``
    RUN = 2  #: compute ``tokens × (in_blocks·k) → out_blocks·k`` with the loaded pattern table


def pattern_layout(cfg: EngineConfig) -> data.ArrayLayout:
    """Kept positions of one pattern, in storage order: ``n × {row, col}`` inside the block."""
    coord = unsigned(cfg.coord_bits)
    return data.ArrayLayout(data.StructLayout({"row": coord, "col": coord}), cfg.pattern.kept_per_block)


def command_layout(cfg: EngineConfig) -> data.StructLayout:
    return data.StructLayout({
        "op": Opcode,
        "dense": 1,  # RUN: weights are dense blocks, ``dense_chunks`` beats per block
        "raw": 1,  # RUN: emit int32 accumulators (+bias) instead of requantized int8
        "wide": 1,  # RUN: requantize to WIDE_BITS (the residual branch ends) instead of int8
        "pattern_id": unsigned(cfg.id_bits),
        "positions": pattern_layout(cfg),
        "tokens": unsigned(COUNT_BITS),
        "in_blocks": unsigned(COUNT_BITS),
        "out_blocks": unsigned(COUNT_BITS),
    })


def weight_layout(cfg: EngineConfig) -> data.StructLayout:
    """One weight block (pattern mode) or one chunk of a dense block (dense mode)."""
    return data.StructLayout({
        "pattern": unsigned(cfg.id_bits),
        "values": data.ArrayLayout(signed(cfg.weight_bits), cfg.pattern.kept_per_block),
    })


def activation_layout(cfg: EngineConfig) -> data.StructLayout:
    """``k`` int8 activations of one token: one block column."""
    return data.StructLayout({"values": data.ArrayLayout(signed(8), cfg.pattern.block_size)})


def channel_params_layout(cfg: EngineConfig) -> data.StructLayout:
    """Bias and requantization parameters of the ``k`` output channels of one block row."""
    k = cfg.pattern.block_size
    return data.StructLayout({
        "bias": data.ArrayLayout(signed(golden.ACC_BITS), k),
        "multiplier": data.ArrayLayout(unsigned(golden.MULTIPLIER_BITS), k),
        "shift": data.ArrayLayout(unsigned(golden.SHIFT_MAX.bit_length()), k),
    })


def output_layout(cfg: EngineConfig) -> data.StructLayout:
    """``k`` outputs of one token: int8 results sign-extended, 24-bit results in wide mode, or int32
    accumulators in raw mode."""
    return data.StructLayout({"values": data.ArrayLayout(signed(golden.ACC_BITS), cfg.pattern.block_size)})
