"""Build the engine's simulation harness and run programs on it (cocotb runner + Verilator or Icarus)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from cocotb_tools.runner import get_results, get_runner

from firmware_gen.program import MatmulProgram
from hw.config import EngineConfig
from hw.gen import generate
from hw.layouts import activation_layout, channel_params_layout, command_layout, output_layout, weight_layout
from sim.toolchain import HDL_DIR, configure_verilator

HARNESS_TOP = "tb_pattern_matmul"


@dataclass
class Harness:
    config: EngineConfig
    simulator: str
    build_dir: Path


def build_harness(config: EngineConfig, build_dir: str | Path, simulator: str = "verilator") -> Harness:
    """Generate the engine's Verilog for ``config`` and compile it with the stream harness."""
    build_dir = Path(build_dir).resolve()
    engine_v = generate(config, build_dir / "rtl")
    if simulator == "icarus":
        engine_v = _icarus_compatible(engine_v)
    sources = [engine_v, HDL_DIR / "stream_source.sv", HDL_DIR / "stream_sink.sv", HDL_DIR / f"{HARNESS_TOP}.sv"]
    parameters = {
        "CMD_W": command_layout(config).size, "ACT_W": activation_layout(config).size,
        "WGT_W": weight_layout(config).size, "PRM_W": channel_params_layout(config).size,
        "OUT_W": output_layout(config).size,
    }
    build_args = []
    if simulator == "verilator":
        configure_verilator()
        # Lint is checked separately (make verilog); simulation builds only need to compile.
        build_args = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast"]
    elif simulator == "icarus":
        build_args = ["-g2012"]
    runner = get_runner(simulator)
    runner.build(sources=sources, hdl_toplevel=HARNESS_TOP, parameters=parameters, build_args=build_args,
                 build_dir=build_dir / "sim", timescale=("1ns", "1ps"), always=False,
                 log_file=build_dir / "build.log")
    return Harness(config, simulator, build_dir)


def _icarus_compatible(verilog_path: Path) -> Path:
    """Icarus does not run ``always @*`` blocks at time 0, so logic that depends only on registers
    whose declared initial value never changes (the FSM state, say) would stay X. ``always_comb``
    runs once at time 0 (IEEE 1800 §9.2.2.2), which is the behaviour Yosys's Verilog assumes."""
    text = verilog_path.read_text().replace("always @* begin", "always_comb begin")
    out = verilog_path.with_name(verilog_path.stem + "_icarus.v")
    out.write_text(text)
    return out


def run_program(harness: Harness, program: MatmulProgram, expected: torch.Tensor, case_dir: str | Path, *,
                stall_percent: int = 0, seed: int = 1) -> dict:
    """Run ``program`` on the harness and compare its whole output tensor with ``expected``.

    Returns the case's result (cycles, simulation speed, mismatches, passed). The comparison is
    exact equality, done inside the cocotb test.
    """
    case_dir = Path(case_dir).resolve()
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    paths = program.write_hex(case_dir)
    torch.save({"program": program, "expected": expected}, case_dir / "case.pt")
    busy_cycles = program.tiles * (len(program.weights) + program.config.lanes * len(program.activations) // max(program.tokens, 1))
    max_cycles = 10 * (busy_cycles + program.output_beats + len(program.commands)) * (1 + stall_percent) + 10_000
    (case_dir / "case.json").write_text(json.dumps({"max_cycles": max_cycles}))
    plusargs = [f"+stall={stall_percent}", f"+tb_seed={seed}", f"+out_file={case_dir / 'outputs.hex'}",
                f"+out_count={program.output_beats}"]
    for name, (beats, replays) in program.streams().items():
        plusargs += [f"+{name}_file={paths[name]}", f"+{name}_count={len(beats)}", f"+{name}_replays={replays}"]
    runner = get_runner(harness.simulator)
    results_xml = case_dir / "results.xml"
    try:
        runner.test(
            test_module="sim.cocotb_matmul", hdl_toplevel=HARNESS_TOP, hdl_toplevel_lang="verilog",
            build_dir=harness.build_dir / "sim", test_dir=case_dir, plusargs=plusargs,
            extra_env={"TESSERA_CASE": str(case_dir)}, results_xml=str(results_xml), timescale=("1ns", "1ps"),
            log_file=case_dir / "sim.log",
        )
    except SystemExit:  # under pytest the runner exits on a failing test; the results file tells the story
        pass
    try:
        _, failed = get_results(results_xml)
    except RuntimeError:  # no results: the simulator itself failed
        failed = 1
    result_path = case_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {"mismatches": None}
    result["passed"] = failed == 0
    return result
