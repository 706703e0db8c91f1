"""The whole encoder on the accelerator: a trained all-MiniLM-L6-v2 (pattern + ADMM + int8 + attention-map
pruning) compiled by firmware_gen and run on the RTL top (Verilator, the long-run harness) for real GLUE
dev sentences at 128 tokens.

Checks every layer's output, the pooled vector, the logits and the label against the integer encoder
(exact equality), and the whole memory against the command model; measures cycles, MAC utilization over
the whole run (every cycle counts: non-matmul work, weight fetch, the host's polling), AXI bytes read
against the model image, and wall time. Writes ``build/bench/encoder.json`` and the ``encoder`` section of
``docs/results/performance.md`` / key ``encoder`` of ``performance.json``.

    python bench/encoder.py [--artifact DIR] [--task mrpc] [--sentences 2] [--seq-len 128]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.artifact import load_artifact  # noqa: E402
from core.atomic import write_atomic, write_between_markers  # noqa: E402
from firmware_gen.compiler import compile_model, fitted_config  # noqa: E402
from hw.config import AcceleratorConfig, AttentionConfig  # noqa: E402
from sim.accelerator_rtl import build_accelerator_harness  # noqa: E402
from sim.encoder_run import run_sequence  # noqa: E402
from sw.evaluate import dev_batch  # noqa: E402

DEFAULT_ARTIFACT = ROOT / "build" / "integer" / "mrpc" / "pattern_admm_int8_attention"
DOC = ROOT / "docs" / "results" / "performance.md"
OUT = ROOT / "build" / "bench" / "encoder.json"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT)
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--data-dir", type=Path, default=ROOT / ".." / "shared" / "data" / "glue")
    parser.add_argument("--sentences", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    artifact = load_artifact(args.artifact)
    encoder = artifact.encoder()
    spec = encoder.spec
    ffn = encoder.weights["0.ffn_input"].shape[0]
    # the attention unit as built for the attention benchmarks (head dims to 64), memories fitted to the model
    config = fitted_config(artifact, args.seq_len, AcceleratorConfig(attention=AttentionConfig(max_head_dim=max(64, spec["head_dim"]))))
    compiled = compile_model(artifact, config, args.seq_len)
    print(f"model image {compiled.image_bytes} bytes ({compiled.constant_bytes} constant), {len(compiled.commands)} commands; "
          f"scratch {config.scratch_bytes} bytes, wide {config.wide_words} words", flush=True)
    started = time.perf_counter()
    harness = build_accelerator_harness(config, ROOT / "build" / "bench" / "encoder_rtl", memory_words=1 << (compiled.image_bytes // 4).bit_length())
    print(f"built the harness in {time.perf_counter() - started:.0f} s (cached builds are reused)", flush=True)
    batch = dev_batch(artifact, args.data_dir, args.task, args.sentences, args.seq_len)
    runs = []
    for index in range(batch["input_ids"].shape[0]):
        ids, mask, types = (batch[n][index:index + 1] for n in ("input_ids", "attention_mask", "token_type_ids"))
        run = run_sequence(harness, compiled, encoder, ids, mask, types, ROOT / "build" / "bench" / "encoder_cases" / str(index)).to_dict()
        print(json.dumps(run), flush=True)
        runs.append(run)
    summary = {
        "artifact": str(args.artifact.relative_to(ROOT) if args.artifact.is_relative_to(ROOT) else args.artifact),
        "task": args.task, "seq_len": args.seq_len, "layers": len(spec["layers"]), "hidden": spec["hidden"], "ffn": ffn,
        "heads": spec["heads"], "config": json.loads(config.to_json()), "image_bytes": compiled.image_bytes,
        "constant_bytes": compiled.constant_bytes, "commands": len(compiled.commands), "build_seconds": harness.build_seconds,
        "runs": runs,
        "median": {key: statistics.median(r[key] for r in runs) for key in
                   ("cycles", "read_bytes", "wall_seconds", "utilization_one_array", "utilization_both_arrays")},
        "bit_exact": all(r["bit_exact"] for r in runs), "labels_equal": all(r["label"] == r["golden_label"] for r in runs),
    }
    summary["read_over_image"] = summary["median"]["read_bytes"] / compiled.constant_bytes
    OUT.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(OUT, json.dumps(summary, indent=2) + "\n")
    write_between_markers(DOC, "<!-- bench:encoder -->", "<!-- /bench:encoder -->", section(summary), "# Performance")
    path = DOC.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results["encoder"] = summary
    write_atomic(path, json.dumps(results, indent=2) + "\n")
    print(f"wrote {OUT}, {DOC} and {path}")
    return 0 if summary["bit_exact"] and summary["labels_equal"] else 1


def section(s: dict) -> str:
    m = s["median"]
    lines = [
        f"`python bench/encoder.py` — {s['layers']} layers of `{s['artifact']}` ({s['task']}), {s['seq_len']} tokens, "
        f"{len(s['runs'])} dev sentences, on the accelerator top in Verilator (the long-run harness: a Verilog AXI memory and "
        "register host; the embeddings' int8 output is the host's).",
        "",
        "| sentence | valid tokens | cycles | AXI bytes read | MAC utilization (one array) | (both arrays) | bit-exact | label = golden | wall s |",
        "|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for i, r in enumerate(s["runs"]):
        lines.append(f"| {i} | {r['valid_tokens']} | {r['cycles']:,} | {r['read_bytes']:,} | {100 * r['utilization_one_array']:.1f} % | "
                     f"{100 * r['utilization_both_arrays']:.1f} % | {'yes' if r['bit_exact'] else 'NO'} | "
                     f"{'yes' if r['label'] == r['golden_label'] else 'NO'} | {r['wall_seconds']:.0f} |")
    lines += [
        "",
        f"- Median cycles {m['cycles']:,.0f}; AXI bytes read {m['read_bytes']:,.0f} = {s['read_over_image']:.3f}× the model's constant "
        f"image ({s['constant_bytes']:,} bytes; target ≤ 1.1×); simulation wall time {m['wall_seconds']:.0f} s per sentence "
        f"(build {s['build_seconds']:.0f} s, once).",
        f"- MAC utilization {100 * m['utilization_one_array']:.1f} % counting one 64-multiplier array (as if the linears and the "
        f"attention shared it), {100 * m['utilization_both_arrays']:.1f} % over the top's two arrays (target ≥ 90 %).",
    ]
    first = s["runs"][0]
    if first["op_cycles"]:
        total = first["cycles"]
        lines += ["", "Where the cycles of sentence 0 go (the units run one at a time; the rest is the sequencer fetching and "
                      "decoding commands and the host's register polling):", "",
                  "| op | cycles | share |", "|---|---:|---:|"]
        for op, cycles in sorted(first["op_cycles"].items(), key=lambda item: -item[1]):
            lines.append(f"| {op} | {cycles:,} | {100 * cycles / total:.1f} % |")
        rest = total - sum(first["op_cycles"].values())
        lines.append(f"| sequencer and host | {rest:,} | {100 * rest / total:.1f} % |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
