"""cocotb test run by :mod:`sim.rtl`: plays one prepared case on ``tb_pattern_matmul`` and checks it.

The harness streams every input from memory files and writes the outputs to a file, so Python only
starts the clock, waits for ``done`` and compares whole tensors once.
"""

import json
import os
import time
from pathlib import Path

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge, with_timeout

CLOCK_NS = 10


@cocotb.test()
async def run_matmul_case(dut):
    case_dir = Path(os.environ["TESSERA_CASE"])
    case = json.loads((case_dir / "case.json").read_text())
    Clock(dut.clk, CLOCK_NS, unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 4)
    dut.rst.value = 0
    start = time.perf_counter()
    await with_timeout(RisingEdge(dut.done), case["max_cycles"] * CLOCK_NS, "ns")
    wall = time.perf_counter() - start
    cycles = int(dut.cycles.value)

    saved = torch.load(case_dir / "case.pt", weights_only=False)
    program, expected = saved["program"], saved["expected"]
    lines = (case_dir / "outputs.hex").read_text().splitlines()
    beats = [int(line, 16) for line in lines if line.strip() and not line.startswith(("//", "@"))]  # Icarus adds comments
    actual = program.decode_outputs(beats)
    mismatches = int((actual.to(torch.int64) != expected.to(torch.int64)).sum())
    result = {"cycles": cycles, "wall_seconds": wall, "cycles_per_second": cycles / wall,
              "mismatches": mismatches, "error": int(dut.error.value), "elements": expected.numel()}
    (case_dir / "result.json").write_text(json.dumps(result, indent=2))
    assert int(dut.error.value) == 0, "engine raised its error flag"
    assert torch.equal(actual, expected), f"{mismatches} of {expected.numel()} outputs differ from the golden model"
