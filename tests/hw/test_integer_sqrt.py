"""The sequential square root against ``math.isqrt`` (and ``core.integer.isqrt``), with stalls."""

import math
import random

import torch
from amaranth.sim import Simulator

from core.integer import isqrt
from hw.integer_sqrt import IntegerSqrt, sqrt_cycles
from sim.amaranth_driver import stream_sink, stream_source


def _run(width, values, *, stall=0.0, seed=0):
    dut = IntegerSqrt(width=width)
    rng = random.Random(seed)
    received, cycles = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.value, values, rng, stall))
    sim.add_testbench(stream_sink(dut.root, len(values), rng, stall, received, cycles))
    sim.run()
    return [int(r) for r in received], cycles


def test_squares_neighbours_and_random_values_of_62_bits():
    width = 62
    rng = random.Random(1)
    values = [0, 1, 2, 3, 4, 2**width - 1]
    values += [v for r in (1, 2, 3, 1000, 2**20 + 7, 2**31 - 1) for v in (r * r - 1, r * r, r * r + 1) if v < 2**width]
    values += [rng.randint(0, 2**width - 1) for _ in range(200)] + [rng.randint(0, 2**20) for _ in range(100)]
    got, cycles = _run(width, values)
    assert got == [math.isqrt(v) for v in values]
    assert got == isqrt(torch.tensor(values)).tolist()
    # Back to back, one root every sqrt_cycles(width) cycles plus the handshake.
    assert cycles[1:] == [sqrt_cycles(width) + 1] * (len(values) - 1)


def test_every_value_of_an_odd_width_with_stalls():
    width = 9
    values = list(range(2**width))
    assert _run(width, values, stall=0.3, seed=4)[0] == [math.isqrt(v) for v in values]
