"""Pattern selection in hardware against ``core.integer.select_patterns`` (brute force over the pool)."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from core.integer import SELECTION_BITS, select_patterns
from core.pattern import PatternConfig
from hw.pattern_select import PatternSelect, select_interval
from sim.amaranth_driver import stream_sink

VALUE_BITS = SELECTION_BITS + 1


def _pool(config, rng, patterns):
    masks = []
    for _ in range(patterns):
        kept = rng.sample(range(config.positions), config.kept_per_block)
        masks.append([int(pos in kept) for pos in range(config.positions)])
    return torch.tensor(masks, dtype=torch.bool)


def _run(config, group, masks, blocks, *, stall=0.0, seed=0):
    dut = PatternSelect(config, value_bits=VALUE_BITS, patterns_per_cycle=group)
    rng = random.Random(seed)
    got, cycles = [], []

    async def drive(ctx):
        ctx.set(dut.patterns, len(masks))
        for i, mask in enumerate(masks.tolist()):
            ctx.set(dut.mask_write, 1)
            ctx.set(dut.mask_id, i)
            ctx.set(dut.mask, sum(bit << pos for pos, bit in enumerate(mask)))
            await ctx.tick()
        ctx.set(dut.mask_write, 0)
        for block in blocks:
            while rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.blocks.valid, 1)
            for pos, value in enumerate(block):
                ctx.set(dut.blocks.payload[pos], value)
            await ctx.tick().until(dut.blocks.ready)
            ctx.set(dut.blocks.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(stream_sink(dut.choice, len(blocks), rng, stall, got, cycles))
    sim.run()
    for choice in got:  # the choice carries its pattern's mask
        assert int(choice.mask) == sum(int(bit) << pos for pos, bit in enumerate(masks[int(choice.id)].tolist()))
    return [int(choice.id) for choice in got], cycles


def _golden(config, masks, blocks):
    k = config.block_size
    maps = torch.tensor(blocks).reshape(len(blocks), k, k)
    return select_patterns(maps, masks).reshape(-1).tolist()


def _blocks(config, rng, count):
    top = 2**SELECTION_BITS
    blocks = [[rng.randint(0, top) for _ in range(config.positions)] for _ in range(count)]
    blocks += [[top] * config.positions, [0] * config.positions, [7] * config.positions]  # every mass ties
    blocks += [[rng.choice([0, top]) for _ in range(config.positions)] for _ in range(20)]  # extremes, many ties
    return blocks


@pytest.mark.parametrize("group", [1, 5, 8, 32])
def test_matches_brute_force_over_the_pool(group):
    config = PatternConfig()
    rng = random.Random(group)
    masks = _pool(config, rng, config.pool_size)
    masks[9] = masks[3]  # a duplicated pattern: the tie goes to id 3
    blocks = _blocks(config, rng, 60)
    blocks.append([2**SELECTION_BITS if masks[3][pos] else 0 for pos in range(config.positions)])
    got, cycles = _run(config, group, masks, blocks)
    assert got == _golden(config, masks, blocks)
    assert 3 in got and 9 not in got
    assert cycles[1:] == [select_interval(config.pool_size, group)] * (len(blocks) - 1)


def test_a_smaller_loaded_pool_and_stalls():
    config = PatternConfig(block_size=2, kept_per_block=2, pool_size=6)
    rng = random.Random(11)
    masks = _pool(config, rng, 4)
    blocks = _blocks(config, rng, 80)
    assert _run(config, 3, masks, blocks, stall=0.4, seed=2)[0] == _golden(config, masks, blocks)


def test_refuses_more_patterns_per_cycle_than_the_pool():
    with pytest.raises(ValueError, match="patterns_per_cycle"):
        PatternSelect(PatternConfig(), value_bits=VALUE_BITS, patterns_per_cycle=33)
