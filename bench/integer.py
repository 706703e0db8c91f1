"""Accuracy of the integer encoder on trained models: docs/results/integer.{md,json} and its plot.

For every trained artifact of the GLUE study's int8 rows (pattern + ADMM + SR-STE int8, with and without
attention-map pruning; ``make glue-study ROWS=pattern_admm_int8,pattern_admm_int8_attention`` makes
them), the float part is calibrated once with every rule, and each rule's integer encoder is evaluated on
the whole dev set against one pass of the artifact's float (fake-quantized) model (``sw.evaluate``): task
metric of both, label agreement, per-edge SQNR, time. The chosen rule's version-2 artifact is written to
``build/integer/<task>/<row>/``.

    python bench/integer.py [--work build/glue] [--tasks mrpc,cola,sst2] [--seed 0]
                            [--calibrations max,percentile,mse] [--calibration-tasks mrpc]

Resumable: what ``docs/results/integer.json`` already holds is kept unless ``--force``. The calibration
rules are compared on ``--calibration-tasks``; the other tasks use the rule that wins there (highest mean label agreement, then the smallest metric loss), so the choice is made once and reused.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.artifact import TOKENIZER, load_artifact  # noqa: E402
from core.atomic import write_atomic, write_between_markers  # noqa: E402
from core.encoder import IntegerEncoder  # noqa: E402
from sw import calibration, glue  # noqa: E402
from sw.artifact import integer_section, to_model, write_integer_artifact  # noqa: E402
from sw.evaluate import LAYER_EDGES, compare_encoders, dev_loader, load_tokenizer  # noqa: E402
from sw.export import calibration_loader  # noqa: E402

ROWS = {"pattern_admm_int8": "pattern + ADMM + SR-STE, int8",
        "pattern_admm_int8_attention": "pattern + ADMM + SR-STE, int8, attention pruned"}
DOC = Path("docs/results/integer.md")
JSON = Path("docs/results/integer.json")
FIGURE = Path("docs/results/figures/integer_sqnr.png")
MARKERS = ("<!-- integer:begin -->", "<!-- integer:end -->")


def evaluate_rules(source: Path, out: Path, task: str, data_dir: str, methods: list[str], write: str | None) -> dict[str, dict]:
    """Calibrate ``source`` once with every rule, evaluate each integer encoder against one float pass over
    the whole dev set; write the version-2 artifact of rule ``write`` into ``out``."""
    artifact = load_artifact(source, integer=False)
    training = artifact.manifest.get("training", {})
    tokenizer = load_tokenizer(artifact, None if (source / TOKENIZER).is_dir() else training.get("model"))
    model = to_model(artifact)
    scales = calibration.calibrate(model, calibration_loader(artifact, tokenizer, data_dir, task), 8, methods)
    float_tensors = {n: t for n, t in artifact.tensors.items() if not n.startswith("int.")}
    encoders = {}
    for method in methods:
        int_tensors, spec = integer_section(float_tensors, artifact.manifest, model, scales[method], method)
        encoders[method] = (IntegerEncoder.from_tensors({**float_tensors, **int_tensors}, spec), spec)
    spec_task = glue.get_task(task)
    loader = dev_loader(tokenizer, spec_task, data_dir, training.get("max_length", 128), 32)
    results = compare_encoders(model, encoders, loader, spec_task)
    if write and not (out / "manifest.json").is_file():
        manifest = {k: v for k, v in artifact.manifest.items() if k != "integer"}
        write_integer_artifact(out, float_tensors, manifest, model, scales[write], tokenizer, write)
    return results


def plot(results: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sw.analysis import save_png

    cells = [(task, row) for task in results for row in results[task]]
    fig, axes = plt.subplots(1, len(cells), figsize=(3.6 * len(cells) + 1.8, 3.6), sharey=True, squeeze=False)
    for ax, (task, row) in zip(axes[0], cells):
        sqnr = results[task][row]["sqnr_db"]
        layers = sorted({int(k.split(".")[0]) for k in sqnr if k[0].isdigit()})
        for edge in LAYER_EDGES:
            ax.plot(layers, [sqnr[f"{i}.{edge}"] for i in layers], marker="o", markersize=3, label=edge.replace("_", " "))
        ax.axhline(sqnr["logits"], color="black", linestyle="--", linewidth=1, label="logits")
        ax.set_title(f"{task}: {'attention pruned' if 'attention' in row else 'dense attention'}", fontsize=9)
        ax.set_xlabel("layer")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SQNR (dB), integer vs float")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.suptitle("Integer encoder against the float model, per layer boundary")
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    return save_png(fig, path)


def report(data: dict) -> str:
    out = ["Integer golden model against the float (fake-quantized) model of the same artifact, whole dev sets "
           f"(seed {data['seed']}, calibration `{data['chosen_calibration']}` chosen on {', '.join(data['calibration_tasks'])}).", "",
           "| task | row | metric | float | integer | Δ | label agreement | dev examples | integer model time (s) |",
           "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for task, rows in data["tasks"].items():
        for row, r in rows.items():
            out.append(f"| {task} | {ROWS[row]} | {r['metric']} | {r['float_metric']:.2f} | {r['int_metric']:.2f} | "
                       f"{r['int_metric'] - r['float_metric']:+.2f} | {100 * r['label_agreement']:.2f} % | {r['examples']} | {r['seconds_integer']:.0f} |")
    out += ["", "Calibration rules (per-edge activation scales), same artifacts:", "",
            "| task | row | rule | integer metric | Δ vs float | label agreement | logits SQNR (dB) |", "|---|---|---|---:|---:|---:|---:|"]
    for task, rows in data["calibration"].items():
        for row, methods in rows.items():
            for method, r in methods.items():
                out.append(f"| {task} | {ROWS[row]} | {method} | {r['int_metric']:.2f} | {r['int_metric'] - r['float_metric']:+.2f} | "
                           f"{100 * r['label_agreement']:.2f} % | {r['sqnr_db']['logits']:.1f} |")
    task, row = next(iter(data["tasks"])), "pattern_admm_int8_attention"
    if row in data["tasks"][task]:
        sqnr = data["tasks"][task][row]["sqnr_db"]
        layers = sorted({int(k.split(".")[0]) for k in sqnr if k[0].isdigit()})
        out += ["", f"SQNR per layer boundary (dB), {task}, {ROWS[row]} (embeddings {sqnr['embeddings']:.1f}, "
                    f"pooled {sqnr['pooled']:.1f}, logits {sqnr['logits']:.1f}):", "",
                "| edge | " + " | ".join(f"layer {i}" for i in layers) + " |", "|---|" + "---:|" * len(layers)]
        out += [f"| {edge} | " + " | ".join(f"{sqnr[f'{i}.{edge}']:.1f}" for i in layers) + " |" for edge in LAYER_EDGES]
    if data.get("integer_aware"):
        out += ["", "Integer-aware retraining (`sw.integer_aware`, one more SR-STE epoch from the trained artifact, lr 2e-5) "
                    "against a control epoch without the activation fake quantization; each row's integer encoder is "
                    "calibrated with its rule on its own weights:", "",
                "| task | row | run | float | integer | Δ | label agreement | logits SQNR (dB) |", "|---|---|---|---:|---:|---:|---:|---:|"]
        for task, rows in data["integer_aware"].items():
            for row, runs in rows.items():
                # the run the retraining started from: its own evaluation when given, else the table's
                base = runs.get("as trained") or data["tasks"].get(task, {}).get(row)
                for kind, r in ([("as trained", base)] if base else []) + sorted(i for i in runs.items() if i[0] != "as trained"):
                    out.append(f"| {task} | {ROWS[row]} | {kind} | {r['float_metric']:.2f} | {r['int_metric']:.2f} | "
                               f"{r['int_metric'] - r['float_metric']:+.2f} | {100 * r['label_agreement']:.2f} % | {r['sqnr_db']['logits']:.1f} |")
    missing = [f"{task} / {ROWS[row]}" for task, rows in data.get("missing", {}).items() for row in rows]
    if missing:
        out += ["", "Not measured (no trained artifact when this page was written): " + "; ".join(missing) + "."]
    out += ["", f"![SQNR per layer]({FIGURE.relative_to(DOC.parent)})"]
    return "\n".join(out)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", default="build/glue", help="the GLUE study's work folder")
    parser.add_argument("--out", default="build/integer", help="re-exported artifacts go here")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--tasks", default="mrpc,cola,sst2")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibrations", default="max,percentile,mse")
    parser.add_argument("--calibration-tasks", default="mrpc")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--force", action="store_true", help="measure again what integer.json already holds")
    parser.add_argument("--integer-aware", action="append", default=[], metavar="TASK:ROW:RUN:JSON",
                        help="add a `python -m sw.evaluate --json` result of a retrained artifact (sw.integer_aware); "
                             "RUN `as trained` is the artifact the retraining started from")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: add the --integer-aware results and rewrite the page from integer.json")
    args = parser.parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    tasks, methods, calibration_tasks = args.tasks.split(","), args.calibrations.split(","), args.calibration_tasks.split(",")
    data = json.loads(JSON.read_text()) if JSON.is_file() else {}
    for spec in args.integer_aware:
        task, row, run, path = spec.split(":", 3)
        if row not in ROWS:
            raise SystemExit(f"--integer-aware {spec}: unknown row {row!r}; known: {', '.join(ROWS)}")
        data.setdefault("integer_aware", {}).setdefault(task, {}).setdefault(row, {})[run] = json.loads(Path(path).read_text())
    if args.report_only:
        if not data.get("tasks"):
            raise SystemExit(f"--report-only: {JSON} holds no measurements to report")
        write_atomic(JSON, json.dumps(data, indent=1) + "\n")
        write_between_markers(DOC, *MARKERS, report(data), title="# The integer encoder on trained models")
        print(f"wrote {DOC} and {JSON} from the recorded measurements")
        return 0
    data.update(seed=args.seed, calibration_tasks=calibration_tasks, tasks=data.get("tasks", {}), calibration=data.get("calibration", {}))

    def source(task, row):
        path = Path(args.work) / task / f"seed{args.seed}" / row / "artifact"
        if not (path / "manifest.json").is_file():
            print(f"[{task} / {row}] skipped: no trained artifact at {path} (`make glue-study ROWS={row} TASKS={task}` makes it)")
            data.setdefault("missing", {}).setdefault(task, {})[row] = str(path)
            return None
        data.get("missing", {}).get(task, {}).pop(row, None)
        return path

    for task in calibration_tasks:
        for row in ROWS:
            done = data["calibration"].get(task, {}).get(row, {})
            if source(task, row) is None or (set(methods) <= set(done) and not args.force):
                continue
            print(f"[{task} / {row}] calibration rules {', '.join(methods)}", flush=True)
            data["calibration"].setdefault(task, {})[row] = evaluate_rules(source(task, row), Path(args.out) / task / row, task,
                                                                           args.data_dir, methods, None)
            write_atomic(JSON, json.dumps(data, indent=1) + "\n")
    scores = {m: [(r[m]["label_agreement"], r[m]["int_metric"] - r[m]["float_metric"]) for rows in data["calibration"].values()
                  for r in rows.values() if m in r] for m in methods}
    chosen = max(methods, key=lambda m: tuple(sum(v) / len(v) for v in zip(*scores[m])))
    data["chosen_calibration"] = chosen
    for task in tasks:
        for row in ROWS:
            if source(task, row) is None:
                continue
            if not args.force and data["tasks"].get(task, {}).get(row, {}).get("calibration") == chosen:
                continue
            print(f"[{task} / {row}] calibration {chosen}", flush=True)
            result = evaluate_rules(source(task, row), Path(args.out) / task / row, task, args.data_dir, [chosen], chosen)[chosen]
            data["tasks"].setdefault(task, {})[row] = result
            write_atomic(JSON, json.dumps(data, indent=1) + "\n")
    plot(data["tasks"], FIGURE)
    write_between_markers(DOC, *MARKERS, report(data), title="# The integer encoder on trained models")
    print(f"wrote {DOC}, {JSON}, {FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
