"""The pattern-sparse matmul engine: ``Y[M, N] = requantize(X[M, K] · Wᵀ + b)`` with W in pattern form."""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.block_mac import MAC_LATENCY, PatternBlockMAC
from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import (Opcode, activation_layout, channel_params_layout, command_layout, output_layout,
                        pattern_layout, weight_layout)
from hw.requantizer import REQUANTIZER_LATENCY, Requantizer
from core import golden


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

    Latency: a block row's first output beat is valid 12 cycles after its last weight beat is accepted.
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
        k, n, lanes = cfg.pattern.block_size, cfg.pattern.kept_per_block, cfg.lanes
        lane_bits = max(1, (lanes).bit_length())

        # --- storage -----------------------------------------------------------------------------
        m.submodules.pattern_table = pattern_table = Memory(shape=pattern_layout(cfg), depth=cfg.pattern.pool_size, init=[])
        table_write = pattern_table.write_port()
        table_read = pattern_table.read_port(domain="comb")

        # Two banks of one tile each: the next tile loads into one while the current tile computes
        # from the other, so the activation load is off the critical path.
        block_bits = 8 * k
        # The bank is the address's top bit, so no adder sits in front of the memory.
        bank_stride = 1 << max(0, (cfg.max_in_blocks - 1).bit_length())
        m.submodules.x_buffer = x_buffer = Memory(shape=unsigned(block_bits * lanes), depth=2 * bank_stride, init=[])
        x_write = x_buffer.write_port(granularity=block_bits)
        x_read = x_buffer.read_port()

        # --- the RUN being executed ----------------------------------------------------------------
        # Counters compare for equality against values registered at RUN, keeping adders off the
        # handshake paths.
        last_in_block = Signal(COUNT_BITS)
        last_out_block = Signal(COUNT_BITS)
        dense = Signal()
        raw = Signal()
        running = Signal()
        bank_full = Signal(2)
        bank_tokens = Array(Signal(lane_bits, name=f"bank_tokens_{i}") for i in range(2))

        # loader: fills the free bank with the next tile's activations
        load_remaining = Signal(COUNT_BITS)  # tokens not yet loaded
        load_bank = Signal()
        load_lane = Signal(lane_bits)
        load_bk = Signal(COUNT_BITS)
        load_tile_tokens = Signal(lane_bits)
        m.d.comb += load_tile_tokens.eq(Mux(load_remaining > lanes, lanes, load_remaining))

        # compute: streams the weights once per tile over the full bank
        compute_remaining = Signal(COUNT_BITS)  # tokens not yet computed
        compute_bank = Signal()
        tile_tokens = Signal(lane_bits)
        bn = Signal(COUNT_BITS)
        bk = Signal(COUNT_BITS)
        chunk = Signal(range(cfg.dense_chunks))
        results_reserved = Signal()
        m.d.comb += tile_tokens.eq(bank_tokens[compute_bank])

        # --- command intake ---------------------------------------------------------------------
        cmd = self.cmd.payload
        m.d.comb += self.cmd.ready.eq(~running)
        with m.If(self.cmd.valid & ~running):
            with m.Switch(cmd.op):
                with m.Case(Opcode.LOAD_PATTERN):
                    m.d.comb += [
                        table_write.addr.eq(cmd.pattern_id),
                        table_write.data.eq(cmd.positions),
                        table_write.en.eq(cmd.pattern_id < cfg.pattern.pool_size),
                    ]
                    with m.If(cmd.pattern_id >= cfg.pattern.pool_size):
                        m.d.sync += self.error.eq(1)
                with m.Case(Opcode.RUN):
                    refused = ((cmd.tokens == 0) | (cmd.in_blocks == 0) | (cmd.out_blocks == 0)
                               | (cmd.in_blocks > cfg.max_in_blocks))
                    with m.If(refused):
                        m.d.sync += self.error.eq(1)
                    with m.Else():
                        m.d.sync += [
                            last_in_block.eq(cmd.in_blocks - 1), last_out_block.eq(cmd.out_blocks - 1),
                            dense.eq(cmd.dense), raw.eq(cmd.raw), running.eq(1),
                            load_remaining.eq(cmd.tokens), load_bank.eq(0), load_lane.eq(0), load_bk.eq(0),
                            compute_remaining.eq(cmd.tokens), compute_bank.eq(0), bn.eq(0), bk.eq(0), chunk.eq(0),
                        ]

        # --- loader ---------------------------------------------------------------------------------
        loading = running & (load_remaining != 0) & ~bank_full.bit_select(load_bank, 1)
        load_done = Signal()  # the beat that completes the tile in the loading bank
        m.d.comb += [
            self.activations.ready.eq(loading),
            x_write.addr.eq(load_bank * bank_stride | load_bk),
            x_write.data.eq(self.activations.payload.as_value().replicate(lanes)),
        ]
        with m.If(self.activations.valid & loading):
            m.d.comb += x_write.en.eq(1 << load_lane)
            with m.If(load_bk == last_in_block):
                m.d.sync += [load_bk.eq(0), load_lane.eq(load_lane + 1)]
                with m.If(load_lane == load_tile_tokens - 1):
                    m.d.comb += load_done.eq(1)
                    m.d.sync += [
                        bank_tokens[load_bank].eq(load_tile_tokens),
                        load_lane.eq(0), load_bank.eq(~load_bank), load_remaining.eq(load_remaining - load_tile_tokens),
                    ]
            with m.Else():
                m.d.sync += load_bk.eq(load_bk + 1)

        # --- compute sequencing -------------------------------------------------------------------
        last_chunk = Signal()
        last_bk = Signal()
        last_bn = Signal()
        m.d.comb += [
            last_chunk.eq(~dense | (chunk == cfg.dense_chunks - 1)),
            last_bk.eq(bk == last_in_block),
            last_bn.eq(bn == last_out_block),
        ]
        ends_row = last_chunk & last_bk
        accept_weight = Signal()
        compute_done = Signal()  # the beat that completes the tile in the computing bank
        # The beat that completes a block row needs the output stage free: reserve it on accept.
        m.d.comb += [
            self.weights.ready.eq(running & bank_full.bit_select(compute_bank, 1) & ~(ends_row & results_reserved)),
            accept_weight.eq(self.weights.valid & self.weights.ready),
        ]
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
                        m.d.comb += compute_done.eq(1)
                        m.d.sync += [bn.eq(0), compute_bank.eq(~compute_bank),
                                     compute_remaining.eq(compute_remaining - tile_tokens)]
                        with m.If(compute_remaining <= lanes):
                            m.d.sync += running.eq(0)

        # A bank is filled by the loader and emptied by compute, never both in one cycle: the loader
        # only writes an empty bank and compute only reads a full one.
        for bank in range(2):
            with m.If(load_done & (load_bank == bank)):
                m.d.sync += bank_full[bank].eq(1)
            with m.Elif(compute_done & (compute_bank == bank)):
                m.d.sync += bank_full[bank].eq(0)

        # --- stage 0: accept a weight beat, look up its positions, read the activations ---------------
        dense_positions = Array(
            Const.cast(pattern_layout(cfg).const([
                {"row": min(c * n + j, k * k - 1) // k, "col": min(c * n + j, k * k - 1) % k} for j in range(n)
            ]))
            for c in range(cfg.dense_chunks)
        )
        m.d.comb += [
            table_read.addr.eq(self.weights.payload.pattern),
            x_read.addr.eq(compute_bank * bank_stride | bk),
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

        # --- the activation buffer's output is registered (block RAM clock-to-out is slow), then the
        # per-lane pattern MACs ------------------------------------------------------------------------
        x_data = Signal.like(x_read.data)
        mac_values = Signal.like(s1_values)
        mac_positions = Signal.like(s1_positions)
        m.d.sync += [x_data.eq(x_read.data), mac_values.eq(s1_values), mac_positions.eq(s1_positions)]
        macs = []
        for lane in range(lanes):
            mac = PatternBlockMAC(cfg)
            m.submodules[f"mac_{lane}"] = mac
            m.d.comb += [
                mac.x.eq(x_data[lane * block_bits:(lane + 1) * block_bits]),
                mac.values.eq(mac_values),
                mac.positions.eq(mac_positions),
            ]
            macs.append(mac)
        # The control of a block travels beside it: one stage for the buffer register, then the MAC's.
        control = [(s1_valid, s1_first, s1_last, s1_lanes)]
        for i in range(1 + MAC_LATENCY):
            stage = (Signal(name=f"mac_valid_{i}"), Signal(name=f"mac_first_{i}"), Signal(name=f"mac_last_{i}"),
                     Signal(lane_bits, name=f"mac_lanes_{i}"))
            m.d.sync += [new.eq(old) for new, old in zip(stage, control[-1])]
            control.append(stage)
        sums_valid, sums_first, sums_last, sums_lanes = control[-1]

        # --- accumulate; hand finished block rows to the output stage ---------------------
        acc_layout = data.ArrayLayout(data.ArrayLayout(unsigned(golden.ACC_BITS), k), lanes)
        accumulators = Signal(acc_layout)
        results = Signal(acc_layout)
        results_valid = Signal()
        results_lanes = Signal(lane_bits)
        results_raw = Signal()
        with m.If(sums_valid):
            for lane, mac in enumerate(macs):
                for r in range(k):
                    total = Mux(sums_first, 0, accumulators[lane][r]) + mac.sums[r]
                    m.d.sync += accumulators[lane][r].eq(total)  # 32-bit wrap, as the contract says
                    with m.If(sums_last):
                        m.d.sync += results[lane][r].eq(total)
            with m.If(sums_last):
                m.d.sync += [results_valid.eq(1), results_lanes.eq(sums_lanes), results_raw.eq(raw)]

        # --- output pipeline: lane select + bias, requantization (3 stages), output register --------
        # Every stage advances together whenever the output register is free or being taken, so the
        # pipeline stalls as one block and valid never depends on ready.
        out_lane = Signal(lane_bits)
        params = self.params.payload
        advance = ~self.outputs.valid | self.outputs.ready
        issue = results_valid & self.params.valid & advance & (out_lane < results_lanes)
        selected = Array(results[lane] for lane in range(lanes))[out_lane]
        with_bias = Signal(data.ArrayLayout(signed(golden.ACC_BITS), k))
        stage_multiplier = Signal.like(params.multiplier)
        stage_shift = Signal.like(params.shift)
        depth = REQUANTIZER_LATENCY + 1  # the with-bias stage, then the requantizer's stages
        valid_line = [Signal(name=f"out_valid_{i}") for i in range(depth)]
        raw_line = [Signal(name=f"out_raw_{i}") for i in range(depth)]
        value_line = [with_bias] + [Signal.like(with_bias, name=f"out_value_{i}") for i in range(1, depth)]
        with m.If(advance):
            m.d.sync += [valid_line[0].eq(issue), raw_line[0].eq(results_raw),
                         stage_multiplier.eq(params.multiplier), stage_shift.eq(params.shift)]
            for r in range(k):
                m.d.sync += with_bias[r].eq(selected[r] + params.bias[r])  # 32-bit wrap, as the contract says
            for i in range(1, depth):
                m.d.sync += [valid_line[i].eq(valid_line[i - 1]), raw_line[i].eq(raw_line[i - 1]),
                             value_line[i].eq(value_line[i - 1])]
            m.d.sync += self.outputs.valid.eq(valid_line[-1])
        with m.If(issue):
            m.d.sync += out_lane.eq(out_lane + 1)
        for r in range(k):
            requantizer = Requantizer()
            m.submodules[f"requantizer_{r}"] = requantizer
            m.d.comb += [
                requantizer.en.eq(advance),
                requantizer.value.eq(with_bias[r]),
                requantizer.multiplier.eq(stage_multiplier[r]),
                requantizer.shift.eq(stage_shift[r]),
            ]
            with m.If(advance):
                m.d.sync += self.outputs.payload.values[r].eq(Mux(raw_line[-1], value_line[-1][r], requantizer.result))
        # All lanes of the row are in the pipeline: release the results and the row's params.
        with m.If(results_valid & self.params.valid & (out_lane == results_lanes)):
            m.d.comb += self.params.ready.eq(1)
            m.d.sync += [results_valid.eq(0), results_reserved.eq(0), out_lane.eq(0)]

        m.d.comb += self.busy.eq(running | results_reserved | Cat(*(stage[0] for stage in control)).any() | Cat(*valid_line).any()
                                 | self.outputs.valid)
        return m
