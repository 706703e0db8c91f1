"""The table activations of the encoder (GELU, the pooler's tanh), ``core.integer.table_lookup``."""

from amaranth import Module, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from hw.config import refuse

#: Entries of a table: one per int8 input.
TABLE_ENTRIES = 2**8
#: Width of a command's beat count: a whole activation memory of beats (a linear's output, or a TABLE command's words).
BEAT_BITS = 32


def table_command_layout() -> data.StructLayout:
    """Load a new table first (``TABLE_ENTRIES`` ``table`` beats) when ``load``, then map ``beats`` beats."""
    return data.StructLayout({"load": 1, "beats": unsigned(BEAT_BITS)})


def table_beat_layout(elements: int) -> data.ArrayLayout:
    return data.ArrayLayout(signed(8), elements)


class TableActivation(wiring.Component):
    """``y = table[x + 128]`` for ``elements`` int8 values per beat.

    The 256-entry int8 table (the artifact's GELU or tanh table of one layer) is loaded through ``table``
    when a command asks; ``elements`` read ports of the one table (block RAM copies on an FPGA) map a
    whole beat per cycle.

    Parameters
    ----------
    elements : int
        Values per beat (the engine's block size ``k`` matches its output beats).

    Interface attributes
    --------------------
    command : In(stream.Signature(table_command_layout))
        Taken when the previous command's beats have all gone in.
    table : In(stream.Signature(signed(8)))
        ``TABLE_ENTRIES`` entries, for input −128 first, after a command with ``load``.
    inputs : In(stream.Signature(table_beat_layout))
    outputs : Out(stream.Signature(table_beat_layout))
        One cycle after each input beat, in order; a stalled output holds the input.
    """

    def __init__(self, *, elements: int):
        if not isinstance(elements, int) or elements < 1:
            refuse(self, f"elements must be a positive integer, got {elements!r}")
        self._elements = elements
        super().__init__({
            "command": In(stream.Signature(table_command_layout())),
            "table": In(stream.Signature(signed(8))),
            "inputs": In(stream.Signature(table_beat_layout(elements))),
            "outputs": Out(stream.Signature(table_beat_layout(elements))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.memory = memory = Memory(shape=signed(8), depth=TABLE_ENTRIES, init=[])
        write = memory.write_port()
        reads = [memory.read_port() for _ in range(self._elements)]

        en = Signal()
        m.d.comb += en.eq(~self.outputs.valid | self.outputs.ready)
        beats = Signal(BEAT_BITS)
        entry = Signal(range(TABLE_ENTRIES))
        take = Signal()
        for i, read in enumerate(reads):
            m.d.comb += [read.addr.eq(self.inputs.payload[i] - golden.INT8_MIN), read.en.eq(en),
                         self.outputs.payload[i].eq(read.data)]
        with m.If(en):
            m.d.sync += self.outputs.valid.eq(take)

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.command.ready.eq(1)
                with m.If(self.command.valid):
                    m.d.sync += [beats.eq(self.command.payload.beats), entry.eq(0)]
                    with m.If(self.command.payload.load):
                        m.next = "LOAD"
                    with m.Elif(self.command.payload.beats != 0):
                        m.next = "MAP"
            with m.State("LOAD"):
                m.d.comb += [self.table.ready.eq(1), write.addr.eq(entry), write.data.eq(self.table.payload),
                             write.en.eq(self.table.valid)]
                with m.If(self.table.valid):
                    m.d.sync += entry.eq(entry + 1)
                    with m.If(entry == TABLE_ENTRIES - 1):
                        m.next = "LOADED"
            with m.State("LOADED"):
                m.next = "IDLE"
                with m.If(beats != 0):
                    m.next = "MAP"
            with m.State("MAP"):
                m.d.comb += [self.inputs.ready.eq(en), take.eq(self.inputs.valid & en)]
                with m.If(take):
                    m.d.sync += beats.eq(beats - 1)
                    with m.If(beats == 1):
                        m.next = "IDLE"
        return m
