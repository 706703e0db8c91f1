"""cocotb test run by :mod:`sim.rtl`: plays one prepared case on ``tb_pattern_matmul`` and checks it.

The harness streams every input from memory files and writes the outputs to a file, so Python only
resets the engine, waits for ``done`` and compares whole tensors once. Under Verilator the clock is
toggled by the simulator's main loop (``case.json``: ``"clock": "simulator"``,
``sim/hdl/cocotb_verilator_main.cpp``), so nothing runs in Python or through VPI per cycle; otherwise
(Icarus, or when asked for comparison) cocotb's ``Clock`` drives it.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout


@cocotb.test()
async def run_matmul_case(dut):
    case_dir = Path(os.environ["TESSERA_CASE"])
    case = json.loads((case_dir / "case.json").read_text())
    clock_ns = case["clock_ns"]
    if case["clock"] == "cocotb":
        Clock(dut.clk, clock_ns, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, case["reset_cycles"])
    dut.rst.value = 0
    start, cpu_start = time.perf_counter(), time.process_time()
    await with_timeout(RisingEdge(dut.done), case["max_cycles"] * clock_ns, "ns")
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    cycles = int(dut.cycles.value)

    from sim.rtl import count_mismatches, decode_output_file  # after the timed part: it loads the toolchain

    saved = torch.load(case_dir / "case.pt", weights_only=False)
    program, expected = saved["program"], saved["expected"]
    actual = decode_output_file(program, case_dir / "outputs.hex")
    mismatches = count_mismatches(actual, expected)
    result = {"cycles": cycles, "wall_seconds": wall, "cpu_seconds": cpu, "cycles_per_second": cycles / wall,
              "mismatches": mismatches, "error": int(dut.error.value), "elements": expected.numel(),
              "clock": case["clock"]}
    (case_dir / "result.json").write_text(json.dumps(result, indent=2))
    assert int(dut.error.value) == 0, "engine raised its error flag"
    assert torch.equal(actual, expected), f"{mismatches} of {expected.numel()} outputs differ from the golden model"
