"""The attention unit: one head's S = Q·Kᵀ, integer softmax with attention-map pattern pruning, and P·V."""

from functools import reduce

from amaranth import Array, Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.fifo import SyncFIFO
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from core import golden
from hw.config import AttentionConfig
from hw.layouts import Opcode, activation_layout, command_layout, output_layout, pattern_layout
from hw.pattern_matmul import PatternMatmulEngine
from hw.softmax_unit import SoftmaxUnit, probability_block_layout, scores_layout
from hw.trees import tree_sum


def head_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One head's command: sizes and the layer's softmax and context constants."""
    return data.StructLayout({
        "length": range(cfg.max_seq + 1),  # L: queries and keys, padding included
        "valid_length": range(cfg.max_seq + 1),  # tokens 0 … valid_length − 1 are real
        "head_blocks": range(cfg.max_head_dim // cfg.engine.pattern.block_size + 1),  # d / k
        "prune": 1,  # attention-map pattern pruning
        "exp_multiplier": unsigned(golden.MULTIPLIER_BITS),
        "exp_shift": unsigned(golden.SHIFT_MAX.bit_length()),
        "context_multiplier": unsigned(golden.MULTIPLIER_BITS),
        "context_shift": unsigned(golden.SHIFT_MAX.bit_length()),
    })


def pool_layout(cfg: AttentionConfig) -> data.StructLayout:
    """One pattern of the attention-map pool: its id and mask (bit ``row · k + col``)."""
    return data.StructLayout({"id": unsigned(cfg.engine.id_bits), "mask": cfg.engine.pattern.positions})


def exp_table_layout() -> data.StructLayout:
    return data.StructLayout({"addr": 8, "data": 16})


#: Cycles from the unit's decision to send the engine a command to the engine's taking it (when idle):
#: the command passes a register.
COMMAND_LATENCY = 1
#: Cycles from a probability block leaving the softmax to its write into the probability buffer: it is
#: registered with its pattern's kept positions, then compacted (with pruning) into a write register.
PROBABILITY_WRITE_LATENCY = 2


def ranks_of(mask):
    """Each position's rank among the set bits of ``mask``: a balanced sum of the bits before it."""
    return [Const(0, 1)] + [tree_sum([mask[i] for i in range(p)]) for p in range(1, len(mask))]


def compact(mask, values, count, ranks=None):
    """The values at the first ``count`` set bits of ``mask``, in position order (0 past the last), with
    the positions' ``ranks`` (:func:`ranks_of`, computed here when not given)."""
    ranks = ranks_of(mask) if ranks is None else ranks
    slots = []
    for j in range(count):
        terms = [Mux(mask[p] & (ranks[p] == j), values[p], 0) for p in range(len(values))]
        slots.append(reduce(lambda a, b: a | b, terms))
    return slots


class AttentionUnit(wiring.Component):
    """Multi-head self-attention, one head after another, on one pattern-sparse MAC array.

    Per head (a ``cmd`` beat, taken — with the head's keys — while the previous head's context is still
    computed): the keys and values are stored (K in ``k`` banks by key row, V in ``k``
    banks by channel, so that a k×k block of K and a k-key column of Vᵀ each read in one cycle); then

    1. **scores**: the engine runs ``S = Q · Kᵀ`` in dense raw mode, Q streamed straight from ``queries``
       as activations and K replayed as weights for every tile of ``lanes`` queries;
    2. **softmax**: the engine's int32 scores go to the :class:`~hw.softmax_unit.SoftmaxUnit`, whose
       probability blocks (pattern id, mask, k² values) fill the probability buffer;
    3. **context**: the engine runs ``Vᵀ · Pᵀ`` — the probabilities are the weights, in pattern mode
       with the chosen pattern's kept values when pruning (half the weight beats of dense mode) — and
       requantizes it with the context multiplier and shift.

    ``context`` beats come per tile of ``lanes`` channels, per block of ``k`` queries, per channel:
    ``k`` int8 values (sign-extended), the engine's output order for ``Vᵀ · Pᵀ``.

    Parameters
    ----------
    config : AttentionConfig

    Interface attributes
    --------------------
    cmd : In(stream.Signature(head_layout))
        One beat per head.
    pool : In(stream.Signature(pool_layout))
        The attention-map pool, between heads: written to the selection's masks and, as positions, to
        the engine's pattern table. A mask with other than ``kept_per_block`` bits raises ``error``.
    exp_table : In(stream.Signature(exp_table_layout))
        Replaces entries of the exponential's table, between heads.
    queries, keys, values : In(stream.Signature(activation_layout))
        Q, K and V of the head: per token, ``head_blocks`` beats of ``k`` int8.
    context : Out(stream.Signature(output_layout))
    score_tap : Out(StructLayout({"valid": 1, "values": k × int32}))
        Every score the engine hands to the softmax (for verification).
    block_tap : Out(StructLayout({"valid": 1, "block": probability_block_layout}))
        Every probability block the softmax emits (for verification).
    stage : Out(2)
        0 between heads (and while K loads), 1 scores and softmax, 2 context (for cycle accounting).
    busy : Out(1)
    error : Out(1)
        A refused command or pool entry (sticky).
    """

    def __init__(self, config: AttentionConfig):
        self._config = config
        engine = config.engine
        super().__init__({
            "cmd": In(stream.Signature(head_layout(config))),
            "pool": In(stream.Signature(pool_layout(config))),
            "exp_table": In(stream.Signature(exp_table_layout())),
            "queries": In(stream.Signature(activation_layout(engine))),
            "keys": In(stream.Signature(activation_layout(engine))),
            "values": In(stream.Signature(activation_layout(engine))),
            "context": Out(stream.Signature(output_layout(engine))),
            "score_tap": Out(data.StructLayout({"valid": 1, "values": scores_layout(engine).members["values"]})),
            "block_tap": Out(data.StructLayout({"valid": 1, "block": probability_block_layout(engine)})),
            "stage": Out(2),
            "busy": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        cfg = self._config
        ecfg = cfg.engine
        k, n, lanes = ecfg.pattern.block_size, ecfg.pattern.kept_per_block, ecfg.lanes
        seq_blocks, head_blocks_max = cfg.seq_blocks, cfg.max_head_dim // k
        sb_bits = max(1, (seq_blocks - 1).bit_length())
        hb_bits = max(1, (head_blocks_max - 1).bit_length())
        m.submodules.engine = engine = PatternMatmulEngine(ecfg)
        m.submodules.softmax = softmax = SoftmaxUnit(ecfg, max_keys=cfg.max_seq, patterns_per_cycle=cfg.patterns_per_cycle)
        # The pool is written whole (a model's smaller pool is padded with copies of pattern 0, which
        # only tie with it and so are never chosen).
        m.d.comb += softmax.patterns.eq(ecfg.pattern.pool_size)

        # --- the head being computed ----------------------------------------------------------------
        head = Signal(head_layout(cfg))
        blocks = Signal(range(seq_blocks + 1))  # ⌈L/k⌉
        channels = Signal(range(cfg.max_head_dim + 1))  # d
        start = Signal()  # a head becomes the current one
        # A command is taken into ``pending`` (with its checks' result) and acted on from there: the cycle
        # after, its keys may arrive (during the previous head's context); it becomes the current head
        # once the previous one's context is done.
        pending = Signal(data.StructLayout({"valid": 1, "fresh": 1, "refused": 1, "head": head_layout(cfg)}))
        k_start = Signal()  # a head's keys may arrive
        qk_start, pv_start = Signal(), Signal()
        qk_phase, pv_phase = Signal(), Signal()

        # --- K and V: k banks each --------------------------------------------------------------------
        word = unsigned(8 * k)
        k_banks, v_banks = [], []
        for b in range(k):
            m.submodules[f"k_bank_{b}"] = k_bank = Memory(shape=word, depth=seq_blocks << hb_bits, init=[])
            m.submodules[f"v_bank_{b}"] = v_bank = Memory(shape=word, depth=head_blocks_max << sb_bits, init=[])
            k_banks.append((k_bank.write_port(), k_bank.read_port()))
            v_banks.append((v_bank.write_port(granularity=8), v_bank.read_port()))

        # K loader
        k_row = Signal(range(k))
        k_tb = Signal(range(seq_blocks + 1))
        k_cb = Signal(range(head_blocks_max + 1))
        k_token = Signal(range(cfg.max_seq + 1))
        v_row = Signal(range(k))
        v_tb = Signal(range(seq_blocks + 1))
        v_cb = Signal(range(head_blocks_max + 1))
        v_token = Signal(range(cfg.max_seq + 1))
        # K of a head may arrive from its command on, V from when it is the current head until its context
        # starts (the V banks feed the previous head's context until then).
        k_active, v_active = Signal(), Signal()
        k_length = Signal.like(head.length)
        k_blocks = Signal.like(head.head_blocks)
        with m.If(k_start):
            m.d.sync += [k_row.eq(0), k_tb.eq(0), k_cb.eq(0), k_token.eq(0), k_active.eq(1),
                         k_length.eq(pending.head.length), k_blocks.eq(pending.head.head_blocks)]
        with m.If(start):
            m.d.sync += [v_row.eq(0), v_tb.eq(0), v_cb.eq(0), v_token.eq(0), v_active.eq(1)]
        # all of a head's keys (values) are in: registered as the last beat is taken
        k_in, v_in = Signal(), Signal()
        k_done = k_active & k_in
        v_done = v_in
        m.d.comb += [self.keys.ready.eq(k_active & ~k_done), self.values.ready.eq(v_active & ~v_done)]
        for b, ((k_write, _), (v_write, _)) in enumerate(zip(k_banks, v_banks)):
            m.d.comb += [
                k_write.addr.eq(Cat(k_cb[:hb_bits], k_tb[:sb_bits])), k_write.data.eq(self.keys.payload.as_value()),
                k_write.en.eq(self.keys.valid & self.keys.ready & (k_row == b)),
                v_write.addr.eq(Cat(v_tb[:sb_bits], v_cb[:hb_bits])),
                v_write.data.eq(self.values.payload.values[b].replicate(k)),
                v_write.en.eq(Mux(self.values.valid & self.values.ready, 1 << v_row, 0)),
            ]
        for ready, valid, row, tb, cb, token, per_token, tokens, done in (
                (self.keys.ready, self.keys.valid, k_row, k_tb, k_cb, k_token, k_blocks, k_length, k_in),
                (self.values.ready, self.values.valid, v_row, v_tb, v_cb, v_token, head.head_blocks, head.length, v_in)):
            with m.If(valid & ready):
                m.d.sync += cb.eq(cb + 1)
                with m.If(cb == per_token - 1):
                    m.d.sync += [cb.eq(0), token.eq(token + 1), row.eq(Mux(row == k - 1, 0, row + 1))]
                    with m.If(row == k - 1):
                        m.d.sync += tb.eq(tb + 1)
                    with m.If(token == tokens - 1):
                        m.d.sync += done.eq(1)
        with m.If(k_start):
            m.d.sync += k_in.eq(0)
        with m.If(start):
            m.d.sync += v_in.eq(0)

        # --- the probability buffer ---------------------------------------------------------------------
        m.submodules.probabilities = p_buffer = Memory(shape=probability_block_layout(ecfg), depth=seq_blocks << sb_bits, init=[])
        p_write = p_buffer.write_port()
        p_read = p_buffer.read_port()
        p_qb = Signal(range(seq_blocks + 1))
        p_kb = Signal(range(seq_blocks + 1))
        with m.If(start):
            m.d.sync += [p_qb.eq(0), p_kb.eq(0)]
        # With pruning a block is stored as the engine takes it: its kept values compacted, in position
        # order, into the first n slots (the rest 0). The block and its pattern's kept positions (a table
        # written with the pool) are registered first, the compacted write then (PROBABILITY_WRITE_LATENCY).
        m.submodules.kept_positions = kept_table = Memory(shape=data.ArrayLayout(range(k * k), n),
                                                          depth=ecfg.pattern.pool_size, init=[])
        kept_write = kept_table.write_port()
        kept_read = kept_table.read_port(domain="comb")
        arrived = Signal(data.StructLayout({"valid": 1, "block": probability_block_layout(ecfg),
                                           "kept": data.ArrayLayout(range(k * k), n)}))
        m.d.comb += kept_read.addr.eq(softmax.blocks.payload.pattern)
        m.d.sync += [arrived.valid.eq(softmax.blocks.valid), arrived.block.eq(softmax.blocks.payload),
                     arrived.kept.eq(kept_read.data)]
        block = arrived.block
        block_values = [block.values[pos] for pos in range(k * k)]
        kept_values = [Array(block_values)[arrived.kept[j]] for j in range(n)] + [0] * (k * k - n)
        written = Signal(data.StructLayout({"en": 1, "addr": len(p_write.addr), "data": p_write.data.shape()}))
        m.d.comb += [softmax.blocks.ready.eq(1), p_write.addr.eq(written.addr), p_write.data.eq(written.data),
                     p_write.en.eq(written.en)]
        m.d.sync += [written.en.eq(arrived.valid), written.addr.eq(Cat(p_kb[:sb_bits], p_qb[:sb_bits])),
                     written.data.pattern.eq(block.pattern), written.data.mask.eq(block.mask)]
        m.d.sync += [written.data.values[pos].eq(Mux(head.prune, kept, value))
                     for pos, (kept, value) in enumerate(zip(kept_values, block_values))]
        with m.If(arrived.valid):
            m.d.sync += p_kb.eq(Mux(p_kb == blocks - 1, 0, p_kb + 1))
            with m.If(p_kb == blocks - 1):
                m.d.sync += p_qb.eq(p_qb + 1)
        probabilities_done = (p_qb == blocks) & ~written.en  # the last block's write has landed
        m.d.comb += [self.block_tap.valid.eq(softmax.blocks.valid), self.block_tap.block.eq(softmax.blocks.payload)]

        # --- engine weights: K blocks (dense chunks) for the scores, probability blocks for the context -----
        # tokens of the RUN already covered by finished tiles: queries (Q·Kᵀ) or channels (P·V), one tile past the last
        w_tile = Signal(range(max(cfg.max_seq, cfg.max_head_dim) + lanes + 1))
        w_bn = Signal(range(seq_blocks + 1))
        w_bk = Signal(range(max(seq_blocks, head_blocks_max) + 1))
        w_chunk = Signal(range(ecfg.dense_chunks))
        w_chunk_out = Signal.like(w_chunk)
        w_valid = Signal()
        w_more = Signal()  # beats left to read
        run_tokens = Signal(range(max(cfg.max_seq, cfg.max_head_dim) + 1))
        # the RUN's last chunk, last key block and whether the tile being read is its last, registered
        w_last_chunk = Signal.like(w_chunk)
        w_last_bk = Signal.like(w_bk)
        w_last_bn = Signal.like(w_bn)
        w_final_tile = Signal()
        # The beats reach the engine through two registers and a two-beat queue: the block read from the
        # banks (K or probabilities, by phase), then the beat its chunk makes, so neither the banks' read
        # data nor the chunk selection meets the queue's storage; the queue keeps the engine's ready off
        # the read-ahead below (three cycles more before the first beat, none between beats).
        weights = Signal(engine.weights.payload.shape())  # the beat the fetched block's chunk makes
        fetched = Signal(data.StructLayout({"valid": 1, "chunk": len(w_chunk_out),
                                            "values": data.ArrayLayout(weights.values[0].shape(), k * k),
                                            "pattern": len(p_read.data.pattern)}))  # the block read from the banks
        beat = Signal(data.StructLayout({"valid": 1, "payload": weights.shape()}))  # the beat entering the queue
        m.submodules.weight_queue = weight_queue = SyncFIFO(width=weights.shape().size, depth=2)
        m.d.comb += [weight_queue.w_en.eq(beat.valid), weight_queue.w_data.eq(beat.payload),
                     engine.weights.valid.eq(weight_queue.r_rdy), engine.weights.payload.eq(weight_queue.r_data),
                     weight_queue.r_en.eq(engine.weights.ready)]
        beat_free = ~beat.valid | weight_queue.w_rdy
        with m.If(beat_free):
            m.d.sync += [beat.valid.eq(fetched.valid & (qk_phase | pv_phase)), beat.payload.eq(weights)]
        fetched_free = ~fetched.valid | ((qk_phase | pv_phase) & beat_free)
        advance = ~w_valid | fetched_free
        for _, k_read in k_banks:
            m.d.comb += [k_read.addr.eq(Cat(w_bk[:hb_bits], w_bn[:sb_bits])), k_read.en.eq(advance)]
        m.d.comb += [p_read.addr.eq(Cat(w_bk[:sb_bits], w_bn[:sb_bits])), p_read.en.eq(advance)]
        with m.If(qk_start):
            m.d.sync += [w_last_chunk.eq(ecfg.dense_chunks - 1), w_last_bk.eq(head.head_blocks - 1),
                         w_final_tile.eq(head.length <= lanes)]
        with m.If(pv_start):
            m.d.sync += [w_last_chunk.eq(Mux(head.prune, 0, ecfg.dense_chunks - 1)), w_last_bk.eq(blocks - 1),
                         w_final_tile.eq(channels <= lanes)]
        with m.If(qk_start | pv_start):
            m.d.sync += [w_tile.eq(0), w_bn.eq(0), w_bk.eq(0), w_chunk.eq(0), w_more.eq(1), w_last_bn.eq(blocks - 1)]
        with m.Elif(advance):
            m.d.sync += [w_valid.eq(w_more), w_chunk_out.eq(w_chunk)]
            with m.If(w_more):
                last_chunk = w_chunk == w_last_chunk
                m.d.sync += w_chunk.eq(Mux(last_chunk, 0, w_chunk + 1))
                with m.If(last_chunk):
                    m.d.sync += w_bk.eq(w_bk + 1)
                    with m.If(w_bk == w_last_bk):
                        m.d.sync += [w_bk.eq(0), w_bn.eq(w_bn + 1)]
                        with m.If(w_bn == w_last_bn):
                            m.d.sync += [w_bn.eq(0), w_tile.eq(w_tile + lanes),
                                         w_final_tile.eq(w_tile + 2 * lanes >= run_tokens)]
                            with m.If(w_final_tile):
                                m.d.sync += w_more.eq(0)
        k_block = [k_read.data.word_select(c, 8).as_signed() for _, k_read in k_banks for c in range(k)]
        p_block = p_read.data
        with m.If(fetched_free):
            m.d.sync += [fetched.valid.eq(w_valid), fetched.chunk.eq(w_chunk_out), fetched.pattern.eq(p_block.pattern)]
            m.d.sync += [fetched.values[pos].eq(Mux(qk_phase, k_block[pos], p_block.values[pos])) for pos in range(k * k)]
        with m.Switch(fetched.chunk):
            for c, chunk in enumerate(ecfg.dense_chunk_positions()):
                with m.Case(c):
                    for j, pos in enumerate(chunk):
                        m.d.comb += weights.values[j].eq(fetched.values[pos])
        with m.If(pv_phase & head.prune):
            m.d.comb += [weights.values[j].eq(fetched.values[j]) for j in range(n)]
            m.d.comb += weights.pattern.eq(fetched.pattern)

        # --- engine activations: Q straight through for the scores, Vᵀ for the context --------------------
        a_channel = Signal(range(cfg.max_head_dim + 1))
        a_row = Signal(range(k))  # channel mod k: the V bank
        a_cb = Signal(range(head_blocks_max + 1))  # channel // k
        a_bk = Signal(range(seq_blocks + 1))
        a_row_out = Signal.like(a_row)
        a_valid = Signal()
        a_more = Signal()
        a_advance = ~a_valid | engine.activations.ready
        for _, v_read in v_banks:
            m.d.comb += [v_read.addr.eq(Cat(a_bk[:sb_bits], a_cb[:hb_bits])), v_read.en.eq(a_advance)]
        with m.If(pv_start):
            m.d.sync += [a_channel.eq(0), a_row.eq(0), a_cb.eq(0), a_bk.eq(0), a_more.eq(1)]
        with m.Elif(a_advance & pv_phase):
            m.d.sync += [a_valid.eq(a_more), a_row_out.eq(a_row)]
            with m.If(a_more):
                m.d.sync += a_bk.eq(a_bk + 1)
                with m.If(a_bk == blocks - 1):
                    m.d.sync += [a_bk.eq(0), a_channel.eq(a_channel + 1), a_row.eq(Mux(a_row == k - 1, 0, a_row + 1))]
                    with m.If(a_row == k - 1):
                        m.d.sync += a_cb.eq(a_cb + 1)
                    with m.If(a_channel == channels - 1):
                        m.d.sync += a_more.eq(0)
        v_word = Mux(a_valid, Cat(*(v_read.data for _, v_read in v_banks)).word_select(a_row_out, 8 * k), 0)
        with m.If(qk_phase):
            m.d.comb += [engine.activations.valid.eq(self.queries.valid), engine.activations.payload.eq(self.queries.payload),
                         self.queries.ready.eq(engine.activations.ready)]
        with m.Elif(pv_phase):
            m.d.comb += [engine.activations.valid.eq(a_valid), engine.activations.payload.eq(v_word)]

        # --- engine params: per tile, per block row ------------------------------------------------------
        q_tile = Signal(range(max(cfg.max_seq, cfg.max_head_dim) + lanes + 1))
        q_bn = Signal(range(seq_blocks + 1))
        with m.If(qk_start | pv_start):
            m.d.sync += [q_tile.eq(0), q_bn.eq(0)]
        params_left = (q_tile < run_tokens) & (qk_phase | pv_phase)
        m.d.comb += engine.params.valid.eq(params_left)
        for r in range(k):
            m.d.comb += [engine.params.payload.bias[r].eq(0),
                         engine.params.payload.multiplier[r].eq(Mux(pv_phase, head.context_multiplier, 0)),
                         engine.params.payload.shift[r].eq(Mux(pv_phase, head.context_shift, 0))]
        with m.If(engine.params.valid & engine.params.ready):
            m.d.sync += q_bn.eq(Mux(q_bn == blocks - 1, 0, q_bn + 1))
            with m.If(q_bn == blocks - 1):
                m.d.sync += q_tile.eq(q_tile + lanes)

        # --- softmax tiles and engine outputs --------------------------------------------------------------
        s_base = Signal(range(cfg.max_seq + lanes + 1))
        rows_left = Signal.like(head.length)  # length − s_base, registered (0 once every tile is sent)
        with m.If(qk_start):
            m.d.sync += [s_base.eq(0), rows_left.eq(head.length)]
        m.d.comb += softmax.tile.valid.eq(qk_phase & rows_left.any())
        tile = softmax.tile.payload
        m.d.comb += [
            tile.rows.eq(Mux(rows_left > lanes, lanes, rows_left)),
            tile.row_valid.eq(Cat(*((s_base + i) < head.valid_length for i in range(lanes)))),
            tile.key_blocks.eq(blocks), tile.valid_keys.eq(head.valid_length), tile.prune.eq(head.prune),
            tile.exp_multiplier.eq(head.exp_multiplier), tile.exp_shift.eq(head.exp_shift),
        ]
        with m.If(softmax.tile.valid & softmax.tile.ready):
            m.d.sync += [s_base.eq(s_base + lanes), rows_left.eq(Mux(rows_left > lanes, rows_left - lanes, 0))]
        with m.If(qk_phase):
            m.d.comb += [softmax.scores.valid.eq(engine.outputs.valid), softmax.scores.payload.values.eq(engine.outputs.payload.values),
                         engine.outputs.ready.eq(softmax.scores.ready)]
        with m.Elif(pv_phase):
            wiring.connect(m, engine.outputs, wiring.flipped(self.context))
        m.d.comb += [self.score_tap.valid.eq(qk_phase & engine.outputs.valid & engine.outputs.ready),
                     self.score_tap.values.eq(engine.outputs.payload.values)]
        contexts = Signal(range(seq_blocks * cfg.max_head_dim + 1))
        last_context = Signal.like(contexts)  # blocks × channels − 1, a cycle after the head becomes current
        context_done = Signal()  # registered as the last context beat is taken
        m.d.sync += last_context.eq(blocks * channels - 1)
        with m.If(self.context.valid & self.context.ready):
            m.d.sync += contexts.eq(contexts + 1)
            with m.If(contexts == last_context):
                m.d.sync += context_done.eq(1)
        with m.If(start):
            m.d.sync += [contexts.eq(0), context_done.eq(0)]

        # --- control -------------------------------------------------------------------------------------
        # The engine's commands pass a register (COMMAND_LATENCY): ``send`` writes it when it is empty or
        # being taken; a RUN's phase starts as the engine takes it.
        issue = Signal(data.StructLayout({"valid": 1, "qk": 1, "pv": 1, "cmd": command_layout(ecfg)}))
        free = ~issue.valid | engine.cmd.ready
        m.d.comb += [engine.cmd.valid.eq(issue.valid), engine.cmd.payload.eq(issue.cmd)]
        with m.If(engine.cmd.ready):
            m.d.sync += issue.valid.eq(0)
        taken = issue.valid & engine.cmd.ready
        m.d.comb += [qk_start.eq(taken & issue.qk), pv_start.eq(taken & issue.pv)]
        with m.If(qk_start):
            m.d.sync += [qk_phase.eq(1), run_tokens.eq(head.length)]
        with m.If(pv_start):
            m.d.sync += [pv_phase.eq(1), run_tokens.eq(channels)]

        def send(qk=0, pv=0, **fields):
            m.d.sync += [issue.valid.eq(1), issue.qk.eq(qk), issue.pv.eq(pv), issue.cmd.eq(0)]
            m.d.sync += [getattr(issue.cmd, name).eq(value) for name, value in fields.items() if name != "positions"]
            m.d.sync += [issue.cmd.positions[j].eq(p) for j, p in enumerate(fields.get("positions", []))]

        cmd = self.cmd.payload
        refused = ((cmd.length == 0) | (cmd.length > cfg.max_seq) | (cmd.valid_length > cmd.length)
                   | (cmd.head_blocks == 0) | (cmd.head_blocks > head_blocks_max))
        taking = Signal()  # the unit is in a state that takes a command (between heads, or during a context)
        m.d.comb += self.cmd.ready.eq(taking & ~pending.valid)
        m.d.sync += pending.fresh.eq(0)
        with m.If(self.cmd.valid & self.cmd.ready):
            m.d.sync += [pending.valid.eq(1), pending.fresh.eq(1), pending.refused.eq(refused), pending.head.eq(cmd)]
        # a refused command raises the error the cycle after it is taken, and is dropped
        with m.If(pending.fresh & pending.refused):
            m.d.sync += [self.error.eq(1), pending.valid.eq(0)]
        m.d.comb += k_start.eq(pending.fresh & ~pending.refused)
        accepted = pending.valid & ~pending.refused

        def become_current():
            m.d.comb += start.eq(1)
            m.d.sync += [head.eq(pending.head), pending.valid.eq(0),
                         blocks.eq((pending.head.length + k - 1) // k), channels.eq(pending.head.head_blocks * k)]
        # A pool entry is taken into a register with its positions' ranks among the kept ones, then loaded
        # from there: the selection's mask, the engine's pattern table and the unit's kept positions.
        pool_entry = Signal(data.StructLayout({"valid": 1, "id": unsigned(ecfg.id_bits), "mask": k * k,
                                               "ranks": data.ArrayLayout(range(k * k), k * k)}))
        pool_ranks = [pool_entry.ranks[p] for p in range(k * k)]
        element = pattern_layout(ecfg).elem_shape
        pool_positions = compact(pool_entry.mask, [Const.cast(element.const({"row": p // k, "col": p % k}))
                                                   for p in range(k * k)], n, pool_ranks)
        pool_loaded = Signal()  # the registered entry is loaded this cycle
        m.d.comb += [kept_write.addr.eq(pool_entry.id), kept_write.en.eq(pool_loaded)]
        m.d.comb += [kept_write.data[j].eq(p)
                     for j, p in enumerate(compact(pool_entry.mask, [Const(p, range(k * k)) for p in range(k * k)], n, pool_ranks))]
        with m.FSM() as fsm:
            with m.State("IDLE"):
                m.d.comb += [taking.eq(1), self.exp_table.ready.eq(1),
                             softmax.exp_write.eq(self.exp_table.valid), softmax.exp_addr.eq(self.exp_table.payload.addr),
                             softmax.exp_data.eq(self.exp_table.payload.data)]
                m.d.comb += [pool_loaded.eq(pool_entry.valid & free), self.pool.ready.eq(~pool_entry.valid | free)]
                with m.If(self.pool.ready):
                    m.d.sync += [pool_entry.valid.eq(self.pool.valid), pool_entry.id.eq(self.pool.payload.id),
                                 pool_entry.mask.eq(self.pool.payload.mask)]
                    m.d.sync += [pool_entry.ranks[p].eq(rank) for p, rank in enumerate(ranks_of(self.pool.payload.mask))]
                m.d.comb += [softmax.mask_write.eq(pool_loaded), softmax.mask_id.eq(pool_entry.id), softmax.mask.eq(pool_entry.mask)]
                with m.If(pool_loaded):
                    send(op=Opcode.LOAD_PATTERN, pattern_id=pool_entry.id, positions=pool_positions)
                with m.If(pool_loaded & (tree_sum([pool_entry.mask[p] for p in range(k * k)]) != n)):
                    m.d.sync += self.error.eq(1)
                # the pool and the exponential's table are written before a head starts
                with m.If(accepted & ~self.pool.valid & ~pool_entry.valid):
                    become_current()
                    m.next = "SCORES_RUN"
            with m.State("SCORES_RUN"):
                with m.If(k_done & free):
                    send(qk=1, op=Opcode.RUN, dense=1, raw=1, wide=0, tokens=head.length, in_blocks=head.head_blocks,
                         out_blocks=blocks)
                    m.next = "SCORES"
            with m.State("SCORES"):
                with m.If(probabilities_done & v_done & ~engine.busy):
                    m.d.sync += [qk_phase.eq(0), v_active.eq(0)]
                    m.next = "CONTEXT_RUN"
            with m.State("CONTEXT_RUN"):
                with m.If(free):
                    send(pv=1, op=Opcode.RUN, dense=~head.prune, raw=0, wide=0, tokens=channels, in_blocks=blocks,
                         out_blocks=blocks)
                    m.next = "CONTEXT"
            with m.State("CONTEXT"):
                # The next head's command and keys are taken while this head's context runs.
                m.d.comb += taking.eq(1)
                with m.If(context_done):
                    m.d.sync += pv_phase.eq(0)
                    with m.If(accepted):
                        become_current()
                        m.next = "SCORES_RUN"
                    with m.Else():
                        m.next = "IDLE"
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE") | pending.valid | issue.valid | engine.busy | softmax.busy),
                     self.stage.eq(Mux(pv_phase, 2, Mux(qk_phase, 1, 0)))]
        return m
