"""The attention unit in amaranth.sim against ``core.integer.attention``: scores, pattern ids,
probabilities and context of every head, as whole tensors."""

from dataclasses import replace

import pytest
import torch

from core.encoder import exp_table
from core.pattern import PatternConfig
from firmware_gen.attention import AttentionHead, AttentionProgram
from hw.config import AttentionConfig, EngineConfig
from sim.attention_driver import run_attention_in_amaranth_sim
from sim.cases import random_pool_masks

CONFIG = AttentionConfig(engine=EngineConfig(pattern=PatternConfig(block_size=4, kept_per_block=8, pool_size=8), lanes=4,
                                             weight_bits=9), max_seq=16, max_head_dim=8,
                         patterns_per_cycle=8)


def _pool(seed):
    return random_pool_masks(CONFIG.engine.pattern, seed, count=6)  # a model pool smaller than the unit's


def _head(seed, length, dim, valid_length, *, extremes=False):
    g = torch.Generator().manual_seed(seed)

    def operand():
        if extremes:
            return (torch.randint(0, 2, (length, dim), generator=g) * 255 - 128).to(torch.int8)
        return torch.randint(-128, 128, (length, dim), generator=g, dtype=torch.int8)

    return AttentionHead(operand(), operand(), operand(), valid_length, exp_multiplier=32768, exp_shift=24,
                         context_multiplier=40000, context_shift=22)


def _check(program, run):
    assert run.error == 0
    want = program.golden()
    got_scores = program.decode_scores(run.scores)
    got_blocks = program.decode_blocks(run.blocks)
    got_context = program.decode_context(run.context)
    for (scores, probs, ids, context), s, (p, i), c in zip(want, got_scores, got_blocks, got_context):
        assert torch.equal(s, scores)
        assert torch.equal(p, probs)
        assert (i is None and ids is None) or torch.equal(i, ids)
        assert torch.equal(c, context)


@pytest.mark.parametrize("pruned", [False, True], ids=["dense", "pruned"])
def test_heads_of_several_lengths_equal_the_contract(pruned):
    heads = [_head(1, 10, 8, 9), _head(2, 16, 4, 16), _head(3, 1, 8, 1), _head(4, 7, 8, 3)]
    program = AttentionProgram(CONFIG, heads, _pool(5) if pruned else None)
    _check(program, run_attention_in_amaranth_sim(program, stall_probability=0.25, seed=int(pruned)))


def test_extreme_operands_and_an_all_padding_head():
    heads = [_head(6, 12, 8, 12, extremes=True), _head(7, 5, 4, 0)]
    program = AttentionProgram(CONFIG, heads, _pool(8))
    run = run_attention_in_amaranth_sim(program, seed=2)
    _check(program, run)
    assert not program.decode_context(run.context)[1].any()  # no real token: no context


def test_a_flipped_pattern_bit_is_caught():
    pool = _pool(9)
    program = AttentionProgram(CONFIG, [_head(10, 12, 8, 12)], pool)
    flipped = pool.clone()
    ids = program.golden()[0][2]
    chosen = int(ids[0, 0])
    kept, dropped = int(torch.nonzero(pool[chosen])[0]), int(torch.nonzero(~pool[chosen])[0])
    flipped[chosen, kept], flipped[chosen, dropped] = False, True  # still n kept: a valid, wrong pattern
    run = run_attention_in_amaranth_sim(AttentionProgram(CONFIG, program.heads, flipped), seed=3)
    with pytest.raises(AssertionError):
        _check(program, run)


def test_a_corrupted_exponential_table_entry_is_caught():
    program = AttentionProgram(CONFIG, [_head(11, 12, 8, 12)])
    table = exp_table()
    table[0] -= 1000  # the entry of every row's maximum
    run = run_attention_in_amaranth_sim(AttentionProgram(CONFIG, program.heads, exp_table=table), seed=4)
    with pytest.raises(AssertionError):
        _check(program, run)
    _check(AttentionProgram(CONFIG, program.heads, exp_table=table), run)  # the unit used the table it was given


def test_heads_wider_than_the_longest_sequence():
    """A unit built for short sequences and wide heads (a model compiled for a few tokens): P·V runs
    over more channels than there are keys, and the next head's scores must not see its last weights."""
    narrow = replace(CONFIG, max_seq=4, max_head_dim=16)
    heads = [_head(12, 4, 16, 3), _head(13, 4, 16, 4), _head(14, 3, 12, 3)]
    program = AttentionProgram(narrow, heads, random_pool_masks(narrow.engine.pattern, 15, count=6))
    _check(program, run_attention_in_amaranth_sim(program, stall_probability=0.25, seed=5))
