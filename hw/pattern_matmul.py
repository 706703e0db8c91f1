"""The pattern-sparse matmul engine: ``Y[M, N] = requantize(X[M, K] · Wᵀ + b)`` with W in pattern form."""

from amaranth import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.activation_buffer import READ_LATENCY, ActivationBuffer
from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import (Opcode, activation_layout, channel_params_layout, command_layout, output_layout,
                        weight_layout)
from hw.mac_array import ARRAY_LATENCY, PatternMACArray
from hw.output_stage import OUTPUT_LATENCY, OutputStage
from hw.weight_sequencer import SEQUENCER_LATENCY, WeightSequencer, block_layout

#: Cycles from a block row's last weight beat (its transfer) to the row's first output beat: the
#: activation read (the sequencer's block register waits beside it), the MAC array, the output stage.
ROW_LATENCY = READ_LATENCY + ARRAY_LATENCY + OUTPUT_LATENCY


class PatternMatmulEngine(wiring.Component):
    """Token-parallel, weight-broadcast matmul over pattern-compressed weight blocks.

    ``lanes`` tokens are processed together (a *tile*). Their activations are loaded into one bank of
    a two-bank buffer while the previous tile computes from the other bank, so loading costs no cycles
    once the weight stream is longer than the activation stream (``lanes ≤ out_blocks · chunks``). A
    tile consumes the weight stream at one block per cycle, broadcast to every lane. Each lane has
    ``kept_per_block`` multipliers fed by the block's kept weights, so in pattern mode every
    multiplier does a useful MAC every cycle. After the ``in_blocks`` blocks of a block row, each lane
    holds the ``k`` accumulators of its token; these are handed to the output stage (bias,
    requantization, one output beat per lane) while the next block row accumulates.
    :mod:`hw.cycle_model` gives the exact cycle count of a RUN.

    Dense mode uses the same array: a dense k×k block arrives as ``dense_chunks`` beats of
    ``kept_per_block`` values in row-major order, so it takes ``k²/n`` times the cycles.

    Stream order (firmware_gen produces it):

    * ``cmd``: ``LOAD_PATTERN`` beats fill the pattern table; a ``RUN`` beat starts a matmul.
    * ``activations``: per tile, per token of the tile, ``in_blocks`` beats (block columns in order).
      Tile ``t + 1`` is accepted while tile ``t`` computes; tile ``t + 2`` waits for tile ``t`` to finish.
    * ``weights``: per tile, for each block row ``bn`` and block column ``bk``, one beat (pattern mode)
      or ``dense_chunks`` beats (dense mode). The same sequence is replayed for every tile.
    * ``params``: per tile, one beat per block row (bias, multiplier, shift of its ``k`` channels).
    * ``outputs``: per tile, per block row, one beat per valid token of the tile.

    A RUN with zero tokens or blocks, or with ``in_blocks`` beyond the activation buffer, is refused:
    ``error`` rises and stays high until reset, and the command is dropped.

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    cmd : In(stream.Signature(command_layout))
    activations : In(stream.Signature(activation_layout))
    weights : In(stream.Signature(weight_layout))
    params : In(stream.Signature(channel_params_layout))
    outputs : Out(stream.Signature(output_layout))
    busy : Out(1)
        A RUN is in progress or results are still draining.
    error : Out(1)
        A refused command was seen (sticky).

    Parts, one component each: :class:`~hw.activation_buffer.ActivationBuffer` (the loader and the two
    banks), :class:`~hw.weight_sequencer.WeightSequencer` (weight stream, pattern table, counters),
    :class:`~hw.mac_array.PatternMACArray` (the lanes' MACs and accumulators) and
    :class:`~hw.output_stage.OutputStage` (bias, requantization, one beat per token). This class decodes
    commands and wires them together.

    Latency: a block row's first output beat is valid :data:`ROW_LATENCY` (15) cycles after its last
    weight beat is accepted.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        super().__init__({
            "cmd": In(stream.Signature(command_layout(config))),
            "activations": In(stream.Signature(activation_layout(config))),
            "weights": In(stream.Signature(weight_layout(config))),
            "params": In(stream.Signature(channel_params_layout(config))),
            "outputs": Out(stream.Signature(output_layout(config))),
            "busy": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        m.submodules.buffer = buffer = ActivationBuffer(cfg)
        m.submodules.sequencer = sequencer = WeightSequencer(cfg)
        m.submodules.array = array = PatternMACArray(cfg)
        m.submodules.output_stage = output_stage = OutputStage(cfg)

        # --- the RUN being executed: its sizes are held for the whole RUN -------------------------------
        last_in_block = Signal(COUNT_BITS)
        last_out_block = Signal(COUNT_BITS)
        dense = Signal()
        raw = Signal()
        wide = Signal()
        start = Signal()
        cmd = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~sequencer.running)
        with m.If(self.cmd.valid & ~sequencer.running):
            with m.Switch(cmd.op):
                with m.Case(Opcode.LOAD_PATTERN):
                    with m.If(cmd.pattern_id < cfg.pattern.pool_size):
                        m.d.comb += sequencer.table_write.eq(1)
                    with m.Else():
                        m.d.sync += self.error.eq(1)
                with m.Case(Opcode.RUN):
                    refused = ((cmd.tokens == 0) | (cmd.in_blocks == 0) | (cmd.out_blocks == 0)
                               | (cmd.in_blocks > cfg.max_in_blocks))
                    with m.If(refused):
                        m.d.sync += self.error.eq(1)
                    with m.Else():
                        m.d.comb += start.eq(1)
                        m.d.sync += [last_in_block.eq(cmd.in_blocks - 1), last_out_block.eq(cmd.out_blocks - 1),
                                     dense.eq(cmd.dense), raw.eq(cmd.raw), wide.eq(cmd.wide)]
        m.d.comb += [
            sequencer.table_id.eq(cmd.pattern_id),
            sequencer.table_positions.eq(cmd.positions),
            buffer.start.eq(start), buffer.tokens.eq(cmd.tokens), buffer.last_in_block.eq(last_in_block),
            sequencer.start.eq(start), sequencer.tokens.eq(cmd.tokens), sequencer.dense.eq(dense),
            sequencer.last_in_block.eq(last_in_block), sequencer.last_out_block.eq(last_out_block),
            array.raw.eq(raw), array.wide.eq(wide),
        ]

        # --- the parts ---------------------------------------------------------------------------------
        wiring.connect(m, wiring.flipped(self.activations), buffer.activations)
        wiring.connect(m, wiring.flipped(self.weights), sequencer.weights)
        wiring.connect(m, wiring.flipped(self.params), output_stage.params)
        wiring.connect(m, output_stage.outputs, wiring.flipped(self.outputs))
        wiring.connect(m, array.rows, output_stage.rows)
        m.d.comb += [
            buffer.read_bank.eq(sequencer.read_bank),
            buffer.read_block.eq(sequencer.read_block),
            buffer.release.eq(sequencer.release),
            sequencer.bank_full.eq(buffer.bank_full),
            sequencer.bank_tokens.eq(buffer.bank_tokens),
            sequencer.row_taken.eq(array.rows.valid & array.rows.ready),
            array.x.eq(buffer.data),
        ]
        # The block waits beside the activation read until both meet at the MAC array.
        block = sequencer.block
        for i in range(READ_LATENCY - SEQUENCER_LATENCY):
            delayed = Signal(block_layout(cfg), name=f"block_{i}")
            m.d.sync += delayed.eq(block)
            block = delayed
        m.d.comb += array.block.eq(block)

        m.d.comb += self.busy.eq(sequencer.running | sequencer.reserved | array.busy | output_stage.busy)
        return m
