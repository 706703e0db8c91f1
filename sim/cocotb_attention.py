"""cocotb test run by :mod:`sim.attention_rtl`: plays one prepared case on ``tb_attention`` and checks it.

Verilator's main loop toggles the clock (``sim/hdl/cocotb_verilator_main.cpp``), so nothing runs in
Python per cycle: Python resets the unit, waits for ``done`` and compares whole tensors once.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import torch
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout


@cocotb.test()
async def run_attention_case(dut):
    case_dir = Path(os.environ["TESSERA_CASE"])
    case = json.loads((case_dir / "case.json").read_text())
    dut.rst.value = 1
    await ClockCycles(dut.clk, case["reset_cycles"])
    dut.rst.value = 0
    start = time.perf_counter()
    await with_timeout(RisingEdge(dut.done), case["max_cycles"] * case["clock_ns"], "ns")
    wall = time.perf_counter() - start
    cycles = int(dut.cycles.value)
    stages = {"scores_cycles": int(dut.scores_cycles.value), "context_cycles": int(dut.context_cycles.value)}

    from sim.attention_rtl import compare, read_hex  # after the timed part: it loads the toolchain

    program = torch.load(case_dir / "case.pt", weights_only=False)["program"]
    mismatches = compare(program, *(read_hex(case_dir / f"{name}_out.hex") for name in ("context", "scores", "blocks")))
    result = {"cycles": cycles, **stages, "wall_seconds": wall, "cycles_per_second": cycles / wall, "mismatches": mismatches,
              "error": int(dut.error.value)}
    (case_dir / "result.json").write_text(json.dumps(result, indent=2))
    assert int(dut.error.value) == 0, "attention unit raised its error flag"
    assert not any(mismatches.values()), f"not bit-exact: {mismatches}"
