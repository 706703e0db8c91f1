"""Front-door tests of the engine in amaranth.sim: Python drives every beat, with random stalls."""

import pytest
import torch

from firmware_gen.program import build_program
from core.pattern import PatternConfig
from hw.config import EngineConfig
from sim.amaranth_driver import run_in_amaranth_sim
from sim.cases import random_case

SMALL = EngineConfig(pattern=PatternConfig(block_size=4, kept_per_block=8, pool_size=8), lanes=3, max_in_features=64)


@pytest.mark.parametrize("dense", [False, True], ids=["pattern", "dense"])
@pytest.mark.parametrize("raw", [False, True], ids=["int8", "raw"])
def test_engine_equals_golden_with_stalls(dense, raw):
    image, x_q = random_case(7, 13, 10, SMALL.pattern, seed=11, extremes=raw)
    acc, y = image.golden(x_q)
    program = build_program(image, x_q, SMALL, dense=dense, raw=raw)
    beats, _ = run_in_amaranth_sim(program, stall_probability=0.3, seed=5)
    assert torch.equal(program.decode_outputs(beats), acc if raw else y)


def test_outputs_held_longer_than_the_output_queue():
    """A consumer that stops for many cycles: the stage stops issuing lanes once its credits are used,
    every beat already in its pipeline waits in the queue, and none is lost or repeated."""
    from hw.output_stage import OUTPUT_CREDITS

    image, x_q = random_case(7, 13, 10, SMALL.pattern, seed=13)
    acc, y = image.golden(x_q)
    program = build_program(image, x_q, SMALL)
    _, free_cycles = run_in_amaranth_sim(program)
    hold = range(40, 40 + 8 * OUTPUT_CREDITS)
    beats, cycles = run_in_amaranth_sim(program, hold_outputs=hold)
    assert hold.start < free_cycles and cycles > free_cycles  # the hold fell while beats were flowing
    assert torch.equal(program.decode_outputs(beats), y)  # a queue two beats short loses two: checked


def test_wide_outputs_saturate_to_the_residual_width():
    """Wide mode (the branch-end linears): requantized to ``WIDE_BITS``, as ``core.golden.linear(..., WIDE_BITS)``."""
    from core import golden
    from core.encoder import WIDE_BITS

    image, x_q = random_case(7, 13, 10, SMALL.pattern, seed=12, extremes=True)
    image.shift[:] = 4  # small shifts: large results, some beyond 24 bits
    n = image.out_features
    expected = golden.linear(x_q, image.weight_q(), image.bias[:n], image.multiplier[:n], image.shift[:n], WIDE_BITS)[1]
    assert int(expected.abs().max()) == 2 ** (WIDE_BITS - 1) - 1 or int(expected.min()) == -(2 ** (WIDE_BITS - 1))
    program = build_program(image, x_q, SMALL, wide=True)
    beats, _ = run_in_amaranth_sim(program, stall_probability=0.3, seed=6)
    assert torch.equal(program.decode_outputs(beats), expected.to(torch.int32))


def test_other_block_geometry():
    config = EngineConfig(pattern=PatternConfig(block_size=2, kept_per_block=3, pool_size=4), lanes=2, max_in_features=16)
    image, x_q = random_case(3, 5, 6, config.pattern, seed=3)
    _, y = image.golden(x_q)
    program = build_program(image, x_q, config)
    beats, _ = run_in_amaranth_sim(program, stall_probability=0.2, seed=1)
    assert torch.equal(program.decode_outputs(beats), y)


def test_refused_run_raises_error_flag():
    from amaranth.sim import Simulator
    from firmware_gen.beats import encode
    from hw.layouts import Opcode, command_layout
    from hw.pattern_matmul import PatternMatmulEngine

    dut = PatternMatmulEngine(SMALL)
    beat = encode(command_layout(SMALL), {"op": Opcode.RUN.value, "dense": 0, "raw": 0, "wide": 0, "pattern_id": 0, "tokens": 1,
                                          "in_blocks": SMALL.max_in_blocks + 1, "out_blocks": 1,
                                          "positions": [{"row": 0, "col": 0}] * 8})
    seen = {}

    async def bench(ctx):
        assert ctx.get(dut.error) == 0
        ctx.set(dut.cmd.valid, 1)
        ctx.set(dut.cmd.payload.as_value(), beat)
        await ctx.tick()
        ctx.set(dut.cmd.valid, 0)
        await ctx.tick()
        seen["error"], seen["busy"] = ctx.get(dut.error), ctx.get(dut.busy)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == {"error": 1, "busy": 0}


def test_back_to_back_runs_reuse_both_banks():
    # Two RUNs in one command stream: 7 then 4 tokens on 3 lanes (odd tile counts, short last tiles),
    # so the second run starts with the banks in the state the first left them.
    from dataclasses import dataclass

    first_image, first_x = random_case(7, 13, 10, SMALL.pattern, seed=21)
    second_image, second_x = random_case(4, 20, 6, SMALL.pattern, seed=22)
    first = build_program(first_image, first_x, SMALL)
    second = build_program(second_image, second_x, SMALL, raw=True)

    @dataclass
    class Concatenated:
        config: EngineConfig
        output_beats: int

        def streams(self):
            out = {}
            for name in ("cmd", "activations", "weights", "params"):
                beats = []
                for program in (first, second):
                    stream_beats, replays = program.streams()[name]
                    beats += stream_beats * replays
                out[name] = (beats, 1)
            return out

    both = Concatenated(SMALL, first.output_beats + second.output_beats)
    beats, _ = run_in_amaranth_sim(both, stall_probability=0.25, seed=3)
    assert torch.equal(first.decode_outputs(beats[: first.output_beats]), first_image.golden(first_x)[1])
    assert torch.equal(second.decode_outputs(beats[first.output_beats:]), second_image.golden(second_x)[0])
