"""The ports an operation unit of the accelerator uses: the on-chip memories, the AXI reader and writer,
and its command. The top (:mod:`hw.accelerator`) gives them to the unit whose command runs."""

from amaranth import unsigned
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.axi_reader import read_request_layout
from hw.axi_writer import write_request_layout
from hw.commands import ADDRESS_BITS, COMMAND_BYTES, ErrorCause

#: Width of a data word on the AXI bus and of a scratch word.
WORD_BITS = 32
#: Bytes of a scratch word; values of a wide word.
WORD_BYTES = WORD_BITS // 8
WIDE_LANES = 4


def memory_port(depth: int, word_bits: int, lanes: int) -> wiring.Signature:
    """One read port (data one cycle after ``raddr``/``ren``) and one write port (``wen``: a bit per
    lane of ``word_bits / lanes`` bits) of an on-chip memory, seen from the unit."""
    return wiring.Signature({
        "raddr": Out(range(depth)), "ren": Out(1), "rdata": In(word_bits),
        "waddr": Out(range(depth)), "wdata": Out(word_bits), "wen": Out(lanes),
    })


def reader_port() -> wiring.Signature:
    return wiring.Signature({"request": Out(stream.Signature(read_request_layout(ADDRESS_BITS))),
                             "data": In(stream.Signature(WORD_BITS))})


def writer_port() -> wiring.Signature:
    return wiring.Signature({"request": Out(stream.Signature(write_request_layout(ADDRESS_BITS))),
                             "data": Out(stream.Signature(WORD_BITS)), "done": In(1)})


def op_members(scratch_words: int, wide_rows: int) -> dict:
    """Every operation unit's members: ``command`` (the 64-byte command, held while it runs), ``start``
    (one cycle), ``busy``, ``cause`` (the error it ends with, NONE when fine) and the shared resources."""
    return {
        "command": In(unsigned(COMMAND_BYTES * 8)), "start": In(1), "busy": Out(1), "cause": Out(ErrorCause),
        "scratch": Out(memory_port(scratch_words, WORD_BITS, WORD_BYTES)),
        "wide": Out(memory_port(wide_rows, 32 * WIDE_LANES, WIDE_LANES)),
        "reader": Out(reader_port()), "writer": Out(writer_port()),
    }


class OpUnit(wiring.Component):
    """The base of the accelerator's operation units: the ports of :func:`op_members`, sized by the
    config, which subclasses read as ``self._config``.

    Parameters
    ----------
    config : AcceleratorConfig

    Interface attributes
    --------------------
    command : In(COMMAND_BYTES · 8)
        The command being run, held by the sequencer while the unit is busy.
    start : In(1)
        One cycle: check the command and begin (or end at once with ``cause`` set).
    busy : Out(1)
    cause : Out(ErrorCause)
        How the last command ended (NONE: fine).
    scratch, wide : Out(memory_port)
        The on-chip memories.
    reader, writer : Out(reader_port), Out(writer_port)
        The AXI4 master's read and write sides.
    """

    def __init__(self, config):
        self._config = config
        super().__init__(op_members(config.scratch_bytes // WORD_BYTES, config.wide_words // WIDE_LANES))
