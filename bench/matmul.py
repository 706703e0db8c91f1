"""Cycles and MAC utilization of the engine on the linear layers of BERT-base and MiniLM, simulated.

Every shape runs in pattern mode and in dense mode on the same array (Verilator + cocotb, outputs
checked bit for bit against the golden model), and the simulated cycle count is compared with
:func:`hw.cycle_model.matmul_cycles`. Writes ``build/bench/matmul.json`` and ``build/bench/matmul.md``.

    python bench/matmul.py [--lanes 8] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from firmware_gen.program import build_program
from hw.config import EngineConfig
from hw.cycle_model import BERT_BASE, MINILM_L6, matmul_cycles
from sim.cases import random_case
from sim.rtl import build_harness, run_program
from core.atomic import write_atomic

OUT = Path("build/bench")
TARGETS = {"utilization": 0.95, "pattern_vs_dense": 1.9}


def linear_shapes(tokens: int) -> list[tuple[str, int, int, int]]:
    """``(model, tokens, in_features, out_features)`` of every distinct linear layer of both encoders."""
    shapes = []
    for encoder in (BERT_BASE, MINILM_L6):
        h, f = encoder.hidden, encoder.intermediate
        shapes += [(encoder.name, tokens, h, h), (encoder.name, tokens, h, f), (encoder.name, tokens, f, h)]
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, default=EngineConfig().lanes)
    parser.add_argument("--tokens", type=int, default=128, help="sequence length (tokens per RUN)")
    args = parser.parse_args(argv)
    config = EngineConfig(lanes=args.lanes)
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"building the Verilator harness ({config.multipliers} multipliers)…", flush=True)
    harness = build_harness(config, OUT / "verilator")
    rows = []
    for model, tokens, k_in, n_out in linear_shapes(args.tokens):
        image, x_q = random_case(tokens, k_in, n_out, config.pattern, seed=tokens + k_in + n_out)
        _, expected = image.golden(x_q)
        row = {"model": model, "tokens": tokens, "in_features": k_in, "out_features": n_out}
        for mode in ("pattern", "dense"):
            print(f"  {model} {tokens}×{k_in}×{n_out} {mode}…", flush=True)
            program = build_program(image, x_q, config, dense=mode == "dense")
            run = run_program(harness, program, expected, OUT / "cases" / f"{tokens}x{k_in}x{n_out}_{mode}", check=False)
            if not run["passed"]:
                print(f"error: {mode} {tokens}×{k_in}×{n_out} does not match the golden model", file=sys.stderr)
                return 1
            model_run = matmul_cycles(config, tokens, k_in, n_out, dense=mode == "dense")
            row["useful_macs"] = model_run.useful_macs
            row[mode] = {"cycles": run["cycles"], "model_cycles": model_run.cycles,
                         "model_error": (model_run.cycles - run["cycles"]) / run["cycles"],
                         "utilization": model_run.useful_macs / (config.multipliers * run["cycles"]),
                         "sim_cycles_per_second": run["cycles_per_second"], "bit_exact": True}
        row["pattern_vs_dense"] = row["dense"]["cycles"] / row["pattern"]["cycles"]
        rows.append(row)

    report = {"config": json.loads(config.to_json()), "machine": platform.platform(), "processor": platform.processor(),
              "torch": torch.__version__, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "shapes": rows, "targets": TARGETS}
    write_atomic(OUT / "matmul.json", json.dumps(report, indent=2) + "\n")
    table = markdown_table(rows)
    write_atomic(OUT / "matmul.md", f"# Pattern-sparse matmul engine: {config.multipliers} multipliers "
                                    f"({config.lanes} lanes × {config.pattern.kept_per_block})\n\n{table}\n")
    print("\n" + table)
    print(f"\nwrote {OUT / 'matmul.json'} and {OUT / 'matmul.md'}")
    return 0


def markdown_table(rows: list[dict]) -> str:
    lines = ["| model | shape (M×K×N) | mode | simulated cycles | model cycles | model error | MAC utilization | pattern vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        shape = f"{row['tokens']}×{row['in_features']}×{row['out_features']}"
        for mode in ("pattern", "dense"):
            r = row[mode]
            ratio = f"{row['pattern_vs_dense']:.3f}×" if mode == "pattern" else ""
            lines.append(f"| {row['model']} | {shape} | {mode} | {r['cycles']:,} | {r['model_cycles']:,} | "
                         f"{r['model_error']:+.2%} | {r['utilization']:.1%} | {ratio} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
