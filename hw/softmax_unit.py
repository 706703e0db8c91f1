"""The attention softmax of one tile of query rows: integer exponential, attention-map pattern selection
and normalization over the kept entries (``core.integer.attention_probabilities``)."""

import operator
from functools import reduce

from amaranth import Array, Cat, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from core.encoder import EXP_OUT_BITS
from core.integer import PROB_ONE, SELECTION_BITS
from core.pattern import PatternConfig
from hw.config import COUNT_BITS, EngineConfig, refuse
from hw.exp_unit import EXP_LATENCY, IntegerExp
from hw.pattern_select import PatternSelect, choice_latency
from hw.reciprocal_scale import SCALE_LATENCY, ReciprocalScale
from hw.row_reciprocal import RowReciprocal
from hw.trees import tree, tree_levels, tree_sum

#: Bits of an exponential (``e ≤ 2^EXP_OUT_BITS``).
E_BITS = EXP_OUT_BITS + 1
#: Tiles the unit holds at once, one per bank, each from its first score to its last emitted block: one
#: is ingested while one is exponentiated and one is selected and emitted, so that with Q·Kᵀ tiles as
#: short as the select and emit passes (head dim 32) the engine is not held.
TILE_BANKS = 3
#: Cycles from a tile bank's read address to its word (a synchronous read port).
BANK_READ_LATENCY = 1
#: Cycles from the exp pass's read address to the word, selected among the banks, at the exponentials'
#: inputs: the bank's read, then the selected word registered (the banks sit apart on the die).
EXP_READ_LATENCY = BANK_READ_LATENCY + 1
#: Cycles from a block's write into a queue to its offer at the queue's output, when the block is next
#: (``SyncFIFOBuffered``: its memory, then its output register).
QUEUE_LATENCY = 2
#: Cycles from a word's exponentials (or a block's choice) to the sum of its row's kept terms, registered
#: before it is added into the row's total.
TERMS_LATENCY = 1
#: Cycles from a row's last exponentials (or its block row's last choice) to its total's offer to the
#: row's :class:`RowReciprocal`: the terms' sum, the addition with the flag that the total is final,
#: the pending row, the registered choice of the lowest pending row, then the offer register.
RECIPROCAL_OFFER_LATENCY = TERMS_LATENCY + 4
#: Cycles from a row's reciprocal at the divider's output to the next row's offer, and to the row's
#: reciprocal being counted as stored.
RECIPROCAL_RETURN_LATENCY = 1


def ingest_max_latency(block_size: int) -> int:
    """Cycles from a tile's last score beat to its rows' maxima being final (the tile counts as ingested):
    the beat's counted scores, their maximum by a tree of one comparison a stage (at least one stage),
    the row's candidate register, then the running maximum."""
    return 2 + max(1, tree_levels(block_size))


def queue_depth(pattern: PatternConfig, patterns_per_cycle: int) -> int:
    """Blocks that the queues for :class:`PatternSelect` and for ``blocks`` hold; a block's reads start
    only while fewer blocks than this are between their first read and leaving (chosen, or taken from
    ``blocks``). Enough that blocks read back to back, one per k cycles, never wait for a choice: a
    block's first read to its choice spans its k reads, the bank read, the scaling, the queue and
    :func:`~hw.pattern_select.choice_latency`, and its credit returns the cycle after."""
    k = pattern.block_size
    span = (k - 1 + BANK_READ_LATENCY + SCALE_LATENCY + QUEUE_LATENCY + choice_latency(pattern, patterns_per_cycle) + 1)
    return -(-span // k)


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
    int32 scores) into one of :data:`TILE_BANKS` (3) banks of ``lanes × ⌈max_keys/k⌉`` words of ``k``
    entries, each row's maximum tracked as they come; the next tile is ingested into a free bank while
    the previous ones are processed, one word per cycle per pass, the passes on different tiles:

    1. **exp**: ``e = IntegerExp(max − S)`` (0 for invalid entries), written back over the scores and
       summed per row; each row's :class:`RowReciprocal` starts as soon as its sum is final;
    2. **select** (with ``prune``): per k×k block, ``k`` reads back to back through ``k`` ReciprocalScale
       (floor, 16 fractional bits); whole blocks queue for :class:`PatternSelect` with their
       exponentials beside them, and each choice adds the kept exponentials to the kept sums, whose
       reciprocals start once a block row is chosen;
    3. **emit**: per block, ``k`` reads through ``k`` ReciprocalScale (``N(255 · e, kept sum)``, half
       up), masked by the chosen pattern, queued for ``blocks``.

    The queues hold :func:`queue_depth` blocks; a block's reads start only when there is room behind it.

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
            refuse(self, f"lanes={config.lanes} must be a multiple of block_size={k}: a tile holds whole block rows")
        if max_keys < 1:
            refuse(self, f"max_keys must be positive, got {max_keys}")
        self._config, self._max_keys = config, max_keys
        self._key_blocks = -(-max_keys // k)
        self._total_bits = E_BITS + max(1, (max_keys - 1).bit_length())
        self._select = PatternSelect(config.pattern, value_bits=SELECTION_BITS + 1, patterns_per_cycle=patterns_per_cycle)
        self._queue_depth = queue_depth(config.pattern, patterns_per_cycle)
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
        # One divider for the row sums (exp pass), one for the kept sums (select pass): the two passes run
        # at once, on different tiles.
        m.submodules.sum_reciprocal = sum_reciprocal = RowReciprocal(total_bits=self._total_bits)
        m.submodules.kept_reciprocal = kept_reciprocal = RowReciprocal(total_bits=self._total_bits)
        ell_shape = sum_reciprocal.reciprocal.payload.ell.shape()
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

        # --- storage: TILE_BANKS banks of one tile each ----------------------------------------------
        # A tile moves through its bank: ingest (scores), exp (exponentials written back), select and emit.
        # The three stages run at once, each on its own tile, the banks taken in turn.
        nbanks = TILE_BANKS
        word = data.ArrayLayout(signed(golden.ACC_BITS), k)
        banks = []
        for b in range(nbanks):
            m.submodules[f"bank_{b}"] = bank = Memory(shape=word, depth=lanes << kb_bits, init=[])
            banks.append((bank.write_port(), bank.read_port()))
        choice_layout = select.choice.payload.shape()
        m.submodules.choices = choices = Memory(shape=choice_layout, depth=block_rows << kb_bits, init=[])
        choice_write = choices.write_port()
        choice_read = choices.read_port(domain="comb")

        full = Signal(nbanks)  # the bank holds a tile (from its last score until it is emitted)
        exped = Signal(nbanks)  # the bank's exponentials and row reciprocals are ready
        ingest_bank, exp_bank, norm_bank = (Signal(range(nbanks), name=n) for n in ("ingest_bank", "exp_bank", "norm_bank"))
        tiles = [Signal(tile_layout(cfg), name=f"tile_{b}") for b in range(nbanks)]
        # the rows' maxima, offset by 2^31 (a score's sign bit flipped): their comparisons are unsigned
        # Per bank and row, in memories addressed by (bank, row): the rows' maxima, offset by 2^31 (a
        # score's sign bit flipped: their comparisons are unsigned), written as each row's maximum becomes
        # final and read by the exp pass; the rows' reciprocals, written by the exp pass's divider and read
        # by the select and emit passes. The kept sums' reciprocals (one tile at a time) likewise, by row.
        row_bits = max(1, (lanes - 1).bit_length())
        scale_layout = sum_reciprocal.reciprocal.payload.shape()
        m.submodules.maxima = maxima = Memory(shape=unsigned(golden.ACC_BITS), depth=nbanks << row_bits, init=[])
        m.submodules.row_scales = row_scales = Memory(shape=scale_layout, depth=nbanks << row_bits, init=[])
        m.submodules.kept_scales = kept_scales = Memory(shape=scale_layout, depth=lanes, init=[])
        max_write, max_read = maxima.write_port(), maxima.read_port()
        scale_write, scale_read = row_scales.write_port(), row_scales.read_port()
        kept_write, kept_read = kept_scales.write_port(), kept_scales.read_port()
        sums = Array(Signal(self._total_bits, name=f"sum_{i}") for i in range(lanes))  # the exp pass's tile
        kept_sum = Array(Signal(self._total_bits, name=f"kept_{i}") for i in range(lanes))  # the select pass's

        def pick(select, items):
            """The item of the bank whose bit is set in the one-hot ``select``, one item per bank."""
            return reduce(operator.or_, (Mux(select[b], Value.cast(item), 0) for b, item in enumerate(items)))

        def following(bank):
            """The bank after ``bank``, in turn."""
            return Mux(bank == nbanks - 1, 0, bank + 1)

        # each pass's tile, registered as the pass starts on it
        ingest_tile, exp_tile, tile = (Signal(tile_layout(cfg), name=n) for n in ("ingest_tile", "exp_tile", "norm_tile"))
        # The read words, the passes' tiles and their start conditions are selected by one-hot registers of
        # the exp and norm passes' banks (no decoding between a register and the wide multiplexers); the exp
        # pass's word is registered after it.
        exp_select = Signal(nbanks, init=1)
        norm_select = Signal(nbanks, init=1)

        def selected(select):
            """The read word of the bank whose bit is set in the one-hot ``select``."""
            return [pick(select, [read.data[i] for _, read in banks]) for i in range(k)]
        exp_data, norm_data = Signal(word), Signal(word)
        m.d.sync += [exp_data[i].eq(v) for i, v in enumerate(selected(exp_select))]
        m.d.comb += [norm_data[i].eq(v) for i, v in enumerate(selected(norm_select))]
        exp_addr, norm_addr = Signal.like(banks[0][1].addr), Signal.like(banks[0][1].addr)
        exp_reading = Signal()  # the exp pass reads its bank; otherwise the reads are select's and emit's
        for b, (_, read) in enumerate(banks):
            m.d.comb += read.addr.eq(Mux(exp_reading & exp_select[b], exp_addr, norm_addr))

        def reciprocal_engine(unit, totals, write, address, finished, stored=None):
            """Row reciprocals on ``unit``: once a row's bit rises in ``finished`` (the cycle its total is
            final) it is pending; the lowest pending row is taken into a registered choice, its total then
            into an offer register, and offered from there. Its result is written through ``write`` at
            ``address(row)``, and its bit in ``stored`` rises with the write. Returns a signal that is high
            when none is pending, chosen, offered or computing."""
            pending = Signal(lanes)
            chosen = Signal(data.StructLayout({"valid": 1, "row": range(lanes)}))
            offer = Signal(data.StructLayout({"valid": 1, "row": range(lanes), "total": self._total_bits}))
            sending = Signal(range(lanes))
            asked = Signal()
            next_row = Signal(range(lanes))
            for i in reversed(range(lanes)):  # the lowest pending row
                with m.If(pending[i]):
                    m.d.comb += next_row.eq(i)
            taken = unit.total.valid & unit.total.ready
            load = chosen.valid & (~offer.valid | taken)
            choose = pending.any() & (~chosen.valid | load)
            m.d.comb += [unit.total.valid.eq(offer.valid & ~asked), unit.total.payload.eq(offer.total),
                         unit.reciprocal.ready.eq(1)]
            cleared = Signal(lanes)
            with m.If(choose):
                m.d.sync += [chosen.valid.eq(1), chosen.row.eq(next_row)]
                m.d.comb += cleared.eq(1 << next_row)
            with m.Elif(load):
                m.d.sync += chosen.valid.eq(0)
            with m.If(load):
                m.d.sync += [offer.valid.eq(1), offer.row.eq(chosen.row), offer.total.eq(totals[chosen.row])]
            with m.Elif(taken):
                m.d.sync += offer.valid.eq(0)
            with m.If(taken):
                m.d.sync += [sending.eq(offer.row), asked.eq(1)]
            m.d.sync += pending.eq((pending & ~cleared) | finished)
            m.d.comb += [write.addr.eq(address(sending)), write.data.eq(unit.reciprocal.payload),
                         write.en.eq(unit.reciprocal.valid)]
            with m.If(unit.reciprocal.valid):
                m.d.sync += asked.eq(0)
                if stored is not None:
                    m.d.sync += stored.eq(stored | (1 << sending))
            return ~pending.any() & ~chosen.valid & ~offer.valid & ~asked & ~finished.any()

        # --- ingest: the engine's scores into the free bank, each row's maximum ---------------------------
        irow = Signal(range(lanes))
        ikb = Signal(COUNT_BITS)
        ingest_write = Signal()
        with m.FSM() as ingest:
            with m.State("IDLE"):
                m.d.comb += self.tile.ready.eq(~full.bit_select(ingest_bank, 1))
                with m.If(self.tile.valid & self.tile.ready):
                    m.d.sync += ingest_tile.eq(self.tile.payload)
                    for b in range(nbanks):
                        with m.If(ingest_bank == b):
                            m.d.sync += tiles[b].eq(self.tile.payload)
                    m.d.sync += [irow.eq(0), ikb.eq(0)]
                    m.next = "SCORES"
            with m.State("SCORES"):
                m.d.comb += [self.scores.ready.eq(1), ingest_write.eq(self.scores.valid)]
                with m.If(self.scores.valid):
                    last_irow = irow == ingest_tile.rows - 1
                    m.d.sync += irow.eq(Mux(last_irow, 0, irow + 1))
                    with m.If(last_irow):
                        m.d.sync += ikb.eq(ikb + 1)
                        with m.If(ikb == ingest_tile.key_blocks - 1):
                            m.d.sync += [ikb.eq(0), ingest_bank.eq(following(ingest_bank))]
                            m.next = "IDLE"
        last_score = (ingest.ongoing("SCORES") & self.scores.valid & (irow == ingest_tile.rows - 1)
                      & (ikb == ingest_tile.key_blocks - 1))
        # Each row's maximum, ingest_max_latency(k) stages behind the scores: the beat's counted scores
        # (others as ACC_MIN), offset by 2^31, their maximum by a tree of one comparison a stage, then the
        # beat's maximum in a candidate register of its row (one a row, beside the row's comparator, so the
        # tree's fan-out to the rows is not on the comparison's path), then the row's running maximum, one
        # comparator a row on the tile being ingested (its first key block starts it afresh), written to
        # the tile's bank after the row's last beat. A tile counts as ingested once its last beat has
        # passed them.
        place = {"valid": 1, "last": 1, "first": 1, "final": 1, "bank": range(nbanks), "row": range(lanes)}
        counted = Signal(data.StructLayout({**place, "values": data.ArrayLayout(unsigned(golden.ACC_BITS), k)}))
        m.d.sync += [counted.valid.eq(ingest_write), counted.last.eq(last_score), counted.first.eq(ikb == 0),
                     counted.final.eq(ikb == ingest_tile.key_blocks - 1), counted.bank.eq(ingest_bank), counted.row.eq(irow)]
        for i in range(k):
            counts = ingest_tile.row_valid.bit_select(irow, 1) & ((ikb * k + i) < ingest_tile.valid_keys)
            m.d.sync += counted.values[i].eq(Mux(counts, _offset(self.scores.payload.values[i]), 0))
        peak, values, max_stages = counted, [counted.values[i] for i in range(k)], [counted]
        for stage in range(max(1, tree_levels(k))):
            values = tree(values, lambda a, b: Mux(b > a, b, a), 1)
            stage_layout = data.StructLayout({**place, "values": data.ArrayLayout(unsigned(golden.ACC_BITS), len(values))})
            reduced = Signal(stage_layout, name=f"peak_{stage}")
            m.d.sync += [reduced.valid.eq(peak.valid), reduced.last.eq(peak.valid & peak.last), reduced.first.eq(peak.first),
                         reduced.final.eq(peak.final), reduced.bank.eq(peak.bank), reduced.row.eq(peak.row)]
            m.d.sync += [reduced.values[i].eq(v) for i, v in enumerate(values)]
            peak, values = reduced, [reduced.values[i] for i in range(len(values))]
            max_stages.append(reduced)
        peak_value, = values
        late = Signal(data.StructLayout(place), name="peak_late")  # the beat's place, beside the candidates
        m.d.sync += [late.valid.eq(peak.valid), late.last.eq(peak.valid & peak.last), late.first.eq(peak.first),
                     late.final.eq(peak.final), late.bank.eq(peak.bank), late.row.eq(peak.row)]
        max_stages.append(late)
        tile_ingested = late.valid & late.last
        running = Array(Signal(unsigned(golden.ACC_BITS), name=f"ingest_max_{i}") for i in range(lanes))
        for i in range(lanes):
            candidate = Signal(unsigned(golden.ACC_BITS), name=f"candidate_{i}")
            candidate_hit, candidate_first = Signal(name=f"candidate_hit_{i}"), Signal(name=f"candidate_first_{i}")
            hit = peak.valid & (peak.row == i)
            m.d.sync += candidate_hit.eq(hit)
            with m.If(hit):
                m.d.sync += [candidate.eq(peak_value), candidate_first.eq(peak.first)]
            with m.If(candidate_hit & (candidate_first | (candidate > running[i]))):
                m.d.sync += running[i].eq(candidate)
        # a row's maximum is final after its beat of the last key block: written to its bank the cycle after
        finished = Signal(data.StructLayout({"valid": 1, "bank": range(nbanks), "row": range(lanes)}))
        m.d.sync += [finished.valid.eq(late.valid & late.final), finished.bank.eq(late.bank), finished.row.eq(late.row)]
        m.d.comb += [max_write.addr.eq(Cat(finished.row[:row_bits], finished.bank)), max_write.data.eq(running[finished.row]),
                     max_write.en.eq(finished.valid)]
        ingested_bank = late.bank

        # --- exp: e = IntegerExp(max − S) written back and summed per row; row reciprocals beside ----------
        row = Signal(range(lanes))
        kb = Signal(COUNT_BITS)
        last_row = row == exp_tile.rows - 1
        last_kb = kb == exp_tile.key_blocks - 1
        meta = data.StructLayout({"valid": 1, "row": range(lanes), "kb": COUNT_BITS, "keep": k, "last": 1})
        exp_line = [Signal(meta, name=f"exp_meta_{i}") for i in range(EXP_READ_LATENCY + EXP_LATENCY)]
        issue_exp = Signal()
        m.d.comb += [exp_addr.eq(Cat(kb[:kb_bits], row)), exp_reading.eq(issue_exp)]
        row_max = Signal.like(max_read.data)  # the read row's maximum, read and registered beside the word
        m.d.sync += row_max.eq(max_read.data)
        m.d.comb += max_read.addr.eq(Cat(row[:row_bits], exp_bank))
        m.d.sync += [exp_line[0].valid.eq(issue_exp), exp_line[0].row.eq(row), exp_line[0].kb.eq(kb),
                     exp_line[0].last.eq(last_kb)]
        for i in range(k):
            m.d.sync += exp_line[0].keep[i].eq(exp_tile.row_valid.bit_select(row, 1) & ((kb * k + i) < exp_tile.valid_keys))
        m.d.sync += [b.eq(a) for a, b in zip(exp_line, exp_line[1:])]
        for i, exp in enumerate(self._exps):
            # max − S, the same bits from both offset by 2^31
            m.d.comb += [exp.delta.eq(row_max - _offset(exp_data[i])),
                         exp.multiplier.eq(exp_tile.exp_multiplier), exp.shift.eq(exp_tile.exp_shift)]
        done_exp = exp_line[-1]
        e_out = [Mux(done_exp.keep[i], exp.e, 0) for i, exp in enumerate(self._exps)]
        # the word's kept exponentials summed (TERMS_LATENCY), then added into the row's total
        terms = Signal(data.StructLayout({"valid": 1, "last": 1, "row": range(lanes), "value": self._total_bits}))
        m.d.sync += [terms.valid.eq(done_exp.valid), terms.last.eq(done_exp.last), terms.row.eq(done_exp.row),
                     terms.value.eq(tree_sum(e_out))]
        exp_busy = Cat(*(line.valid for line in exp_line), terms.valid).any()
        sum_final = Signal(lanes)  # a row's sum is final the cycle after its last word's exponentials are added
        m.d.sync += sum_final.eq(Mux(terms.valid & terms.last, 1 << terms.row, 0))
        sums_done = reciprocal_engine(sum_reciprocal, sums, scale_write, lambda i: Cat(i[:row_bits], exp_bank), sum_final)
        with m.If(terms.valid):
            m.d.sync += sums[terms.row].eq(sums[terms.row] + terms.value)
        with m.FSM() as exp_fsm:
            with m.State("IDLE"):
                with m.If((full & ~exped & exp_select).any()):
                    m.d.sync += [row.eq(0), kb.eq(0), exp_tile.eq(pick(exp_select, tiles))] + [sums[i].eq(0) for i in range(lanes)]
                    m.next = "EXP"
            with m.State("EXP"):
                m.d.comb += issue_exp.eq(1)
                m.d.sync += kb.eq(Mux(last_kb, 0, kb + 1))
                with m.If(last_kb):
                    m.d.sync += row.eq(row + 1)
                    with m.If(last_row):
                        m.d.sync += row.eq(0)
                        m.next = "WAIT"
            with m.State("WAIT"):  # the last exponentials, then every row's reciprocal
                with m.If(~exp_busy & sums_done):
                    m.d.sync += [exp_bank.eq(following(exp_bank)), exp_select.eq(exp_select.rotate_left(1))]
                    m.next = "IDLE"
        tile_exped = exp_fsm.ongoing("WAIT") & ~exp_busy & sums_done

        # --- the block pipeline of select and emit: one read per cycle, k reads per block -------------------
        # A block's k rows are read back to back and scaled (ReciprocalScale); the exponentials travel
        # beside the scaling so that a block is whole when its last row is scaled.
        bq = Signal(range(block_rows))  # the block row being read
        bk = Signal(COUNT_BITS)  # the key block being read
        bstep = Signal(range(k))  # the row within the block being read
        issued_all = Signal()
        credit_depth = self._queue_depth
        in_flight = Signal(range(credit_depth + 2))  # blocks whose reads started and that have not left
        block_meta = data.StructLayout({"valid": 1, "i": range(k), "exists": 1, "qb": range(block_rows),
                                        "kb": COUNT_BITS, "e": data.ArrayLayout(unsigned(E_BITS), k)})
        block_line = [Signal(block_meta, name=f"block_meta_{i}") for i in range(BANK_READ_LATENCY + SCALE_LATENCY)]
        issue_block = Signal()
        block_row = bq * k + bstep
        m.d.comb += norm_addr.eq(Cat(bk[:kb_bits], block_row))
        m.d.sync += [block_line[0].valid.eq(issue_block), block_line[0].i.eq(bstep), block_line[0].qb.eq(bq),
                     block_line[0].kb.eq(bk), block_line[0].exists.eq(block_row < tile.rows)]
        m.d.sync += [b.eq(a) for a, b in zip(block_line[1:], block_line[2:])]
        for field in ("valid", "i", "exists", "qb", "kb"):
            m.d.sync += getattr(block_line[1], field).eq(getattr(block_line[0], field))
        # the row's reciprocals, read beside the bank's word
        m.d.comb += [scale_read.addr.eq(Cat(block_row[:row_bits], norm_bank)), kept_read.addr.eq(block_row)]
        row_r, row_ell = scale_read.data.r, scale_read.data.ell
        for i in range(k):
            x = Mux(block_line[0].exists, norm_data[i][:E_BITS], 0)
            m.d.sync += block_line[1].e[i].eq(x)
            m.d.comb += [densities[i].en.eq(1), densities[i].x.eq(x), densities[i].r.eq(row_r), densities[i].ell.eq(row_ell),
                         probabilities[i].en.eq(1), probabilities[i].x.eq(x),
                         probabilities[i].r.eq(Mux(tile.prune, kept_read.data.r, row_r)),
                         probabilities[i].ell.eq(Mux(tile.prune, kept_read.data.ell, row_ell))]
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
        # A choice is taken the cycle it is valid (the selection has no back-pressure): its block's side
        # entry was queued with the block, before the block could reach the selection.
        m.d.comb += [beside.r_en.eq(select.choice.valid), chosen.eq(select.choice.valid)]
        # each chosen block's kept exponentials summed per row (TERMS_LATENCY), then added into the kept sums
        kept_terms = Signal(data.StructLayout({"valid": 1, "last": 1, "qb": range(block_rows),
                                               "values": data.ArrayLayout(self._total_bits, k)}))
        mask = select.choice.payload.mask
        m.d.sync += [kept_terms.valid.eq(chosen), kept_terms.last.eq(side.kb == tile.key_blocks - 1),
                     kept_terms.qb.eq(side.qb)]
        m.d.sync += [kept_terms.values[r].eq(tree_sum([Mux(mask[r * k + c], side.e[r][c], 0) for c in range(k)]))
                     for r in range(k)]
        with m.If(chosen):
            m.d.comb += [choice_write.addr.eq(Cat(side.kb[:kb_bits], side.qb)), choice_write.data.eq(select.choice.payload),
                         choice_write.en.eq(1)]
        kept_final = Signal(lanes)  # a block row's kept sums are final the cycle after its last choice's terms are added
        m.d.sync += kept_final.eq(0)
        with m.If(kept_terms.valid):
            for r in range(k):
                m.d.sync += kept_sum[kept_terms.qb * k + r].eq(kept_sum[kept_terms.qb * k + r] + kept_terms.values[r])
            with m.If(kept_terms.last):
                m.d.sync += kept_final.eq(Cat(*(((kept_terms.qb * k + r) < tile.rows) for r in range(k))) << (kept_terms.qb * k))
        kept_ready = Signal(lanes)  # rows whose kept sum's reciprocal is stored
        reciprocal_engine(kept_reciprocal, kept_sum, kept_write, lambda i: i, kept_final, kept_ready)
        # a block row may be emitted once its rows' kept reciprocals are stored (rows past the tile's end
        # have none), while later block rows' are still computed
        row_ready = Signal()
        m.d.comb += row_ready.eq(~tile.prune | Cat(*((kept_ready.bit_select(bq * k + r, 1) | ((bq * k + r) >= tile.rows))
                                                   for r in range(k))).all())

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
        m.d.comb += issue_block.eq((selecting | (emitting & row_ready)) & ~issued_all
                                   & ((bstep != 0) | (in_flight < credit_depth)))
        with m.If(issue_block):
            m.d.sync += bstep.eq(Mux(bstep == k - 1, 0, bstep + 1))
            with m.If(bstep == k - 1):
                m.d.sync += bk.eq(Mux(bk == tile.key_blocks - 1, 0, bk + 1))
                with m.If(bk == tile.key_blocks - 1):
                    m.d.sync += bq.eq(bq + 1)
                    with m.If((bq + 1) * k >= tile.rows):
                        m.d.sync += issued_all.eq(1)
        pass_done = issued_all & (in_flight == 0) & ~Cat(*(line.valid for line in block_line)).any()

        with m.FSM() as norm:
            with m.State("IDLE"):
                with m.If((exped & norm_select).any()):
                    starting = tile_layout(cfg)(pick(norm_select, tiles))
                    m.d.sync += [bq.eq(0), bk.eq(0), bstep.eq(0), issued_all.eq(0), tile.eq(starting)]
                    m.d.sync += [kept_sum[i].eq(0) for i in range(lanes)] + [kept_ready.eq(0)]
                    with m.If(starting.prune):
                        m.d.sync += selecting.eq(1)
                        m.next = "SELECT"
                    with m.Else():
                        m.d.sync += emitting.eq(1)
                        m.next = "EMIT"
            with m.State("SELECT"):  # every block chosen; emit starts as the kept sums' reciprocals arrive
                with m.If(pass_done):
                    m.d.sync += [bq.eq(0), bk.eq(0), bstep.eq(0), issued_all.eq(0), selecting.eq(0), emitting.eq(1)]
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(pass_done):
                    m.d.sync += [emitting.eq(0), norm_bank.eq(following(norm_bank)), norm_select.eq(norm_select.rotate_left(1))]
                    m.next = "IDLE"
        tile_emitted = norm.ongoing("EMIT") & pass_done

        for b in range(nbanks):
            with m.If(tile_ingested & (ingested_bank == b)):
                m.d.sync += full[b].eq(1)
            with m.Elif(tile_emitted & norm_select[b]):
                m.d.sync += full[b].eq(0)
            with m.If(tile_exped & exp_select[b]):
                m.d.sync += exped[b].eq(1)
            with m.Elif(tile_emitted & norm_select[b]):
                m.d.sync += exped[b].eq(0)
        # A bank's write is registered (its address, word and enable), so the choice between a score beat
        # and a word of exponentials does not meet the block RAM's data inputs in the same cycle. The
        # write lands a cycle later; nothing reads it that soon: a tile's exp pass starts
        # ingest_max_latency after its last score, its select pass after its last row's reciprocal.
        for b, (write, _) in enumerate(banks):
            pending_write = Signal(data.StructLayout({"en": 1, "addr": len(write.addr), "data": word}),
                                   name=f"bank_write_{b}")
            m.d.comb += [write.addr.eq(pending_write.addr), write.data.eq(pending_write.data), write.en.eq(pending_write.en)]
            m.d.sync += pending_write.en.eq(0)
            with m.If(ingest_write & (ingest_bank == b)):
                m.d.sync += [pending_write.addr.eq(Cat(ikb[:kb_bits], irow)), pending_write.data.eq(self.scores.payload.values),
                             pending_write.en.eq(1)]
            with m.Elif(done_exp.valid & exp_select[b]):  # exponentials written back over their scores
                m.d.sync += [pending_write.addr.eq(Cat(done_exp.kb[:kb_bits], done_exp.row)), pending_write.en.eq(1)]
                for i in range(k):
                    m.d.sync += pending_write.data[i].eq(e_out[i])

        ingesting = Cat(*(stage.valid for stage in max_stages)).any()
        m.d.comb += self.busy.eq(~ingest.ongoing("IDLE") | ingesting | ~exp_fsm.ongoing("IDLE")
                                 | ~norm.ongoing("IDLE") | full.any())
        return m


def _offset(score):
    """A signed score plus 2^31, as unsigned: its sign bit flipped (order kept, compared unsigned)."""
    return Cat(score[:-1], ~score[-1])
