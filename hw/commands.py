"""The accelerator's command set: one 64-byte command per operation, read from external memory.

Each command is a :class:`amaranth.lib.data.StructLayout` (:func:`command_layout`) of exactly
``COMMAND_BYTES · 8`` bits, little-endian in memory (bit 0 is bit 0 of the command's first byte), with
``op`` in its first byte. The sequencer decodes them with these layouts and firmware_gen encodes them
with the same ones, so field offsets cannot drift apart; ``docs/hardware.md`` lists every field
(:func:`markdown_table` writes that table).

Operands live in three address spaces:

* **DRAM** — byte addresses on the AXI4 master: weights, parameters, tables, masks, the input and the
  stored outputs (:mod:`hw.dram_formats` gives each region's byte layout).
* **scratch** — the on-chip int8 activation memory, byte addresses. A ``[tokens × features]`` operand
  is row-major with a row stride of its feature count; attention's Q, K, V and context name head 0,
  head ``h`` starts ``h · head_dim`` bytes later and rows are ``heads · head_dim`` apart.
* **wide** — the on-chip memory of 32-bit values (the branch-end linears' wide outputs, the
  classifier's logits), word addresses.
"""

from __future__ import annotations

from amaranth import unsigned
from amaranth.lib import data, enum

from hw.config import COUNT_BITS

#: Bytes of one command in memory.
COMMAND_BYTES = 64
#: Width of every address field (DRAM, scratch, wide).
ADDRESS_BITS = 32


class Op(enum.Enum, shape=8):
    """Operation codes. 0 is not an operation, so running into zeroed memory stops with an error."""

    MATMUL = 1  #: a pattern-sparse (or dense) linear layer on the MAC array
    ATTENTION = 2  #: multi-head self-attention, one head after another
    NORM = 3  #: residual add + LayerNorm
    TABLE = 4  #: a 256-entry table activation (GELU, tanh)
    LOAD = 5  #: DRAM → scratch or wide
    STORE = 6  #: scratch or wide → DRAM
    BARRIER = 7  #: wait until every earlier command has finished
    END = 8  #: finish the run: ``done`` in the status register


class ErrorCause(enum.Enum, shape=4):
    """What the error register reports when a run stops with an error."""

    NONE = 0
    BAD_OPCODE = 1  #: a command's op is not an :class:`Op`
    BAD_SIZE = 2  #: a region's size is not the one the command's shape implies
    OUT_OF_RANGE = 3  #: an operand runs past the end of scratch or wide memory, or a shape beyond the hardware
    BUS_ERROR = 4  #: the AXI4 master got SLVERR or DECERR


_FIELDS: dict[Op, dict[str, object]] = {
    Op.MATMUL: {
        "dense": 1, "raw": 1, "wide": 1, "activate": 1, "_flags": 4,
        "tokens": 16, "in_features": 16, "out_features": 16, "pool_size": 16, "_pad": 16,
        "src": ADDRESS_BITS, "dst": ADDRESS_BITS, "weights": ADDRESS_BITS, "weight_bytes": ADDRESS_BITS, "table": ADDRESS_BITS,
    },
    Op.ATTENTION: {
        "pruned": 1, "_flags": 7, "tokens": 16,
        "heads": 8, "head_dim": 8, "exp_shift": 8, "context_shift": 8,
        "exp_multiplier": 16, "context_multiplier": 16, "pool_size": 16, "_pad": 16,
        "q": ADDRESS_BITS, "k": ADDRESS_BITS, "v": ADDRESS_BITS, "dst": ADDRESS_BITS,
        "length": ADDRESS_BITS, "constants": ADDRESS_BITS,
    },
    Op.NORM: {
        "ends_layer": 1, "_flags": 7, "tokens": 16, "width": 16, "shift": 8, "_pad": 8,
        "wide_src": ADDRESS_BITS, "residual": ADDRESS_BITS, "dst": ADDRESS_BITS, "params": ADDRESS_BITS,
    },
    Op.TABLE: {
        "_flags": 8, "_pad": 16, "count": ADDRESS_BITS, "src": ADDRESS_BITS, "dst": ADDRESS_BITS, "table": ADDRESS_BITS,
    },
    Op.LOAD: {
        "wide": 1, "_flags": 7, "_pad": 16, "bytes": ADDRESS_BITS, "dram": ADDRESS_BITS, "local": ADDRESS_BITS,
    },
    Op.STORE: {
        "wide": 1, "_flags": 7, "_pad": 16, "bytes": ADDRESS_BITS, "dram": ADDRESS_BITS, "local": ADDRESS_BITS,
    },
    Op.BARRIER: {},
    Op.END: {},
}

#: What each field means, for the documentation table.
FIELD_DOCS = {
    "dense": "1: dense k×k blocks (no pattern ids); 0: pattern blocks",
    "raw": "1: int32 accumulators + bias, no requantization (the classifier's logits)",
    "wide": "MATMUL: output to wide memory (24-bit branch ends, int32 raw); LOAD/STORE: the local side is wide memory",
    "tokens": "rows of the operation (sequence length; 1 for the pooler and classifier)",
    "in_features": "K", "out_features": "N", "pool_size": "patterns in the region's pattern table",
    "src": "scratch address of the input rows", "dst": "scratch (or wide) address of the output rows",
    "weights": "DRAM address of the linear region (hw.dram_formats.linear_region)",
    "weight_bytes": "its size; checked against the shape (BAD_SIZE)",
    "activate": "MATMUL: the int8 outputs go through the 256-byte table at `table` on their way to scratch (GELU or tanh "
                "fused into the linear); not with `wide` or `raw` (BAD_SIZE)",
    "pruned": "attention-map pattern pruning on", "heads": "heads", "head_dim": "d, a multiple of the block size",
    "exp_shift": "integer exponential's shift", "context_shift": "P·V requantization shift",
    "exp_multiplier": "integer exponential's multiplier", "context_multiplier": "P·V requantization multiplier",
    "q": "scratch address of Q, head 0", "k": "scratch address of K, head 0", "v": "scratch address of V, head 0",
    "length": "DRAM address of the sequence's valid-token count (u32); the tokens after them are padding",
    "constants": "DRAM address of the attention constants region (exp table, attention pool)",
    "ends_layer": "this NORM ends an encoder layer (counted in the LAYER register)",
    "width": "channels per row (hidden size)", "shift": "LayerNorm output shift",
    "wide_src": "wide address of the branch's output rows", "residual": "scratch address of the residual's int8 rows",
    "params": "DRAM address of γ/β (hw.dram_formats.norm_region)",
    "count": "int8 values to map", "table": "DRAM address of the 256-byte table (hw.dram_formats: the table region)",
    "bytes": "bytes moved: whole words (4 bytes), but a scratch STORE's last word may be partial", "dram": "DRAM address", "local": "scratch byte or wide word address",
}


def transfer_misaligned(op: Op, wide: bool, size: int, local: int) -> bool:
    """LOAD/STORE alignment rule (``BAD_SIZE`` when broken): scratch transfers start on a word and move
    whole words, except a scratch STORE whose last word may be partial; wide transfers move whole
    32-bit values."""
    if wide:
        return size % 4 != 0
    return local % 4 != 0 or (op is Op.LOAD and size % 4 != 0)


def table_misaligned(count: int, src: int, dst: int) -> bool:
    """TABLE rule (``BAD_SIZE`` when broken): whole scratch words."""
    return count % 4 != 0 or src % 4 != 0 or dst % 4 != 0


def norm_shape_bad(width: int, tokens: int, max_width: int) -> bool:
    """NORM rule (``OUT_OF_RANGE`` when broken): at least one row of 1 … ``max_width`` entries."""
    return not (1 <= width <= max_width and tokens >= 1)


def matmul_misaligned(in_features: int, out_features: int, tokens: int, src: int, dst: int, block_size: int) -> bool:
    """MATMUL rule (``BAD_SIZE`` when broken): input rows of whole blocks starting on a word, and outputs
    that land a block on a word: ``dst`` on a word, and rows of whole words unless there is one row."""
    return in_features % block_size != 0 or src % 4 != 0 or dst % 4 != 0 or (tokens > 1 and out_features % 4 != 0)


def matmul_tokens_beyond_engine(tokens, lanes: int):
    """MATMUL rule (``OUT_OF_RANGE`` when broken): the tokens, rounded up to whole tiles of ``lanes``, fit
    the token count of one engine RUN (``COUNT_BITS``). Written for ints and for Amaranth values."""
    return tokens > (1 << COUNT_BITS) - lanes


def matmul_activation_bad(activate: bool, wide: bool, raw: bool) -> bool:
    """MATMUL rule (``BAD_SIZE`` when broken): a fused table maps int8 outputs only."""
    return bool(activate) and bool(wide or raw)


def attention_misaligned(head_dim: int, *addresses: int) -> bool:
    """ATTENTION rule (``BAD_SIZE`` when broken): heads of whole words, Q, K, V and context on words."""
    return head_dim % 4 != 0 or any(a % 4 != 0 for a in addresses)


def command_layout(op: Op) -> data.StructLayout:
    """``op`` (8 bits), then the operation's fields in order, padded to ``COMMAND_BYTES``. Fields whose
    names start with ``_`` are reserved: written as zero, ignored."""
    fields = {"op": Op, **{name: unsigned(width) for name, width in _FIELDS[op].items()}}
    used = 8 + sum(_FIELDS[op].values())
    if used > COMMAND_BYTES * 8:
        raise AssertionError(f"{op.name} needs {used} bits, more than a command's {COMMAND_BYTES * 8}")
    fields["_reserved"] = unsigned(COMMAND_BYTES * 8 - used)
    return data.StructLayout(fields)


def command_fields(op: Op) -> list[str]:
    """The fields a user sets (reserved ones left out)."""
    return [name for name in _FIELDS[op] if not name.startswith("_")]


def markdown_table() -> str:
    """One row per field of every operation: op, field, bit offset, width, meaning."""
    lines = ["| op | code | field | bits | meaning |", "|---|---:|---|---|---|"]
    for op in Op:
        layout = command_layout(op)
        names = command_fields(op)
        if not names:
            lines.append(f"| {op.name} | {op.value} | — | | no fields |")
        for name in names:
            field = layout[name]
            lines.append(f"| {op.name} | {op.value} | `{name}` | {field.offset}–{field.offset + field.width - 1} | {FIELD_DOCS[name]} |")
    return "\n".join(lines)


def write_doc_tables(path) -> None:
    """Rewrite the command and register tables of ``docs/hardware.md`` from the code."""
    from core.atomic import write_between_markers
    from hw import registers

    write_between_markers(path, "<!-- commands:start -->", "<!-- commands:end -->", markdown_table())
    write_between_markers(path, "<!-- registers:start -->", "<!-- registers:end -->", registers.markdown_table())


if __name__ == "__main__":
    from pathlib import Path

    write_doc_tables(Path(__file__).resolve().parents[1] / "docs" / "hardware.md")
