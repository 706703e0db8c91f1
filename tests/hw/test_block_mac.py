import random

from amaranth.sim import Simulator

from hw.block_mac import MAC_LATENCY, PatternBlockMAC
from hw.config import EngineConfig


def _reference(x, values, positions, k):
    sums = [0] * k
    for v, (row, col) in zip(values, positions):
        sums[row] += v * x[col]
    return sums


def test_block_mac_sums_products_per_row_after_its_latency():
    cfg = EngineConfig()
    k, n = cfg.pattern.block_size, cfg.pattern.kept_per_block
    rng = random.Random(2)
    cases = []
    for i in range(300):
        positions = sorted(rng.sample(range(k * k), n))
        extreme = i % 3 == 0
        x = [rng.choice([-128, 127]) if extreme else rng.randint(-128, 127) for _ in range(k)]
        values = [rng.choice([-128, 127]) if extreme else rng.randint(-128, 127) for _ in range(n)]
        cases.append((x, values, [(p // k, p % k) for p in positions]))
    cases.append(([-128] * k, [-128] * n, [(0, c % k) for c in range(n)]))  # every product into one row
    dut = PatternBlockMAC(cfg)
    got = []

    async def drive(ctx):
        for x, values, positions in cases:
            for i in range(k):
                ctx.set(dut.x[i], x[i])
            for j in range(n):
                ctx.set(dut.values[j], values[j])
                ctx.set(dut.positions[j].row, positions[j][0])
                ctx.set(dut.positions[j].col, positions[j][1])
            await ctx.tick()

    async def check(ctx):
        await ctx.tick().repeat(MAC_LATENCY)
        for _ in cases:
            await ctx.delay(1e-9)
            got.append([ctx.get(dut.sums[r]) for r in range(k)])
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(drive)
    sim.add_testbench(check)
    sim.run()
    assert got == [_reference(*c, k) for c in cases]
