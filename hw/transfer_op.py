"""LOAD and STORE: a region of DRAM into scratch or wide memory, and back."""

from amaranth import Module, Mux, Signal

from hw.commands import ErrorCause, Op, command_layout
from hw.op_ports import WIDE_LANES, WORD_BYTES, OpUnit


class TransferOp(OpUnit):
    """Runs a LOAD or a STORE command (``hw.commands``).

    Scratch transfers move whole words: ``local`` and ``bytes`` must be multiples of the word (a STORE's
    last word may be partial), else ``BAD_SIZE``. Wide transfers move one 32-bit value per word, from
    value ``local`` on. An operand past the end of its memory is ``OUT_OF_RANGE``. A LOAD is done when
    its last word is written, a STORE when the bus has answered its last write.

    The ports and parameters of :class:`hw.op_ports.OpUnit`.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        load = command_layout(Op.LOAD)(self.command)  # LOAD and STORE share a layout
        is_store = Signal()
        m.d.comb += is_store.eq(self.command[:8] == Op.STORE.value)
        words = Signal(32)
        m.d.comb += words.eq(Mux(load.wide, load.bytes >> 2, (load.bytes + WORD_BYTES - 1) >> 2))
        count = Signal(32)  # words moved (LOAD) or read from memory (STORE)
        local = Signal(32)
        out_valid = Signal()

        misaligned = ~load.wide & ((load.local[:2] != 0) | (~is_store & (load.bytes[:2] != 0)))
        wide_misaligned = load.wide & (load.bytes[:2] != 0)
        too_far = Mux(load.wide, load.local + words > cfg.wide_words, load.local + (words << 2) > cfg.scratch_bytes)

        m.d.comb += [self.reader.request.payload.address.eq(load.dram), self.reader.request.payload.words.eq(words),
                     self.writer.request.payload.address.eq(load.dram), self.writer.request.payload.bytes.eq(load.bytes)]
        # LOAD: each word read goes into memory as it arrives.
        m.d.comb += [self.scratch.waddr.eq((local >> 2) + count), self.scratch.wdata.eq(self.reader.data.payload),
                     self.wide.waddr.eq((local + count) >> 2),
                     self.wide.wdata.eq(self.reader.data.payload.replicate(WIDE_LANES))]
        # STORE: one read per word, a word register in front of the writer's data stream.
        lane = Signal(2)
        en = ~out_valid | self.writer.data.ready
        m.d.comb += [self.scratch.raddr.eq((local >> 2) + count), self.wide.raddr.eq((local + count) >> 2),
                     self.writer.data.valid.eq(out_valid),
                     self.writer.data.payload.eq(Mux(load.wide, self.wide.rdata.word_select(lane, 32), self.scratch.rdata))]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [count.eq(0), local.eq(load.local), self.cause.eq(ErrorCause.NONE), out_valid.eq(0)]
                    with m.If(misaligned | wide_misaligned):
                        m.d.sync += self.cause.eq(ErrorCause.BAD_SIZE)
                    with m.Elif(too_far):
                        m.d.sync += self.cause.eq(ErrorCause.OUT_OF_RANGE)
                    with m.Elif(words == 0):
                        pass  # a transfer of no bytes is done at once
                    with m.Elif(is_store):
                        m.d.sync += self.busy.eq(1)
                        m.next = "STORE_REQUEST"
                    with m.Else():
                        m.d.sync += self.busy.eq(1)
                        m.next = "LOAD_REQUEST"
            with m.State("LOAD_REQUEST"):
                m.d.comb += self.reader.request.valid.eq(1)
                with m.If(self.reader.request.ready):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.comb += self.reader.data.ready.eq(1)
                with m.If(self.reader.data.valid):
                    m.d.comb += [self.scratch.wen.eq(Mux(load.wide, 0, 0b1111)),
                                 self.wide.wen.eq(Mux(load.wide, 1 << (local + count)[:2], 0))]
                    m.d.sync += count.eq(count + 1)
                    with m.If(count == words - 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
            with m.State("STORE_REQUEST"):
                m.d.comb += self.writer.request.valid.eq(1)
                with m.If(self.writer.request.ready):
                    m.next = "STORE"
            with m.State("STORE"):
                with m.If(en):
                    m.d.comb += [self.scratch.ren.eq(1), self.wide.ren.eq(1)]
                    m.d.sync += [out_valid.eq(count != words), lane.eq((local + count)[:2])]
                    with m.If(count != words):
                        m.d.sync += count.eq(count + 1)
                with m.If(self.writer.done):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        return m
