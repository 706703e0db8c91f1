"""Cycles, P·V speed-up and MAC utilization of the attention unit, simulated (cocotb + Verilator).

For the attention shapes of all-MiniLM-L6-v2 (12 heads × 32) and BERT-base (12 heads × 64) at 128
tokens, twelve heads of random int8 Q/K/V run on the Verilog with and without attention-map pruning;
every head's scores, pattern ids, probabilities and context are checked bit for bit against the golden
model. The harness splits the cycles by head and stage (scores + softmax, context, the rest); the
attention unit's cycle model (``hw.cycle_model.attention_cycles``) predicts each of them, and the
engine's cycle model gives what the two matmuls alone would take. With a trained artifact
(``--artifact``, default the MRPC attention-pruned one that ``make bench-integer`` writes), real dev
sentences' Q/K/V of every layer and head run too, their cycles also against the model.

Writes ``build/bench/attention.json``, the attention section of ``docs/results/performance.md`` and the
``attention`` key of ``docs/results/performance.json``.

    python bench/attention.py [--artifact build/integer/mrpc/pattern_admm_int8_attention] [--sentences 8]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from core.atomic import write_atomic, write_between_markers  # noqa: E402
from firmware_gen.attention import AttentionHead, AttentionProgram  # noqa: E402
from hw.config import AttentionConfig  # noqa: E402
from hw.cycle_model import BERT_BASE, MINILM_L6, attention_cycles, matmul_cycles  # noqa: E402
from sim.attention_rtl import build_attention_harness, head_shapes, run_attention_program  # noqa: E402
from sim.cases import random_pool_masks  # noqa: E402

OUT = Path("build/bench")
DOC = Path("docs/results/performance.md")
MARKERS = ("<!-- bench:attention -->", "<!-- /bench:attention -->")
SEQ = 128
TARGETS = {"pv_speedup": 1.9, "utilization": 0.85}


def shape_rows(harness, config: AttentionConfig) -> list[dict]:
    engine, k, n = config.engine, config.engine.pattern.block_size, config.engine.pattern.kept_per_block
    rows = []
    for encoder in (MINILM_L6, BERT_BASE):
        d, heads = encoder.head_dim, encoder.heads
        g = torch.Generator().manual_seed(d)
        operands = [[torch.randint(-128, 128, (SEQ, d), generator=g, dtype=torch.int8) for _ in range(3)] for _ in range(heads)]
        for pruned in (False, True):
            program = AttentionProgram(config, [AttentionHead(q, kk, v, SEQ, 32768, 26, 40000, 22) for q, kk, v in operands],
                                       random_pool_masks(config.engine.pattern, 1) if pruned else None)
            started = time.perf_counter()
            result = run_attention_program(harness, program, OUT / "attention_cases" / f"{encoder.name}_{'pruned' if pruned else 'dense'}")
            model = attention_cycles(config, head_shapes(program), pruned=pruned)
            scores_model = matmul_cycles(engine, SEQ, d, SEQ, dense=True).cycles * heads
            context_model = matmul_cycles(engine, d, SEQ, SEQ, dense=not pruned).cycles * heads
            useful = heads * (SEQ * SEQ * d + SEQ * SEQ * d * (n if pruned else k * k) // (k * k))
            per_head = [{"other": h.other, "scores": h.scores, "context": h.context} for h in model.heads]
            measured = [{name: h[name] for name in ("other", "scores", "context")} for h in result["head_cycles"]]
            rows.append({
                "encoder": encoder.name, "heads": heads, "head_dim": d, "seq": SEQ, "pruned": pruned,
                "cycles": result["cycles"], "scores_cycles": result["scores_cycles"], "context_cycles": result["context_cycles"],
                "other_cycles": result["cycles"] - result["scores_cycles"] - result["context_cycles"],
                "model": {"cycles": model.cycles, "scores_cycles": model.scores, "context_cycles": model.context,
                          "other_cycles": model.other},
                "model_heads_equal": sum(m == h for m, h in zip(per_head, measured)),
                "model_exact": per_head == measured and model.cycles == result["cycles"],
                "scores_matmul_model": scores_model, "context_matmul_model": context_model,
                "useful_macs": useful, "utilization": useful / (engine.multipliers * result["cycles"]),
                "bit_exact": result["passed"], "seconds": time.perf_counter() - started,
            })
            print(f"{encoder.name} {'pruned' if pruned else 'dense'}: {result['cycles']:,} cycles (model {model.cycles:,}, "
                  f"{rows[-1]['model_heads_equal']} of {heads} heads equal in every stage), utilization "
                  f"{rows[-1]['utilization']:.1%}, bit-exact {result['passed']}", flush=True)
    return rows


def real_data(harness, config: AttentionConfig, artifact_dir: Path, sentences: int) -> dict | None:
    """Every layer's and head's attention of ``sentences`` MRPC dev pairs through the RTL."""
    if not (artifact_dir / "manifest.json").exists():
        print(f"no artifact at {artifact_dir}: real-data run skipped (make bench-integer writes it)")
        return None
    from core.artifact import load_artifact
    from sw import glue
    from sw.evaluate import load_tokenizer

    artifact = load_artifact(artifact_dir)
    spec = artifact.manifest["integer"]
    tokenizer = load_tokenizer(artifact)
    examples = glue.load_glue_split(Path("../shared/data/glue"), "mrpc", "dev", limit=sentences)
    dataset = glue.GlueDataset(examples, tokenizer, SEQ, False)
    batch = glue.collate([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id)
    out = artifact.encoder()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], trace=True)
    pool = artifact.tensors["attention.pool"].to(torch.bool) if "attention.pool" in artifact.tensors else None
    d, cycles, exact, model_cycles, heads_equal = spec["head_dim"], 0, True, 0, 0
    for index, layer in enumerate(out.layers):  # one run per layer: the harness's memories hold that much
        entry, heads = spec["layers"][index], []
        for b in range(batch["input_ids"].shape[0]):
            for h in range(spec["heads"]):
                part = slice(h * d, (h + 1) * d)
                heads.append(AttentionHead(layer.query[b, :, part], layer.key[b, :, part], layer.value[b, :, part],
                                           int(batch["attention_mask"][b].sum()), entry["exp_multiplier"], entry["exp_shift"],
                                           entry["context_multiplier"], entry["context_shift"]))
        program = AttentionProgram(config, heads, pool)
        result = run_attention_program(harness, program, OUT / "attention_cases" / f"real_{index}")
        model = attention_cycles(config, head_shapes(program), pruned=pool is not None)
        cycles, exact, model_cycles = cycles + result["cycles"], exact and result["passed"], model_cycles + model.cycles
        heads_equal += sum((m.other, m.scores, m.context) == (h["other"], h["scores"], h["context"])
                           for m, h in zip(model.heads, result["head_cycles"]))
        print(f"real data, layer {index}: {len(heads)} heads bit-exact {result['passed']}, {result['cycles']:,} cycles "
              f"(model {model.cycles:,})", flush=True)
    return {"artifact": str(artifact_dir), "sentences": sentences, "heads": len(out.layers) * len(heads),
            "length": int(batch["input_ids"].shape[1]), "cycles": cycles, "bit_exact": exact,
            "model_cycles": model_cycles, "model_heads_equal": heads_equal}


def markdown(config: AttentionConfig, rows: list[dict], real: dict | None, summary: dict) -> str:
    e = config.engine
    lines = [f"Attention unit: {e.lanes} lanes × {e.pattern.kept_per_block} multipliers, {e.pattern.block_size}×"
             f"{e.pattern.block_size} blocks keeping {e.pattern.kept_per_block}, pool {e.pattern.pool_size}, sequences to "
             f"{config.max_seq}, head dims to {config.max_head_dim}. Twelve heads of random int8 Q/K/V at {SEQ} tokens; "
             "every head's scores, pattern ids, probabilities and context equal the golden model bit for bit.", "",
             "| shape | map | cycles | scores + softmax | context (P·V) | other | Q·Kᵀ alone (model) | P·V alone (model) | MAC utilization |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['encoder']} ({r['heads']}×{r['head_dim']}) | {'pruned' if r['pruned'] else 'dense'} | {r['cycles']:,} | "
                     f"{r['scores_cycles']:,} | {r['context_cycles']:,} | {r['other_cycles']:,} | {r['scores_matmul_model']:,} | "
                     f"{r['context_matmul_model']:,} | {r['utilization']:.1%} |")
    lines += ["", "Measured (Verilator, per head and stage) against `hw.cycle_model.attention_cycles`, which derives them "
              "from the components' latencies:", "",
              "| shape | map | cycles | model | scores + softmax | model | context (P·V) | model | other | model | heads equal in every stage |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        m = r["model"]
        lines.append(f"| {r['encoder']} ({r['heads']}×{r['head_dim']}) | {'pruned' if r['pruned'] else 'dense'} | "
                     f"{r['cycles']:,} | {m['cycles']:,} | {r['scores_cycles']:,} | {m['scores_cycles']:,} | "
                     f"{r['context_cycles']:,} | {m['context_cycles']:,} | {r['other_cycles']:,} | {m['other_cycles']:,} | "
                     f"{r['model_heads_equal']} of {r['heads']} |")
    lines += ["", f"P·V cycles dense ÷ pruned (context stage, measured): "
              + ", ".join(f"{name} **{v:.3f}×**" for name, v in summary["pv_speedup_by_shape"].items())
              + f" (target ≥ {TARGETS['pv_speedup']}×, limit 2.0×). Whole-attention MAC utilization with pruning: "
              + ", ".join(f"{name} **{v:.1%}**" for name, v in summary["utilization_by_shape"].items())
              + f" (target ≥ {TARGETS['utilization']:.0%})."]
    if real:
        lines += ["", f"Real data: {real['heads']} heads ({real['sentences']} MRPC dev pairs × every layer and head of "
                  f"`{real['artifact']}`, padded to {real['length']} tokens): bit-exact **{real['bit_exact']}**, "
                  f"{real['cycles']:,} cycles; the cycle model {real['model_cycles']:,}, "
                  f"{real['model_heads_equal']} of {real['heads']} heads equal in every stage."]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--artifact", type=Path, default=Path("build/integer/mrpc/pattern_admm_int8_attention"))
    parser.add_argument("--sentences", type=int, default=8)
    args = parser.parse_args(argv)
    config = AttentionConfig()
    harness = build_attention_harness(config, OUT / "attention")
    rows = shape_rows(harness, config)
    real = real_data(harness, config, args.artifact, args.sentences)
    by = {(r["encoder"], r["pruned"]): r for r in rows}
    names = sorted({r["encoder"] for r in rows})
    summary = {
        "pv_speedup_by_shape": {n: by[n, False]["context_cycles"] / by[n, True]["context_cycles"] for n in names},
        "utilization_by_shape": {n: by[n, True]["utilization"] for n in names},
    }
    attention = {"pv_speedup": min(summary["pv_speedup_by_shape"].values()),
                 "utilization": min(summary["utilization_by_shape"].values()),
                 "cycles_pruned": {n: by[n, True]["cycles"] for n in names},
                 "cycles_dense": {n: by[n, False]["cycles"] for n in names},
                 "model_exact": all(r["model_exact"] for r in rows),
                 **summary, "shapes": rows, "real_data": real, "config": json.loads(config.to_json())}
    OUT.mkdir(parents=True, exist_ok=True)
    write_atomic(OUT / "attention.json", json.dumps(attention, indent=2) + "\n")
    performance = DOC.with_suffix(".json")
    merged = json.loads(performance.read_text()) if performance.exists() else {}
    merged["attention"] = attention
    write_atomic(performance, json.dumps(merged, indent=2) + "\n")
    write_between_markers(DOC, *MARKERS, markdown(config, rows, real, summary))
    print(f"wrote {OUT / 'attention.json'}, the attention section of {DOC} and the attention key of {performance}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
