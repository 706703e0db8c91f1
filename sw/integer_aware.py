"""Integer-aware retraining: the float model trains with every tensor edge of the integer encoder
fake-quantized to int8 at its calibrated scale (straight-through), so it learns to live with the
activation grid the integer encoder runs on.

    python -m sw.integer_aware --artifact DIR --out NEW_DIR --task mrpc --data-dir ../shared/data/glue \\
        [--epochs 1] [--learning-rate 2e-5] [--calibration max] [--control]

Starts from a trained artifact (its masks stay fixed: SR-STE retraining with int8 fake-quantized weights,
as in the recipe's last phase), calibrates the edge scales once, trains ``--epochs`` with
:class:`FakeQuantizedEdges` on, and writes a version-2 artifact whose integer encoder uses those same
scales. ``--control`` trains the same epochs without the activation fake quantization, so what the
integer-aware part buys is measured apart from the extra training.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from core import golden
from core.encoder import gelu_grid, wide_edges
from core.artifact import ArtifactError, load_artifact
from sw import calibration
from sw.artifact import to_model, trained_tensors, write_integer_artifact
from sw.calibration import edge_points
from sw.evaluate import load_tokenizer
from sw.masking import round_ste


def fake_quantize(x: torch.Tensor, scale: float, zero_point: int = 0) -> torch.Tensor:
    """``scale · (clamp(round(x / scale) + z, −128, 127) − z)`` with a straight-through rounding gradient
    (zero outside the clamp): the int8 grid of one edge."""
    return (round_ste(x / scale) + zero_point).clamp(golden.INT8_MIN, golden.INT8_MAX).sub(zero_point) * scale


class FakeQuantizedEdges:
    """Context manager: forward hooks fake-quantize every int8 edge of :func:`sw.calibration.edge_points`
    (outputs by a forward hook, inputs by a pre-hook) on the integer encoder's grid for the given
    calibrated scales (GELU outputs on their asymmetric grid, :func:`core.encoder.gelu_grid`). The wide edges (the branch ends
    that the integer encoder keeps at 24 bits, :func:`core.encoder.wide_edges`) stay float."""

    def __init__(self, model, scales: dict[str, float]):
        points = edge_points(model)
        wide = set(wide_edges(len(calibration.bert_parts(model)[1])))
        self.points = {edge: point for edge, point in points.items() if edge not in wide}
        missing = set(self.points) - set(scales)
        if missing:
            raise ValueError(f"no scale for edges {sorted(missing)[:5]}")
        self.scales, self._handles = scales, []

    def __enter__(self):
        for edge, (module, where) in self.points.items():
            scale, zero = gelu_grid(self.scales[edge]) if edge.endswith(".gelu") else (self.scales[edge], 0)  # the encoder's grids
            if where == "output":
                hook = module.register_forward_hook(lambda m, inputs, output, s=scale, z=zero: fake_quantize(output, s, z))
            else:
                hook = module.register_forward_pre_hook(lambda m, args, s=scale, z=zero: (fake_quantize(args[0], s, z), *args[1:]))
            self._handles.append(hook)
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def retrain_integer_aware(source, out, data_dir, task: str | None = None, epochs: float = 1.0, learning_rate: float = 2e-5,
                          method: str = calibration.DEFAULT_METHOD, batches: int = 8, batch_size: int = 32, tokenizer: str | None = None,
                          seed: int = 0, control: bool = False) -> dict:
    """Continue training a trained artifact with (or, ``control``, without) fake-quantized edges; write
    the version-2 artifact into ``out``. Returns the metrics before and after, on the dev set."""
    from sw.pipeline import TrainConfig, evaluate, load_task_data, seed_everything, train_phase

    source, out = Path(source), Path(out)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    artifact = load_artifact(source, integer=False)
    training = dict(artifact.manifest.get("training", {}))
    tok = load_tokenizer(artifact, tokenizer if tokenizer or (source / "tokenizer").is_dir() else training.get("model"))
    config = TrainConfig.from_dict({**training, "task": task or artifact.manifest["task"], "data_dir": str(data_dir),
                                    "seed": seed, "batch_size": batch_size, "learning_rate": learning_rate})
    seed_everything(seed)
    data = load_task_data(config, tok)
    model = to_model(artifact, masked=True, decay=config.compression.srste_decay, bits=8)
    scales = calibration.calibrate(model, data.train, batches, (method,))[method]
    before = evaluate(model, data)
    if control:
        log = train_phase(model, data, config, epochs, "retrain (control)")
    else:
        with FakeQuantizedEdges(model, scales):
            log = train_phase(model, data, config, epochs, "retrain (integer-aware)")
    after = evaluate(model, data)
    model.eval()
    kept = ("pool", "pattern_ids")  # the masks are fixed: pools and pattern ids stay the source's
    tensors = {n: t for n, t in artifact.tensors.items() if n.startswith("attention.") or n.rsplit(".", 1)[-1] in kept}
    tensors.update(trained_tensors(model, list(artifact.layers), 8))
    manifest = {k: v for k, v in artifact.manifest.items() if k != "integer"}
    manifest["metrics"] = {**manifest.get("metrics", {}), "integer_aware" if not control else "control": after}
    manifest["integer_aware"] = {"epochs": epochs, "learning_rate": learning_rate, "calibration": method, "control": control,
                                 "seconds": log.seconds, "before": before, "after": after}
    write_integer_artifact(out, tensors, manifest, model, scales, tok, method)
    return {"before": before, "after": after, "seconds": log.seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.integer_aware", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, type=Path)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--task")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--calibration", default=calibration.DEFAULT_METHOD, choices=calibration.METHODS)
    parser.add_argument("--tokenizer")
    parser.add_argument("--control", action="store_true", help="train without the activation fake quantization")
    args = parser.parse_args(argv)
    try:
        result = retrain_integer_aware(args.artifact, args.out, args.data_dir, args.task, args.epochs, args.learning_rate,
                                       args.calibration, tokenizer=args.tokenizer, control=args.control)
    except (ArtifactError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
