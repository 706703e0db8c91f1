"""The engine's weight sequencer: walks the weight stream over a RUN's tiles and block rows."""

from amaranth import Array, Const, Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.activation_buffer import lane_count_shape
from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import pattern_layout, weight_layout

#: Cycles from a weight beat's transfer to its block at ``block``.
SEQUENCER_LATENCY = 1


def block_layout(cfg: EngineConfig) -> data.StructLayout:
    """One weight block on its way to the MAC array, with the control that travels beside it."""
    return data.StructLayout({
        "valid": 1,
        "first": 1,  # first beat of a block row: the accumulators restart
        "last": 1,  # last beat of a block row: the row's sums are final
        "lanes": lane_count_shape(cfg),  # tokens in the tile
        "values": data.ArrayLayout(weight_layout(cfg).members["values"].elem_shape, cfg.pattern.kept_per_block),
        "positions": pattern_layout(cfg),
    })


class WeightSequencer(wiring.Component):
    """Accepts the weight stream once per tile and turns each beat into a block for the MAC array.

    For every tile (a full activation bank), for each block row ``bn`` and block column ``bk``: one beat
    in pattern mode, whose pattern id is looked up in the pattern table, or ``dense_chunks`` beats in
    dense mode, whose positions are the chunk's fixed row-major positions. The activation buffer is
    addressed in the same cycle, so its data and the block meet ``READ_LATENCY`` cycles later. After a
    tile's last beat the bank is released; after the RUN's last tile ``running`` falls.

    The beat that ends a block row *reserves* the output stage, and the next row-ending beat waits until
    ``row_taken`` frees it: finished rows are never overwritten, and the MAC array needs no stall.

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    start : In(1)
        A RUN begins (sets ``running``); ``tokens`` is sampled.
    tokens : In(COUNT_BITS)
    last_in_block, last_out_block : In(COUNT_BITS)
        Block columns and block rows of the RUN minus one, held for the whole RUN.
    dense : In(1)
        Dense mode, held for the whole RUN.
    table_write : In(1)
        Write ``table_positions`` into pattern table entry ``table_id`` (between RUNs).
    table_id : In(id_bits)
    table_positions : In(pattern_layout)
    weights : In(stream.Signature(weight_layout))
    bank_full : In(1)
        From the activation buffer: the bank at ``read_bank`` is full.
    bank_tokens : In(lane_count_shape)
    read_bank : Out(1)
    read_block : Out(COUNT_BITS)
    release : Out(1)
        The tile in ``read_bank`` is consumed.
    row_taken : In(1)
        The output stage took the last finished row: the reservation is lifted.
    block : Out(block_layout)
        The accepted beat's block, ``SEQUENCER_LATENCY`` (1) cycle after its transfer; ``valid`` is
        high for one cycle per beat.
    running : Out(1)
    reserved : Out(1)
        A finished row is on its way to or in the output stage.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        super().__init__({
            "start": In(1),
            "tokens": In(COUNT_BITS),
            "last_in_block": In(COUNT_BITS),
            "last_out_block": In(COUNT_BITS),
            "dense": In(1),
            "table_write": In(1),
            "table_id": In(config.id_bits),
            "table_positions": In(pattern_layout(config)),
            "weights": In(stream.Signature(weight_layout(config))),
            "bank_full": In(1),
            "bank_tokens": In(lane_count_shape(config)),
            "read_bank": Out(1),
            "read_block": Out(COUNT_BITS),
            "release": Out(1),
            "row_taken": In(1),
            "block": Out(block_layout(config)),
            "running": Out(1),
            "reserved": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k, lanes = cfg.pattern.block_size, cfg.lanes

        m.submodules.pattern_table = table = Memory(shape=pattern_layout(cfg), depth=cfg.pattern.pool_size, init=[])
        table_write = table.write_port()
        table_read = table.read_port(domain="comb")
        m.d.comb += [table_write.addr.eq(self.table_id), table_write.data.eq(self.table_positions),
                     table_write.en.eq(self.table_write)]

        # Counters compare for equality against values held for the RUN, keeping adders off the
        # handshake paths.
        remaining = Signal(COUNT_BITS)  # tokens not yet computed
        bank = Signal()
        bn = Signal(COUNT_BITS)
        bk = Signal(COUNT_BITS)
        chunk = Signal(range(cfg.dense_chunks))
        m.d.comb += [self.read_bank.eq(bank), self.read_block.eq(bk)]
        with m.If(self.start):
            m.d.sync += [self.running.eq(1), remaining.eq(self.tokens), bank.eq(0), bn.eq(0), bk.eq(0), chunk.eq(0)]

        last_chunk = ~self.dense | (chunk == cfg.dense_chunks - 1)
        last_bk = bk == self.last_in_block
        last_bn = bn == self.last_out_block
        ends_row = last_chunk & last_bk
        accept = Signal()
        m.d.comb += [
            self.weights.ready.eq(self.running & self.bank_full & ~(ends_row & self.reserved)),
            accept.eq(self.weights.valid & self.weights.ready),
        ]
        with m.If(accept):
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
                        m.d.comb += self.release.eq(1)
                        m.d.sync += [bn.eq(0), bank.eq(~bank), remaining.eq(remaining - self.bank_tokens)]
                        with m.If(remaining <= lanes):
                            m.d.sync += self.running.eq(0)

        with m.If(accept & ends_row):
            m.d.sync += self.reserved.eq(1)
        with m.Elif(self.row_taken):
            m.d.sync += self.reserved.eq(0)

        # A dense k×k block arrives as chunks of n positions in row-major order.
        dense_positions = Array(
            Const.cast(pattern_layout(cfg).const([{"row": p // k, "col": p % k} for p in chunk]))
            for chunk in cfg.dense_chunk_positions()
        )
        m.d.comb += table_read.addr.eq(self.weights.payload.pattern)
        m.d.sync += [
            self.block.valid.eq(accept),
            self.block.first.eq((bk == 0) & (chunk == 0)),
            self.block.last.eq(ends_row),
            self.block.lanes.eq(self.bank_tokens),
            self.block.values.eq(self.weights.payload.values),
            self.block.positions.eq(Mux(self.dense, dense_positions[chunk], table_read.data)),
        ]
        return m
