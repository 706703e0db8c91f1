"""The attention unit's Verilog (cocotb + Verilator) against the golden model: scores, pattern ids,
probabilities and context of every head, as whole tensors, with random stalls on every stream; and,
without stalls, the cycles of every head against the cycle model."""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from core.encoder import exp_table
from firmware_gen.attention import AttentionHead, AttentionProgram
from hw.config import AttentionConfig
from hw.cycle_model import attention_cycles, matmul_cycles
from sim.attention_rtl import build_attention_harness, head_shapes, run_attention_program
from sim.cases import random_pool_masks
from sim.rtl import BitExactMismatch

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests"
CONFIG = AttentionConfig()  # 8 lanes, 4×4 blocks keeping 8, pool 32, sequences to 128, head dims to 64


@pytest.fixture(scope="module")
def harness():
    return build_attention_harness(CONFIG, BUILD / "attention")


def _pool(seed):
    return random_pool_masks(CONFIG.engine.pattern, seed)


def _head(generator, length, dim, valid_length, *, extremes=False, exp_shift=26):
    def operand():
        if extremes:
            return (torch.randint(0, 2, (length, dim), generator=generator) * 255 - 128).to(torch.int8)
        return torch.randint(-128, 128, (length, dim), generator=generator, dtype=torch.int8)

    return AttentionHead(operand(), operand(), operand(), valid_length, exp_multiplier=32768, exp_shift=exp_shift,
                         context_multiplier=40000, context_shift=22)


def _run(harness, program, name, **kwargs):
    result = run_attention_program(harness, program, BUILD / "attention_cases" / name, **kwargs)
    assert result["passed"] and not any(result["mismatches"].values())
    return result


def _twelve_heads():
    g = torch.Generator().manual_seed(1)
    lengths = [1, 2, 5, 13, 31, 47, 64, 77, 100, 113, 127, 128]
    return [_head(g, length, 32, max(1, length - i % 3)) for i, length in enumerate(lengths)]


def _dim64_heads():
    g = torch.Generator().manual_seed(4)
    return [_head(g, 128, 64, 90), _head(g, 50, 64, 50), _head(g, 9, 64, 4)]


def _extreme_program():
    g = torch.Generator().manual_seed(7)
    pool = _pool(8)
    pool[20:] = pool[3]  # duplicated patterns: their ties must go to id 3
    uniform = AttentionHead(torch.zeros(24, 32, dtype=torch.int8), torch.zeros(24, 32, dtype=torch.int8),
                            torch.ones(24, 32, dtype=torch.int8), 24, 32768, 26, 40000, 22)  # every block mass ties
    heads = [_head(g, 64, 32, 64, extremes=True, exp_shift=30), uniform, _head(g, 16, 32, 0)]
    return AttentionProgram(CONFIG, heads, pool)


def _zero_kept_program():
    """Heads whose real rows 0, 4, 8, … keep no exponential. With a sharp exponential (shift 10) a query's
    only non-zero exponential is at its largest score; rows 4q, 4q + 2 and 4q + 3 peak at key 0 (row 4q + 1
    is flat), so in block (q, 0) the pool's bottom-half pattern (rows 2 and 3 of the block) outweighs the
    top half, and row 4q loses its only non-zero exponential."""
    top = torch.zeros(CONFIG.engine.pattern.positions, dtype=torch.bool)
    top[:CONFIG.engine.pattern.positions // 2] = True
    heads = []
    for length in (8, 12, 24, 40):
        q, k = torch.zeros(length, 4, dtype=torch.int8), torch.zeros(length, 4, dtype=torch.int8)
        k[0, 0] = 127
        q[[r for r in range(length) if r % 4 != 1], 0] = 127
        v = torch.randint(-128, 128, (length, 4), generator=torch.Generator().manual_seed(length), dtype=torch.int8)
        heads.append(AttentionHead(q, k, v, length, exp_multiplier=32768, exp_shift=10, context_multiplier=40000,
                                   context_shift=22))
    return AttentionProgram(CONFIG, heads, torch.stack([top, ~top]))


def test_twelve_heads_of_lengths_1_to_128_pruned_with_stalls(harness):
    _run(harness, AttentionProgram(CONFIG, _twelve_heads(), _pool(2)), "twelve_pruned", stall_percent=30, seed=3)


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_head_dim_64_with_padding(harness, pruned):
    _run(harness, AttentionProgram(CONFIG, _dim64_heads(), _pool(5) if pruned else None),
         f"dim64_{'pruned' if pruned else 'dense'}", stall_percent=20, seed=6)


def test_extreme_operands_tied_masses_and_an_empty_head(harness):
    program = _extreme_program()
    _run(harness, program, "extremes_ties", stall_percent=10, seed=9)
    assert int(program.golden()[1][2].max()) == 0  # the uniform head ties everywhere: pattern 0


def test_a_corrupted_exp_table_entry_and_a_flipped_pattern_bit_are_caught(harness):
    g = torch.Generator().manual_seed(10)
    heads = [_head(g, 40, 32, 40)]
    pool = _pool(11)
    chosen = int(AttentionProgram(CONFIG, heads, pool).golden()[0][2][0, 0])
    flipped = pool.clone()
    kept, dropped = int(torch.nonzero(pool[chosen])[0]), int(torch.nonzero(~pool[chosen])[0])
    flipped[chosen, kept], flipped[chosen, dropped] = False, True
    table = exp_table()
    table[0] -= 1000
    # The hardware gets the corrupted table or pool; the golden model keeps the contract's.
    reference = AttentionProgram(CONFIG, heads, pool)
    for name, fed in (("table", AttentionProgram(CONFIG, heads, pool, exp_table=table)),
                      ("pattern", AttentionProgram(CONFIG, heads, flipped))):
        with pytest.raises(BitExactMismatch) as caught:
            run_attention_program(harness, fed, BUILD / "attention_cases" / f"mutated_{name}", reference=reference)
        assert sum(caught.value.result["mismatches"].values()) > 0  # it ran to the end and differed



@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_context_stage_takes_the_cycles_of_the_engine_model(harness, pruned):
    # P·V is one engine RUN per head, fed without stalls: its cycles are the engine's cycle model's.
    g = torch.Generator().manual_seed(12)
    heads = [_head(g, 128, 32, 128), _head(g, 45, 64, 40)]
    result = _run(harness, AttentionProgram(CONFIG, heads, _pool(13) if pruned else None), f"context_cycles_{pruned}")
    model = sum(matmul_cycles(CONFIG.engine, h.q.shape[1], h.length, h.length, dense=not pruned).cycles for h in heads)
    assert result["context_cycles"] == model


def _model_and_measured(program, result):
    model = attention_cycles(CONFIG, head_shapes(program), pruned=program.pool is not None)
    return ([(h.other, h.scores, h.context) for h in model.heads],
            [(h["other"], h["scores"], h["context"]) for h in result["head_cycles"]], model)


CYCLE_CASES = {
    "twelve_dense": lambda: AttentionProgram(CONFIG, _twelve_heads()),
    "twelve_pruned": lambda: AttentionProgram(CONFIG, _twelve_heads(), _pool(2)),
    "dim64_dense": lambda: AttentionProgram(CONFIG, _dim64_heads()),
    "dim64_pruned": lambda: AttentionProgram(CONFIG, _dim64_heads(), _pool(5)),
    "extremes_ties_empty": _extreme_program,
}


@pytest.mark.parametrize("case", list(CYCLE_CASES))
def test_every_head_takes_the_cycles_of_the_attention_model(harness, case):
    # Without stalls, each head's cycles (before and between its stages, scores + softmax, context) and the
    # totals equal hw.cycle_model.attention_cycles.
    program = CYCLE_CASES[case]()
    result = _run(harness, program, f"model_{case}")
    model, measured, totals = _model_and_measured(program, result)
    assert len(measured) == len(program.heads)
    assert model == measured
    assert (totals.cycles, totals.scores, totals.context) == (result["cycles"], result["scores_cycles"], result["context_cycles"])


def test_rows_that_keep_no_exponential_shorten_the_softmax_as_the_model_says(harness):
    # The one data-dependent timing: a real row whose kept sum is 0 gets its reciprocal without a division.
    program = _zero_kept_program()
    shapes = head_shapes(program)
    assert all(shape.zero_kept_rows for shape in shapes)
    result = _run(harness, program, "zero_kept_rows")
    model, measured, totals = _model_and_measured(program, result)
    assert model == measured
    blind = attention_cycles(CONFIG, [replace(shape, zero_kept_rows=()) for shape in shapes], pruned=True)
    assert blind.scores > totals.scores == result["scores_cycles"]
