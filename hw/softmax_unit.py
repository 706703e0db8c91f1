"""The attention softmax of one tile of query rows: integer exponential, attention-map pattern selection
and normalization over the kept entries (``core.integer.attention_probabilities``)."""

from amaranth import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import EXP_OUT_BITS
from core.integer import PROB_ONE, SELECTION_BITS
from hw.config import COUNT_BITS, EngineConfig
from hw.exp_unit import EXP_LATENCY, IntegerExp
from hw.pattern_select import PatternSelect
from hw.reciprocal_scale import SCALE_LATENCY, ReciprocalScale
from hw.row_reciprocal import RowReciprocal

#: Bits of an exponential (``e ≤ 2^EXP_OUT_BITS``).
E_BITS = EXP_OUT_BITS + 1


def tile_layout(cfg: EngineConfig) -> data.StructLayout:
    """What a tile of query rows needs besides its scores."""
    return data.StructLayout({
        "rows": unsigned(max(1, cfg.lanes.bit_length())),  # query rows in the tile, 1 … lanes
        "row_valid": cfg.lanes,  # bit i: row i is a real token
        "key_blocks": unsigned(COUNT_BITS),  # ⌈L/k⌉ blocks of keys
        "valid_keys": unsigned(COUNT_BITS),  # keys 0 … valid_keys − 1 are real tokens
        "prune": 1,  # attention-map pattern pruning
        "exp_multiplier": unsigned(golden.MULTIPLIER_BITS),
        "exp_shift": unsigned(golden.SHIFT_MAX.bit_length()),
    })


def scores_layout(cfg: EngineConfig) -> data.StructLayout:
    """``k`` int32 scores of one query row and one key block: the engine's raw output beat."""
    return data.StructLayout({"values": data.ArrayLayout(signed(golden.ACC_BITS), cfg.pattern.block_size)})


def probability_block_layout(cfg: EngineConfig) -> data.StructLayout:
    """One k×k block of the probability map (row-major, 0 where pruned), its pattern id and mask (all
    ones without pruning)."""
    return data.StructLayout({
        "pattern": unsigned(cfg.id_bits),
        "mask": cfg.pattern.positions,
        "values": data.ArrayLayout(unsigned(8), cfg.pattern.positions),
    })


class SoftmaxUnit(wiring.Component):
    """Integer softmax with attention-map pattern pruning over a tile of up to ``lanes`` query rows.

    The scores arrive in the matmul engine's raw output order (per key block, per row of the tile: ``k``
    int32 scores) into one of two banks of ``lanes × ⌈max_keys/k⌉`` words of ``k`` entries, each row's
    maximum tracked as they come; the next tile is ingested into the other bank while this one is
    processed, one word per cycle:

    1. **exp**: ``e = IntegerExp(max − S)`` (0 for invalid entries), written back over the scores and
       summed per row; each row's :class:`RowReciprocal` starts as soon as its sum is final;
    2. **select** (with ``prune``): per k×k block, ``k`` reads back to back through ``k`` ReciprocalScale
       (floor, 16 fractional bits); whole blocks queue for :class:`PatternSelect` with their
       exponentials beside them, and each choice adds the kept exponentials to the kept sums, whose
       reciprocals start once a block row is chosen;
    3. **emit**: per block, ``k`` reads through ``k`` ReciprocalScale (``N(255 · e, kept sum)``, half
       up), masked by the chosen pattern, queued for ``blocks``.

    The queues hold ``4`` blocks; a block's reads start only when there is room behind it.

    Blocks are emitted per block row of the tile (``k`` query rows), per key block. Rows of the last
    block row beyond ``rows`` are zero, as the contract pads the map. Without ``prune`` the pattern
    field is 0 and every valid entry is kept.

    Parameters
    ----------
    config : EngineConfig
        Block size k (of the map), lanes (rows per tile), the attention pool's size.
    max_keys : int
        Longest sequence (keys per row).
    patterns_per_cycle : int
        Of the :class:`PatternSelect`.

    Interface attributes
    --------------------
    tile : In(stream.Signature(tile_layout))
        One beat per tile, before its scores.
    scores : In(stream.Signature(scores_layout))
        ``key_blocks × rows`` beats.
    blocks : Out(stream.Signature(probability_block_layout))
        ``⌈rows/k⌉ × key_blocks`` beats.
    patterns : In(range(P + 1)), mask_write : In(1), mask_id : In(id_bits), mask : In(k²)
        The attention pool (see :class:`PatternSelect`).
    exp_write : In(1), exp_addr : In(8), exp_data : In(16)
        The exponential's table (see :class:`IntegerExp`), written to every exp unit.
    busy : Out(1)
    """

    def __init__(self, config: EngineConfig, *, max_keys: int, patterns_per_cycle: int = 8):
        k = config.pattern.block_size
        if config.lanes % k:
            raise ValueError(f"lanes={config.lanes} must be a multiple of block_size={k}: a tile holds whole block rows")
        if max_keys < 1:
            raise ValueError(f"max_keys must be positive, got {max_keys}")
        self._config, self._max_keys = config, max_keys
        self._key_blocks = -(-max_keys // k)
        self._total_bits = E_BITS + max(1, (max_keys - 1).bit_length())
        self._select = PatternSelect(config.pattern, value_bits=SELECTION_BITS + 1, patterns_per_cycle=patterns_per_cycle)
        self._exps = [IntegerExp() for _ in range(k)]
        super().__init__({
            "tile": In(stream.Signature(tile_layout(config))),
            "scores": In(stream.Signature(scores_layout(config))),
            "blocks": Out(stream.Signature(probability_block_layout(config))),
            "patterns": In(range(config.pattern.pool_size + 1)),
            "mask_write": In(1),
            "mask_id": In(config.id_bits),
            "mask": In(config.pattern.positions),
            "exp_write": In(1),
            "exp_addr": In(len(self._exps[0].table_addr)),
            "exp_data": In(len(self._exps[0].table_data)),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        k, lanes = cfg.pattern.block_size, cfg.lanes
        block_rows = lanes // k
        kb_bits = max(1, (self._key_blocks - 1).bit_length())
        m.submodules.select = select = self._select
        m.submodules.reciprocal = reciprocal = RowReciprocal(total_bits=self._total_bits)
        ell_shape = reciprocal.reciprocal.payload.ell.shape()
        r_shape = reciprocal.reciprocal.payload.r.shape()
        for i, exp in enumerate(self._exps):
            m.submodules[f"exp_{i}"] = exp
        densities = [ReciprocalScale(x_bits=E_BITS, ell_bits=ell_shape.width, fraction_bits=SELECTION_BITS)
                     for _ in range(k)]
        probabilities = [ReciprocalScale(x_bits=E_BITS, ell_bits=ell_shape.width, fraction_bits=0, scale=PROB_ONE,
                                         rounded=True) for _ in range(k)]
        for i, (dense, prob) in enumerate(zip(densities, probabilities)):
            m.submodules[f"dense_{i}"], m.submodules[f"probability_{i}"] = dense, prob

        # --- configuration pass-through ------------------------------------------------------------
        m.d.comb += [select.patterns.eq(self.patterns), select.mask_write.eq(self.mask_write),
                     select.mask_id.eq(self.mask_id), select.mask.eq(self.mask)]
        for exp in self._exps:
            m.d.comb += [exp.en.eq(1), exp.table_write.eq(self.exp_write), exp.table_addr.eq(self.exp_addr),
                         exp.table_data.eq(self.exp_data)]

        # --- storage: two banks of one tile each, so the next tile's scores arrive while this one is processed
        word = data.ArrayLayout(signed(golden.ACC_BITS), k)
        banks = []
        for b in range(2):
            m.submodules[f"bank_{b}"] = bank = Memory(shape=word, depth=lanes << kb_bits, init=[])
            banks.append((bank.write_port(), bank.read_port()))
        choice_layout = select.choice.payload.shape()
        m.submodules.choices = choices = Memory(shape=choice_layout, depth=block_rows << kb_bits, init=[])
        choice_write = choices.write_port()
        choice_read = choices.read_port(domain="comb")

        full = Signal(2)  # the bank holds a whole tile's scores
        ingest_bank, process_bank = Signal(), Signal()
        tiles = [Signal(tile_layout(cfg), name=f"tile_{b}") for b in range(2)]
        maxima = [Array(Signal(signed(golden.ACC_BITS), name=f"max_{b}_{i}") for i in range(lanes)) for b in range(2)]
        tile, ingest_tile = Signal(tile_layout(cfg)), Signal(tile_layout(cfg))
        m.d.comb += [tile.eq(Mux(process_bank, tiles[1], tiles[0])), ingest_tile.eq(Mux(ingest_bank, tiles[1], tiles[0]))]
        read_data = Signal(word)
        m.d.comb += read_data.eq(Mux(process_bank, banks[1][1].data, banks[0][1].data))
        read_addr = Signal.like(banks[0][1].addr)
        for _, read in banks:
            m.d.comb += read.addr.eq(read_addr)
        row_sum = Array(Signal(self._total_bits, name=f"sum_{i}") for i in range(lanes))
        kept_sum = Array(Signal(self._total_bits, name=f"kept_{i}") for i in range(lanes))
        recip = [[Signal(r_shape, name=f"r{s}_{i}") for i in range(lanes)] for s in range(2)]
        ell = [[Signal(ell_shape, name=f"ell{s}_{i}") for i in range(lanes)] for s in range(2)]

        row = Signal(range(lanes))  # ingest / exp: the row
        kb = Signal(COUNT_BITS)  # ingest / exp: the key block
        last_row = row == tile.rows - 1
        last_kb = kb == tile.key_blocks - 1

        def key_valid(block, i):
            return (block * k + i) < tile.valid_keys

        # --- reciprocals: a row's is computed as soon as its sum is final, beside the passes ----------------
        pending = Signal(lanes)  # rows whose sum is final and whose reciprocal is not yet computed
        sending = Signal(range(lanes))
        asked = Signal()  # a reciprocal is being computed for row `sending`
        second = Signal()  # the reciprocals of the kept sums (after the selection)
        next_row = Signal(range(lanes))
        for i in reversed(range(lanes)):  # the lowest pending row
            with m.If(pending[i]):
                m.d.comb += next_row.eq(i)
        m.d.comb += [reciprocal.total.valid.eq(pending.any() & ~asked),
                     reciprocal.total.payload.eq(Mux(second, kept_sum[next_row], row_sum[next_row])),
                     reciprocal.reciprocal.ready.eq(1)]
        finished_rows = Signal(lanes)  # rows whose sums became final this cycle (set by the passes)
        cleared = Signal(lanes)
        with m.If(reciprocal.total.valid & reciprocal.total.ready):
            m.d.sync += [sending.eq(next_row), asked.eq(1)]
            m.d.comb += cleared.eq(1 << next_row)
        m.d.sync += pending.eq((pending & ~cleared) | finished_rows)
        with m.If(reciprocal.reciprocal.valid):
            m.d.sync += asked.eq(0)
            for i in range(lanes):
                with m.If(sending == i):
                    with m.If(second):
                        m.d.sync += [recip[1][i].eq(reciprocal.reciprocal.payload.r), ell[1][i].eq(reciprocal.reciprocal.payload.ell)]
                    with m.Else():
                        m.d.sync += [recip[0][i].eq(reciprocal.reciprocal.payload.r), ell[0][i].eq(reciprocal.reciprocal.payload.ell)]
        reciprocals_done = ~pending.any() & ~asked & ~finished_rows.any()

        # --- the exp pipeline: read (1), delta, IntegerExp ------------------------------------------------
        meta = data.StructLayout({"valid": 1, "row": range(lanes), "kb": COUNT_BITS, "keep": k, "last": 1})
        exp_line = [Signal(meta, name=f"exp_meta_{i}") for i in range(EXP_LATENCY + 1)]
        issue_exp = Signal()
        m.d.sync += [exp_line[0].valid.eq(issue_exp), exp_line[0].row.eq(row), exp_line[0].kb.eq(kb),
                     exp_line[0].last.eq(last_kb)]
        for i in range(k):
            m.d.sync += exp_line[0].keep[i].eq(tile.row_valid.bit_select(row, 1) & key_valid(kb, i))
        m.d.sync += [b.eq(a) for a, b in zip(exp_line, exp_line[1:])]
        for i, exp in enumerate(self._exps):
            m.d.comb += [exp.delta.eq(Mux(process_bank, maxima[1][exp_line[0].row], maxima[0][exp_line[0].row]) - read_data[i]),
                         exp.multiplier.eq(tile.exp_multiplier), exp.shift.eq(tile.exp_shift)]
        done_exp = exp_line[-1]
        e_out = [Mux(done_exp.keep[i], exp.e, 0) for i, exp in enumerate(self._exps)]
        exp_busy = Cat(*(line.valid for line in exp_line)).any()
        # a row's sum is final the cycle after its last word's exponentials are added
        sum_final = Signal(lanes)
        with m.If(done_exp.valid & done_exp.last):
            m.d.sync += sum_final.eq(1 << done_exp.row)
        with m.Else():
            m.d.sync += sum_final.eq(0)

        # --- the block pipeline of select and emit: one read per cycle, k reads per block -------------------
        # A block's k rows are read back to back and scaled (ReciprocalScale); the exponentials travel
        # beside the scaling so that a block is whole when its last row is scaled.
        bq = Signal(range(block_rows))  # the block row being read
        bk = Signal(COUNT_BITS)  # the key block being read
        bstep = Signal(range(k))  # the row within the block being read
        issued_all = Signal()
        credit_depth = 4
        in_flight = Signal(range(credit_depth + 2))  # blocks whose reads started and that have not left
        block_meta = data.StructLayout({"valid": 1, "i": range(k), "exists": 1, "qb": range(block_rows),
                                        "kb": COUNT_BITS, "e": data.ArrayLayout(unsigned(E_BITS), k)})
        block_line = [Signal(block_meta, name=f"block_meta_{i}") for i in range(SCALE_LATENCY + 1)]
        issue_block = Signal()
        block_row = bq * k + bstep
        m.d.sync += [block_line[0].valid.eq(issue_block), block_line[0].i.eq(bstep), block_line[0].qb.eq(bq),
                     block_line[0].kb.eq(bk), block_line[0].exists.eq(block_row < tile.rows)]
        m.d.sync += [b.eq(a) for a, b in zip(block_line[1:], block_line[2:])]
        for field in ("valid", "i", "exists", "qb", "kb"):
            m.d.sync += getattr(block_line[1], field).eq(getattr(block_line[0], field))
        data_row = Signal(range(lanes))  # the row whose word the read port shows
        m.d.comb += data_row.eq(block_line[0].qb * k + block_line[0].i)
        for i in range(k):
            x = Mux(block_line[0].exists, read_data[i][:E_BITS], 0)
            m.d.sync += block_line[1].e[i].eq(x)
            m.d.comb += [densities[i].en.eq(1), densities[i].x.eq(x),
                         densities[i].r.eq(Array(recip[0])[data_row]), densities[i].ell.eq(Array(ell[0])[data_row]),
                         probabilities[i].en.eq(1), probabilities[i].x.eq(x),
                         probabilities[i].r.eq(Mux(tile.prune, Array(recip[1])[data_row], Array(recip[0])[data_row])),
                         probabilities[i].ell.eq(Mux(tile.prune, Array(ell[1])[data_row], Array(ell[0])[data_row]))]
        scaled = block_line[-1]
        dense_rows = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(SELECTION_BITS + 1), k), k - 1))
        prob_rows = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(8), k), k - 1))
        e_rows = Signal(data.ArrayLayout(data.ArrayLayout(unsigned(E_BITS), k), k - 1))
        with m.If(scaled.valid):
            for r in range(k - 1):
                with m.If(scaled.i == r):
                    for c in range(k):
                        m.d.sync += [dense_rows[r][c].eq(densities[c].y), prob_rows[r][c].eq(probabilities[c].y),
                                     e_rows[r][c].eq(scaled.e[c])]
        block_done = scaled.valid & (scaled.i == k - 1)  # the block's last row is scaled this cycle
        whole_dense = [dense_rows[r][c] if r < k - 1 else densities[c].y[:SELECTION_BITS + 1] for r in range(k) for c in range(k)]
        whole_probs = [prob_rows[r][c] if r < k - 1 else probabilities[c].y for r in range(k) for c in range(k)]
        whole_e = [[e_rows[r][c] if r < k - 1 else scaled.e[c] for c in range(k)] for r in range(k)]

        # select: finished dense blocks queue for PatternSelect; their exponentials and place wait beside
        m.submodules.to_select = to_select = SyncFIFOBuffered(width=len(select.blocks.payload.as_value()), depth=credit_depth)
        side_layout = data.StructLayout({"e": data.ArrayLayout(data.ArrayLayout(unsigned(E_BITS), k), k),
                                         "qb": range(block_rows), "kb": COUNT_BITS})
        m.submodules.beside = beside = SyncFIFOBuffered(width=side_layout.size, depth=credit_depth)
        selecting = Signal()
        emitting = Signal()
        m.d.comb += [to_select.w_data.eq(Cat(*whole_dense)), to_select.w_en.eq(block_done & selecting),
                     select.blocks.payload.as_value().eq(to_select.r_data), select.blocks.valid.eq(to_select.r_rdy),
                     to_select.r_en.eq(select.blocks.ready)]
        side_in = Signal(side_layout)
        for r in range(k):
            for c in range(k):
                m.d.comb += side_in.e[r][c].eq(whole_e[r][c])
        m.d.comb += [side_in.qb.eq(scaled.qb), side_in.kb.eq(scaled.kb),
                     beside.w_data.eq(side_in), beside.w_en.eq(block_done & selecting)]
        side = data.View(side_layout, beside.r_data)
        chosen = Signal()
        m.d.comb += [select.choice.ready.eq(beside.r_rdy), beside.r_en.eq(select.choice.valid),
                     chosen.eq(select.choice.valid & beside.r_rdy)]
        last_block = Signal()  # the block being chosen is the tile's last
        with m.If(chosen):
            mask = select.choice.payload.mask
            m.d.comb += [choice_write.addr.eq(Cat(side.kb[:kb_bits], side.qb)), choice_write.data.eq(select.choice.payload),
                         choice_write.en.eq(1)]
            for r in range(k):
                kept = [Mux(mask[r * k + c], side.e[r][c], 0) for c in range(k)]
                m.d.sync += kept_sum[side.qb * k + r].eq(kept_sum[side.qb * k + r] + _sum(kept))
            with m.If(side.kb == tile.key_blocks - 1):  # the block row's kept sums are final next cycle
                m.d.sync += sum_final.eq(Cat(*(((side.qb * k + r) < tile.rows) for r in range(k))) << (side.qb * k))

        # emit: finished probability blocks queue for the output
        m.submodules.out = out = SyncFIFOBuffered(width=len(self.blocks.payload.as_value()), depth=credit_depth)
        emitted = Signal(probability_block_layout(cfg))
        m.d.comb += choice_read.addr.eq(Cat(scaled.kb[:kb_bits], scaled.qb))
        mask_now = Mux(tile.prune, choice_read.data.mask, (1 << cfg.pattern.positions) - 1)
        m.d.comb += [emitted.pattern.eq(Mux(tile.prune, choice_read.data.id, 0)), emitted.mask.eq(mask_now)]
        for pos in range(cfg.pattern.positions):
            m.d.comb += emitted.values[pos].eq(Mux(mask_now[pos], whole_probs[pos], 0))
        m.d.comb += [out.w_data.eq(emitted), out.w_en.eq(block_done & emitting),
                     self.blocks.payload.as_value().eq(out.r_data), self.blocks.valid.eq(out.r_rdy),
                     out.r_en.eq(self.blocks.ready)]

        # credits: a block's reads start only when the queue behind it has room for it
        left = Signal()  # a block left: chosen (select) or taken by the output (emit)
        m.d.comb += left.eq(Mux(selecting, chosen, self.blocks.valid & self.blocks.ready))
        starts = issue_block & (bstep == 0)
        m.d.sync += in_flight.eq(in_flight + starts - left)
        m.d.comb += issue_block.eq((selecting | emitting) & ~issued_all & ((bstep != 0) | (in_flight < credit_depth)))
        with m.If(issue_block):
            m.d.sync += bstep.eq(Mux(bstep == k - 1, 0, bstep + 1))
            with m.If(bstep == k - 1):
                m.d.sync += bk.eq(Mux(bk == tile.key_blocks - 1, 0, bk + 1))
                with m.If(bk == tile.key_blocks - 1):
                    m.d.sync += bq.eq(bq + 1)
                    with m.If((bq + 1) * k >= tile.rows):
                        m.d.sync += issued_all.eq(1)
        pass_done = issued_all & (in_flight == 0) & ~Cat(*(line.valid for line in block_line)).any()
        m.d.comb += finished_rows.eq(sum_final)

        # --- ingest: the engine's scores into the free bank, each row's maximum ---------------------------
        irow = Signal(range(lanes))
        ikb = Signal(COUNT_BITS)
        ingest_write = Signal()
        with m.FSM() as ingest:
            with m.State("IDLE"):
                m.d.comb += self.tile.ready.eq(~full.bit_select(ingest_bank, 1))
                with m.If(self.tile.valid & self.tile.ready):
                    for b in range(2):
                        with m.If(ingest_bank == b):
                            m.d.sync += tiles[b].eq(self.tile.payload)
                            m.d.sync += [maxima[b][i].eq(golden.ACC_MIN) for i in range(lanes)]
                    m.d.sync += [irow.eq(0), ikb.eq(0)]
                    m.next = "SCORES"
            with m.State("SCORES"):
                m.d.comb += [self.scores.ready.eq(1), ingest_write.eq(self.scores.valid)]
                with m.If(self.scores.valid):
                    for b in range(2):
                        with m.If(ingest_bank == b):
                            largest = maxima[b][irow]
                            for i in range(k):
                                value = self.scores.payload.values[i]
                                counts = (ingest_tile.row_valid.bit_select(irow, 1) & ((ikb * k + i) < ingest_tile.valid_keys)
                                          & (value > largest))
                                largest = Mux(counts, value, largest)
                            m.d.sync += maxima[b][irow].eq(largest)
                    last_irow = irow == ingest_tile.rows - 1
                    m.d.sync += irow.eq(Mux(last_irow, 0, irow + 1))
                    with m.If(last_irow):
                        m.d.sync += ikb.eq(ikb + 1)
                        with m.If(ikb == ingest_tile.key_blocks - 1):
                            m.d.sync += [ikb.eq(0), ingest_bank.eq(~ingest_bank)]
                            m.next = "IDLE"
        tile_ingested = (ingest.ongoing("SCORES") & self.scores.valid & (irow == ingest_tile.rows - 1)
                         & (ikb == ingest_tile.key_blocks - 1))
        tile_processed = Signal()
        for b in range(2):
            with m.If(tile_ingested & (ingest_bank == b)):
                m.d.sync += full[b].eq(1)
            with m.Elif(tile_processed & (process_bank == b)):
                m.d.sync += full[b].eq(0)
        for b, (write, _) in enumerate(banks):
            with m.If(ingest_write & (ingest_bank == b)):
                m.d.comb += [write.addr.eq(Cat(ikb[:kb_bits], irow)), write.data.eq(self.scores.payload.values), write.en.eq(1)]
            with m.Elif(done_exp.valid & (process_bank == b)):  # exponentials written back over their scores
                m.d.comb += [write.addr.eq(Cat(done_exp.kb[:kb_bits], done_exp.row)), write.en.eq(1)]
                for i in range(k):
                    m.d.comb += write.data[i].eq(e_out[i])
        with m.If(done_exp.valid):
            m.d.sync += row_sum[done_exp.row].eq(row_sum[done_exp.row] + _sum(e_out))

        # --- processing: exp, select, emit over the full bank ------------------------------------------
        m.d.comb += read_addr.eq(Mux(issue_block, Cat(bk[:kb_bits], block_row), Cat(kb[:kb_bits], row)))
        with m.FSM() as fsm:
            with m.State("IDLE"):
                with m.If(full.bit_select(process_bank, 1)):
                    m.d.sync += [row.eq(0), kb.eq(0), second.eq(0)]
                    m.d.sync += [row_sum[i].eq(0) for i in range(lanes)] + [kept_sum[i].eq(0) for i in range(lanes)]
                    m.next = "EXP"

            with m.State("EXP"):
                m.d.comb += issue_exp.eq(1)
                m.d.sync += kb.eq(Mux(last_kb, 0, kb + 1))
                with m.If(last_kb):
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        m.d.sync += row.eq(0)
                        m.next = "EXP_WAIT"

            with m.State("EXP_WAIT"):  # the last exponentials, then every row's reciprocal
                with m.If(~exp_busy & reciprocals_done):
                    m.d.sync += [bq.eq(0), bk.eq(0), bstep.eq(0), issued_all.eq(0), second.eq(tile.prune)]
                    with m.If(tile.prune):
                        m.d.sync += selecting.eq(1)
                        m.next = "SELECT"
                    with m.Else():
                        m.d.sync += emitting.eq(1)
                        m.next = "EMIT"

            with m.State("SELECT"):  # every block chosen, then every kept sum's reciprocal
                with m.If(pass_done & reciprocals_done):
                    m.d.sync += [bq.eq(0), bk.eq(0), bstep.eq(0), issued_all.eq(0), selecting.eq(0), emitting.eq(1)]
                    m.next = "EMIT"

            with m.State("EMIT"):
                with m.If(pass_done):
                    m.d.comb += tile_processed.eq(1)
                    m.d.sync += [emitting.eq(0), process_bank.eq(~process_bank)]
                    m.next = "IDLE"

        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE") | ~ingest.ongoing("IDLE") | full.any())
        return m


def _sum(terms):
    while len(terms) > 1:
        terms = [terms[i] + terms[i + 1] if i + 1 < len(terms) else terms[i] for i in range(0, len(terms), 2)]
    return terms[0]
