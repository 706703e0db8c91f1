"""cocotb test run by :func:`sim.accelerator_rtl.run_accelerator_fast`: reset the harness, wait for its
``done`` (Verilator's main loop toggles the clock; no Python per cycle), report the registers."""

import json
import os
import time
from pathlib import Path

import cocotb
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout

from hw import registers as regs


@cocotb.test()
async def run_accelerator_long(dut):
    case_dir = Path(os.environ["TESSERA_CASE"])
    case = json.loads((case_dir / "case.json").read_text())
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    start = time.perf_counter()
    await with_timeout(RisingEdge(dut.done), case["max_cycles"] * case["clock_ns"], "ns")
    await ClockCycles(dut.clk, 2)  # the memory dump happens on the edge after done
    wall = time.perf_counter() - start
    status, error, layer = int(dut.status.value), int(dut.error.value), int(dut.layer.value)
    cycles = int(dut.cycles.value)
    result = {
        "done": regs.Status.value(status, "done"), "error": regs.Status.value(status, "error"),
        "cause": regs.Error.value(error, "cause"), "command": regs.Error.value(error, "command"),
        "layers": regs.Layer.value(layer, "layer"), "commands": regs.Layer.value(layer, "commands"),
        "cycles": cycles, "read_bytes": int(dut.read_bytes.value), "written_bytes": int(dut.written_bytes.value),
        "wall_seconds": wall, "cycles_per_second": cycles / wall if wall else None,
    }
    (case_dir / "result.json").write_text(json.dumps(result, indent=2))
    # The simulation ends (and the harness writes its per-op cycle counts) when this test returns.
