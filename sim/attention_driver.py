"""Run an :class:`AttentionProgram` on the attention unit in ``amaranth.sim`` (small cases)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from amaranth.sim import Simulator

from firmware_gen.attention import AttentionProgram
from hw.attention_unit import AttentionUnit
from sim.amaranth_driver import simulate, stream_source


@dataclass
class AttentionRun:
    context: list[int]
    scores: list[int]
    blocks: list[int]
    cycles: int
    error: int


def run_attention_in_amaranth_sim(program: AttentionProgram, *, stall_probability: float = 0.0, seed: int = 0,
                                  max_cycles: int = 500_000, vcd_path: str | None = None) -> AttentionRun:
    """Drive every input stream (random valid gaps and ready stalls); collect the context and the taps."""
    dut = AttentionUnit(program.config)
    rng = random.Random(seed)
    run = AttentionRun([], [], [], 0, 0)
    expected = program.context_beats()

    def source(stream, beats):
        return stream_source(stream, beats, rng, stall_probability)

    streams = program.streams()

    async def ordered(ctx):
        # The pool and the table go in before the first head's command, as a host would configure the unit.
        await source(dut.pool, streams["pool"])(ctx)
        await source(dut.exp_table, streams["exp_table"])(ctx)
        await source(dut.cmd, streams["cmd"])(ctx)

    async def sink(ctx):
        while len(run.context) < expected:
            ctx.set(dut.context.ready, int(rng.random() >= stall_probability))
            sampled = await ctx.tick().sample(dut.context.valid, dut.context.ready, dut.context.payload.as_value(),
                                              dut.score_tap.as_value(), dut.block_tap.as_value())
            _, _, valid, ready, payload, score_tap, block_tap = sampled
            run.cycles += 1
            if valid and ready:
                run.context.append(payload)
            if score_tap & 1:
                run.scores.append(score_tap >> 1)
            if block_tap & 1:
                run.blocks.append(block_tap >> 1)
            if run.cycles > max_cycles:
                raise TimeoutError(f"attention unit produced {len(run.context)} of {expected} context beats in {max_cycles} cycles")
        run.error = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(ordered, background=True)
    for name in ("queries", "keys", "values"):
        sim.add_testbench(source(getattr(dut, name), streams[name]), background=True)
    sim.add_testbench(sink)
    simulate(sim, vcd_path)
    return run
