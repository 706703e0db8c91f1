"""Drive components in ``amaranth.sim`` from Python: stream sources and sinks, and a :class:`MatmulProgram`
on the engine (small cases; cocotb for the rest)."""

from __future__ import annotations

import random

from amaranth import Const, Value
from amaranth.sim import Simulator

from firmware_gen.program import MatmulProgram
from hw.pattern_matmul import PatternMatmulEngine


def stream_source(stream, beats: list[int], rng: random.Random, stall_probability: float):
    """A testbench that offers ``beats`` on ``stream`` one after another, with random valid gaps."""
    async def drive(ctx):
        for beat in beats:
            while rng.random() < stall_probability:
                await ctx.tick()
            ctx.set(stream.valid, 1)
            ctx.set(Value.cast(stream.payload), beat)
            await ctx.tick().until(stream.ready)
            ctx.set(stream.valid, 0)
    return drive


def stream_sink(stream, count: int, rng: random.Random, stall_probability: float, received: list, intervals: list | None = None):
    """A testbench that takes ``count`` beats from ``stream`` (random ready stalls, unless the stream is
    always ready) into ``received``, as values of its payload layout, and the cycles since the previous
    transfer into ``intervals``."""
    always_ready = isinstance(stream.ready, Const)

    async def take(ctx):
        waited = 0
        while len(received) < count:
            if not always_ready:
                ctx.set(stream.ready, int(rng.random() >= stall_probability))
            _, _, valid, ready, payload = await ctx.tick().sample(stream.valid, stream.ready, stream.payload)
            waited += 1
            if valid and ready:
                received.append(payload)
                if intervals is not None:
                    intervals.append(waited)
                waited = 0
    return take


def run_enabled_pipeline(dut, inputs: list[dict], output, latency: int, enables: list[int]) -> list[int]:
    """Feed ``inputs`` (port name → value) to a pipeline with an ``en`` input, one per enabled cycle of
    ``enables``; return ``output`` for each input, read ``latency`` enabled cycles after it went in."""
    got = []

    async def bench(ctx):
        pending, in_flight = list(inputs), 0
        for en in enables:
            ctx.set(dut.en, en)
            if en and pending:
                for name, value in pending.pop(0).items():
                    ctx.set(getattr(dut, name), value)
            await ctx.tick()
            if en:
                in_flight += 1
                if in_flight >= latency and len(got) < len(inputs):
                    got.append(ctx.get(output))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return got


def simulate(sim: Simulator, vcd_path: str | None = None) -> None:
    """Run ``sim`` to the end of its testbenches, writing a VCD when asked."""
    if vcd_path:
        with sim.write_vcd(vcd_path):
            sim.run()
    else:
        sim.run()


def run_in_amaranth_sim(program: MatmulProgram, *, stall_probability: float = 0.0, seed: int = 0,
                        hold_outputs: range = range(0), max_cycles: int = 200_000,
                        vcd_path: str | None = None) -> tuple[list[int], int]:
    """Drive every input stream (with random valid gaps and ready stalls, and ``outputs.ready`` low in
    every cycle of ``hold_outputs``); return ``(output beats, cycles)``."""
    dut = PatternMatmulEngine(program.config)
    rng = random.Random(seed)
    outputs: list[int] = []
    cycles = 0

    def source(stream, beats, replays):
        return stream_source(stream, beats * replays, rng, stall_probability)

    async def sink(ctx):
        nonlocal cycles
        while len(outputs) < program.output_beats:
            ctx.set(dut.outputs.ready, int(rng.random() >= stall_probability and cycles not in hold_outputs))
            _, _, valid, ready, payload = await ctx.tick().sample(dut.outputs.valid, dut.outputs.ready, dut.outputs.payload.as_value())
            cycles += 1
            if valid and ready:
                outputs.append(payload)
            if cycles > max_cycles:
                raise TimeoutError(f"engine produced {len(outputs)} of {program.output_beats} output beats in {max_cycles} cycles")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name, (beats, replays) in program.streams().items():
        sim.add_testbench(source(getattr(dut, name), beats, replays), background=True)
    sim.add_testbench(sink)
    simulate(sim, vcd_path)
    return outputs, cycles
