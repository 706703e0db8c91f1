"""The record cutter: random record sizes out of a random byte stream, with stalls on both sides."""

import random

from amaranth.sim import Simulator

from hw.byte_records import ByteRecords
from sim.amaranth_driver import stream_source


def test_records_of_random_sizes_are_the_stream_in_order():
    rng = random.Random(1)
    sizes = [rng.choice([1, 4, 8, 9, 16, rng.randint(1, 16)]) for _ in range(300)]
    stream_bytes = bytes(rng.randrange(256) for _ in range(sum(sizes)))
    padded = stream_bytes + bytes(-len(stream_bytes) % 4)
    words = [int.from_bytes(padded[i:i + 4], "little") for i in range(0, len(padded), 4)]
    dut = ByteRecords(word_bytes=4, max_record=16)
    got = []

    async def consume(ctx):
        for size in sizes:
            ctx.set(dut.size, size)
            while rng.random() < 0.3:
                ctx.set(dut.records.ready, 0)
                await ctx.tick()
            ctx.set(dut.records.ready, 1)
            while True:
                _, _, valid, payload = await ctx.tick().sample(dut.records.valid, dut.records.payload)
                if valid:
                    got.append(bytes(int(payload[i]) for i in range(size)))
                    break
            ctx.set(dut.records.ready, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.words, words, rng, 0.3), background=True)
    sim.add_testbench(consume)
    sim.run()
    assert b"".join(got) == stream_bytes
    assert [len(r) for r in got] == sizes
