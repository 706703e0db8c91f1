"""`python bench/simspeed.py`: simulation speed of the cocotb + Verilator runs against the ceiling.

The ceiling is the same RTL (``tb_pattern_matmul`` + the generated engine) under a plain Verilator C++
harness (``sim/hdl/tb_main.cpp``: no VPI, no Python). Both harnesses are built for the default
``EngineConfig`` and run the big cases in pattern mode, interleaved (ceiling, cocotb, ceiling, …) so
that load on the machine hits both alike; every run's outputs are compared with the golden model.
Speed is simulated cycles (first RUN command to last output beat) per second of wall time over that
stretch; the CPU-time rate is reported beside it, as it is steadier on a busy machine.

``--factors`` also runs the variants that show where the time went: cocotb's default Verilator build
(``--public-flat-rw``) with cocotb's ``Clock``, the tuned build with cocotb's ``Clock``, and the C++
harness compiled with verilated.mk's default ``-Os``.

Writes ``<out>/simspeed.json`` and ``<out>/simspeed.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from firmware_gen.program import build_program
from hw.config import EngineConfig
from sim import rtl
from sim.cases import random_case
from core.atomic import write_atomic

SHAPES = [(128, 768, 768), (128, 768, 3072)]  # tokens, in_features, out_features (as bench/matmul.py)
TARGET_RATIO = 0.5


@dataclass
class Variant:
    name: str
    label: str
    harness: rtl.Harness
    clock: str | None = None


def build_variants(config: EngineConfig, out: Path, *, factors: bool, always: bool) -> list[Variant]:
    def build(label, simulator, folder, **kwargs):
        print(f"building {label}…", flush=True)
        harness = rtl.build_harness(config, out / folder, simulator, always=always, **kwargs)
        print(f"  {harness.build_seconds:.1f} s", flush=True)
        return harness

    cpp = build("the plain Verilator C++ harness (ceiling)", "verilator-cpp", "harness")
    cocotb = build("the cocotb + Verilator harness", "verilator", "harness")
    variants = [Variant("ceiling", "C++ harness (ceiling)", cpp), Variant("cocotb", "cocotb + Verilator", cocotb)]
    if factors:
        os_build = build("the C++ harness at verilated.mk's -Os", "verilator-cpp", "cpp-Os", cxx_flags=[])
        default = _build_cocotb_default(config, out / "cocotb-default", always)
        variants += [Variant("ceiling_Os", "C++ harness, -Os", os_build),
                     Variant("cocotb_clock", "cocotb + Verilator, cocotb Clock", cocotb, clock="cocotb"),
                     Variant("cocotb_default", "cocotb runner's default build, cocotb Clock", default, clock="cocotb")]
    return variants


def _build_cocotb_default(config: EngineConfig, build_dir: Path, always: bool) -> rtl.Harness:
    """The harness as cocotb's runner builds it (``--vpi --public-flat-rw``, cocotb's main loop)."""
    from cocotb_tools.runner import get_runner

    from hw.gen import generate
    from sim.toolchain import configure_verilator

    print("building cocotb's default Verilator build (--public-flat-rw)…", flush=True)
    configure_verilator()
    build_dir = build_dir.resolve()
    if always and (build_dir / "sim").exists():
        shutil.rmtree(build_dir / "sim")  # the runner's make would otherwise reuse its objects
    started = time.perf_counter()
    sources = rtl.harness_sources(generate(config, build_dir / "rtl"))
    get_runner("verilator").build(sources=sources, hdl_toplevel=rtl.HARNESS_TOP, parameters=rtl.harness_parameters(config),
                                  build_args=rtl.VERILATOR_FLAGS, build_dir=build_dir / "sim",
                                  timescale=rtl.TIMESCALE, always=always, log_file=build_dir / "build.log")
    seconds = time.perf_counter() - started
    print(f"  {seconds:.1f} s", flush=True)
    return rtl.Harness(config, "verilator", build_dir, seconds, ["cocotb_tools.runner Verilator.build", *rtl.VERILATOR_FLAGS])


def summarize(runs: list[dict]) -> dict:
    return {"cycles_per_second_median": statistics.median(r["cycles_per_second"] for r in runs),
            "cycles_per_cpu_second_median": statistics.median(r["cycles"] / r["cpu_seconds"] for r in runs),
            "wall_seconds": [r["wall_seconds"] for r in runs], "cpu_seconds": [r["cpu_seconds"] for r in runs],
            "process_seconds": [r["process_seconds"] for r in runs], "runs": len(runs),
            "bit_exact": all(r["passed"] and r["mismatches"] == 0 for r in runs)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs of each harness per case")
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="folder for the report and builds")
    parser.add_argument("--factors", action="store_true", help="also run the variants that show where the time goes")
    parser.add_argument("--reuse", action="store_true", help="reuse unchanged builds (build times are then old ones)")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    config = EngineConfig()
    out = args.out
    work = out / "simspeed"
    work.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    variants = build_variants(config, work, factors=args.factors, always=not args.reuse)

    cases, ok = [], True
    for tokens, k_in, n_out in SHAPES:
        shape = f"{tokens}x{k_in}x{n_out}"
        image, x_q = random_case(tokens, k_in, n_out, config.pattern, seed=tokens + k_in + n_out)
        _, expected = image.golden(x_q)
        program = build_program(image, x_q, config)
        runs = {v.name: [] for v in variants}
        for r in range(args.repeats):
            for v in variants:
                result = rtl.run_program(v.harness, program, expected, work / "cases" / shape / v.name, clock=v.clock, check=False)
                runs[v.name].append(result)
                exact = result["passed"] and result["mismatches"] == 0
                print(f"  {tokens}×{k_in}×{n_out} run {r + 1}/{args.repeats} {v.label}: "
                      + (f"{result['cycles']} cycles, {result['cycles_per_second']:,.0f} cycles/s, "
                         f"{'bit-exact' if exact else 'MISMATCH'}" if result.get("cycles") else "FAILED"), flush=True)
                ok &= exact
        if not ok:
            print(f"error: a run of {tokens}×{k_in}×{n_out} does not match the golden model", file=sys.stderr)
            break
        cycles = {run["cycles"] for v in variants for run in runs[v.name]}
        if len(cycles) != 1:
            print(f"error: the harnesses disagree on the cycle count of {shape}: {sorted(cycles)}", file=sys.stderr)
            ok = False
            break
        summary = {v.name: summarize(runs[v.name]) for v in variants}
        ceiling, cocotb = summary["ceiling"], summary["cocotb"]
        cases.append({
            "tokens": tokens, "in_features": k_in, "out_features": n_out, "mode": "pattern", "cycles": cycles.pop(),
            "harnesses": summary,
            "ratio_cocotb_to_ceiling": cocotb["cycles_per_second_median"] / ceiling["cycles_per_second_median"],
            "ratio_cocotb_to_ceiling_cpu": cocotb["cycles_per_cpu_second_median"] / ceiling["cycles_per_cpu_second_median"],
        })

    report = {
        "config": json.loads(config.to_json()), "verilator": rtl.verilator_version(),
        "verilator_flags": rtl.VERILATOR_FLAGS, "cxx_make_flags": rtl.CXX_MAKE_FLAGS,
        "harnesses": {v.name: {"label": v.label, "simulator": v.harness.simulator, "clock": v.clock,
                               "build_seconds": v.harness.build_seconds, "build_command": v.harness.build_command}
                      for v in variants},
        "repeats": args.repeats, "target_ratio": TARGET_RATIO, "cases": cases, "passed": ok,
        "machine": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
        "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_atomic(out / "simspeed.json", json.dumps(report, indent=2) + "\n")
    names = [v.name for v in variants]
    labels = {v.name: v.label for v in variants}
    lines = ["| shape (M×K×N, pattern) | cycles | " + " | ".join(f"{labels[n]} (cycles/s)" for n in names)
             + " | cocotb / ceiling (wall) | cocotb / ceiling (CPU) |",
             "|---|---:|" + "---:|" * len(names) + "---:|---:|"]
    for case in cases:
        h = case["harnesses"]
        lines.append(f"| {case['tokens']}×{case['in_features']}×{case['out_features']} | {case['cycles']} | "
                     + " | ".join(f"{h[n]['cycles_per_second_median']:,.0f}" for n in names)
                     + f" | {case['ratio_cocotb_to_ceiling']:.2f} | {case['ratio_cocotb_to_ceiling_cpu']:.2f} |")
    built = {}
    for v in variants:  # one entry per build (variants may share one)
        built.setdefault(id(v.harness), f"{v.label} {v.harness.build_seconds:.0f} s")
    builds = ", ".join(built.values())
    table = "\n".join(lines)
    write_atomic(out / "simspeed.md",
                 f"# Simulation speed: cocotb + Verilator against a plain Verilator C++ harness\n\n"
                 f"Medians of {args.repeats} interleaved runs per harness; every run bit-exact against the golden "
                 f"model. Verilator {report['verilator']}, `{' '.join(rtl.VERILATOR_FLAGS)}`, "
                 f"make `{' '.join(rtl.CXX_MAKE_FLAGS)}`. Builds: {builds}. "
                 f"Load average before/after: {load_before[0]:.2f} / {report['load_average_after'][0]:.2f} "
                 f"({report['cpus']} CPUs). Target: cocotb ≥ {TARGET_RATIO} × ceiling.\n\n{table}\n")
    print("\n" + table)
    print(f"\nwrote {out / 'simspeed.json'} and {out / 'simspeed.md'}")
    if not ok:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
