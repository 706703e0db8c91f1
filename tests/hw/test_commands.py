"""The command set and the register map: layouts of exactly one command, every field round trips
through encode/decode, and docs/hardware.md shows the tables the code defines."""

import random
from pathlib import Path

import pytest

from firmware_gen.compiler import CompileError, decode_command, encode_command
from hw import registers
from hw.commands import COMMAND_BYTES, Op, command_fields, command_layout, markdown_table

DOC = Path(__file__).resolve().parents[2] / "docs" / "hardware.md"


@pytest.mark.parametrize("op", list(Op))
def test_every_field_round_trips(op):
    assert command_layout(op).size == COMMAND_BYTES * 8
    rng = random.Random(op.value)
    layout = command_layout(op)
    fields = {name: rng.randrange(1 << layout[name].width) for name in command_fields(op)}
    blob = encode_command({"op": op, **fields})
    assert len(blob) == COMMAND_BYTES and blob[0] == op.value
    assert decode_command(blob) == (op, fields)


def test_a_field_too_wide_or_unknown_is_refused():
    with pytest.raises(ValueError, match="field tokens = 65536 does not fit 16-bit unsigned"):
        encode_command({"op": Op.MATMUL, "tokens": 1 << 16})
    with pytest.raises(CompileError, match=r"NORM has no fields \['heads'\]"):
        encode_command({"op": Op.NORM, "heads": 1})


def test_an_unknown_op_byte_decodes_to_none():
    assert decode_command(bytes(COMMAND_BYTES)) == (None, {})


def test_register_fields_do_not_overlap_and_offsets_are_distinct():
    offsets = [off for _, off, _ in registers.REGISTER_MAP]
    assert len(set(offsets)) == len(offsets) and all(off % 4 == 0 for off in offsets)
    for _, _, register in registers.REGISTER_MAP:
        used = 0
        for f in register.fields:
            bits = ((1 << f.width) - 1) << f.offset
            assert not used & bits and f.offset + f.width <= 32
            used |= bits


def test_the_documentation_shows_the_tables_of_the_code():
    text = DOC.read_text()
    assert markdown_table() in text
    assert registers.markdown_table() in text
