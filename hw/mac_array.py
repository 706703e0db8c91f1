"""The engine's MAC array: one pattern-block MAC per lane, and the block-row accumulators."""

from amaranth import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from core import golden
from hw.activation_buffer import lane_count_shape, tile_layout
from hw.block_mac import MAC_LATENCY, PatternBlockMAC
from hw.config import EngineConfig
from hw.weight_sequencer import block_layout

#: Lanes fed by one registered copy of the block: the block is registered once per group of lanes
#: ahead of their MACs, so no net carries it from one register to every lane across the array.
FANOUT_GROUP = 4

#: Cycles from a row's last block at ``block``/``x`` to the row at ``rows``: the group copies of the
#: block (and each lane's registered activations), the MACs, then the accumulators.
ARRAY_LATENCY = 1 + MAC_LATENCY + 1


def row_layout(cfg: EngineConfig) -> data.StructLayout:
    """A finished block row: the ``k`` int32 accumulators of every lane, and how many lanes are tokens."""
    k = cfg.pattern.block_size
    return data.StructLayout({
        "sums": data.ArrayLayout(data.ArrayLayout(signed(golden.ACC_BITS), k), cfg.lanes),
        "lanes": lane_count_shape(cfg),
        "raw": 1,
        "wide": 1,
    })


class PatternMACArray(wiring.Component):
    """``lanes`` :class:`~hw.block_mac.PatternBlockMAC` fed one weight block, each with its token.

    Every block's row sums add into the lane's ``k`` accumulators (int32, wrapping as the contract says),
    restarted by a block marked ``first``; a block marked ``last`` finishes the row, which is offered on
    ``rows`` and held until taken. The block is first registered once per :data:`FANOUT_GROUP` lanes,
    only when the group has a token in it, so the copies differ and synthesis keeps them apart: each
    drives the weights and pattern positions of a few neighbouring lanes, not of the whole array. The
    array has no stall: the block that ends the next row must not arrive before ``rows`` is taken (the
    weight sequencer's reservation guarantees it).

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    block : In(block_layout)
        Weights, positions and control of one block; nothing happens unless ``valid``.
    x : In(tile_layout)
        The block column of every lane's token, in the same cycle as ``block``.
    raw : In(1)
        Marks the rows of this RUN as raw (held for the RUN).
    wide : In(1)
        Marks the rows of this RUN as wide (held for the RUN).
    rows : Out(stream.Signature(row_layout))
        Finished block rows, ``ARRAY_LATENCY`` (6) cycles after their last block.
    busy : Out(1)
        A block is in the MACs or a row is offered.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        super().__init__({
            "block": In(block_layout(config)),
            "x": In(tile_layout(config)),
            "raw": In(1),
            "wide": In(1),
            "rows": Out(stream.Signature(row_layout(config))),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k = cfg.pattern.block_size
        macs = []
        for lane in range(cfg.lanes):
            group = lane - lane % FANOUT_GROUP
            if group == lane:  # the group's copy of the block: registered when a lane of the group has a token
                copy = Signal(block_layout(cfg), name=f"block_group_{group // FANOUT_GROUP}")
                ours = self.block.valid & (self.block.lanes > group)
                m.d.sync += copy.valid.eq(ours)
                with m.If(ours):
                    m.d.sync += [copy.values.eq(self.block.values), copy.positions.eq(self.block.positions),
                                 copy.lanes.eq(self.block.lanes)]
            x = Signal.like(self.x[lane], name=f"x_{lane}")
            m.d.sync += x.eq(self.x[lane])
            m.submodules[f"mac_{lane}"] = mac = PatternBlockMAC(cfg)
            m.d.comb += [mac.x.eq(x), mac.values.eq(copy.values), mac.positions.eq(copy.positions),
                         mac.take.eq(copy.valid & (copy.lanes > lane))]
            macs.append(mac)

        # The control of a block travels beside it through the group copies and the MACs.
        control = [self.block]
        for i in range(1 + MAC_LATENCY):
            stage = Signal(data.StructLayout({"valid": 1, "first": 1, "last": 1, "lanes": lane_count_shape(cfg)}),
                           name=f"control_{i}")
            m.d.sync += [stage.valid.eq(control[-1].valid), stage.first.eq(control[-1].first),
                         stage.last.eq(control[-1].last), stage.lanes.eq(control[-1].lanes)]
            control.append(stage)
        sums = control[-1]

        accumulators = Signal(data.ArrayLayout(data.ArrayLayout(signed(golden.ACC_BITS), k), cfg.lanes))
        with m.If(self.rows.ready):
            m.d.sync += self.rows.valid.eq(0)
        with m.If(sums.valid):
            for lane, mac in enumerate(macs):
                for r in range(k):
                    total = Mux(sums.first, 0, accumulators[lane][r]) + mac.sums[r]
                    m.d.sync += accumulators[lane][r].eq(total)  # 32-bit wrap, as the contract says
                    with m.If(sums.last):
                        m.d.sync += self.rows.payload.sums[lane][r].eq(total)
            with m.If(sums.last):
                m.d.sync += [self.rows.valid.eq(1), self.rows.payload.lanes.eq(sums.lanes),
                             self.rows.payload.raw.eq(self.raw),
                             self.rows.payload.wide.eq(self.wide)]

        m.d.comb += self.busy.eq(self.block.valid | Cat(*(stage.valid for stage in control[1:])).any()
                                 | self.rows.valid)
        return m
