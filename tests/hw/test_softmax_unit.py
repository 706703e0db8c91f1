"""The softmax unit against ``core.integer.attention_probabilities``: whole probability maps and pattern ids."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from core.encoder import exp_table
from core.integer import attention_probabilities
from core.pattern import PatternConfig
from hw.config import EngineConfig
from hw.softmax_unit import SoftmaxUnit
from sim.cases import random_pool_masks

CONFIG = EngineConfig(pattern=PatternConfig(block_size=4, kept_per_block=8, pool_size=8), lanes=8)
MULTIPLIER, SHIFT = 32768, 14  # a score step of 1 is 2/256 of a binade: rows span many table entries


def _pool(rng):
    return random_pool_masks(CONFIG.pattern, rng.randrange(2**31))


def _simulate(scores, valid_length, pool, *, stall=0.0, seed=0, table_writes=(), config=CONFIG, max_keys=32):
    """Run every tile of ``scores[L, L]`` through the unit; return ``(probs[L, L], ids[⌈L/k⌉, ⌈L/k⌉] or None)``."""
    k, lanes = config.pattern.block_size, config.lanes
    length = scores.shape[0]
    key_blocks = -(-length // k)
    dut = SoftmaxUnit(config, max_keys=max_keys)
    rng = random.Random(seed)
    probs = torch.zeros(key_blocks * k, key_blocks * k, dtype=torch.int64)
    ids = torch.zeros(key_blocks, key_blocks, dtype=torch.int64)
    tiles = list(range(0, length, lanes))
    expected_blocks = sum(-(-min(lanes, length - base) // k) * key_blocks for base in tiles)
    got = []

    async def drive(ctx):
        if pool is not None:
            ctx.set(dut.patterns, pool.shape[0])
            for i, mask in enumerate(pool.tolist()):
                ctx.set(dut.mask_write, 1)
                ctx.set(dut.mask_id, i)
                ctx.set(dut.mask, sum(int(b) << pos for pos, b in enumerate(mask)))
                await ctx.tick()
            ctx.set(dut.mask_write, 0)
        for addr, value in table_writes:
            ctx.set(dut.exp_write, 1)
            ctx.set(dut.exp_addr, addr)
            ctx.set(dut.exp_data, value)
            await ctx.tick()
        ctx.set(dut.exp_write, 0)
        for base in tiles:
            rows = min(lanes, length - base)
            tile = {"rows": rows, "row_valid": sum(1 << i for i in range(rows) if base + i < valid_length),
                    "key_blocks": key_blocks, "valid_keys": valid_length, "prune": int(pool is not None),
                    "exp_multiplier": MULTIPLIER, "exp_shift": SHIFT}
            ctx.set(dut.tile.valid, 1)
            ctx.set(dut.tile.payload, tile)
            await ctx.tick().until(dut.tile.ready)
            ctx.set(dut.tile.valid, 0)
            for kb in range(key_blocks):
                for lane in range(rows):
                    while rng.random() < stall:
                        await ctx.tick()
                    values = [int(scores[base + lane, kb * k + i]) if kb * k + i < length else 0 for i in range(k)]
                    ctx.set(dut.scores.valid, 1)
                    ctx.set(dut.scores.payload, {"values": values})
                    await ctx.tick().until(dut.scores.ready)
                    ctx.set(dut.scores.valid, 0)

    async def sink(ctx):
        while len(got) < expected_blocks:
            ctx.set(dut.blocks.ready, int(rng.random() >= stall))
            _, _, valid, ready, pattern, *values = await ctx.tick().sample(
                dut.blocks.valid, dut.blocks.ready, dut.blocks.payload.pattern,
                *(dut.blocks.payload.values[i] for i in range(config.pattern.positions)))
            if valid and ready:
                got.append((pattern, values))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(sink)
    sim.run()
    beats = iter(got)
    for base in tiles:
        rows = min(lanes, length - base)
        for qb in range(-(-rows // k)):
            for kb in range(key_blocks):
                pattern, values = next(beats)
                q = base // k + qb
                ids[q, kb] = pattern
                probs[q * k:(q + 1) * k, kb * k:(kb + 1) * k] = torch.tensor(values).reshape(k, k)
    return probs[:length, :length], (ids if pool is not None else None), probs


def _golden(scores, valid_length, pool, table=None):
    length = scores.shape[0]
    valid = (torch.arange(length) < valid_length)[None]
    probs, ids = attention_probabilities(scores[None, None], valid, MULTIPLIER, SHIFT,
                                         exp_table() if table is None else table, pool)
    return probs[0, 0], (ids[0, 0] if ids is not None else None)


def _scores(rng, length, spread):
    return torch.tensor([[rng.randint(-spread, spread) for _ in range(length)] for _ in range(length)], dtype=torch.int64)


@pytest.mark.parametrize("length, valid_length, pruned", [
    (13, 13, True), (13, 10, True), (16, 16, False), (9, 5, False), (1, 1, True), (20, 17, True),
])
def test_probabilities_and_pattern_ids_equal_the_contract(length, valid_length, pruned):
    rng = random.Random(length * 100 + valid_length)
    pool = _pool(rng) if pruned else None
    scores = _scores(rng, length, 600)
    probs, ids, padded = _simulate(scores, valid_length, pool, stall=0.3, seed=length)
    want_probs, want_ids = _golden(scores, valid_length, pool)
    assert torch.equal(probs, want_probs)
    assert (ids is None and want_ids is None) or torch.equal(ids, want_ids)
    assert int(want_probs.count_nonzero()) > 0 and (want_ids is None or want_ids.numel() == 1 or len(set(want_ids.flatten().tolist())) > 1)
    assert not padded[length:].any() and not padded[:, length:].any()  # the map's padding is zero


def test_extreme_scores_and_tied_block_masses():
    rng = random.Random(3)
    pool = _pool(rng)
    pool[5] = pool[2]  # a duplicated pattern: every tie between them goes to id 2
    length = 12
    scores = torch.zeros(length, length, dtype=torch.int64)  # uniform rows: every block mass ties
    scores[4] = torch.tensor([-(2**31), 2**31 - 1] * (length // 2))
    scores[5, 3] = 2**31 - 1
    scores[6] = -(2**31)
    probs, ids, _ = _simulate(scores, length, pool)
    want_probs, want_ids = _golden(scores, length, pool)
    assert torch.equal(probs, want_probs) and torch.equal(ids, want_ids)
    assert 5 not in ids.tolist()


def test_a_corrupted_exponential_table_entry_is_caught():
    rng = random.Random(8)
    scores = _scores(rng, 8, 40)
    table = exp_table()
    probs, _, _ = _simulate(scores, 8, None, table_writes=[(0, int(table[0]) - 1000)])  # the row maximum's entry
    want, _ = _golden(scores, 8, None)
    assert not torch.equal(probs, want)


def test_a_flipped_pattern_bit_is_caught():
    rng = random.Random(13)
    pool = _pool(rng)
    scores = _scores(rng, 12, 300)
    want_probs, want_ids = _golden(scores, 12, pool)
    flipped = pool.clone()
    chosen = int(want_ids[0, 0])
    flipped[chosen, int(torch.nonzero(pool[chosen])[0])] = False  # one kept position of a chosen pattern
    probs, ids, _ = _simulate(scores, 12, flipped)
    assert not (torch.equal(probs, want_probs) and torch.equal(ids, want_ids))
