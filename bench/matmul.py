"""`make bench`: cycles and MAC utilization of the engine on BERT-base linear-layer shapes.

For each shape, the same weights run in pattern mode and in dense mode on the same array (Verilator +
cocotb, outputs checked against the golden model). Writes ``build/bench/matmul.json`` and
``build/bench/matmul.md``. Simulation speed is the median of ``--repeats`` runs of the pattern case.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from firmware_gen.program import build_program
from hw.config import EngineConfig
from sim.cases import random_case
from sim.rtl import build_harness, run_program
from sw.atomic import write_atomic

SHAPES = [(128, 768, 768), (128, 768, 3072)]  # tokens, in_features, out_features (BERT-base attention / FFN-in)
OUT = Path("build/bench")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs of each pattern case for the speed median")
    parser.add_argument("--lanes", type=int, default=EngineConfig().lanes)
    args = parser.parse_args(argv)
    config = EngineConfig(lanes=args.lanes)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"building the Verilator harness ({config.multipliers} multipliers)…", flush=True)
    harness = build_harness(config, OUT / "verilator")
    rows = []
    for tokens, k_in, n_out in SHAPES:
        image, x_q = random_case(tokens, k_in, n_out, config.pattern_config, seed=tokens + k_in + n_out)
        _, expected = image.golden(x_q)
        useful = tokens * n_out * k_in * config.kept_per_block // config.block_size**2
        row = {"tokens": tokens, "in_features": k_in, "out_features": n_out, "multipliers": config.multipliers,
               "useful_macs": useful}
        for mode in ("pattern", "dense"):
            program = build_program(image, x_q, config, dense=mode == "dense")
            repeats = args.repeats if mode == "pattern" else 1
            runs = []
            for r in range(repeats):
                print(f"  {tokens}×{k_in}×{n_out} {mode} run {r + 1}/{repeats}…", flush=True)
                runs.append(run_program(harness, program, expected, OUT / "cases" / f"{tokens}x{k_in}x{n_out}_{mode}"))
            if not all(run["passed"] for run in runs):
                print(f"error: {mode} {tokens}×{k_in}×{n_out} does not match the golden model", file=sys.stderr)
                return 1
            cycles = runs[0]["cycles"]
            row[mode] = {"cycles": cycles, "utilization": useful / (config.multipliers * cycles),
                         "sim_cycles_per_second_median": statistics.median(run["cycles_per_second"] for run in runs),
                         "sim_runs": len(runs), "bit_exact": True}
        row["pattern_vs_dense"] = row["dense"]["cycles"] / row["pattern"]["cycles"]
        rows.append(row)

    report = {"config": json.loads(config.to_json()), "machine": platform.platform(), "processor": platform.processor(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "shapes": rows,
              "targets": {"utilization": 0.90, "pattern_vs_dense": 1.8}}
    write_atomic(OUT / "matmul.json", json.dumps(report, indent=2) + "\n")
    lines = ["| shape (M×K×N) | mode | cycles | useful MACs | MAC utilization | pattern vs dense | sim speed (cycles/s, median) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        shape = f"{row['tokens']}×{row['in_features']}×{row['out_features']}"
        for mode in ("pattern", "dense"):
            r = row[mode]
            ratio = f"{row['pattern_vs_dense']:.3f}×" if mode == "pattern" else ""
            lines.append(f"| {shape} | {mode} | {r['cycles']} | {row['useful_macs']} | {r['utilization']:.1%} | {ratio} | "
                         f"{r['sim_cycles_per_second_median']:,.0f} |")
    table = "\n".join(lines)
    write_atomic(OUT / "matmul.md", f"# Pattern-sparse matmul engine: {config.multipliers} multipliers "
                                    f"({config.lanes} lanes × {config.kept_per_block})\n\n{table}\n")
    print("\n" + table)
    print(f"\nwrote {OUT / 'matmul.json'} and {OUT / 'matmul.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
