"""The whole flow, one command: a Hugging Face BERT-family checkpoint and a GLUE-layout task in; a
pattern-pruned int8 model, the accelerator's Verilog, its memory image and a bit-exact RTL run out.

    python -m flow --config configs/demo_sst2.json --out build/demo          # what `make demo` runs
    python -m flow --model CHECKPOINT --task sst2 --data-dir DATA --out build/flow [--set retrain_epochs=2]
    python -m flow --artifact build/flow/train/artifact --task sst2 --data-dir DATA --out build/flow2

Steps (each printed with its time):

1. **train** — the compression recipe (``sw.pipeline``: fine-tune, ADMM, hard pattern pruning, masked
   int8-aware retraining, attention-map pruning when configured) and the artifact with the integer
   encoder. ``--artifact`` starts from an existing artifact instead.
2. **evaluate** — the float model (fake-quantized, as trained) and the integer golden model on the whole
   dev set: task metric of both and the share of equal labels.
3. **hardware** — the smallest accelerator that runs the model for the RTL sentences
   (``firmware_gen.compiler.fitted_config``), its Verilog (``<out>/rtl/accelerator.v``) and a
   ``verilator --lint-only -Wall`` of it.
4. **firmware** — the memory image, command stream, C header and manifest (``<out>/image/``), compiled
   with every boundary tensor of every layer stored (``--trace``), so that each can be compared.
5. **RTL** — the first ``--sentences`` dev sentences, one at a time, on the accelerator top in Verilator
   (the long-run harness: a Verilog AXI memory and register host); every layer's nine stored boundary
   tensors (all but the FFN's pre-GELU rows, which never leave the linear unit), the pooled vector and the logits against the integer golden model (exact equality of whole tensors),
   and the whole memory against the command model.
6. **report** — ``<out>/report.json`` and a summary.

The RTL sentences are compiled for ``seq_len`` tokens: by default the longest of them rounded up to the
block size (the accelerator is generated for the model and the sequences it runs); ``--seq-len`` fixes it.
The exit status is 0 only when every RTL run is bit-exact.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.artifact import ArtifactError, load_artifact
from core.atomic import write_atomic
from firmware_gen.compiler import CompileError, compile_model, fitted_config
from hw.config import AcceleratorConfig
from sim.accelerator_rtl import build_accelerator_harness
from sim.encoder_run import run_sequence
from sim.toolchain import LINT_WAIVERS, configure_verilator
from sw import glue
from sw.artifact import to_model
from sw.evaluate import dev_batch, evaluate_artifact, load_tokenizer
from sw.pipeline import TrainConfig, run as train
from sw.train import apply_override, resolve_model

STEPS = ("train", "evaluate", "hardware", "firmware", "RTL", "report")


class Progress:
    """Numbered steps with their wall time."""

    def __init__(self):
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}
        self._current: tuple[str, float] | None = None

    def step(self, name: str, text: str) -> None:
        self.done()
        print(f"\n== [{STEPS.index(name) + 1}/{len(STEPS)}] {name}: {text}", flush=True)
        self._current = (name, time.perf_counter())

    def done(self) -> None:
        if self._current:
            name, start = self._current
            self.seconds[name] = time.perf_counter() - start
            print(f"   ({self.seconds[name]:.0f} s)", flush=True)
            self._current = None

    @property
    def total(self) -> float:
        return time.perf_counter() - self.started


def training_config(args) -> TrainConfig:
    """The run's training config: ``--config`` (or the defaults), then ``--model``/``--task``/``--data-dir``,
    then every ``--set``; the output goes under ``<out>/train``."""
    data = {}
    if args.config:
        try:
            data = json.loads(Path(args.config).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise SystemExit(f"--config {args.config}: cannot read it as JSON ({error})") from None
    for key in ("model", "task", "data_dir"):
        if getattr(args, key):
            data[key] = getattr(args, key)
    for assignment in args.set:
        apply_override(data, assignment)
    data["output_dir"] = str(Path(args.out) / "train")
    if not data.get("model"):
        raise SystemExit("no model: give --model (a checkpoint folder or package:NAME), --config, or --artifact")
    try:
        config = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"training config: {error}") from None
    config.model = resolve_model(config.model)
    return config


def rtl_batch(artifact, data_dir, task: str, count: int, max_length: int, seq_len: int | None, block: int) -> dict:
    """The first ``count`` dev examples, tokenized as in training (at most ``max_length`` tokens) and padded
    to ``seq_len`` (default: the longest of them, rounded up to ``block``)."""
    batch = dev_batch(artifact, data_dir, task, count, max_length)
    longest = int(batch["attention_mask"].sum(1).max())
    if seq_len is None:
        seq_len = min(-(-longest // block) * block, max_length) if max_length >= block else longest
    elif seq_len < longest:
        raise SystemExit(f"--seq-len {seq_len}: the first {count} dev sentences need {longest} tokens (short by {longest - seq_len})")
    if seq_len <= max_length:
        return {name: tensor[:, :seq_len] if tensor.dim() == 2 else tensor for name, tensor in batch.items()}
    return dev_batch(artifact, data_dir, task, count, seq_len)


def lint(verilog: Path) -> tuple[bool, str]:
    result = subprocess.run(["verilator", "--lint-only", "-Wall", str(LINT_WAIVERS), str(verilog)], capture_output=True, text=True,
                            env=configure_verilator(dict(os.environ)))
    return result.returncode == 0, result.stderr


def weight_sparsity(artifact) -> dict:
    """Pruned share of the compressed linears' weights (from their masks), and of the whole encoder's
    linear weights (pooler and classifier stay dense)."""
    masks = artifact.masks()
    pruned = sum(int((m == 0).sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    encoder = artifact.encoder()
    all_linear = sum(w.numel() for w in encoder.weights.values())
    return {"compressed_linears": len(masks), "pruned_share": pruned / total,
            "pruned_share_of_all_linears": pruned / all_linear, "weights_compressed": total, "weights_all_linears": all_linear}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flow", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="training config JSON (configs/*.json); the flags below override it")
    parser.add_argument("--model", help="checkpoint folder or package:NAME")
    parser.add_argument("--task", help="GLUE task name (cola, sst2, mrpc, rte, stsb, mnli, …)")
    parser.add_argument("--data-dir", help="folder in the GLUE TSV layout (<TASK>/train.tsv, dev.tsv)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a training config entry")
    parser.add_argument("--artifact", type=Path, help="start from this artifact (skips training)")
    parser.add_argument("--out", type=Path, default=Path("build/flow"), help="output folder (default build/flow)")
    parser.add_argument("--sentences", type=int, default=4, help="dev sentences run on the RTL (default 4)")
    parser.add_argument("--seq-len", type=int, help="tokens the accelerator is compiled for (default: the longest RTL sentence)")
    parser.add_argument("--no-trace", action="store_true", help="store only every layer's output (fewer cycles, fewer checks)")
    args = parser.parse_args(argv)
    if args.sentences < 1:
        raise SystemExit(f"--sentences {args.sentences}: run at least one sentence on the RTL")
    progress = Progress()
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    # 1. train
    if args.artifact:
        progress.step("train", f"skipped, starting from {args.artifact}")
        try:
            artifact = load_artifact(args.artifact)
        except ArtifactError as error:
            raise SystemExit(f"--artifact: {error}") from None
        if not args.data_dir:
            raise SystemExit("--artifact needs --data-dir (the task's GLUE folder) for the dev set")
        task, data_dir = args.task or artifact.manifest["task"], args.data_dir
        max_length = artifact.manifest.get("training", {}).get("max_length", 128)
        training = {}
    else:
        config = training_config(args)
        progress.step("train", f"{config.model} on {config.task} ({config.data_dir}): fine-tune {config.finetune_epochs}, "
                               f"ADMM {config.admm_epochs}, retrain {config.retrain_epochs} epochs")
        result = train(config)
        write_atomic(out / "train" / "summary.json", json.dumps(result.summary(), indent=1))
        artifact = load_artifact(result.artifact)
        task, data_dir, max_length = config.task, config.data_dir, config.max_length
        training = {"metrics": result.metrics, "failed": result.failed, "baseline": result.baseline}
        if result.failed:
            print(f"   warning: {result.failed} (majority-class baseline {json.dumps(result.baseline)})", flush=True)

    # the RTL's sentences, and so the sequence length the accelerator is built for
    block = AcceleratorConfig().attention.engine.pattern.block_size
    batch = rtl_batch(artifact, data_dir, task, args.sentences, max_length, args.seq_len, block)
    seq_len = batch["input_ids"].shape[1]

    # 2. evaluate
    progress.step("evaluate", f"float and integer models on the {task} dev set")
    evaluation = evaluate_artifact(artifact, load_tokenizer(artifact), data_dir, task, max_length=max_length)
    write_atomic(out / "evaluation.json", json.dumps(evaluation, indent=1) + "\n")
    metric = evaluation["metric"]
    print(f"   {evaluation['examples']} examples, {metric}: float {evaluation['float_metric']:.2f}, integer "
          f"{evaluation['int_metric']:.2f}; equal labels {100 * evaluation['label_agreement']:.2f} %", flush=True)

    # 3. hardware
    hardware = fitted_config(artifact, seq_len)
    progress.step("hardware", f"the accelerator for {seq_len} tokens: Verilog, lint, Verilator build")
    try:
        compiled = compile_model(artifact, hardware, seq_len, trace=not args.no_trace)
    except CompileError as error:
        raise SystemExit(f"the model does not fit the accelerator: {error}") from None
    harness = build_accelerator_harness(hardware, out / "rtl", memory_words=1 << (compiled.image_bytes // 4).bit_length())
    verilog = out / "rtl" / "accelerator.v"
    clean, messages = lint(verilog)
    write_atomic(out / "rtl" / "accelerator.json", hardware.to_json())
    print(f"   {verilog}: {hardware.engine.multipliers} + {hardware.attention.engine.multipliers} multipliers, scratch "
          f"{hardware.scratch_bytes} bytes, wide {hardware.wide_words} words; verilator -Wall: {'clean' if clean else 'WARNINGS'}; "
          f"Verilator build {harness.build_seconds:.0f} s", flush=True)
    if not clean:
        print(messages, file=sys.stderr)

    # 4. firmware
    progress.step("firmware", "memory image, command stream, C header, manifest")
    compiled.write(out / "image")
    print(f"   {out / 'image'}: {compiled.image_bytes:,} bytes ({compiled.constant_bytes:,} constant), "
          f"{len(compiled.commands)} commands, {len(compiled.outputs)} stored tensors", flush=True)

    # 5. RTL
    progress.step("RTL", f"{args.sentences} dev sentences on the accelerator top, every stored tensor against the golden model")
    encoder = artifact.encoder()
    model = to_model(artifact).eval()
    with torch.no_grad():
        float_labels = model(**{k: v for k, v in batch.items() if k != "labels"}).logits.argmax(-1).tolist()
    examples = glue.load_glue_split(data_dir, task, "dev", limit=args.sentences)
    runs = []
    for index in tqdm(range(args.sentences), desc="RTL", unit="sentence", dynamic_ncols=True):
        ids, mask, types = (batch[n][index:index + 1] for n in ("input_ids", "attention_mask", "token_type_ids"))
        sequence = run_sequence(harness, compiled, encoder, ids, mask, types, out / "rtl" / "cases" / str(index))
        entry = {"text": examples[index].text_a if examples[index].text_b is None else [examples[index].text_a, examples[index].text_b],
                 "truth": examples[index].label, "float_label": float_labels[index], **sequence.to_dict()}
        runs.append(entry)
        tqdm.write(f"   sentence {index}: {entry['valid_tokens']} tokens, {entry['cycles']:,} cycles, "
                   f"{'bit-exact' if entry['bit_exact'] else 'MISMATCH ' + str({k: v for k, v in entry['mismatches'].items() if v})}, "
                   f"label {entry['label']} (golden {entry['golden_label']}, float {entry['float_label']}, truth {entry['truth']})")

    # 6. report
    progress.step("report", f"{out / 'report.json'}")
    progress.done()
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    report = {
        "bit_exact": all(r["bit_exact"] for r in runs),
        "layers": compiled.layers, "seq_len": seq_len, "sentences": len(runs),
        "cycles": median("cycles"), "mac_utilization": median("utilization_one_array"),
        "mac_utilization_both_arrays": median("utilization_both_arrays"),
        "axi_read_bytes": median("read_bytes"), "axi_read_over_image": median("read_bytes") / compiled.constant_bytes,
        "task": task, "metric": metric, "dev_examples": evaluation["examples"],
        "float_metric": evaluation["float_metric"], "int_metric": evaluation["int_metric"],
        "label_agreement": evaluation["label_agreement"],
        "dense_metric": training.get("metrics", {}).get("finetune", {}).get(metric),
        "rtl_labels_equal_golden": all(r["label"] == r["golden_label"] for r in runs),
        "sparsity": weight_sparsity(artifact),
        "attention_pruning": encoder.attention_pool is not None,
        "image_bytes": compiled.image_bytes, "constant_bytes": compiled.constant_bytes, "commands": len(compiled.commands),
        "hardware": json.loads(hardware.to_json()), "verilog": str(verilog), "lint_clean": clean,
        "artifact": str(artifact.path), "training": training, "runs": runs,
        "seconds": {**progress.seconds, "total": progress.total},
    }
    write_atomic(out / "report.json", json.dumps(report, indent=1) + "\n")
    print_summary(report)
    return 0 if report["bit_exact"] and report["lint_clean"] else 1


def print_summary(r: dict) -> None:
    s = r["sparsity"]
    dense = f"dense {r['dense_metric']:.2f} → " if r["dense_metric"] is not None else ""
    lines = [
        "",
        f"{r['task']} dev ({r['dev_examples']} examples), {r['metric']}: {dense}pattern-pruned int8 float {r['float_metric']:.2f} → "
        f"integer {r['int_metric']:.2f}; integer and float labels equal on {100 * r['label_agreement']:.2f} %",
        f"weights: {100 * s['pruned_share']:.1f} % pruned in {s['compressed_linears']} linears "
        f"({100 * s['pruned_share_of_all_linears']:.1f} % of all linear weights); attention-map pruning "
        f"{'on' if r['attention_pruning'] else 'off'}",
        f"RTL: {r['sentences']} sentences × {r['layers']} layers at {r['seq_len']} tokens, median {r['cycles']:,.0f} cycles, "
        f"MAC utilization {100 * r['mac_utilization']:.1f} %, AXI read {r['axi_read_over_image']:.3f}× the model image",
        f"bit-exact at every stored boundary: {'yes' if r['bit_exact'] else 'NO'}; RTL labels = golden labels: "
        f"{'yes' if r['rtl_labels_equal_golden'] else 'NO'}; total {r['seconds']['total']:.0f} s",
        "",
        "FLOW PASSED" if r["bit_exact"] and r["lint_clean"] else "FLOW FAILED",
    ]
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    sys.exit(main())
