"""NORM: residual add + LayerNorm over rows in wide and scratch memory, through :class:`ResidualLayerNorm`."""

from amaranth import Cat, Module, Signal

from hw.commands import ErrorCause, Op, command_layout
from hw.layer_norm import ResidualLayerNorm
from hw.op_ports import WORD_BYTES, OpUnit


class NormOp(OpUnit):
    """Runs a NORM command: γ/β from DRAM (two words per channel), then for each of ``tokens`` rows of
    ``width`` entries the branch's wide value (wide memory, from ``wide_src``) and the residual's byte
    (scratch, from ``residual``), one entry per cycle, into a :class:`~hw.layer_norm.ResidualLayerNorm`;
    its int8 results go to scratch from ``dst``, a byte per cycle. ``width`` beyond ``max_width``, or an
    operand past the end of its memory, is ``OUT_OF_RANGE``.

    The ports and parameters of :class:`hw.op_ports.OpUnit`.
    """

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.norm = norm = ResidualLayerNorm(max_width=cfg.max_width)
        c = command_layout(Op.NORM)(self.command)
        entries = Signal(32)
        m.d.comb += entries.eq(c.tokens * c.width)
        bad_shape = (c.width == 0) | (c.width > cfg.max_width) | (c.tokens == 0)
        too_far = ((c.wide_src + entries > cfg.wide_words) | (c.residual + entries > cfg.scratch_bytes)
                   | (c.dst + entries > cfg.scratch_bytes))

        # γ then β, one word each, make one params beat.
        gamma, half = Signal(32), Signal()
        m.d.comb += [self.reader.request.payload.address.eq(c.params), self.reader.request.payload.words.eq(2 * c.width),
                     norm.params.payload.eq(Cat(gamma[:len(norm.params.payload.gamma)], self.reader.data.payload)),
                     norm.params.valid.eq(self.reader.data.valid & half),
                     self.reader.data.ready.eq(~half | norm.params.ready)]
        with m.If(self.reader.data.valid & self.reader.data.ready):
            m.d.sync += [half.eq(~half), gamma.eq(self.reader.data.payload)]

        # One entry per cycle from both memories (one read stage), results a byte at a time.
        issued, written = Signal(32), Signal(32)
        in_valid = Signal()
        wide_lane, byte_lane = Signal(2), Signal(2)
        en = ~in_valid | norm.inputs.ready
        wide_at, residual_at, dst_at = c.wide_src + issued, c.residual + issued, c.dst + written
        m.d.comb += [
            self.wide.raddr.eq(wide_at >> 2), self.scratch.raddr.eq(residual_at >> 2),
            norm.inputs.payload.wide.eq(self.wide.rdata.word_select(wide_lane, 32)),
            norm.inputs.payload.residual.eq(self.scratch.rdata.word_select(byte_lane, 8)),
            norm.inputs.valid.eq(in_valid),
            norm.command.payload.width.eq(c.width), norm.command.payload.rows.eq(c.tokens), norm.command.payload.shift.eq(c.shift),
            self.scratch.waddr.eq(dst_at >> 2), self.scratch.wdata.eq(norm.outputs.payload.as_unsigned().replicate(WORD_BYTES)),
            norm.outputs.ready.eq(1),
        ]

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [issued.eq(0), written.eq(0), in_valid.eq(0), half.eq(0), self.cause.eq(ErrorCause.NONE)]
                    with m.If(bad_shape | too_far):
                        m.d.sync += self.cause.eq(ErrorCause.OUT_OF_RANGE)
                    with m.Else():
                        m.d.sync += self.busy.eq(1)
                        m.next = "COMMAND"
            with m.State("COMMAND"):
                m.d.comb += norm.command.valid.eq(1)
                with m.If(norm.command.ready):
                    m.next = "REQUEST"
            with m.State("REQUEST"):
                m.d.comb += self.reader.request.valid.eq(1)
                with m.If(self.reader.request.ready):
                    m.next = "RUN"
            with m.State("RUN"):
                with m.If(en):
                    m.d.comb += [self.scratch.ren.eq(1), self.wide.ren.eq(1)]
                    m.d.sync += [in_valid.eq(issued != entries), wide_lane.eq(wide_at[:2]), byte_lane.eq(residual_at[:2])]
                    with m.If(issued != entries):
                        m.d.sync += issued.eq(issued + 1)
                with m.If(norm.outputs.valid):
                    m.d.comb += self.scratch.wen.eq(1 << dst_at[:2])
                    m.d.sync += written.eq(written + 1)
                    with m.If(written == entries - 1):
                        m.d.sync += self.busy.eq(0)
                        m.next = "IDLE"
        return m
