"""The engine's two-bank activation buffer: one tile loads while the other is read."""

from amaranth import Array, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.config import COUNT_BITS, EngineConfig
from hw.layouts import activation_layout

#: Cycles from ``read_bank``/``read_block`` to the block's activations at ``data``: the block RAM's
#: registered read, then one more register (block RAM clock-to-out is slow on FPGAs).
READ_LATENCY = 2


def tile_layout(cfg: EngineConfig) -> data.ArrayLayout:
    """One block column of every lane of a tile: ``lanes × k`` int8."""
    return data.ArrayLayout(data.ArrayLayout(signed(8), cfg.pattern.block_size), cfg.lanes)


def lane_count_shape(cfg: EngineConfig):
    """Width of a tile's token count, 0 … ``lanes``."""
    return unsigned(max(1, cfg.lanes.bit_length()))


class ActivationBuffer(wiring.Component):
    """Two banks of one tile (``lanes`` tokens × ``max_in_blocks`` block columns) each.

    The loader fills the banks in turn, bank 0 first after ``start``, each with the next ``lanes``
    tokens (fewer for the last tile), one activation beat (one block column of one token) per cycle. A
    bank that holds a whole tile is *full*; the reader empties it with ``release``. The loader only
    writes an empty bank and the reader only reads a full one, so a bank is never filled and emptied in
    the same cycle. One memory of ``2 × 2^⌈log2 max_in_blocks⌉`` words, ``lanes × k`` bytes wide,
    written with a byte enable per lane; the bank is the address's top bit, so no adder sits in front
    of the memory.

    Parameters
    ----------
    config : EngineConfig

    Interface attributes
    --------------------
    start : In(1)
        A RUN begins: load ``tokens`` tokens of ``last_in_block + 1`` block columns, from bank 0.
    tokens : In(COUNT_BITS)
        Tokens of the RUN, sampled with ``start``.
    last_in_block : In(COUNT_BITS)
        Block columns per token minus one, held for the whole RUN.
    activations : In(stream.Signature(activation_layout))
        Per tile, per token of the tile, one beat per block column in order.
    read_bank : In(1)
        Bank read by ``read_block``, flagged by ``bank_full`` and freed by ``release``.
    read_block : In(COUNT_BITS)
        Block column to read.
    data : Out(tile_layout)
        The block column of every lane, ``READ_LATENCY`` (2) cycles after its address.
    bank_full : Out(1)
        ``read_bank`` holds a whole tile.
    bank_tokens : Out(lane_count_shape)
        Tokens of the tile in ``read_bank``.
    release : In(1)
        The tile in ``read_bank`` is consumed: its bank may load again.
    """

    def __init__(self, config: EngineConfig):
        self._config = config
        super().__init__({
            "start": In(1),
            "tokens": In(COUNT_BITS),
            "last_in_block": In(COUNT_BITS),
            "activations": In(stream.Signature(activation_layout(config))),
            "read_bank": In(1),
            "read_block": In(COUNT_BITS),
            "data": Out(tile_layout(config)),
            "bank_full": Out(1),
            "bank_tokens": Out(lane_count_shape(config)),
            "release": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        lanes = cfg.lanes
        block_bits = 8 * cfg.pattern.block_size
        bank_stride = 1 << max(0, (cfg.max_in_blocks - 1).bit_length())
        m.submodules.memory = memory = Memory(shape=unsigned(block_bits * lanes), depth=2 * bank_stride, init=[])
        write = memory.write_port(granularity=block_bits)
        read = memory.read_port()

        full = Signal(2)
        tokens = Array(Signal(lane_count_shape(cfg), name=f"tokens_{bank}") for bank in range(2))
        m.d.comb += [self.bank_full.eq(full.bit_select(self.read_bank, 1)), self.bank_tokens.eq(tokens[self.read_bank])]

        # The loading tile's size, last lane and whether tokens remain are registered with ``remaining``,
        # so that no comparison of the wide counter lies on the path to ``ready`` or the write enables.
        remaining = Signal(COUNT_BITS)  # tokens not yet loaded
        pending = Signal()  # remaining != 0
        tile_tokens = Signal.like(self.bank_tokens)  # min(remaining, lanes)
        last_lane = Signal.like(self.bank_tokens)  # tile_tokens − 1
        bank = Signal()
        lane = Signal.like(self.bank_tokens)
        block = Signal(COUNT_BITS)

        def count(tokens):
            tile = Mux(tokens > lanes, lanes, tokens)
            return [remaining.eq(tokens), pending.eq(tokens != 0), tile_tokens.eq(tile), last_lane.eq(tile - 1)]

        with m.If(self.start):
            m.d.sync += [*count(self.tokens), bank.eq(0), lane.eq(0), block.eq(0)]

        loading = pending & ~full.bit_select(bank, 1)
        loaded = Signal()  # the beat that completes the tile in the loading bank
        m.d.comb += [
            self.activations.ready.eq(loading),
            write.addr.eq(bank * bank_stride | block),
            write.data.eq(self.activations.payload.as_value().replicate(lanes)),
        ]
        with m.If(self.activations.valid & loading):
            m.d.comb += write.en.eq(1 << lane)
            with m.If(block == self.last_in_block):
                m.d.sync += [block.eq(0), lane.eq(lane + 1)]
                with m.If(lane == last_lane):
                    m.d.comb += loaded.eq(1)
                    m.d.sync += [tokens[bank].eq(tile_tokens), lane.eq(0), bank.eq(~bank),
                                 *count(remaining - tile_tokens)]
            with m.Else():
                m.d.sync += block.eq(block + 1)

        for b in range(2):
            with m.If(loaded & (bank == b)):
                m.d.sync += full[b].eq(1)
            with m.Elif(self.release & (self.read_bank == b)):
                m.d.sync += full[b].eq(0)

        m.d.comb += read.addr.eq(self.read_bank * bank_stride | self.read_block)
        m.d.sync += self.data.eq(read.data)
        return m
