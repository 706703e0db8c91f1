"""The accelerator top: registers, sequencer, AXI4 master, on-chip memories and the operation units."""

from contextlib import contextmanager

from amaranth import Cat, Module, ResetInserter, Signal, unsigned
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.axi import axi4_lite_slave_members, axi4_master_members, axi4_read_members, axi4_write_members, forward
from hw.axi_reader import AxiReader
from hw.axi_writer import AxiWriter
from hw.commands import ADDRESS_BITS, COMMAND_BYTES, ErrorCause, Op, command_layout
from hw.config import AcceleratorConfig, refuse
from hw.control_registers import ControlRegisters
from hw.op_ports import WIDE_LANES, WORD_BITS, WORD_BYTES
from hw.attention_op import AttentionOp
from hw.matmul_op import MatmulOp
from hw.norm_op import NormOp
from hw.table_op import TableOp
from hw.transfer_op import TransferOp

#: Width of the AXI4-Lite address.
CONTROL_ADDRESS_BITS = 8


class Accelerator(wiring.Component):
    """Runs a command stream (``hw.commands``) from external memory.

    The host writes ``COMMAND_ADDR`` and sets ``CONTROL.start``; the sequencer reads one 64-byte command,
    hands it to the unit of its operation, waits until that unit is done, and goes on with the next,
    until END (``STATUS.done``) or an error (``STATUS.error``, ``ERROR.cause``, ``ERROR.command``).
    ``CONTROL.reset`` abandons a run: the AXI bursts in flight are finished (reads discarded, writes with
    no byte strobed) before the core is idle, so the bus is never left mid-burst.

    Operation units (one per file, all with :func:`hw.op_ports.op_members`): LOAD/STORE
    (:class:`hw.transfer_op.TransferOp`), TABLE (:class:`hw.table_op.TableOp`), NORM
    (:class:`hw.norm_op.NormOp`), MATMUL (:class:`hw.matmul_op.MatmulOp`), ATTENTION
    (:class:`hw.attention_op.AttentionOp`); BARRIER and END are the sequencer's own. A first byte
    that is not an :class:`~hw.commands.Op` stops the run with ``BAD_OPCODE``.

    Parameters
    ----------
    config : AcceleratorConfig

    Interface attributes
    --------------------
    s_axil_* :
        Control and status (``hw/registers.py``), AXI4-Lite.
    m_axi_* :
        External memory, AXI4, 32-bit data.
    irq : Out(1)
        ``STATUS.done | STATUS.error``.
    running : Out(8)
        The op code of the command a unit is running, 0 while the sequencer fetches or decodes (for
        cycle accounting in simulation; leave it unconnected in a system).
    """

    def __init__(self, config: AcceleratorConfig):
        if config.engine.pattern.block_size * 8 != WORD_BITS:
            refuse(self, f"the accelerator top moves {WORD_BYTES}-byte words: block_size must be {WORD_BYTES}, "
                         f"got {config.engine.pattern.block_size}")
        self._config = config
        super().__init__({
            **axi4_lite_slave_members("s_axil", address_bits=CONTROL_ADDRESS_BITS),
            **axi4_master_members("m_axi", address_bits=ADDRESS_BITS, data_bits=WORD_BITS),
            "irq": Out(1),
            "running": Out(8),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.registers = regs = ControlRegisters(address_bits=CONTROL_ADDRESS_BITS)
        m.submodules.reader = reader = AxiReader(address_bits=ADDRESS_BITS, data_bits=WORD_BITS)
        m.submodules.writer = writer = AxiWriter(address_bits=ADDRESS_BITS, data_bits=WORD_BITS)
        forward(m, self, regs, axi4_lite_slave_members("s_axil", address_bits=CONTROL_ADDRESS_BITS))
        forward(m, self, reader, axi4_read_members("m_axi", address_bits=ADDRESS_BITS, data_bits=WORD_BITS))
        forward(m, self, writer, axi4_write_members("m_axi", address_bits=ADDRESS_BITS, data_bits=WORD_BITS))

        m.submodules.scratch = scratch = Memory(shape=unsigned(WORD_BITS), depth=cfg.scratch_bytes // WORD_BYTES, init=[])
        m.submodules.wide = wide = Memory(shape=unsigned(32 * WIDE_LANES), depth=cfg.wide_words // WIDE_LANES, init=[])
        scratch_w, scratch_r = scratch.write_port(granularity=8), scratch.read_port()
        wide_w, wide_r = wide.write_port(granularity=32), wide.read_port()

        transfer = TransferOp(cfg)
        units = {Op.LOAD: transfer, Op.STORE: transfer, Op.TABLE: TableOp(cfg), Op.NORM: NormOp(cfg), Op.MATMUL: MatmulOp(cfg),
                 Op.ATTENTION: AttentionOp(cfg)}
        distinct = []
        abort_units = Signal()
        for op, unit in units.items():
            if unit is not None and unit not in distinct:
                distinct.append(unit)
                m.submodules[f"op_{op.name.lower()}"] = ResetInserter(abort_units)(unit)

        busy, done, error = Signal(), Signal(), Signal()
        cause = Signal(ErrorCause)
        index = Signal(16)
        layers = Signal(16)
        cycles = Signal(64)
        address = Signal(ADDRESS_BITS)
        command = Signal(COMMAND_BYTES * 8)
        word = Signal(range(COMMAND_BYTES // WORD_BYTES + 1))
        active = Signal(range(len(distinct) + 1))  # 0: the sequencer itself
        aborting = Signal()
        m.d.comb += [
            regs.cycles.eq(cycles), regs.status_busy.eq(busy), regs.status_done.eq(done), regs.status_error.eq(error),
            regs.error_cause.eq(cause), regs.error_command.eq(index), regs.layer_layer.eq(layers),
            regs.layer_commands.eq(index), self.irq.eq(done | error),
        ]
        with m.If(busy):
            m.d.sync += cycles.eq(cycles + 1)

        # The active unit gets the memories, the reader and the writer.
        for i, unit in enumerate(distinct, start=1):
            m.d.comb += unit.command.eq(command)
            with m.If(active == i):
                m.d.comb += [
                    scratch_r.addr.eq(unit.scratch.raddr), scratch_r.en.eq(unit.scratch.ren),
                    scratch_w.addr.eq(unit.scratch.waddr), scratch_w.data.eq(unit.scratch.wdata), scratch_w.en.eq(unit.scratch.wen),
                    wide_r.addr.eq(unit.wide.raddr), wide_r.en.eq(unit.wide.ren),
                    wide_w.addr.eq(unit.wide.waddr), wide_w.data.eq(unit.wide.wdata), wide_w.en.eq(unit.wide.wen),
                    reader.request.payload.eq(unit.reader.request.payload), reader.request.valid.eq(unit.reader.request.valid),
                    unit.reader.request.ready.eq(reader.request.ready),
                    unit.reader.data.payload.eq(reader.data.payload), unit.reader.data.valid.eq(reader.data.valid),
                    reader.data.ready.eq(unit.reader.data.ready),
                    writer.request.payload.eq(unit.writer.request.payload), writer.request.valid.eq(unit.writer.request.valid),
                    unit.writer.request.ready.eq(writer.request.ready),
                    writer.data.payload.eq(unit.writer.data.payload), writer.data.valid.eq(unit.writer.data.valid),
                    unit.writer.data.ready.eq(writer.data.ready), unit.writer.done.eq(writer.done),
                ]
            m.d.comb += [unit.scratch.rdata.eq(scratch_r.data), unit.wide.rdata.eq(wide_r.data)]

        bus_error = reader.error | writer.error
        m.d.comb += [reader.abort.eq(aborting), writer.abort.eq(aborting)]
        op = Signal(8)
        m.d.comb += op.eq(command[:8])

        @contextmanager
        def state(name):
            """A state of the sequencer; CONTROL.reset leaves every state but ABORT for ABORT."""
            with m.State(name):
                yield
                if name != "ABORT":
                    with m.If(regs.control_reset):
                        m.d.comb += abort_units.eq(1)
                        m.d.sync += [done.eq(0), error.eq(0), cause.eq(ErrorCause.NONE), active.eq(0)]
                        m.next = "ABORT"

        with m.FSM():
            with state("IDLE"):
                with m.If(regs.control_start):
                    m.d.sync += [busy.eq(1), done.eq(0), error.eq(0), cause.eq(ErrorCause.NONE), index.eq(0), layers.eq(0),
                                 cycles.eq(0), address.eq(regs.command_addr_address)]
                    m.d.comb += [reader.clear.eq(1), writer.clear.eq(1)]
                    m.next = "FETCH"
            with state("FETCH"):
                m.d.comb += [reader.request.valid.eq(1), reader.request.payload.address.eq(address),
                             reader.request.payload.words.eq(COMMAND_BYTES // WORD_BYTES)]
                with m.If(reader.request.ready):
                    m.d.sync += word.eq(0)
                    m.next = "COMMAND"
            with state("COMMAND"):
                m.d.comb += reader.data.ready.eq(1)
                with m.If(reader.data.valid):
                    m.d.sync += [command.eq(Cat(command[WORD_BITS:], reader.data.payload)), word.eq(word + 1)]
                    with m.If(word == COMMAND_BYTES // WORD_BYTES - 1):
                        m.next = "DECODE"
            with state("DECODE"):
                with m.If(bus_error):
                    m.d.sync += cause.eq(ErrorCause.BUS_ERROR)
                    m.next = "FAIL"
                with m.Elif(op == Op.END.value):
                    m.d.sync += [busy.eq(0), done.eq(1), index.eq(index + 1)]
                    m.next = "IDLE"
                with m.Elif(op == Op.BARRIER.value):
                    m.next = "NEXT"
                for op_code, unit in units.items():
                    with m.Elif(op == op_code.value):
                        m.d.sync += active.eq(distinct.index(unit) + 1)
                        m.next = "START"
                with m.Else():
                    m.d.sync += cause.eq(ErrorCause.BAD_OPCODE)
                    m.next = "FAIL"
            with state("START"):
                for i, unit in enumerate(distinct, start=1):
                    m.d.comb += unit.start.eq(active == i)
                m.next = "RUN"
            with state("RUN"):
                m.d.comb += self.running.eq(op)
                unit_busy = Signal()
                unit_cause = Signal(ErrorCause)
                for i, unit in enumerate(distinct, start=1):
                    with m.If(active == i):
                        m.d.comb += [unit_busy.eq(unit.busy), unit_cause.eq(unit.cause)]
                with m.If(~unit_busy):
                    m.d.sync += active.eq(0)
                    with m.If(unit_cause != ErrorCause.NONE):
                        m.d.sync += cause.eq(unit_cause)
                        m.next = "FAIL"
                    with m.Elif(bus_error):
                        m.d.sync += cause.eq(ErrorCause.BUS_ERROR)
                        m.next = "FAIL"
                    with m.Else():
                        with m.If((op == Op.NORM.value) & command_layout(Op.NORM)(command).ends_layer):
                            m.d.sync += layers.eq(layers + 1)
                        m.next = "NEXT"
            with state("NEXT"):
                m.d.sync += [index.eq(index + 1), address.eq(address + COMMAND_BYTES)]
                m.next = "FETCH"
            with state("FAIL"):  # finish the bursts in flight, as a reset does, then report
                m.d.comb += [aborting.eq(1), abort_units.eq(1)]
                with m.If(~reader.busy & ~writer.busy):
                    m.d.sync += [busy.eq(0), error.eq(1), active.eq(0)]
                    m.next = "IDLE"
            with state("ABORT"):
                m.d.comb += [aborting.eq(1), abort_units.eq(1)]
                with m.If(~reader.busy & ~writer.busy):
                    m.d.sync += [busy.eq(0), active.eq(0)]
                    m.next = "IDLE"
        return m
