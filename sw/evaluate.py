"""Evaluate the integer golden model of an artifact on a GLUE dev set, against the float model.

    python -m sw.evaluate --artifact DIR --task mrpc --data-dir ../shared/data/glue [--limit N] [--json out.json]

The float model is the artifact's own Hugging Face model (int8 fake-quantized weights, masks and
attention-map pruning as trained: :func:`sw.artifact.to_model`); the integer model is
:class:`core.encoder.IntegerEncoder` on the same token ids. Prints the task metric of both, the share of
examples whose predicted label agrees, and per-edge SQNR (the integer tensor dequantized with its edge's
scale against the float tensor, over real tokens) — so a user sees what an integer-only deployment of
their model costs.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from core.artifact import TOKENIZER, Artifact, ArtifactError, load_artifact
from core.atomic import write_atomic
from core.encoder import TANH_SCALE, EncoderOutput
from sw import glue
from sw.artifact import to_model
from sw.calibration import ActivationRecorder

#: Integer trace fields compared per layer, by edge name suffix.
LAYER_EDGES = ("query", "key", "value", "context", "attention_output", "attention_norm", "ffn_hidden", "gelu",
               "ffn_output", "output_norm")


def load_tokenizer(artifact: Artifact, tokenizer: str | None = None):
    """The artifact's own tokenizer (``<artifact>/tokenizer``), or ``tokenizer`` (a folder or a
    ``package:`` model spec) when given."""
    from transformers import AutoTokenizer

    from sw.train import resolve_model

    if tokenizer is None:
        folder = artifact.path / TOKENIZER
        if not folder.is_dir():
            raise ArtifactError(f"{artifact.path}: no {TOKENIZER}/ folder; pass --tokenizer (a checkpoint folder or package:NAME)")
        return AutoTokenizer.from_pretrained(folder)
    return AutoTokenizer.from_pretrained(resolve_model(tokenizer))



def dev_batch(artifact: Artifact, data_dir, task: str, count: int, length: int) -> dict[str, torch.Tensor]:
    """The first ``count`` dev examples of ``task``, tokenized by the artifact's tokenizer and padded to
    ``length`` tokens (an accelerator's compiled sequence length)."""
    tokenizer = load_tokenizer(artifact)
    dataset = glue.GlueDataset(glue.load_glue_split(data_dir, task, "dev", limit=count), tokenizer, length, False)
    return glue.collate([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id, length)

def dev_loader(tokenizer, task: glue.TaskSpec, data_dir, max_length: int, batch_size: int, limit: int | None = None,
               split: str | None = None):
    examples = glue.load_glue_split(Path(data_dir), task, split or task.dev_splits[0], limit=limit)
    dataset = glue.GlueDataset(examples, tokenizer, max_length, task.is_regression)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       collate_fn=lambda batch: glue.collate(batch, tokenizer.pad_token_id))


class SQNR:
    """Signal-to-quantization-noise ratio per edge, accumulated over batches: 10·log10(Σx² / Σ(x − x̂)²)."""

    def __init__(self):
        self.signal, self.noise = {}, {}

    def add(self, edge: str, reference: torch.Tensor, approximation: torch.Tensor) -> None:
        r, a = reference.detach().to(torch.float64), approximation.detach().to(torch.float64)
        self.signal[edge] = self.signal.get(edge, 0.0) + float((r * r).sum())
        self.noise[edge] = self.noise.get(edge, 0.0) + float(((r - a) ** 2).sum())

    def db(self) -> dict[str, float]:
        return {e: (10 * math.log10(self.signal[e] / self.noise[e]) if self.noise[e] > 0 else math.inf) for e in self.signal}


def _compare_edges(sqnr: SQNR, out: EncoderOutput, floats: dict[str, torch.Tensor], scales: dict[str, float],
                   zero_points: dict[str, int], real: torch.Tensor, float_logits: torch.Tensor, logit_scale: float) -> None:
    sqnr.add("embeddings", floats["embeddings"][real], out.embeddings[real] * scales["embeddings"])
    for i, layer in enumerate(out.layers):
        for edge in LAYER_EDGES:
            name = f"{i}.{edge}"
            sqnr.add(name, floats[name][real], (getattr(layer, edge)[real] - zero_points.get(name, 0)) * scales[name])
    sqnr.add("pooled", torch.tanh(floats["pooler"]), out.pooled * TANH_SCALE)
    sqnr.add("logits", float_logits, out.logits * logit_scale)


@torch.no_grad()
def evaluate_artifact(artifact: Artifact, tokenizer, data_dir, task: str | None = None, limit: int | None = None,
                      batch_size: int = 32, max_length: int | None = None, split: str | None = None,
                      progress: bool = True) -> dict:
    """Float and integer metrics, label agreement, per-edge SQNR and timing of one artifact on a dev set."""
    task = glue.get_task(task or artifact.manifest["task"])
    max_length = max_length or artifact.manifest.get("training", {}).get("max_length", 128)
    loader = dev_loader(tokenizer, task, data_dir, max_length, batch_size, limit, split)
    return compare_encoders(to_model(artifact), {"artifact": (artifact.encoder(), artifact.manifest["integer"])}, loader, task,
                            progress)["artifact"]


@torch.no_grad()
def compare_encoders(model, encoders: dict, loader, task: glue.TaskSpec, progress: bool = True) -> dict[str, dict]:
    """Run the float ``model`` once over ``loader`` and every integer encoder (``name → (IntegerEncoder,
    manifest integer section)``) on the same batches; one result per encoder (see :func:`evaluate_artifact`)."""
    recorder = ActivationRecorder(model, 1, keep_last=True, statistics=False)
    state = {name: {"sqnr": SQNR(), "predictions": [], "seconds": 0.0} for name in encoders}
    float_predictions, labels, seconds_float = [], [], 0.0
    with recorder:
        for batch in tqdm(loader, desc=f"{task.name} dev (float + {len(encoders)} integer)", unit="batch", disable=not progress,
                          dynamic_ncols=True):
            start = time.perf_counter()
            float_logits = recorder.forward(batch).logits.to(torch.float64)
            seconds_float += time.perf_counter() - start
            float_predictions.append(float_logits.squeeze(-1) if task.is_regression else float_logits.argmax(-1))
            labels.append(batch["labels"])
            for name, (encoder, spec) in encoders.items():
                start = time.perf_counter()
                out = encoder(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"), trace=True)
                state[name]["seconds"] += time.perf_counter() - start
                _compare_edges(state[name]["sqnr"], out, recorder.last, spec["scales"], spec.get("zero_points", {}),
                               batch["attention_mask"].bool(), float_logits, spec["logit_scale"])
                state[name]["predictions"].append(out.logits.squeeze(-1) * spec["logit_scale"] if task.is_regression else out.logits.argmax(-1))
    float_predictions, labels = torch.cat(float_predictions), torch.cat(labels)
    metric = glue.primary_metric(task)
    float_metrics = glue.compute_metrics(task, float_predictions, labels)
    results = {}
    for name, (_, spec) in encoders.items():
        int_predictions = torch.cat(state[name]["predictions"])
        if task.is_regression:
            agreement = float(torch.corrcoef(torch.stack([float_predictions, int_predictions]))[0, 1])
        else:
            agreement = float((float_predictions == int_predictions).double().mean())
        int_metrics = glue.compute_metrics(task, int_predictions, labels)
        results[name] = {
            "task": task.name, "examples": len(labels), "metric": metric,
            "float_metric": float_metrics[metric], "int_metric": int_metrics[metric],
            "float_metrics": float_metrics, "int_metrics": int_metrics,
            "label_agreement": agreement, "agreement_kind": "correlation" if task.is_regression else "share of equal labels",
            "sqnr_db": state[name]["sqnr"].db(), "seconds_integer": state[name]["seconds"], "seconds_float": seconds_float,
            "attention_pruning": bool(spec.get("attention_pruning")), "calibration": spec.get("calibration", ""),
        }
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.evaluate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, type=Path, help="artifact folder (format 2)")
    parser.add_argument("--task", help="GLUE task (default: the artifact's)")
    parser.add_argument("--data-dir", default="../shared/data/glue", help="GLUE folder in the standard TSV layout")
    parser.add_argument("--split", help="dev split file name without .tsv (default: the task's first dev split)")
    parser.add_argument("--tokenizer", help="tokenizer folder or package:NAME (default: the artifact's tokenizer/)")
    parser.add_argument("--limit", type=int, help="first N dev examples")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, help="default: the training config's")
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--json", type=Path, help="write the result here as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        artifact = load_artifact(args.artifact)
        tokenizer = load_tokenizer(artifact, args.tokenizer)
        result = evaluate_artifact(artifact, tokenizer, args.data_dir, args.task, args.limit, args.batch_size, args.max_length, args.split)
    except (ArtifactError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{result['task']} dev, {result['examples']} examples, metric {result['metric']}:")
    print(f"  float model (fake-quantized) {result['float_metric']:.2f}")
    print(f"  integer golden model         {result['int_metric']:.2f}  (Δ {result['int_metric'] - result['float_metric']:+.2f})")
    print(f"  label agreement              {100 * result['label_agreement']:.2f} %" if result["agreement_kind"] != "correlation"
          else f"  prediction correlation       {result['label_agreement']:.4f}")
    worst = sorted(result["sqnr_db"].items(), key=lambda kv: kv[1])[:3]
    print(f"  SQNR: logits {result['sqnr_db']['logits']:.1f} dB; lowest edges " + ", ".join(f"{e} {v:.1f} dB" for e, v in worst))
    print(f"  time: integer {result['seconds_integer']:.1f} s, float {result['seconds_float']:.1f} s")
    if args.json:
        write_atomic(args.json, json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
