"""TABLE: a 256-entry table activation over a run of scratch bytes, through :class:`TableActivation`."""

from amaranth import Module, Signal

from hw.commands import ErrorCause, Op, command_layout
from hw.op_ports import WORD_BYTES, OpUnit
from hw.table_activation import TABLE_ENTRIES, TableActivation


class TableOp(OpUnit):
    """Runs a TABLE command: reads the table from DRAM into a :class:`~hw.table_activation.TableActivation`
    (one word of four entries at a time), then maps ``count`` bytes from ``src`` to ``dst`` a word per
    cycle. ``src == dst`` maps in place (every word is read before it is written). ``count``, ``src`` and
    ``dst`` must be whole words (``BAD_SIZE``) inside scratch (``OUT_OF_RANGE``).

    The ports and parameters of :class:`hw.op_ports.OpUnit`.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.table = table = TableActivation(elements=WORD_BYTES)
        c = command_layout(Op.TABLE)(self.command)
        words = Signal(32)
        m.d.comb += words.eq(c.count >> 2)
        misaligned = (c.count[:2] != 0) | (c.src[:2] != 0) | (c.dst[:2] != 0)
        too_far = (c.src + c.count > cfg.scratch_bytes) | (c.dst + c.count > cfg.scratch_bytes)

        # The table: each word read from DRAM is four entries, lowest byte first.
        entry = Signal(range(WORD_BYTES))
        m.d.comb += [self.reader.request.payload.address.eq(c.table), self.reader.request.payload.words.eq(TABLE_ENTRIES // WORD_BYTES),
                     table.table.payload.eq(self.reader.data.payload.word_select(entry, 8)), table.table.valid.eq(self.reader.data.valid),
                     self.reader.data.ready.eq(table.table.ready & (entry == WORD_BYTES - 1))]
        with m.If(table.table.valid & table.table.ready):
            m.d.sync += entry.eq(entry + 1)

        # Scratch words into the unit (one read stage in front), results back into scratch.
        issued, written = Signal(32), Signal(32)
        in_valid = Signal()
        en = ~in_valid | table.inputs.ready
        m.d.comb += [self.scratch.raddr.eq((c.src >> 2) + issued), table.inputs.payload.eq(self.scratch.rdata),
                     table.inputs.valid.eq(in_valid),
                     self.scratch.waddr.eq((c.dst >> 2) + written), self.scratch.wdata.eq(table.outputs.payload),
                     table.outputs.ready.eq(1), table.command.payload.load.eq(1), table.command.payload.beats.eq(words)]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [issued.eq(0), written.eq(0), in_valid.eq(0), entry.eq(0), self.cause.eq(ErrorCause.NONE)]
                    with m.If(misaligned):
                        m.d.sync += self.cause.eq(ErrorCause.BAD_SIZE)
                    with m.Elif(too_far):
                        m.d.sync += self.cause.eq(ErrorCause.OUT_OF_RANGE)
                    with m.Elif(words != 0):
                        m.d.sync += self.busy.eq(1)
                        m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += table.command.valid.eq(1)
                with m.If(table.command.ready):
                    m.next = "REQUEST"
            with m.State("REQUEST"):
                m.d.comb += self.reader.request.valid.eq(1)
                with m.If(self.reader.request.ready):
                    m.next = "MAP"
            with m.State("MAP"):
                with m.If(en):
                    m.d.comb += self.scratch.ren.eq(1)
                    m.d.sync += in_valid.eq(issued != words)
                    with m.If(issued != words):
                        m.d.sync += issued.eq(issued + 1)
                with m.If(table.outputs.valid):
                    m.d.comb += self.scratch.wen.eq(0b1111)
                    m.d.sync += written.eq(written + 1)
                    with m.If(written == words - 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
        return m
