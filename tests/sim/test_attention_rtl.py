"""The attention unit's Verilog (cocotb + Verilator) against the golden model: scores, pattern ids,
probabilities and context of every head, as whole tensors, with random stalls on every stream."""

from pathlib import Path

import pytest
import torch

from core.encoder import exp_table
from firmware_gen.attention import AttentionHead, AttentionProgram
from hw.config import AttentionConfig
from hw.cycle_model import matmul_cycles
from sim.attention_rtl import build_attention_harness, run_attention_program
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


def test_twelve_heads_of_lengths_1_to_128_pruned_with_stalls(harness):
    g = torch.Generator().manual_seed(1)
    lengths = [1, 2, 5, 13, 31, 47, 64, 77, 100, 113, 127, 128]
    heads = [_head(g, length, 32, max(1, length - i % 3)) for i, length in enumerate(lengths)]
    _run(harness, AttentionProgram(CONFIG, heads, _pool(2)), "twelve_pruned", stall_percent=30, seed=3)


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_head_dim_64_with_padding(harness, pruned):
    g = torch.Generator().manual_seed(4)
    heads = [_head(g, 128, 64, 90), _head(g, 50, 64, 50), _head(g, 9, 64, 4)]
    _run(harness, AttentionProgram(CONFIG, heads, _pool(5) if pruned else None), f"dim64_{'pruned' if pruned else 'dense'}",
         stall_percent=20, seed=6)


def test_extreme_operands_tied_masses_and_an_empty_head(harness):
    g = torch.Generator().manual_seed(7)
    pool = _pool(8)
    pool[20:] = pool[3]  # duplicated patterns: their ties must go to id 3
    uniform = AttentionHead(torch.zeros(24, 32, dtype=torch.int8), torch.zeros(24, 32, dtype=torch.int8),
                            torch.ones(24, 32, dtype=torch.int8), 24, 32768, 26, 40000, 22)  # every block mass ties
    heads = [_head(g, 64, 32, 64, extremes=True, exp_shift=30), uniform, _head(g, 16, 32, 0)]
    program = AttentionProgram(CONFIG, heads, pool)
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
