"""The per-row reciprocal against ``core.integer.row_reciprocal``, with stalls on both streams."""

import random

import torch
from amaranth.sim import Simulator

from core.integer import row_reciprocal
from hw.row_reciprocal import RowReciprocal, reciprocal_cycles

TOTAL_BITS = 24


def _run(totals, *, stall=0.0, seed=0):
    dut = RowReciprocal(total_bits=TOTAL_BITS)
    rng = random.Random(seed)
    got, cycles = [], []

    async def drive(ctx):
        for total in totals:
            while rng.random() < stall:
                await ctx.tick()
            ctx.set(dut.total.valid, 1)
            ctx.set(dut.total.payload, total)
            await ctx.tick().until(dut.total.ready)
            ctx.set(dut.total.valid, 0)

    async def sink(ctx):
        waited = 0
        while len(got) < len(totals):
            ctx.set(dut.reciprocal.ready, int(rng.random() >= stall))
            _, _, valid, ready, r, ell = await ctx.tick().sample(dut.reciprocal.valid, dut.reciprocal.ready,
                                                                 dut.reciprocal.payload.r, dut.reciprocal.payload.ell)
            waited += 1
            if valid and ready:
                got.append((r, ell))
                cycles.append(waited)
                waited = 0

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(drive)
    sim.add_testbench(sink)
    sim.run()
    return got, cycles


def _golden(totals):
    r, ell = row_reciprocal(torch.tensor(totals))
    return list(zip(r.tolist(), ell.tolist()))


def test_edges_powers_of_two_and_random_totals():
    rng = random.Random(3)
    totals = [0, 1, 2, 3, 2**TOTAL_BITS - 1]
    totals += [v for b in range(TOTAL_BITS) for v in (2**b - 1, 2**b, 2**b + 1) if 0 < v < 2**TOTAL_BITS]
    totals += [rng.randint(1, 2**TOTAL_BITS - 1) for _ in range(300)] + [rng.randint(2**15, 2**22) for _ in range(300)]
    got, cycles = _run(totals)
    assert got == _golden(totals)
    # Back to back, without stalls, one result every reciprocal_cycles(total) + 1 cycles (the handshake).
    assert cycles[1:] == [reciprocal_cycles(t) + 1 for t in totals[1:]]


def test_random_stalls_on_both_streams():
    rng = random.Random(5)
    totals = [rng.randint(0, 2**TOTAL_BITS - 1) for _ in range(200)]
    assert _run(totals, stall=0.4, seed=9)[0] == _golden(totals)
