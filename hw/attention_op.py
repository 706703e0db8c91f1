"""ATTENTION: every head of a layer's self-attention over scratch, through :class:`AttentionUnit`."""

from amaranth import Cat, Module, Mux, Signal

from core.encoder import EXP_FRACTION_BITS
from hw.attention_unit import AttentionUnit
from hw.byte_records import ByteRecords
from hw.commands import ErrorCause, Op, command_layout
from hw.config import COUNT_BITS, AcceleratorConfig, refuse
from hw.dram_formats import EXP_ENTRY, attention_pool_bytes
from hw.op_ports import WORD_BYTES, OpUnit

#: Bytes of one exp table entry and of one attention pattern's mask in the constants region.
ENTRY_BYTES = EXP_ENTRY.itemsize


class AttentionOp(OpUnit):
    """Runs an ATTENTION command on an :class:`~hw.attention_unit.AttentionUnit`.

    First the sequence's valid-token count (one word at ``length``), then the constants region: the
    256 exp table entries and, when pruning, the model's ``pool_size`` masks, padded to the unit's pool
    with copies of pattern 0 (a copy only ties with pattern 0, so it is never chosen). Then the heads, one
    after another: a command beat each, and Q, K and V read from scratch (head ``h`` of token ``t`` at
    ``base + t·heads·d + h·d``) through one read port that serves whichever of the three streams has room.
    The unit's context beats (``k`` queries of one channel) are written to scratch a byte per cycle,
    rows past the sequence masked.

    Refused: a shape beyond the unit (more tokens than ``max_seq``, a head dimension beyond
    ``max_head_dim`` or not a whole number of words, no heads, a pool larger than the unit's) or an
    operand past scratch (``OUT_OF_RANGE``), misaligned operands (``BAD_SIZE``), more valid tokens than
    tokens (``OUT_OF_RANGE``).

    The ports and parameters of :class:`hw.op_ports.OpUnit`.
    """

    def __init__(self, config: AcceleratorConfig):
        apc = config.attention.engine.pattern
        if apc.block_size != WORD_BYTES or attention_pool_bytes(apc.block_size) != ENTRY_BYTES:
            refuse(self, f"AttentionOp needs {WORD_BYTES}×{WORD_BYTES} attention blocks, got {apc.block_size}×{apc.block_size}")
        super().__init__(config)

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        acfg = cfg.attention
        k, lanes, pool = acfg.engine.pattern.block_size, acfg.engine.lanes, acfg.engine.pattern.pool_size
        m.submodules.unit = unit = AttentionUnit(acfg)
        m.submodules.records = records = ByteRecords(word_bytes=WORD_BYTES, max_record=ENTRY_BYTES)
        c = command_layout(Op.ATTENTION)(self.command)
        hidden = Signal(COUNT_BITS)
        m.d.comb += hidden.eq(c.heads * c.head_dim)
        rows_bytes = c.tokens * hidden
        misaligned = (c.head_dim[:2] != 0) | (c.q[:2] != 0) | (c.k[:2] != 0) | (c.v[:2] != 0) | (c.dst[:2] != 0)
        out_of_range = ((c.tokens == 0) | (c.tokens > acfg.max_seq) | (c.head_dim == 0) | (c.head_dim > acfg.max_head_dim)
                        | (c.heads == 0) | (c.pruned & ((c.pool_size == 0) | (c.pool_size > pool)))
                        | (c.q + rows_bytes > cfg.scratch_bytes) | (c.k + rows_bytes > cfg.scratch_bytes)
                        | (c.v + rows_bytes > cfg.scratch_bytes) | (c.dst + rows_bytes > cfg.scratch_bytes))
        valid_tokens = Signal(32)
        exp_entries = 2**EXP_FRACTION_BITS

        # --- constants: exp table entries, then pool masks, two bytes each -------------------------------
        m.d.comb += [records.words.payload.eq(self.reader.data.payload), records.size.eq(ENTRY_BYTES)]
        record = Cat(records.records.payload[0], records.records.payload[1])
        entry = Signal(range(max(exp_entries, pool) + 1))
        first_mask = Signal(k * k)
        m.d.comb += [unit.exp_table.payload.addr.eq(entry), unit.exp_table.payload.data.eq(record),
                     unit.pool.payload.id.eq(entry)]

        # --- Q, K, V from scratch through one read port ---------------------------------------------------
        head_words = Signal(COUNT_BITS)
        row_words = Signal(COUNT_BITS)
        m.d.comb += [head_words.eq(c.head_dim >> 2), row_words.eq(hidden >> 2)]
        streams = [(unit.queries, c.q), (unit.keys, c.k), (unit.values, c.v)]
        counters = []
        for name, (port, base) in zip(("q", "k", "v"), streams):
            counters.append({
                "head": Signal(8, name=f"{name}_head"), "token": Signal(COUNT_BITS, name=f"{name}_token"),
                "word": Signal(COUNT_BITS, name=f"{name}_word"), "valid": Signal(name=f"{name}_valid"),
                "data": Signal(32, name=f"{name}_data"), "port": port, "base": base,
            })
        inflight = Signal(range(4))  # which stream the read issued last cycle is for (3: none)
        m.d.sync += inflight.eq(3)
        feeding = Signal()
        for i, s in enumerate(counters):
            port = s["port"]
            m.d.comb += [port.payload.eq(s["data"]), port.valid.eq(s["valid"])]
            with m.If(port.valid & port.ready):
                m.d.sync += s["valid"].eq(0)
            with m.If(inflight == i):
                m.d.sync += [s["valid"].eq(1), s["data"].eq(self.scratch.rdata)]
        # A stream may read when its register is free or being taken and none of its reads is in flight.
        chosen = Signal(range(4))
        m.d.comb += chosen.eq(3)
        for i in reversed(range(3)):
            s = counters[i]
            left = s["head"] != c.heads
            room = (~s["valid"] | s["port"].ready) & (inflight != i)
            with m.If(feeding & left & room):
                m.d.comb += chosen.eq(i)
        for i, s in enumerate(counters):
            with m.If(chosen == i):
                m.d.comb += [self.scratch.raddr.eq((s["base"] >> 2) + s["token"] * row_words + s["head"] * head_words + s["word"]),
                             self.scratch.ren.eq(1)]
                m.d.sync += [inflight.eq(i), s["word"].eq(s["word"] + 1)]
                with m.If(s["word"] == head_words - 1):
                    m.d.sync += [s["word"].eq(0), s["token"].eq(s["token"] + 1)]
                    with m.If(s["token"] == c.tokens - 1):
                        m.d.sync += [s["token"].eq(0), s["head"].eq(s["head"] + 1)]

        # --- context: a beat is k queries of one channel, written a byte per cycle ---------------------------
        held, holding, sub = Signal(unit.context.payload.shape()), Signal(), Signal(range(k))
        c_head, c_base, c_block, c_channel = Signal(8), Signal(COUNT_BITS), Signal(COUNT_BITS), Signal(COUNT_BITS)
        blocks = Signal(COUNT_BITS)
        m.d.comb += blocks.eq((c.tokens + k - 1) >> 2)
        query = Signal(COUNT_BITS)
        address = Signal(32)
        m.d.comb += [query.eq((c_block << 2) + sub), address.eq(c.dst + query * hidden + c_head * c.head_dim + c_channel),
                     unit.context.ready.eq(~holding | (sub == k - 1)),
                     self.scratch.waddr.eq(address >> 2),
                     self.scratch.wdata.eq(held.values[0][:8].replicate(WORD_BYTES))]
        with m.Switch(sub):
            for i in range(k):
                with m.Case(i):
                    m.d.comb += self.scratch.wdata.eq(held.values[i][:8].replicate(WORD_BYTES))
        with m.If(holding):
            with m.If(query < c.tokens):
                m.d.comb += self.scratch.wen.eq(1 << address[:2])
            m.d.sync += sub.eq(sub + 1)
            with m.If(sub == k - 1):
                m.d.sync += [sub.eq(0), holding.eq(0)]
                # next channel of the tile, next block of queries, next tile of channels, next head
                last_channel = (c_channel == c_base + lanes - 1) | (c_channel == c.head_dim - 1)
                m.d.sync += c_channel.eq(c_channel + 1)
                with m.If(last_channel):
                    m.d.sync += [c_channel.eq(c_base), c_block.eq(c_block + 1)]
                    with m.If(c_block == blocks - 1):
                        m.d.sync += [c_block.eq(0), c_base.eq(c_base + lanes), c_channel.eq(c_base + lanes)]
                        with m.If(c_base + lanes >= c.head_dim):
                            m.d.sync += [c_base.eq(0), c_channel.eq(0), c_head.eq(c_head + 1)]
        with m.If(unit.context.valid & unit.context.ready):
            m.d.sync += [held.eq(unit.context.payload), holding.eq(1)]

        heads_sent = Signal(8)
        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.cause.eq(ErrorCause.NONE), entry.eq(0), heads_sent.eq(0), c_head.eq(0), c_base.eq(0),
                                 c_block.eq(0), c_channel.eq(0), sub.eq(0), holding.eq(0)]
                    for s in counters:
                        m.d.sync += [s["head"].eq(0), s["token"].eq(0), s["word"].eq(0), s["valid"].eq(0)]
                    with m.If(misaligned):
                        m.d.sync += self.cause.eq(ErrorCause.BAD_SIZE)
                    with m.Elif(out_of_range):
                        m.d.sync += self.cause.eq(ErrorCause.OUT_OF_RANGE)
                    with m.Else():
                        m.d.sync += self.busy.eq(1)
                        m.next = "LENGTH_REQUEST"
            with m.State("LENGTH_REQUEST"):
                m.d.comb += [self.reader.request.valid.eq(1), self.reader.request.payload.address.eq(c.length),
                             self.reader.request.payload.words.eq(1)]
                with m.If(self.reader.request.ready):
                    m.next = "LENGTH"
            with m.State("LENGTH"):
                m.d.comb += self.reader.data.ready.eq(1)
                with m.If(self.reader.data.valid):
                    m.d.sync += valid_tokens.eq(self.reader.data.payload)
                    m.next = "CONSTANTS_REQUEST"
            with m.State("CONSTANTS_REQUEST"):
                table_words = exp_entries * ENTRY_BYTES // WORD_BYTES
                m.d.comb += [self.reader.request.valid.eq(1), self.reader.request.payload.address.eq(c.constants),
                             self.reader.request.payload.words.eq(table_words + Mux(c.pruned, (c.pool_size + 1) >> 1, 0))]
                with m.If(valid_tokens > c.tokens):
                    m.d.sync += [self.cause.eq(ErrorCause.OUT_OF_RANGE), self.busy.eq(0)]
                    m.next = "IDLE"
                with m.Elif(self.reader.request.ready):
                    m.next = "EXP_TABLE"
            with m.State("EXP_TABLE"):
                m.d.comb += [records.words.valid.eq(self.reader.data.valid), self.reader.data.ready.eq(records.words.ready),
                             unit.exp_table.valid.eq(records.records.valid), records.records.ready.eq(unit.exp_table.ready)]
                with m.If(records.records.valid & unit.exp_table.ready):
                    m.d.sync += entry.eq(entry + 1)
                    with m.If(entry == exp_entries - 1):
                        m.d.sync += entry.eq(0)
                        m.next = "POOL"
            with m.State("POOL"):
                with m.If(~c.pruned):
                    m.next = "HEADS"
                with m.Else():
                    from_dram = entry < c.pool_size
                    m.d.comb += [records.words.valid.eq(self.reader.data.valid), self.reader.data.ready.eq(records.words.ready),
                                 unit.pool.payload.mask.eq(Mux(from_dram, record, first_mask)),
                                 unit.pool.valid.eq(~from_dram | records.records.valid),
                                 records.records.ready.eq(from_dram & unit.pool.ready)]
                    with m.If(unit.pool.valid & unit.pool.ready):
                        m.d.sync += entry.eq(entry + 1)
                        with m.If(entry == 0):
                            m.d.sync += first_mask.eq(record)
                        with m.If(entry == pool - 1):
                            m.next = "HEADS"
            with m.State("HEADS"):
                m.d.comb += [records.clear.eq(1), feeding.eq(1)]
                head = unit.cmd.payload
                m.d.comb += [head.length.eq(c.tokens), head.valid_length.eq(valid_tokens), head.head_blocks.eq(head_words),
                             head.prune.eq(c.pruned), head.exp_multiplier.eq(c.exp_multiplier), head.exp_shift.eq(c.exp_shift),
                             head.context_multiplier.eq(c.context_multiplier), head.context_shift.eq(c.context_shift),
                             unit.cmd.valid.eq(heads_sent != c.heads)]
                with m.If(unit.cmd.valid & unit.cmd.ready):
                    m.d.sync += heads_sent.eq(heads_sent + 1)
                with m.If((c_head == c.heads) & ~unit.busy):
                    m.d.sync += self.busy.eq(0)
                    m.next = "IDLE"
        with m.If(unit.error & self.busy):
            m.d.sync += [self.cause.eq(ErrorCause.OUT_OF_RANGE), self.busy.eq(0)]
        return m
