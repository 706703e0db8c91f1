"""The analytical cycle model: its closed form, its regimes and its errors (tests/sim/test_rtl.py and
tests/sim/test_attention_rtl.py check it against Verilator cycle counts), and the latencies it reads
from the attention unit's components against those components in amaranth.sim."""

import pytest
from amaranth.lib.fifo import SyncFIFOBuffered
from amaranth.sim import Simulator

from core.pattern import PatternConfig
from hw.config import AttentionConfig, EngineConfig
from hw.cycle_model import (BERT_BASE, MINILM_L6, RUN_TAIL_CYCLES, AttentionHeadShape, attention_cycles,
                            attention_scores_cycles, encoder_cycles, matmul_cycles)
from hw.exp_unit import EXP_LATENCY
from hw.attention_unit import COMMAND_LATENCY, PROBABILITY_WRITE_LATENCY
from hw.pattern_select import PatternSelect, choice_latency, select_interval
from hw.reciprocal_scale import SCALE_LATENCY
from hw.row_reciprocal import reciprocal_cycles
from hw.softmax_unit import (BANK_READ_LATENCY, EXP_READ_LATENCY, QUEUE_LATENCY, RECIPROCAL_OFFER_LATENCY,
                             RECIPROCAL_RETURN_LATENCY, ingest_max_latency, queue_depth)

CONFIG = EngineConfig()
ATTENTION = AttentionConfig()


@pytest.mark.parametrize("tokens, in_features, out_features, dense", [
    (128, 768, 768, False), (128, 768, 3072, True), (100, 3072, 768, False), (9, 384, 1536, True),
])
def test_closed_form_when_loading_hides_behind_compute(tokens, in_features, out_features, dense):
    k, lanes = CONFIG.pattern.block_size, CONFIG.lanes
    kb, nb = in_features // k, out_features // k
    chunks = CONFIG.dense_chunks if dense else 1
    tiles = [min(lanes, tokens - base) for base in range(0, tokens, lanes)]
    expected = tiles[0] * kb + len(tiles) * nb * kb * chunks + tiles[-1] + RUN_TAIL_CYCLES
    assert matmul_cycles(CONFIG, tokens, in_features, out_features, dense=dense).cycles == expected


def test_load_bound_tiles_take_the_load_time():
    # 2 block rows of 16 blocks: 32 compute cycles per tile against 8 × 16 = 128 load cycles.
    run = matmul_cycles(CONFIG, 64, 64, 8)
    assert run.cycles >= 8 * 16 * 8
    assert run.utilization < 0.3


def test_dense_mode_takes_twice_the_weight_beats():
    pattern = matmul_cycles(CONFIG, 128, 768, 768)
    dense = matmul_cycles(CONFIG, 128, 768, 768, dense=True)
    assert dense.useful_macs == pattern.useful_macs
    assert 1.9 < dense.cycles / pattern.cycles < 2.0


def test_encoder_total_is_the_sum_of_its_matmuls():
    for encoder in (BERT_BASE, MINILM_L6):
        report = encoder_cycles(CONFIG, encoder, 128)
        assert report["cycles"] == sum(row["cycles"] for row in report["matmuls"])
        assert all(row["cycles"] == row["cycles_each"] * row["count"] * encoder.layers for row in report["matmuls"])
        dense = encoder_cycles(CONFIG, encoder, 128, dense=True)
        assert all(row["dense"] for row in dense["matmuls"])
        assert dense["cycles"] > report["cycles"]


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": 0}, "tokens"), ({"in_features": -4}, "in_features"), ({"out_features": 2.0}, "out_features"),
    ({"in_features": CONFIG.max_in_features + 4}, "activation buffer"),
])
def test_bad_shapes_are_refused(kwargs, message):
    shape = {"tokens": 8, "in_features": 16, "out_features": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        matmul_cycles(CONFIG, **shape)


# --- the attention unit -----------------------------------------------------------------------------

def _cycles_until(dut, start, ready_signal, done_signal) -> int:
    """Cycles from a transfer (``start`` sets the inputs; the transfer is in the cycle ``ready_signal``
    is high) to the first cycle ``done_signal`` is high."""
    counted = []

    async def bench(ctx):
        start(ctx)
        await ctx.tick().until(ready_signal)
        cycles = 1
        while not ctx.get(done_signal):
            await ctx.tick()
            cycles += 1
        counted.append(cycles)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(1e-5)
    return counted[0]


@pytest.mark.parametrize("pool, group", [(32, 16), (32, 8), (32, 5), (8, 8), (16, 1)])
def test_choice_latency_is_pattern_selects(pool, group):
    pattern = PatternConfig(pool_size=pool)
    dut = PatternSelect(pattern, value_bits=17, patterns_per_cycle=group)

    def start(ctx):
        ctx.set(dut.patterns, pool)
        ctx.set(dut.blocks.valid, 1)

    assert _cycles_until(dut, start, dut.blocks.ready, dut.choice.valid) == choice_latency(pattern, group)


def test_queue_latency_is_the_fifos():
    dut = SyncFIFOBuffered(width=8, depth=queue_depth(PatternConfig(), 16))

    def start(ctx):
        ctx.set(dut.w_data, 1)
        ctx.set(dut.w_en, 1)

    assert _cycles_until(dut, start, dut.w_rdy, dut.r_rdy) == QUEUE_LATENCY


def _heads(count, length, dim, **kwargs):
    return [AttentionHeadShape(length, dim, **kwargs)] * count


@pytest.mark.parametrize("pruned", [False, True])
def test_attention_cycles_add_up_per_head_and_stage(pruned):
    heads = [AttentionHeadShape(128, 64), AttentionHeadShape(45, 32, valid_length=40), AttentionHeadShape(1, 4),
             AttentionHeadShape(77, 48, valid_length=0)]
    report = attention_cycles(ATTENTION, heads, pruned=pruned)
    assert report.cycles == report.other + report.scores + report.context == sum(h.cycles for h in report.heads)
    for head, shape in zip(report.heads, heads):
        # P·V is one engine RUN of Vᵀ · Pᵀ; the scores stage is at least the Q·Kᵀ RUN it contains
        assert head.context == matmul_cycles(ATTENTION.engine, shape.head_dim, shape.length, shape.length,
                                             dense=not pruned).cycles
        assert head.scores > head.scores_matmul == matmul_cycles(ATTENTION.engine, shape.length, shape.head_dim,
                                                                 shape.length, dense=True).cycles
    assert 0 < report.utilization < 1


def test_keys_load_before_the_first_head_and_during_each_context():
    long, short = AttentionHeadShape(128, 64), AttentionHeadShape(1, 4)
    first, after_long = attention_cycles(ATTENTION, [long, long], pruned=True).heads
    one, after_short = attention_cycles(ATTENTION, [short, long], pruned=True).heads
    keys = 128 * 64 // ATTENTION.engine.pattern.block_size  # one beat per cycle
    run = 1 + COMMAND_LATENCY  # a RUN command's cycle, then its register
    # the command's transfer, its cycle in the command register, the keys, the Q·Kᵀ and P·V RUN commands
    assert first.other == 1 + 1 + keys + 2 * run
    # a long context hides the next head's keys: only the two RUN commands remain
    assert after_long.other == 2 * run
    # a one-token head's context does not: the command is taken in the cycle the engine takes its P·V RUN
    # and the keys come from the cycle after that
    assert after_short.other == keys + 3 + run - one.context


def test_scores_stage_when_the_softmax_keeps_up_is_the_qk_run_then_the_last_tiles_softmax():
    # BERT-base's head, dense: a tile's Q·Kᵀ (32 block rows of 32 beats) outlasts its softmax, so no tile
    # waits for a bank; the stage is the RUN's last score, then the last tile's exp pass (a word read per
    # cycle, the last row's reciprocal after its exponentials), its emit pass (k reads per block) and the last
    # block's write into the probability buffer.
    e = ATTENTION.engine
    k, lanes, length, dim = e.pattern.block_size, e.lanes, 128, 64
    key_blocks = length // k
    last_score = matmul_cycles(e, length, dim, length, dense=True).cycles - 2  # the harness's done: 2 later
    exped = (last_score + ingest_max_latency(k) + 1 + lanes * key_blocks + EXP_READ_LATENCY + EXP_LATENCY + RECIPROCAL_OFFER_LATENCY
             + reciprocal_cycles(1) + RECIPROCAL_RETURN_LATENCY)
    blocks = lanes // k * key_blocks
    last_read = exped + 2 + (blocks - 1) * k
    expected = last_read + k - 1 + BANK_READ_LATENCY + SCALE_LATENCY + QUEUE_LATENCY + 1 + PROBABILITY_WRITE_LATENCY
    assert attention_scores_cycles(ATTENTION, AttentionHeadShape(length, dim), pruned=False) == expected


def test_pruned_minilm_heads_are_softmax_bound():
    # At 32 dims a tile's Q·Kᵀ is shorter than selecting its 64 blocks (one per select_interval) and
    # emitting them: the stage exceeds the RUN alone by more than the last tile's softmax.
    head = attention_cycles(ATTENTION, _heads(1, 128, 32), pruned=True).heads[0]
    dense = attention_cycles(ATTENTION, _heads(1, 128, 32), pruned=False).heads[0]
    blocks = ATTENTION.engine.lanes // ATTENTION.engine.pattern.block_size * 128 // ATTENTION.engine.pattern.block_size
    select = blocks * select_interval(ATTENTION.engine.pattern.pool_size, ATTENTION.patterns_per_cycle)
    assert head.scores - head.scores_matmul > select + blocks * ATTENTION.engine.pattern.block_size
    assert head.scores > dense.scores and head.context < dense.context


def test_rows_without_kept_exponentials_only_shorten_pruned_heads():
    rows = tuple(range(0, 12, 4))
    plain, zero = (attention_cycles(ATTENTION, [AttentionHeadShape(12, 4, zero_kept_rows=z)], pruned=True).cycles
                   for z in ((), rows))
    assert zero < plain
    assert (attention_cycles(ATTENTION, [AttentionHeadShape(12, 4, zero_kept_rows=rows)], pruned=False).cycles
            == attention_cycles(ATTENTION, [AttentionHeadShape(12, 4)], pruned=False).cycles)


@pytest.mark.parametrize("shape", [AttentionHeadShape(0, 32), AttentionHeadShape(129, 32), AttentionHeadShape(16, 30),
                                   AttentionHeadShape(16, 128), AttentionHeadShape(16, 32, valid_length=17)])
def test_heads_that_do_not_fit_are_refused(shape):
    with pytest.raises(ValueError, match="does not fit"):
        attention_cycles(ATTENTION, [shape], pruned=True)
