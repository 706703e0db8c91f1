"""The integer exponential against ``core.integer.int_exp``: every exponent, then random rescales."""

import random

import torch
from amaranth.sim import Simulator

from core.encoder import exp_table
from core.integer import int_exp
from hw.exp_unit import DELTA_BITS, EXP_LATENCY, IntegerExp


def _run(cases, table_writes=()):
    """``cases``: ``(delta, multiplier, shift)``, one per cycle; returns ``e`` for each."""
    dut = IntegerExp()
    got = []

    async def drive(ctx):
        ctx.set(dut.en, 1)
        for addr, value in table_writes:
            ctx.set(dut.table_write, 1)
            ctx.set(dut.table_addr, addr)
            ctx.set(dut.table_data, value)
            await ctx.tick()
        ctx.set(dut.table_write, 0)
        for delta, multiplier, shift in cases:
            ctx.set(dut.delta, delta)
            ctx.set(dut.multiplier, multiplier)
            ctx.set(dut.shift, shift)
            await ctx.tick()

    async def check(ctx):
        await ctx.tick().repeat(len(table_writes) + EXP_LATENCY)
        for _ in cases:
            got.append(ctx.get(dut.e))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(check)
    sim.run()
    return got


def _golden(cases, table):
    delta = torch.tensor([c[0] for c in cases])
    return [int(int_exp(delta[i:i + 1], m, s, table)[0]) for i, (_, m, s) in enumerate(cases)]


def test_every_exponent_and_the_saturated_range():
    # multiplier 1, shift 0: t = delta, so this walks every table entry at every whole part up to where
    # the result is 0, then the largest deltas (the exponent saturates).
    cases = [(t, 1, 0) for t in range(17 * 256)] + [(2**DELTA_BITS - 1 - i, 1, 0) for i in range(4)] + [(2**20, 1, 0)]
    assert _run(cases) == int_exp(torch.tensor([c[0] for c in cases]), 1, 0, exp_table()).tolist()


def test_random_rescales_match_the_contract():
    rng = random.Random(7)
    cases = [(rng.randint(0, 2**DELTA_BITS - 1), rng.randint(1, 2**16 - 1), rng.randint(0, 47)) for _ in range(300)]
    cases += [(rng.randint(0, 5000), rng.randint(2**15, 2**16 - 1), rng.randint(16, 26)) for _ in range(300)]
    assert _run(cases) == _golden(cases, exp_table())


def test_a_loaded_table_replaces_the_built_in_one():
    table = exp_table()
    loaded = table.clone()
    loaded[17] += 1
    cases = [(t, 1, 0) for t in range(3 * 256)]
    got = _run(cases, table_writes=[(17, int(loaded[17]))])
    # The unit follows the table it was given, so a corrupted entry shows against the contract's table.
    assert got == int_exp(torch.tensor([c[0] for c in cases]), 1, 0, loaded).tolist()
    differs = sum(g != w for g, w in zip(got, int_exp(torch.tensor([c[0] for c in cases]), 1, 0, table).tolist()))
    assert differs >= 1
