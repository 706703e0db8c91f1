"""The per-row reciprocal against ``core.integer.row_reciprocal``, with stalls on both streams."""

import random

import torch
from amaranth.sim import Simulator

from core.integer import row_reciprocal
from hw.row_reciprocal import RowReciprocal, reciprocal_cycles
from sim.amaranth_driver import stream_sink, stream_source

TOTAL_BITS = 24


def _run(totals, *, stall=0.0, seed=0):
    dut = RowReciprocal(total_bits=TOTAL_BITS)
    rng = random.Random(seed)
    received, cycles = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.total, totals, rng, stall))
    sim.add_testbench(stream_sink(dut.reciprocal, len(totals), rng, stall, received, cycles))
    sim.run()
    return [(int(p.r), int(p.ell)) for p in received], cycles


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
