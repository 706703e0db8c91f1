"""The residual add + LayerNorm unit against ``core.integer.residual_add`` and ``layer_norm``: whole rows,
constant rows, extreme sums and parameters, several commands, stalls on every stream."""

import random

import pytest
import torch
from amaranth.sim import Simulator

from core import golden
from core.encoder import NORM_Z_BITS, RESIDUAL_SHIFT, WIDE_BITS
from core.integer import layer_norm, residual_add
from firmware_gen.beats import encode
from hw.layer_norm import (ResidualLayerNorm, norm_command_layout, norm_input_layout, norm_params_layout,
                           row_cycles)
from sim.amaranth_driver import stream_sink, stream_source

WIDE_MIN, WIDE_MAX = -(2 ** (WIDE_BITS - 1)), 2 ** (WIDE_BITS - 1) - 1


def _command(wide, residual, gamma, beta, shift):
    return {"wide": wide, "residual": residual, "gamma": gamma, "beta": beta, "shift": shift}


def _golden(c):
    r = residual_add(c["wide"], c["residual"], RESIDUAL_SHIFT)
    return layer_norm(r, c["gamma"], c["beta"], c["shift"], NORM_Z_BITS)


def _random_command(rng, gen, rows, width, *, spread=2**18, shift=None):
    wide = torch.randint(-spread, spread, (rows, width), generator=gen) + torch.randint(-spread, spread, (rows, 1), generator=gen)
    residual = torch.randint(-128, 128, (rows, width), generator=gen)
    gamma = torch.randint(-(2**15), 2**15, (width,), generator=gen)
    beta = torch.randint(-(2**26), 2**26, (width,), generator=gen)
    return _command(wide, residual, gamma, beta, rng.randint(15, 30) if shift is None else shift)


def _run(commands, max_width, *, stall=0.0, out_stall=None, seed=0, vcd=None):
    dut = ResidualLayerNorm(max_width=max_width)
    rng = random.Random(seed)
    cmd_layout, par_layout, in_layout = norm_command_layout(max_width), norm_params_layout(), norm_input_layout()
    cmds, params, inputs = [], [], []
    for c in commands:
        rows, width = c["wide"].shape
        cmds.append(encode(cmd_layout, {"width": width, "rows": rows, "shift": c["shift"]}))
        params += [encode(par_layout, {"gamma": int(g), "beta": int(b)}) for g, b in zip(c["gamma"], c["beta"])]
        inputs += [encode(in_layout, {"wide": int(w), "residual": int(x)})
                   for w, x in zip(c["wide"].flatten().tolist(), c["residual"].flatten().tolist())]
    received, intervals = [], []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.command, cmds, rng, stall), background=True)
    sim.add_testbench(stream_source(dut.params, params, rng, stall), background=True)
    sim.add_testbench(stream_source(dut.inputs, inputs, rng, stall), background=True)
    sim.add_testbench(stream_sink(dut.outputs, len(inputs), rng, stall if out_stall is None else out_stall, received, intervals))
    if vcd:
        with sim.write_vcd(vcd):
            sim.run()
    else:
        sim.run()
    out, start = [], 0
    for c in commands:
        n = c["wide"].numel()
        out.append(torch.tensor([int(v) for v in received[start:start + n]]).reshape(c["wide"].shape))
        start += n
    return out, intervals


def test_random_rows_equal_the_contract():
    rng, gen = random.Random(1), torch.Generator().manual_seed(1)
    commands = [_random_command(rng, gen, 6, 48), _random_command(rng, gen, 3, 13, spread=2**10)]
    got, _ = _run(commands, 64)
    for g, c in zip(got, commands):
        assert torch.equal(g, _golden(c).to(torch.int64))


def test_constant_rows_extreme_sums_and_parameters():
    gen = torch.Generator().manual_seed(2)
    width = 16
    wide = torch.stack([
        torch.full((width,), 1234),  # constant: σ = 0, output is β alone
        torch.full((width,), WIDE_MIN),
        torch.tensor([WIDE_MAX, WIDE_MIN] * (width // 2)),  # largest spread
        torch.tensor([WIDE_MIN] + [WIDE_MAX] * (width - 1)),  # one outlier: |z| near its bound
        torch.zeros(width, dtype=torch.int64),
    ])
    residual = torch.stack([torch.full((width,), 7), torch.full((width,), -128), torch.tensor([127, -128] * (width // 2)),
                            torch.tensor([-128] + [127] * (width - 1)), torch.zeros(width, dtype=torch.int64)])
    cases = [
        _command(wide, residual, torch.full((width,), golden.MULTIPLIER_MAX), torch.full((width,), golden.ACC_MAX), 0),
        _command(wide, residual, torch.full((width,), -golden.MULTIPLIER_MAX), torch.full((width,), golden.ACC_MIN), 47),
        _command(wide, residual, torch.randint(-(2**16) + 1, 2**16, (width,), generator=gen),
                 torch.randint(-(2**31), 2**31, (width,), generator=gen), 31),
        _command(wide, residual, torch.randint(-(2**15), 2**15, (width,), generator=gen), torch.zeros(width, dtype=torch.int64), 63),
    ]
    got, _ = _run(cases, width)
    for g, c in zip(got, cases):
        assert torch.equal(g, _golden(c).to(torch.int64))
    assert len(set(got[0][0].tolist())) == 1  # the constant row gives one value (from β)


def test_random_stalls_on_every_stream():
    rng, gen = random.Random(3), torch.Generator().manual_seed(3)
    commands = [_random_command(rng, gen, 4, 24), _random_command(rng, gen, 5, 32), _random_command(rng, gen, 1, 1)]
    got, _ = _run(commands, 32, stall=0.35, seed=5)
    for g, c in zip(got, commands):
        assert torch.equal(g, _golden(c).to(torch.int64))


def test_a_slow_consumer_behind_rows_that_are_ready():
    """A stalled output slows the read-back (one entry per taken output) more than the ingest (whose mean
    alone waits on the pipeline): long rows' μ and σ wait for the read-back, which takes them right
    after its last read, while that entry may still sit at the divider's input."""
    rng, gen = random.Random(7), torch.Generator().manual_seed(7)
    commands = [_random_command(rng, gen, 4, 96), _random_command(rng, gen, 3, 3)]
    for seed in range(2):
        got, _ = _run(commands, 96, out_stall=0.8, seed=seed)
        for g, c in zip(got, commands):
            assert torch.equal(g, _golden(c).to(torch.int64))


def test_a_corrupted_parameter_is_seen():
    rng, gen = random.Random(4), torch.Generator().manual_seed(4)
    command = _random_command(rng, gen, 2, 16)
    bad = dict(command, gamma=command["gamma"].clone())
    bad["gamma"][5] ^= 1 << 14  # one bit of one channel's γ
    got, _ = _run([bad], 16)
    mismatches = int((got[0] != _golden(command).to(torch.int64)).sum())
    assert mismatches > 0


def test_rows_take_row_cycles_without_stalls():
    rng, gen = random.Random(6), torch.Generator().manual_seed(6)
    width, max_width = 72, 128
    _, intervals = _run([_random_command(rng, gen, 6, width)], max_width)
    # From one row's first output to the next row's, once the pipeline is full: the row period. (A
    # row's read-back pauses while the next row's mean takes the divider.)
    periods = [sum(intervals[r * width + 1:(r + 1) * width + 1]) for r in range(5)]
    assert periods[2:] == [row_cycles(width, max_width)] * 3


def test_row_cycles_refuses_rows_shorter_than_the_statistics():
    with pytest.raises(ValueError, match="shorter than the statistics"):
        row_cycles(24, 32)


def test_refuses_a_bad_width():
    with pytest.raises(ValueError, match="max_width must be a positive integer"):
        ResidualLayerNorm(max_width=0)
