"""Write an artifact's integer encoder (format 2) from its float part, calibrating on a GLUE task.

    python -m sw.export --artifact OLD_DIR --out NEW_DIR --task mrpc --data-dir ../shared/data/glue \\
        [--calibration max|percentile|mse] [--batches 8] [--tokenizer FOLDER|package:NAME]

Reads a version-1 or version-2 artifact's float part (``load_artifact(..., integer=False)``), rebuilds its
float model, calibrates the scale of every tensor edge on training batches, and writes a complete
version-2 artifact into ``--out`` (a new folder; the source is never modified). This is the re-export
route the artifact reader names when it refuses a version-1 artifact, and the way to try another
calibration rule on a trained model without retraining it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from core.artifact import TOKENIZER, ArtifactError, load_artifact
from sw import calibration, glue
from sw.artifact import to_model, write_integer_artifact
from sw.evaluate import load_tokenizer


def calibration_loader(artifact, tokenizer, data_dir, task: str | None = None, batch_size: int = 32, seed: int = 0):
    """Shuffled training batches of the artifact's task (or ``task``) at its training length."""
    task = glue.get_task(task or artifact.manifest["task"])
    max_length = artifact.manifest.get("training", {}).get("max_length", 128)
    examples = glue.load_glue_split(Path(data_dir), task, "train")
    dataset = glue.GlueDataset(examples, tokenizer, max_length, task.is_regression)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                                       collate_fn=lambda batch: glue.collate(batch, tokenizer.pad_token_id))


def export_integer(source, out, data_dir, task: str | None = None, method: str = calibration.DEFAULT_METHOD, batches: int = 8,
                   batch_size: int = 32, tokenizer: str | None = None, seed: int = 0) -> Path:
    """Calibrate ``source``'s float model and write the version-2 artifact ``out``; returns ``out``."""
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the source artifact; write the re-export into a new folder")
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"--out {out} exists and is not empty; choose a new folder")
    artifact = load_artifact(source, integer=False)
    if tokenizer is None and not (source / TOKENIZER).is_dir():
        tokenizer = artifact.manifest.get("training", {}).get("model") or None
    tok = load_tokenizer(artifact, tokenizer)
    model = to_model(artifact)
    loader = calibration_loader(artifact, tok, data_dir, task, batch_size, seed)
    scales = calibration.calibrate(model, loader, batches, (method,))[method]
    manifest = {k: v for k, v in artifact.manifest.items() if k != "integer"}
    return write_integer_artifact(out, dict(artifact.tensors), manifest, model, scales, tok, method)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sw.export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artifact", required=True, type=Path, help="source artifact folder (version 1 or 2)")
    parser.add_argument("--out", required=True, type=Path, help="new artifact folder")
    parser.add_argument("--task", help="GLUE task whose training set calibrates (default: the artifact's)")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--calibration", default=calibration.DEFAULT_METHOD, choices=calibration.METHODS)
    parser.add_argument("--batches", type=int, default=8, help="calibration batches")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--tokenizer", help="tokenizer folder or package:NAME (default: the artifact's, else its training model)")
    args = parser.parse_args(argv)
    try:
        path = export_integer(args.artifact, args.out, args.data_dir, args.task, args.calibration, args.batches, args.batch_size, args.tokenizer)
    except (ArtifactError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path} (format 2, {args.calibration} calibration over {args.batches} batches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
