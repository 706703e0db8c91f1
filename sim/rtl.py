"""Build the engine's simulation harness and run programs on it: cocotb + Verilator, cocotb + Icarus,
or the plain Verilator C++ harness (no cocotb, no VPI: the simulation-speed ceiling).

Every kind plays the same ``tb_pattern_matmul`` (``sim/hdl``): the streams come from memory files, the
outputs go to a file, and the whole output tensor is compared with the golden model once.

Verilator builds are made here rather than by cocotb's runner, because the runner's build makes every
signal of the design public (``--public-flat-rw``), which costs about 6× in speed on this engine. The
cocotb build exposes only the harness's ports (``sim/hdl/tb_pattern_matmul.vlt``) and uses cocotb's
Verilator main loop with a free-running clock added (``sim/hdl/cocotb_verilator_main.cpp``), so no
Python and no VPI callback runs per cycle. cocotb's runner still runs the cocotb tests, and builds the
Icarus harness.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from cocotb_tools.runner import get_results, get_runner

from firmware_gen.program import MatmulProgram
from hw.config import EngineConfig
from hw.gen import generate
from hw.layouts import activation_layout, channel_params_layout, command_layout, output_layout, weight_layout
from sim.toolchain import HDL_DIR, configure_verilator

HARNESS_TOP = "tb_pattern_matmul"
SIMULATORS = ("verilator", "icarus", "verilator-cpp")
CLOCK_NS = 10
TIMESCALE = ("1ns", "1ps")
RESET_CYCLES = 4  # also in sim/hdl/tb_main.cpp

# Verilator's own optimizations; lint is checked separately (make verilog), simulation builds only compile.
VERILATOR_FLAGS = ["-Wno-fatal", "-Wno-lint", "-Wno-style", "-O3", "--x-assign", "fast", "--x-initial", "fast"]
# The C++ compiler's: verilated.mk defaults to -Os; -O3 measured 30–40 % faster on this engine (bench/simspeed.py --factors).
CXX_MAKE_FLAGS = ["OPT_FAST=-O3", "OPT_GLOBAL=-O3"]
# cocotb applies pytest's assertion rewriting to every module the simulator process imports ("*.py"),
# recompiling each from source (no bytecode cache there): importing torch took ~6 s instead of ~1.5 s.
# Only the test module needs it.
COCOTB_ENV = {"COCOTB_REWRITE_ASSERTION_FILES": "cocotb_matmul.py"}
COCOTB_MAIN = HDL_DIR / "cocotb_verilator_main.cpp"
CPP_MAIN = HDL_DIR / "tb_main.cpp"
PUBLIC_PORTS = HDL_DIR / f"{HARNESS_TOP}.vlt"


@dataclass
class Harness:
    config: EngineConfig
    simulator: str
    build_dir: Path
    build_seconds: float | None = None  # of the build that made the binary (it may be reused)
    build_command: list[str] = field(default_factory=list)


def build_harness(config: EngineConfig, build_dir: str | Path, simulator: str = "verilator", *,
                  always: bool = False, cxx_flags: list[str] | None = None) -> Harness:
    """Generate the engine's Verilog for ``config`` and compile it with the stream harness.

    ``simulator`` is ``"verilator"`` (cocotb + Verilator), ``"icarus"`` (cocotb + Icarus) or
    ``"verilator-cpp"`` (the plain C++ harness). A Verilator build whose command and sources are
    unchanged is reused unless ``always``. ``cxx_flags`` replaces :data:`CXX_MAKE_FLAGS` (make
    variables of ``verilated.mk``), for comparisons.
    """
    if simulator not in SIMULATORS:
        raise ValueError(f"simulator must be one of {SIMULATORS}, got {simulator!r}")
    build_dir = Path(build_dir).resolve()
    engine_v = generate(config, build_dir / "rtl")
    if simulator == "icarus":
        engine_v = _icarus_compatible(engine_v)
    sources, parameters = harness_sources(engine_v), harness_parameters(config)
    if simulator == "icarus":
        started = time.perf_counter()
        get_runner("icarus").build(sources=sources, hdl_toplevel=HARNESS_TOP, parameters=parameters,
                                   build_args=["-g2012"], build_dir=build_dir / "sim", timescale=TIMESCALE,
                                   always=always, log_file=build_dir / "build.log")
        return Harness(config, simulator, build_dir, time.perf_counter() - started)
    if simulator == "verilator":
        import cocotb_tools.config
        libs = cocotb_tools.config.libs_dir
        mode = ["--vpi", "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator"]
        main, extra_sources, mdir = COCOTB_MAIN, [PUBLIC_PORTS], build_dir / "sim"
    else:
        mode, main, extra_sources, mdir = [], CPP_MAIN, [], build_dir / "cpp"
    command = (["verilator", "--cc", "--exe", "--top-module", HARNESS_TOP, "--prefix", "Vtop", "-o", HARNESS_TOP]
               + mode + VERILATOR_FLAGS + ["--timescale", "/".join(TIMESCALE)]
               + [f"-G{name}={value}" for name, value in parameters.items()]
               + [str(main), *map(str, sources), *map(str, extra_sources)])
    make_flags = CXX_MAKE_FLAGS if cxx_flags is None else list(cxx_flags)
    seconds = _verilator_build(command, make_flags, mdir, build_dir / f"build-{simulator}.log", always=always)
    return Harness(config, simulator, build_dir, seconds, command + ["&&", "make", *make_flags])


def harness_sources(engine_v: Path) -> list[Path]:
    """The harness's Verilog around the engine's generated ``engine_v``, top last."""
    return [engine_v, HDL_DIR / "stream_source.sv", HDL_DIR / "stream_sink.sv", HDL_DIR / f"{HARNESS_TOP}.sv"]


def harness_parameters(config: EngineConfig) -> dict[str, int]:
    """``tb_pattern_matmul``'s stream widths for ``config``."""
    return {"CMD_W": command_layout(config).size, "ACT_W": activation_layout(config).size,
            "WGT_W": weight_layout(config).size, "PRM_W": channel_params_layout(config).size,
            "OUT_W": output_layout(config).size}


def _verilator_build(command: list[str], make_flags: list[str], mdir: Path, log_file: Path, *, always: bool,
                     binary: str = HARNESS_TOP) -> float:
    """Run ``command`` (Verilator) into ``mdir`` and compile it into ``binary``; returns the build's seconds.

    Skipped when the command, the sources' contents and the Verilator version match the last build."""
    env = configure_verilator(dict(os.environ))
    files = [Path(arg) for arg in command if arg.endswith((".v", ".sv", ".cpp", ".vlt"))]
    key = hashlib.sha256(json.dumps({
        "command": command, "make": make_flags, "verilator": verilator_version(),
        "sources": {str(f): hashlib.sha256(f.read_bytes()).hexdigest() for f in files},
    }).encode()).hexdigest()
    stamp = mdir / "build.stamp"
    if not always and stamp.exists() and (mdir / binary).exists():
        saved = json.loads(stamp.read_text())
        if saved.get("key") == key:
            return saved["seconds"]
    if mdir.exists():
        shutil.rmtree(mdir)
    mdir.mkdir(parents=True)
    started = time.perf_counter()
    with open(log_file, "w") as log:
        for step in (command + ["-Mdir", str(mdir)],
                     ["make", "-j", str(os.cpu_count() or 1), "-C", str(mdir), "-f", "Vtop.mk", *make_flags]):
            log.write("$ " + " ".join(step) + "\n")
            log.flush()
            if subprocess.run(step, stdout=log, stderr=subprocess.STDOUT, env=env).returncode:
                raise RuntimeError(f"Verilator build failed ({step[0]}); see {log_file}")
    seconds = time.perf_counter() - started
    stamp.write_text(json.dumps({"key": key, "seconds": seconds}))
    return seconds


def verilator_version() -> str:
    try:
        return metadata.version("verilator")
    except metadata.PackageNotFoundError:
        return "unknown"


def _icarus_compatible(verilog_path: Path) -> Path:
    """Make Icarus evaluate every ``always @*`` block at time 0, as Yosys's Verilog assumes.

    Icarus runs an ``always @*`` block only on a change of what it reads, so logic that depends only on
    registers whose declared initial value never changes (the FSM state, say) would stay X. Yosys
    makes every such block read a per-module dummy register declared ``= 0`` for this purpose, but
    Icarus raises no event for a declaration's initial value; an ``initial #0`` write gives the event.
    (Rewriting the blocks as ``always_comb`` did this until the engine's output stage was pipelined:
    Icarus 11 makes an ``always_comb`` block sensitive to a whole vector where it reads a constant
    slice, and the simulation then looped forever within one time step.)"""
    text, kicks = re.subn(r"^(\s*)reg (\\\$auto\$verilog_backend\.cc:\d+:dump_module\$\d+) += 0;$",
                          lambda m: f"{m[0]}\n{m[1]}initial #0 {m[2]} = 1'b1;", verilog_path.read_text(), flags=re.M)
    if not kicks and "always @*" in text:
        raise RuntimeError(f"{verilog_path}: no Yosys time-0 dummy register found; Icarus would leave logic X")
    out = verilog_path.with_name(verilog_path.stem + "_icarus.v")
    out.write_text(text)
    return out


class BitExactMismatch(AssertionError):
    """The RTL's output tensor differs from the golden model's (or the run did not finish);
    ``result`` holds the case's result dictionary."""

    def __init__(self, message: str, result: dict):
        super().__init__(message)
        self.result = result


#: Marker file in every case folder :func:`run_program` creates: only such folders are ever cleared.
CASE_MARKER = ".tessera-case"


def prepare_case_dir(case_dir: str | Path) -> Path:
    """An empty case folder: created when missing, cleared when it is one of ours (it holds
    :data:`CASE_MARKER`), used as is when empty; any other non-empty folder is refused, never deleted."""
    case_dir = Path(case_dir).resolve()
    if case_dir.exists() and not case_dir.is_dir():
        raise ValueError(f"case_dir {case_dir} is a file, not a folder")
    if case_dir.is_dir() and any(case_dir.iterdir()):
        if not (case_dir / CASE_MARKER).is_file():
            raise ValueError(f"case_dir {case_dir} is not empty and was not made by run_program; "
                             "give a new or empty folder (nothing in it was touched)")
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True, exist_ok=True)
    (case_dir / CASE_MARKER).write_text("made by sim.rtl.run_program; cleared by the next run into this folder\n")
    return case_dir


def run_program(harness: Harness, program: MatmulProgram, expected: torch.Tensor, case_dir: str | Path, *,
                stall_percent: int = 0, seed: int = 1, clock: str | None = None, check: bool = True) -> dict:
    """Run ``program`` on the harness and compare its whole output tensor with ``expected``.

    Returns the case's result: ``cycles`` (first RUN command to last output beat), ``wall_seconds``
    and ``cpu_seconds`` of that stretch, ``cycles_per_second`` (over the wall time), ``mismatches``,
    ``passed``, and ``process_seconds`` (the whole simulator process, start-up included). The
    comparison is exact equality (inside the cocotb test for the cocotb kinds). A failed comparison
    raises :class:`BitExactMismatch` (with the result attached) unless ``check=False``.

    ``case_dir`` is created (or, when an earlier run made it, cleared); a non-empty folder of anything
    else is refused. ``expected`` must be ``[tokens, out_features]`` of the program.

    ``clock`` (cocotb + Verilator only): ``"simulator"`` (default) has Verilator's main loop toggle
    the clock; ``"cocotb"`` drives it with cocotb's ``Clock`` instead (slower, for comparison).
    """
    if clock is None:
        clock = "simulator" if harness.simulator == "verilator" else "cocotb"
    if clock not in ("simulator", "cocotb") or (clock == "simulator" and harness.simulator != "verilator"):
        raise ValueError(f"clock={clock!r} is not available with {harness.simulator}")
    if not isinstance(expected, torch.Tensor) or tuple(expected.shape) != (program.tokens, program.out_features):
        shape = tuple(expected.shape) if isinstance(expected, torch.Tensor) else type(expected).__name__
        raise ValueError(f"expected must be a tensor [{program.tokens}, {program.out_features}] (tokens, out_features), got {shape}")
    case_dir = prepare_case_dir(case_dir)
    paths = program.write_hex(case_dir)
    busy_cycles = program.tiles * (len(program.weights) + program.config.lanes * len(program.activations) // max(program.tokens, 1))
    max_cycles = 10 * (busy_cycles + program.output_beats + len(program.commands)) * (1 + stall_percent) + 10_000
    plusargs = [f"+stall={stall_percent}", f"+tb_seed={seed}", f"+out_file={case_dir / 'outputs.hex'}",
                f"+out_count={program.output_beats}"]
    for name, (beats, replays) in program.streams().items():
        plusargs += [f"+{name}_file={paths[name]}", f"+{name}_count={len(beats)}", f"+{name}_replays={replays}"]
    if harness.simulator == "verilator-cpp":
        return _checked(_run_cpp(harness, program, expected, case_dir, plusargs + [f"+max_cycles={max_cycles}"]), case_dir, check)

    torch.save({"program": program, "expected": expected}, case_dir / "case.pt")
    (case_dir / "case.json").write_text(json.dumps({"max_cycles": max_cycles, "clock": clock, "clock_ns": CLOCK_NS,
                                                    "reset_cycles": RESET_CYCLES}))
    if clock == "simulator":
        plusargs.append(f"+main_clock_ns={CLOCK_NS}")
    result = run_cocotb_case(harness.simulator, "sim.cocotb_matmul", HARNESS_TOP, harness.build_dir / "sim", case_dir,
                             plusargs, COCOTB_ENV)
    return _checked(result, case_dir, check)


def run_cocotb_case(simulator: str, test_module: str, top: str, build_dir: Path, case_dir: Path, plusargs: list[str],
                    env: dict[str, str]) -> dict:
    """Run one prepared case's cocotb test on a built harness; returns the ``result.json`` the test wrote
    (``{"mismatches": None}`` when it wrote none) with ``process_seconds`` and ``passed`` added."""
    results_xml = case_dir / "results.xml"
    started = time.perf_counter()
    try:
        get_runner(simulator).test(
            test_module=test_module, hdl_toplevel=top, hdl_toplevel_lang="verilog", build_dir=build_dir,
            test_dir=case_dir, plusargs=plusargs, extra_env={"TESSERA_CASE": str(case_dir), **env},
            results_xml=str(results_xml), timescale=TIMESCALE, log_file=case_dir / "sim.log",
        )
    except SystemExit:  # under pytest the runner exits on a failing test; the results file tells the story
        pass
    process_seconds = time.perf_counter() - started
    try:
        _, failed = get_results(results_xml)
    except RuntimeError:  # no results: the simulator itself failed
        failed = 1
    result_path = case_dir / "result.json"
    result = json.loads(result_path.read_text()) if result_path.exists() else {"mismatches": None}
    result["process_seconds"] = process_seconds
    result["passed"] = failed == 0
    return result


def _checked(result: dict, case_dir: Path, check: bool) -> dict:
    if check and not result["passed"]:
        what = (f"{result['mismatches']} of {result.get('elements', '?')} outputs differ from the golden model"
                if result.get("mismatches") else "the run did not complete (no output, an error flag or a timeout)")
        raise BitExactMismatch(f"RTL is not bit-exact: {what}; see {case_dir / 'sim.log'}", result)
    return result


def _run_cpp(harness: Harness, program: MatmulProgram, expected: torch.Tensor, case_dir: Path,
             plusargs: list[str]) -> dict:
    started = time.perf_counter()
    with open(case_dir / "sim.log", "w") as log:
        proc = subprocess.run([str(harness.build_dir / "cpp" / HARNESS_TOP), *plusargs], cwd=case_dir,
                              stdout=subprocess.PIPE, stderr=log, text=True)
        log.write(proc.stdout)
    process_seconds = time.perf_counter() - started
    try:
        run = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"mismatches": None, "passed": False, "process_seconds": process_seconds}
    result = {"cycles": run["cycles"], "wall_seconds": run["wall_seconds"], "cpu_seconds": run["cpu_seconds"],
              "cycles_per_second": run["cycles"] / run["wall_seconds"], "mismatches": None, "error": run["error"],
              "elements": expected.numel(), "process_seconds": process_seconds}
    if run["done"]:
        actual = decode_output_file(program, case_dir / "outputs.hex")
        result["mismatches"] = count_mismatches(actual, expected)
        result["passed"] = proc.returncode == 0 and not run["error"] and torch.equal(actual, expected)
    else:
        result["passed"] = False
    (case_dir / "result.json").write_text(json.dumps(result, indent=2))
    return result


def decode_output_file(program: MatmulProgram, path: str | Path) -> torch.Tensor:
    """The output tensor from the sink's ``$writememh`` file."""
    lines = Path(path).read_text().splitlines()
    beats = [int(line, 16) for line in lines if line.strip() and not line.startswith(("//", "@"))]  # Icarus adds comments
    return program.decode_outputs(beats)


def count_mismatches(actual: torch.Tensor, expected: torch.Tensor) -> int:
    return int((actual.to(torch.int64) != expected.to(torch.int64)).sum())
