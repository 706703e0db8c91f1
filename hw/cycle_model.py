"""Analytical cycle models of :class:`hw.pattern_matmul.PatternMatmulEngine` and of
:class:`hw.attention_unit.AttentionUnit`, and whole-encoder projections.

The engine's timing is fixed by its config and the matmul's shape, so cycles can be computed without
simulating. For one ``RUN`` of ``M`` tokens, ``kb = ceil(K/k)`` block columns and ``nb = ceil(N/k)``
block rows, with ``L`` lanes, ``c`` weight beats per block (1 in pattern mode, ``k²/n`` dense) and
streams that never stall:

* tile ``t`` (``m_t ≤ L`` tokens) loads ``m_t · kb`` activation beats into one bank of the activation
  buffer while tile ``t − 1`` computes from the other bank;
* a tile consumes ``nb · kb · c`` weight beats, one per cycle, except that the beat ending a block row
  waits until the previous row's ``m_t`` outputs have left the output stage (``m_t + D`` cycles after
  that row ended, ``D = ROW_DRAIN_CYCLES``, derived from the components' latencies);
* a run's cycle count ends when the sink has seen the last output beat.

So, when loading hides behind compute (``L · kb ≤ nb · kb · c``) and rows are longer than their drain
(``kb · c ≥ m + D``)::

    cycles = m_0·kb + T · nb·kb·c + m_last + RUN_TAIL_CYCLES

and MAC utilization in pattern mode tends to ``nb·kb / (nb·kb + m_0·kb/T)``, i.e. 1 for many tiles.
:func:`matmul_cycles` follows the engine's handshakes exactly (a per-tile, per-row recurrence), so it
also covers short rows and slow loads; the benchmark checks it against Verilator on every shape.

**The attention unit** (:func:`attention_cycles`) runs heads one after another. Per head, in cycles as
``sim/hdl/tb_attention.sv`` counts them:

* *other*: the first head's command (its transfer, then a cycle in the unit's command register), its
  ``L·d/k`` key beats and its Q·Kᵀ RUN command; a later head's command is taken from the first cycle of
  the previous head's context and its keys from the cycle after, so it waits only for its RUN command —
  or, when that context is shorter than ``L·d/k + 2``, for its keys; and one cycle for the P·V RUN
  command;
* *scores* (:func:`attention_scores_cycles`): the Q·Kᵀ RUN (dense, raw) on the engine, whose tile ``t``
  of ``lanes`` queries is the softmax's tile ``t``. The softmax holds a tile in one of ``B =``
  :data:`~hw.softmax_unit.TILE_BANKS` banks from its ingest to the end of its emission, so tile ``t``'s
  scores are taken only once tile ``t − B`` is emitted: the engine's output stage then stalls
  (:class:`_EngineTimeline`'s ``gate``). Per tile, three
  passes, each starting the cycle after its tile is ready for it and the pass of the previous tile
  ended (a tile is ready for exp :func:`~hw.softmax_unit.ingest_max_latency` cycles after its last
  score, when its rows' maxima are final): **exp** reads one word (k scores) per cycle, ``rows · ⌈L/k⌉`` reads, and each row's sum goes to
  a divider :data:`~hw.softmax_unit.EXP_READ_LATENCY` + :data:`~hw.exp_unit.EXP_LATENCY` +
  :data:`~hw.softmax_unit.RECIPROCAL_OFFER_LATENCY` after its last read, the rows one after another,
  each :func:`~hw.row_reciprocal.reciprocal_cycles` + :data:`~hw.softmax_unit.RECIPROCAL_RETURN_LATENCY`;
  **select** (pruned only) reads each k×k block in ``k`` cycles, offers it to
  :class:`~hw.pattern_select.PatternSelect` ``k − 1`` + ``BANK_READ_LATENCY`` +
  :data:`~hw.reciprocal_scale.SCALE_LATENCY` + :data:`~hw.softmax_unit.QUEUE_LATENCY`
  cycles after its first read, takes one block per :func:`~hw.pattern_select.select_interval` and has
  its choice :func:`~hw.pattern_select.choice_latency` later; a block's first read waits until fewer
  than :func:`~hw.softmax_unit.queue_depth` blocks are between their first read and their choice, and a
  block row's last choice sends its rows' kept sums to a second divider; **emit** reads the blocks again
  (a block row once its kept reciprocals are stored), and a block leaves for the probability buffer
  ``k − 1 + BANK_READ_LATENCY + SCALE_LATENCY + QUEUE_LATENCY`` after its first read, one per cycle at
  most, with the same credits. The stage ends the cycle after the last block has left;
* *context*: the P·V RUN, exactly :func:`matmul_cycles` of ``Vᵀ · Pᵀ`` (``d`` tokens, ``L`` in and out).

The timing depends on the data in one way only: the divider returns a zero sum's reciprocal at once
(:func:`~hw.row_reciprocal.reciprocal_cycles`). Row sums are zero exactly for padding rows, which the
model takes from ``valid_length``; a real row's *kept* sum is zero when every exponential the chosen
patterns keep in it underflowed to 0, which only the scores tell (``AttentionHeadShape.zero_kept_rows``;
:func:`sim.attention_rtl.head_shapes` finds them with the golden model). Stalls on the unit's streams
are not modelled.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hw.activation_buffer import READ_LATENCY
from hw.attention_unit import COMMAND_LATENCY, PROBABILITY_WRITE_LATENCY
from hw.config import AttentionConfig, EngineConfig
from hw.exp_unit import EXP_LATENCY
from hw.mac_array import ARRAY_LATENCY
from hw.output_stage import OUTPUT_CREDITS, OUTPUT_LATENCY
from hw.pattern_matmul import ROW_LATENCY
from hw.pattern_select import choice_latency, select_interval
from hw.reciprocal_scale import SCALE_LATENCY
from hw.row_reciprocal import reciprocal_cycles
from hw.softmax_unit import (BANK_READ_LATENCY, EXP_READ_LATENCY, QUEUE_LATENCY, RECIPROCAL_OFFER_LATENCY,
                             RECIPROCAL_RETURN_LATENCY, TERMS_LATENCY, TILE_BANKS, ingest_max_latency, queue_depth)

#: Cycles from a row-ending weight beat to the row's offer to the output stage (its first lane's issue
#: when the stage is free): the activation read, then the MAC array.
ROW_OFFER_CYCLES = READ_LATENCY + ARRAY_LATENCY
#: Cycles from a row-ending weight beat to the first cycle its successor may be accepted, beyond the
#: row's output beats: the row reaches the output stage after the activation read and the MAC array;
#: the output stage takes it in the cycle after its last lane and the sequencer's reservation lifts.
ROW_DRAIN_CYCLES = ROW_OFFER_CYCLES + 1
#: Cycles from a run's last row-ending beat to ``done`` in the harness, beyond the last tile's output
#: beats: the engine's row latency, then the sink's registered ``done``.
RUN_TAIL_CYCLES = ROW_LATENCY + 1


@dataclass(frozen=True)
class MatmulCycles:
    """Cycle estimate of one matmul RUN."""

    tokens: int
    in_features: int
    out_features: int
    dense: bool
    cycles: int
    useful_macs: int  # MACs on kept weights of real tokens: the work a perfect array of this size does
    multipliers: int

    @property
    def utilization(self) -> float:
        return self.useful_macs / (self.multipliers * self.cycles)

    def to_dict(self) -> dict:
        return {**asdict(self), "utilization": self.utilization}


class _EngineTimeline:
    """The engine's handshakes over one RUN, one tile at a time (cycle 0: the RUN command's transfer).

    Tile ``t`` loads into a bank from the cycle after tile ``t − 1``'s load, once tile ``t − 2`` has
    released that bank; its weight beats are accepted one per cycle from the cycle after both its load
    and tile ``t − 1``'s last beat, except that a row-ending beat waits for the output stage's
    reservation to lift. A finished row is offered to the output stage :data:`ROW_OFFER_CYCLES` after
    its ending beat and issues one lane per cycle while fewer than
    :data:`~hw.output_stage.OUTPUT_CREDITS` beats are issued and not yet taken; each lane's beat is
    offered :data:`~hw.output_stage.OUTPUT_LATENCY` cycles after its issue, and taken then or after
    the beats before it. The stage takes the row in the cycle after its last lane, and the reservation
    lifts in the cycle after that.

    A tile's outputs may be held until a ``gate`` cycle (the attention unit's softmax takes a tile's
    scores only once a bank is free for it): its beats wait in the output queue until the gate, and
    lanes stop being issued once the credits are used up.
    """

    def __init__(self, config: EngineConfig, tokens: int, in_blocks: int, out_blocks: int, dense: bool):
        self.in_blocks, self.out_blocks = in_blocks, out_blocks
        self.beats_per_row = in_blocks * (config.dense_chunks if dense else 1)
        self.tiles = [min(config.lanes, tokens - base) for base in range(0, tokens, config.lanes)]
        self.load_end: list[int] = []  # last cycle of each tile's load
        self.compute_end: list[int] = []  # cycle each tile's last weight beat is accepted
        self.lifts: int | None = None  # first cycle the next row-ending beat may be accepted
        self.taken: list[int] = []  # cycle each output beat is taken
        self.last_row_end = self.last_row_tokens = 0

    def run_tile(self, gate: int | None = None) -> int:
        """Computes the next tile; returns the cycle its last output beat is transferred."""
        t = len(self.load_end)
        m = self.tiles[t]
        load_start = 1 if t == 0 else self.load_end[t - 1] + 1
        if t >= 2:
            load_start = max(load_start, self.compute_end[t - 2] + 1)
        self.load_end.append(load_start + m * self.in_blocks - 1)
        start = self.load_end[t] + 1 if t == 0 else max(self.load_end[t] + 1, self.compute_end[t - 1] + 1)
        taken = self.taken
        for _ in range(self.out_blocks):
            row_end = start + self.beats_per_row - 1
            if self.lifts is not None:
                row_end = max(row_end, self.lifts)
            issue = row_end + ROW_OFFER_CYCLES
            for _ in range(m):
                if len(taken) >= OUTPUT_CREDITS:  # a credit returns in the cycle after its beat is taken
                    issue = max(issue, taken[-OUTPUT_CREDITS] + 1)
                taken.append(max(issue + OUTPUT_LATENCY, gate or 0, taken[-1] + 1 if taken else 0))
                issue += 1
            last_out = taken[-1]
            self.lifts = issue + 1  # ``issue`` is now the cycle the row is taken
            self.last_row_end, self.last_row_tokens = row_end, m
            start = row_end + 1
        self.compute_end.append(self.last_row_end)
        return last_out


def matmul_cycles(config: EngineConfig, tokens: int, in_features: int, out_features: int, *,
                  dense: bool = False) -> MatmulCycles:
    """Cycles of one RUN of ``Y[tokens, out_features] = X[tokens, in_features] · Wᵀ`` on ``config``,
    counted as the simulation harness counts them (from the RUN command's transfer to ``done``)."""
    for name, value in (("tokens", tokens), ("in_features", in_features), ("out_features", out_features)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    k = config.pattern.block_size
    kb, nb = -(-in_features // k), -(-out_features // k)
    if kb > config.max_in_blocks:
        raise ValueError(f"in_features={in_features} exceeds the engine's activation buffer ({config.max_in_features})")
    run = _EngineTimeline(config, tokens, kb, nb, dense)
    for _ in run.tiles:
        run.run_tile()
    cycles = run.last_row_end + run.last_row_tokens + RUN_TAIL_CYCLES
    useful = tokens * out_features * in_features * config.pattern.kept_per_block // k**2
    return MatmulCycles(tokens, in_features, out_features, dense, cycles, useful, config.multipliers)


# --- whole encoders ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class EncoderShape:
    """The matmul shapes of a BERT-family encoder."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def matmuls(self, seq: int) -> list[dict]:
        """One layer's matmuls as engine RUNs: ``name, tokens, in, out, dense, count`` (RUNs per layer).

        Linear layers are pattern-pruned weights. The attention products run on the same engine with
        an activation as the streamed operand: ``Q·Kᵀ`` per head in dense mode (K is not pruned), and
        ``P·V`` per head as ``Vᵀ · Pᵀ`` with the pattern-pruned attention map as the weights.
        """
        h, d, f = self.hidden, self.head_dim, self.intermediate
        return [
            {"name": "query/key/value", "tokens": seq, "in": h, "out": h, "dense": False, "count": 3},
            {"name": "attention output", "tokens": seq, "in": h, "out": h, "dense": False, "count": 1},
            {"name": "FFN in", "tokens": seq, "in": h, "out": f, "dense": False, "count": 1},
            {"name": "FFN out", "tokens": seq, "in": f, "out": h, "dense": False, "count": 1},
            {"name": "scores Q·Kᵀ", "tokens": seq, "in": d, "out": seq, "dense": True, "count": self.heads},
            {"name": "context P·V", "tokens": d, "in": seq, "out": seq, "dense": False, "count": self.heads},
        ]


BERT_BASE = EncoderShape("BERT-base", layers=12, hidden=768, heads=12, intermediate=3072)
MINILM_L6 = EncoderShape("all-MiniLM-L6-v2", layers=6, hidden=384, heads=12, intermediate=1536)


def encoder_cycles(config: EngineConfig, encoder: EncoderShape, seq: int, *, dense: bool = False) -> dict:
    """Cycles of every matmul of a whole encoder at sequence length ``seq``, run one after another.

    ``dense=True`` runs every matmul in dense mode: the same array with nothing pruned.
    Non-matmul work (softmax, LayerNorm, GELU, requantization between layers) is not modelled.
    """
    rows, total, useful = [], 0, 0
    for op in encoder.matmuls(seq):
        run = matmul_cycles(config, op["tokens"], op["in"], op["out"], dense=dense or op["dense"])
        count = op["count"] * encoder.layers
        rows.append({**op, "dense": run.dense, "cycles_each": run.cycles, "cycles": run.cycles * count,
                     "utilization": run.utilization})
        total += run.cycles * count
        useful += run.useful_macs * count
    return {"encoder": encoder.name, "seq": seq, "lanes": config.lanes, "multipliers": config.multipliers,
            "cycles": total, "useful_macs": useful, "utilization": useful / (config.multipliers * total), "matmuls": rows}


# --- the attention unit -----------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionHeadShape:
    """What the attention unit's timing depends on in one head.

    ``zero_kept_rows``: real query rows whose kept exponential sum is 0 under pruning (every exponential
    the chosen patterns keep in the row underflowed to 0). That depends on the scores: the divider
    returns such a row's reciprocal at once instead of after a whole division. Rows that are padding
    (``≥ valid_length``) have zero sums by construction and need not be listed.
    """

    length: int
    head_dim: int
    valid_length: int | None = None  # default: every token real
    zero_kept_rows: tuple[int, ...] = ()

    @property
    def real(self) -> int:
        return self.length if self.valid_length is None else self.valid_length


@dataclass(frozen=True)
class AttentionHeadCycles:
    """Cycles of one head as the harness splits them."""

    length: int
    head_dim: int
    pruned: bool
    other: int  # neither stage: waiting for the head's keys, the two RUN commands
    scores: int  # Q·Kᵀ and the softmax, to the last probability block
    context: int  # P·V
    scores_matmul: int  # the Q·Kᵀ RUN alone, unstalled (:func:`matmul_cycles`)

    @property
    def cycles(self) -> int:
        return self.other + self.scores + self.context

    def to_dict(self) -> dict:
        return {**asdict(self), "cycles": self.cycles}


@dataclass(frozen=True)
class AttentionCycles:
    """Cycles of heads run one after another on the attention unit, from the first command's transfer to
    the last context beat (as ``sim/hdl/tb_attention.sv`` counts them)."""

    heads: tuple[AttentionHeadCycles, ...]
    useful_macs: int  # Q·Kᵀ over every key, P·V over the kept (pruned) or all entries of the map
    multipliers: int

    @property
    def cycles(self) -> int:
        return sum(h.cycles for h in self.heads)

    @property
    def scores(self) -> int:
        return sum(h.scores for h in self.heads)

    @property
    def context(self) -> int:
        return sum(h.context for h in self.heads)

    @property
    def other(self) -> int:
        return sum(h.other for h in self.heads)

    @property
    def utilization(self) -> float:
        return self.useful_macs / (self.multipliers * self.cycles)

    def to_dict(self) -> dict:
        return {"cycles": self.cycles, "scores": self.scores, "context": self.context, "other": self.other,
                "useful_macs": self.useful_macs, "utilization": self.utilization,
                "heads": [h.to_dict() for h in self.heads]}


class _Divider:
    """One :class:`~hw.row_reciprocal.RowReciprocal` and its queue of rows, served in order."""

    def __init__(self):
        self.free = 0  # first cycle the next row may be offered; after the last row: all stored

    def divide(self, offered: int, zero: bool) -> None:
        taken = max(offered, self.free)
        self.free = taken + reciprocal_cycles(0 if zero else 1) + RECIPROCAL_RETURN_LATENCY


def attention_scores_cycles(config: AttentionConfig, head: AttentionHeadShape, *, pruned: bool) -> int:
    """Cycles of one head's scores-and-softmax stage: from the cycle after its Q·Kᵀ RUN command's transfer
    (cycle 0 here) to the cycle its last probability block is counted, inclusive."""
    engine_cfg = config.engine
    k, lanes, pattern = engine_cfg.pattern.block_size, engine_cfg.lanes, engine_cfg.pattern
    length, real = head.length, head.real
    key_blocks = -(-length // k)
    engine = _EngineTimeline(engine_cfg, length, head.head_dim // k, key_blocks, dense=True)
    interval = select_interval(pattern.pool_size, config.patterns_per_cycle)
    choice = choice_latency(pattern, config.patterns_per_cycle)
    depth = queue_depth(pattern, config.patterns_per_cycle)
    zero_kept = set(head.zero_kept_rows)
    ingested: list[int] = []  # each tile's last score
    exped: list[int] = []  # the cycle its exp pass ends (exponentials and row reciprocals stored)
    emitted: list[int] = []  # the cycle its emit pass ends
    for t, rows in enumerate(engine.tiles):
        base = t * lanes
        # Ingest: the tile's command is taken in the cycle after the previous tile's last score, once its
        # bank is free (the cycle after tile t − TILE_BANKS is emitted); scores are taken from the cycle after.
        gate = max(ingested[t - 1] if t else 0, emitted[t - TILE_BANKS] if t >= TILE_BANKS else 0) + 2
        ingested.append(engine.run_tile(gate))
        # Exp: from the cycle after the tile is ingested and the previous exp pass ended, one word read per
        # cycle, row by row; each row's sum is offered to the divider when its last word's exponentials
        # are added. The pass ends when the last exponentials are written and every reciprocal is stored.
        start = max(ingested[t] + ingest_max_latency(k), exped[t - 1] if t else 0) + 1
        last_read = start + rows * key_blocks
        sums = _Divider()
        for i in range(rows):
            added = start + (i + 1) * key_blocks + EXP_READ_LATENCY + EXP_LATENCY
            sums.divide(added + RECIPROCAL_OFFER_LATENCY, zero=base + i >= real)
        exped.append(max(last_read + EXP_READ_LATENCY + EXP_LATENCY + TERMS_LATENCY + 1, sums.free))
        # Select and emit: from the cycle after the exp pass and the previous emit pass end; per block, k
        # reads back to back (a block's first read waits for a credit), scaled, queued.
        begin = max(exped[t], emitted[t - 1] if t else 0) + 1
        blocks = -(-rows // k) * key_blocks
        row_ready = [0] * -(-rows // k)  # per block row: its rows' kept-sum reciprocals are stored
        if pruned:
            reads, chosen, selected = [], [], None
            kept = _Divider()
            for j in range(blocks):
                read = begin + 1 if j == 0 else reads[-1] + k
                if j >= depth:
                    read = max(read, chosen[j - depth] + 1)
                reads.append(read)
                queued = read + k - 1 + BANK_READ_LATENCY + SCALE_LATENCY + QUEUE_LATENCY
                selected = queued if selected is None else max(queued, selected + interval)
                chosen.append(selected + choice)
                if j % key_blocks == key_blocks - 1:  # a block row's last choice: its kept sums are final
                    first = base + j // key_blocks * k
                    for row in range(first, min(first + k, base + rows)):
                        kept.divide(chosen[-1] + RECIPROCAL_OFFER_LATENCY, zero=row >= real or row in zero_kept)
                    row_ready[j // key_blocks] = kept.free
            # the select pass ends the cycle after the last choice (no block in flight); emit starts after
            emit_from = chosen[-1] + 2
        else:
            emit_from = begin + 1
        reads, offered = [], []
        for j in range(blocks):
            read = max(emit_from if j == 0 else reads[-1] + k, row_ready[j // key_blocks])
            if j >= depth:
                read = max(read, offered[j - depth] + 1)
            reads.append(read)
            queued = read + k - 1 + BANK_READ_LATENCY + SCALE_LATENCY + QUEUE_LATENCY
            offered.append(queued if not offered else max(queued, offered[-1] + 1))
        emitted.append(offered[-1] + 1)
    # The attention unit writes the last block PROBABILITY_WRITE_LATENCY after it leaves the softmax, counts
    # it the cycle after, then leaves the stage.
    return max(offered[-1] + 1 + PROBABILITY_WRITE_LATENCY, ingested[-1] + 1)


def attention_cycles(config: AttentionConfig, heads, *, pruned: bool) -> AttentionCycles:
    """Cycles of ``heads`` (:class:`AttentionHeadShape` each) run one after another on the attention unit,
    with streams that never stall, counted from the first head's command transfer to the last context
    beat, split per head into its scores-and-softmax stage, its context stage and the rest."""
    engine_cfg = config.engine
    k, n = engine_cfg.pattern.block_size, engine_cfg.pattern.kept_per_block
    rows, useful = [], 0
    previous_scores_end = previous_context_end = None
    for head in heads:
        length, dim = head.length, head.head_dim
        if (not 1 <= length <= config.max_seq or dim % k or not k <= dim <= config.max_head_dim
                or not 0 <= head.real <= length):
            raise ValueError(f"a head of length {length}, dim {dim} and {head.real} real tokens does not fit "
                             f"max_seq={config.max_seq}, max_head_dim={config.max_head_dim} (a multiple of {k})")
        beats = length * dim // k  # keys, and values, one beat per cycle
        if previous_context_end is None:
            # cycle 0: the command's transfer; cycle 1: it is the current head, its keys and values load from
            # cycle 2; the Q·Kᵀ RUN is sent in the cycle they are done, the engine takes it COMMAND_LATENCY later
            run = beats + 2 + COMMAND_LATENCY
            values_done = beats + 2
            other = run + 1
        else:
            # the command is taken while the previous head's context runs (from the cycle after its RUN), its
            # keys from the cycle after; the Q·Kᵀ RUN goes in the cycle after that context ends, or once the
            # keys are in
            run = max(previous_context_end + 1, previous_scores_end + 4 + beats) + COMMAND_LATENCY
            values_done = previous_context_end + 1 + beats
            other = run - previous_context_end
        scores = attention_scores_cycles(config, head, pruned=pruned)
        scores_end = max(run + scores, values_done)
        context = matmul_cycles(engine_cfg, dim, length, length, dense=not pruned).cycles
        # the context RUN is sent the cycle after the scores stage and taken COMMAND_LATENCY later; the
        # context stage follows
        context_end = scores_end + 1 + COMMAND_LATENCY + context
        rows.append(AttentionHeadCycles(length, dim, pruned, other + 1 + COMMAND_LATENCY, scores_end - run, context,
                                        matmul_cycles(engine_cfg, length, dim, length, dense=True).cycles))
        previous_scores_end, previous_context_end = scores_end, context_end
        useful += length * length * dim + length * length * dim * (n if pruned else k * k) // (k * k)
    return AttentionCycles(tuple(rows), useful, engine_cfg.multipliers)
