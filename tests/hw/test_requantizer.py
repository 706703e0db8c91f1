import random

import torch
from amaranth.sim import Simulator

from hw.requantizer import Requantizer
from sim import golden


def test_requantizer_equals_golden():
    rng = random.Random(4)
    cases = [(golden.ACC_MIN, golden.MULTIPLIER_MAX, 0), (golden.ACC_MAX, golden.MULTIPLIER_MAX, golden.SHIFT_MAX),
             (-3, 1, 1), (-1, 1, 1), (1, 1, 1), (3, 1, 1), (0, 0, 0), (-129, 1, 0), (128, 1, 0)]
    cases += [(rng.randint(golden.ACC_MIN, golden.ACC_MAX), rng.randint(0, golden.MULTIPLIER_MAX), rng.randint(0, golden.SHIFT_MAX))
              for _ in range(400)]
    cases += [(rng.randint(-(2**20), 2**20), rng.randint(2**15, 2**16 - 1), rng.randint(20, 30)) for _ in range(400)]
    expected = [int(golden.requantize(torch.tensor([[a]], dtype=torch.int32), torch.tensor([m]), torch.tensor([s]))[0, 0])
                for a, m, s in cases]
    dut = Requantizer()
    got = []

    async def bench(ctx):
        for a, m, s in cases:
            ctx.set(dut.value, a)
            ctx.set(dut.multiplier, m)
            ctx.set(dut.shift, s)
            await ctx.delay(1e-9)
            got.append(ctx.get(dut.result))

    sim = Simulator(dut)
    sim.add_testbench(bench)
    sim.run()
    assert got == expected
