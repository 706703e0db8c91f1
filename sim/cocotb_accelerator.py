"""cocotb test run by :mod:`sim.accelerator_rtl`: the host's side of every run of a prepared case."""

import itertools
import json
import os
import random
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles
from cocotbext.axi import AxiBus, AxiLiteBus, AxiLiteMaster, AxiRam

from hw import registers as regs


def _pauses(seed):
    rng = random.Random(seed)
    return itertools.cycle([rng.random() < 0.3 for _ in range(997)])


@cocotb.test()
async def run_accelerator_case(dut):
    case_dir = Path(os.environ["TESSERA_CASE"])
    case = json.loads((case_dir / "case.json").read_text())
    size = max(len((case_dir / run["image"]).read_bytes()) for run in case["runs"])
    ram_size = 1 << max(12, (size - 1).bit_length())
    # The clock runs in Verilator's main loop (+main_clock_ns): no Python per cycle but the bus models'.
    ram = AxiRam(AxiBus.from_prefix(dut, "m_axi"), dut.clk, dut.rst, size=ram_size)
    host = AxiLiteMaster(AxiLiteBus.from_prefix(dut, "s_axil"), dut.clk, dut.rst)
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    assert await host.read_dword(regs.offset("ID")) == regs.ID_MAGIC
    results = []
    for i, run in enumerate(case["runs"]):
        image = (case_dir / run["image"]).read_bytes()
        ram.write(0, bytes(ram_size))
        ram.write(0, image)
        for channel, seed in ((ram.write_if.aw_channel, 1), (ram.write_if.w_channel, 2), (ram.write_if.b_channel, 3),
                              (ram.read_if.ar_channel, 4), (ram.read_if.r_channel, 5)):
            if run["pause"]:
                channel.set_pause_generator(_pauses(seed + 10 * i))
            else:
                channel.clear_pause_generator()
                channel.pause = False  # clearing the generator leaves its last value in force
        await host.write_dword(regs.offset("COMMAND_ADDR"), run["command_address"])
        await host.write_dword(regs.offset("CONTROL"), 1 << regs.Control.field("start").offset)
        if run["reset_after"] is not None:
            await ClockCycles(dut.clk, run["reset_after"])
            await host.write_dword(regs.offset("CONTROL"), 1 << regs.Control.field("reset").offset)
        waited = 0
        while True:
            status = await host.read_dword(regs.offset("STATUS"))
            if not regs.Status.value(status, "busy"):
                break
            await ClockCycles(dut.clk, 200)
            waited += 200
            if waited >= run["max_cycles"]:
                states = {name: str(getattr(getattr(dut, unit), "fsm_state").value) if unit else str(dut.fsm_state.value)
                          for name, unit in (("sequencer", None), ("reader", "reader"), ("writer", "writer"))}
                raise AssertionError(f"run {i} did not finish in {run['max_cycles']} cycles; states {states}")
        error = await host.read_dword(regs.offset("ERROR"))
        layer = await host.read_dword(regs.offset("LAYER"))
        low = await host.read_dword(regs.offset("CYCLES_LO"))
        high = await host.read_dword(regs.offset("CYCLES_HI"))
        results.append({
            "done": regs.Status.value(status, "done"), "error": regs.Status.value(status, "error"),
            "cause": regs.Error.value(error, "cause"), "command": regs.Error.value(error, "command"),
            "layers": regs.Layer.value(layer, "layer"), "commands": regs.Layer.value(layer, "commands"),
            "cycles": low | high << 32,
        })
        (case_dir / f"memory{i}.bin").write_bytes(ram.read(0, size))
    (case_dir / "result.json").write_text(json.dumps({"runs": results, "mismatches": 0}, indent=2))
