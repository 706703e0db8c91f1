"""The pattern-sparse matmul engine: ``Y[M, N] = requantize(X[M, K] · Wᵀ + b)`` with W in pattern form."""

from amaranth import Array, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.block_mac import PatternBlockMAC
from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import (Opcode, activation_layout, channel_params_layout, command_layout, output_layout,
                        pattern_layout, weight_layout)
from hw.requantizer import Requantizer
from sim import golden


class PatternMatmulEngine(wiring.Component):
    """Token-parallel, weight-broadcast matmul over pattern-compressed weight blocks.

    ``lanes`` tokens are processed together (a *tile*). Their activations are loaded into an on-chip
    buffer; then the weight stream is consumed at one block per cycle, broadcast to every lane. Each
    lane has ``kept_per_block`` multipliers fed by the block's kept weights, so in pattern mode every
    multiplier does a useful MAC every cycle. After the ``in_blocks`` blocks of a block row, each lane
    holds the ``k`` accumulators of its token; these are handed to the output stage (bias,
    requantization, one output beat per lane) while the next block row accumulates.

    Dense mode uses the same array: a dense k×k block arrives as ``dense_chunks`` beats of
    ``kept_per_block`` values in row-major order, so it takes ``k²/n`` times the cycles.

    Stream order (firmware_gen produces it):

    * ``cmd``: ``LOAD_PATTERN`` beats fill the pattern table; a ``RUN`` beat starts a matmul.
    * ``activations``: per tile, per token of the tile, ``in_blocks`` beats (block columns in order).
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

    Latency: a block row's outputs start 5 cycles after its last weight beat is accepted.
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
        k, n, lanes = cfg.block_size, cfg.kept_per_block, cfg.lanes
        lane_bits = max(1, (lanes).bit_length())

        # --- storage -----------------------------------------------------------------------------
        m.submodules.pattern_table = pattern_table = Memory(shape=pattern_layout(cfg), depth=cfg.pool_size, init=[])
        table_write = pattern_table.write_port()
        table_read = pattern_table.read_port(domain="comb")

        block_bits = 8 * k
        m.submodules.x_buffer = x_buffer = Memory(shape=unsigned(block_bits * lanes), depth=cfg.max_in_blocks, init=[])
        x_write = x_buffer.write_port(granularity=block_bits)
        x_read = x_buffer.read_port()

        # --- the RUN being executed ----------------------------------------------------------------
        tokens = Signal(COUNT_BITS)
        in_blocks = Signal(COUNT_BITS)
        out_blocks = Signal(COUNT_BITS)
        dense = Signal()
        raw = Signal()
        tile_base = Signal(COUNT_BITS + 1)
        tile_tokens = Signal(lane_bits)
        load_lane = Signal(lane_bits)
        load_bk = Signal(COUNT_BITS)
        bn = Signal(COUNT_BITS)
        bk = Signal(COUNT_BITS)
        chunk = Signal(range(cfg.dense_chunks))
        results_reserved = Signal()

        remaining = Signal(COUNT_BITS + 1)
        m.d.comb += remaining.eq(tokens - tile_base)

        # --- command intake and tile sequencing -----------------------------------------------------
        cmd = self.cmd.payload
        last_chunk = Signal()
        last_bk = Signal()
        last_bn = Signal()
        m.d.comb += [
            last_chunk.eq(~dense | (chunk == cfg.dense_chunks - 1)),
            last_bk.eq(bk == in_blocks - 1),
            last_bn.eq(bn == out_blocks - 1),
        ]
        ends_row = last_chunk & last_bk
        accept_weight = Signal()

        with m.FSM(name="control") as fsm:
            with m.State("IDLE"):
                m.d.comb += self.cmd.ready.eq(1)
                with m.If(self.cmd.valid):
                    with m.Switch(cmd.op):
                        with m.Case(Opcode.LOAD_PATTERN):
                            m.d.comb += [
                                table_write.addr.eq(cmd.pattern_id),
                                table_write.data.eq(cmd.positions),
                                table_write.en.eq(cmd.pattern_id < cfg.pool_size),
                            ]
                            with m.If(cmd.pattern_id >= cfg.pool_size):
                                m.d.sync += self.error.eq(1)
                        with m.Case(Opcode.RUN):
                            refused = ((cmd.tokens == 0) | (cmd.in_blocks == 0) | (cmd.out_blocks == 0)
                                       | (cmd.in_blocks > cfg.max_in_blocks))
                            with m.If(refused):
                                m.d.sync += self.error.eq(1)
                            with m.Else():
                                m.d.sync += [
                                    tokens.eq(cmd.tokens), in_blocks.eq(cmd.in_blocks), out_blocks.eq(cmd.out_blocks),
                                    dense.eq(cmd.dense), raw.eq(cmd.raw),
                                    tile_base.eq(0),
                                    tile_tokens.eq(Mux(cmd.tokens > lanes, lanes, cmd.tokens)),
                                    load_lane.eq(0), load_bk.eq(0),
                                ]
                                m.next = "LOAD"

            with m.State("LOAD"):
                m.d.comb += [
                    self.activations.ready.eq(1),
                    x_write.addr.eq(load_bk),
                    x_write.data.eq(self.activations.payload.as_value().replicate(lanes)),
                ]
                with m.If(self.activations.valid):
                    m.d.comb += x_write.en.eq(1 << load_lane)
                    with m.If(load_bk == in_blocks - 1):
                        m.d.sync += [load_bk.eq(0), load_lane.eq(load_lane + 1)]
                        with m.If(load_lane == tile_tokens - 1):
                            m.d.sync += [bn.eq(0), bk.eq(0), chunk.eq(0)]
                            m.next = "COMPUTE"
                    with m.Else():
                        m.d.sync += load_bk.eq(load_bk + 1)

            with m.State("COMPUTE"):
                # The beat that completes a block row needs the output stage free: reserve it on accept.
                m.d.comb += self.weights.ready.eq(~(ends_row & results_reserved))
                m.d.comb += accept_weight.eq(self.weights.valid & self.weights.ready)
                with m.If(accept_weight):
                    with m.If(~last_chunk):
                        m.d.sync += chunk.eq(chunk + 1)
                    with m.Else():
                        m.d.sync += chunk.eq(0)
                        with m.If(~last_bk):
                            m.d.sync += bk.eq(bk + 1)
                        with m.Else():
                            m.d.sync += bk.eq(0)
                            with m.If(~last_bn):
                                m.d.sync += bn.eq(bn + 1)
                            with m.Else():
                                next_remaining = remaining - lanes
                                m.d.sync += [
                                    tile_base.eq(tile_base + lanes),
                                    tile_tokens.eq(Mux(next_remaining > lanes, lanes, next_remaining)),
                                    load_lane.eq(0), load_bk.eq(0),
                                ]
                                with m.If(remaining > lanes):
                                    m.next = "LOAD"
                                with m.Else():
                                    m.next = "IDLE"

        # --- stage 0: accept a weight beat, look up its positions, read the activations ---------------
        dense_positions = Array(
            Const.cast(pattern_layout(cfg).const([
                {"row": min(c * n + j, k * k - 1) // k, "col": min(c * n + j, k * k - 1) % k} for j in range(n)
            ]))
            for c in range(cfg.dense_chunks)
        )
        m.d.comb += [
            table_read.addr.eq(self.weights.payload.pattern),
            x_read.addr.eq(bk),
        ]
        s1_valid, s1_first, s1_last = Signal(), Signal(), Signal()
        s1_lanes = Signal(lane_bits)
        s1_values = Signal(data.ArrayLayout(self.weights.payload.values.shape().elem_shape, n))
        s1_positions = Signal(pattern_layout(cfg))
        m.d.sync += [
            s1_valid.eq(accept_weight),
            s1_first.eq((bk == 0) & (chunk == 0)),
            s1_last.eq(ends_row),
            s1_lanes.eq(tile_tokens),
            s1_values.eq(self.weights.payload.values),
            s1_positions.eq(Mux(dense, dense_positions[chunk], table_read.data)),
        ]
        with m.If(accept_weight & ends_row):
            m.d.sync += results_reserved.eq(1)

        # --- stages 1–2: per-lane pattern MACs (latency 2) -----------------------------------------
        macs = []
        for lane in range(lanes):
            mac = PatternBlockMAC(cfg)
            m.submodules[f"mac_{lane}"] = mac
            m.d.comb += [
                mac.x.eq(x_read.data[lane * block_bits:(lane + 1) * block_bits]),
                mac.values.eq(s1_values),
                mac.positions.eq(s1_positions),
            ]
            macs.append(mac)
        s2_valid, s2_first, s2_last = Signal(), Signal(), Signal()
        s3_valid, s3_first, s3_last = Signal(), Signal(), Signal()
        s2_lanes, s3_lanes = Signal(lane_bits), Signal(lane_bits)
        m.d.sync += [
            s2_valid.eq(s1_valid), s2_first.eq(s1_first), s2_last.eq(s1_last), s2_lanes.eq(s1_lanes),
            s3_valid.eq(s2_valid), s3_first.eq(s2_first), s3_last.eq(s2_last), s3_lanes.eq(s2_lanes),
        ]

        # --- stage 3: accumulate; hand finished block rows to the output stage ---------------------
        acc_layout = data.ArrayLayout(data.ArrayLayout(unsigned(golden.ACC_BITS), k), lanes)
        accumulators = Signal(acc_layout)
        results = Signal(acc_layout)
        results_valid = Signal()
        results_lanes = Signal(lane_bits)
        results_raw = Signal()
        with m.If(s3_valid):
            for lane, mac in enumerate(macs):
                for r in range(k):
                    total = Mux(s3_first, 0, accumulators[lane][r]) + mac.sums[r]
                    m.d.sync += accumulators[lane][r].eq(total)  # 32-bit wrap, as the contract says
                    with m.If(s3_last):
                        m.d.sync += results[lane][r].eq(total)
            with m.If(s3_last):
                m.d.sync += [results_valid.eq(1), results_lanes.eq(s3_lanes), results_raw.eq(raw)]

        # --- output stage: bias, requantization, one beat per valid lane ---------------------------
        out_lane = Signal(lane_bits)
        params = self.params.payload
        can_load = ~self.outputs.valid | self.outputs.ready
        with m.If(self.outputs.valid & self.outputs.ready):
            m.d.sync += self.outputs.valid.eq(0)
        selected = Array(results[lane] for lane in range(lanes))[out_lane]
        for r in range(k):
            requantizer = Requantizer()
            m.submodules[f"requantizer_{r}"] = requantizer
            with_bias = Signal(golden.ACC_BITS, name=f"with_bias_{r}")
            m.d.comb += [
                with_bias.eq(selected[r] + params.bias[r].as_unsigned()),
                requantizer.value.eq(with_bias),
                requantizer.multiplier.eq(params.multiplier[r]),
                requantizer.shift.eq(params.shift[r]),
            ]
            with m.If(results_valid & self.params.valid & can_load & (out_lane < results_lanes)):
                m.d.sync += self.outputs.payload.values[r].eq(Mux(results_raw, with_bias.as_signed(), requantizer.result))
        with m.If(results_valid & self.params.valid & can_load & (out_lane < results_lanes)):
            m.d.sync += [self.outputs.valid.eq(1), out_lane.eq(out_lane + 1)]
        with m.If(results_valid & self.params.valid & can_load & (out_lane == results_lanes)):
            m.d.comb += self.params.ready.eq(1)
            m.d.sync += [results_valid.eq(0), results_reserved.eq(0), out_lane.eq(0)]

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | results_reserved | s1_valid | s2_valid | s3_valid)
        return m
