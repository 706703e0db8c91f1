"""The table activation unit against ``core.integer.table_lookup``: every int8 input, two tables,
stalls on every stream, and a corrupted entry seen."""

import random

import torch
from amaranth.sim import Simulator

from core.encoder import activation_table, gelu
from core.integer import table_lookup
from firmware_gen.beats import encode
from hw.table_activation import TABLE_ENTRIES, TableActivation, table_beat_layout, table_command_layout
from sim.amaranth_driver import stream_sink, stream_source

ELEMENTS = 4


def _run(jobs, *, stall=0.0, seed=0):
    """``jobs``: (table or None, inputs [beats, ELEMENTS]) in order; returns the outputs of each job."""
    dut = TableActivation(elements=ELEMENTS)
    rng = random.Random(seed)
    beat = table_beat_layout(ELEMENTS)
    commands, tables, inputs = [], [], []
    for table, x in jobs:
        commands.append(encode(table_command_layout(), {"load": table is not None, "beats": x.shape[0]}))
        tables += [] if table is None else [int(v) for v in table]
        inputs += [encode(beat, row) for row in x.tolist()]
    received = []
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(stream_source(dut.command, commands, rng, stall), background=True)
    sim.add_testbench(stream_source(dut.table, tables, rng, stall), background=True)
    sim.add_testbench(stream_source(dut.inputs, inputs, rng, stall), background=True)
    sim.add_testbench(stream_sink(dut.outputs, len(inputs), rng, stall, received))
    sim.run()
    out, start = [], 0
    for _, x in jobs:
        out.append(torch.tensor([[int(v) for v in b] for b in received[start:start + x.shape[0]]]).reshape(x.shape))
        start += x.shape[0]
    return out


def _every_input():
    return torch.arange(-128, 128).reshape(-1, ELEMENTS)


def test_every_input_through_two_tables_with_stalls():
    gen = torch.Generator().manual_seed(1)
    gelu_table = activation_table(gelu, 0.05, 0.04).to(torch.int64)
    tanh_table = activation_table(torch.tanh, 0.02, 1 / 127).to(torch.int64)
    x = _every_input()
    y = torch.randint(-128, 128, (40, ELEMENTS), generator=gen)
    jobs = [(gelu_table, x), (None, y), (tanh_table, x), (None, y[:1])]
    got = _run(jobs, stall=0.3, seed=2)
    in_force = [gelu_table, gelu_table, tanh_table, tanh_table]  # a job without a table keeps the last one
    for (_, inputs), outputs, table in zip(jobs, got, in_force):
        assert torch.equal(outputs, table_lookup(inputs, table))


def test_a_corrupted_entry_is_seen_only_where_it_is_read():
    table = activation_table(gelu, 0.05, 0.04).to(torch.int64)
    bad = table.clone()
    bad[200] ^= 0x10
    got = _run([(bad, _every_input())])[0].flatten()
    wrong = (got != table_lookup(_every_input(), table).flatten()).nonzero().flatten().tolist()
    assert wrong == [200]
    assert TABLE_ENTRIES == table.numel()
