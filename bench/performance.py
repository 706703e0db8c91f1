"""Collect the engine's benchmarks into ``docs/results/performance.md``: cycle model against simulation,
whole-encoder projections, resources and Fmax against lanes, simulation speed, and their plot.

Reads ``build/bench/{matmul,synth,simspeed}.json`` (written by ``bench/matmul.py``, ``bench/synth.py`` and
``bench/simspeed.py``; ``make bench`` runs all four), fills the generated sections of the doc between
their markers, and writes ``docs/results/performance.json`` and ``docs/results/figures/performance.png``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

from hw.config import EngineConfig  # noqa: E402
from hw.cycle_model import BERT_BASE, MINILM_L6, encoder_cycles  # noqa: E402
from core.atomic import write_atomic, write_between_markers  # noqa: E402

BENCH = Path("build/bench")
DOC = Path("docs/results/performance.md")
FIGURE = Path("docs/results/figures/performance.png")
PROJECTION_LANES = [2, 4, 8, 16, 32, 64]
SEQ = 128
ENCODERS = (BERT_BASE, MINILM_L6)


def _load(name: str) -> dict:
    path = BENCH / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run bench/{name}.py first (make bench runs everything)")
    return json.loads(path.read_text())


def projections(base: EngineConfig, fmax_by_lanes: dict[int, float]) -> list[dict]:
    """Whole-encoder matmul cycles at ``SEQ`` tokens for every lane count, pattern and dense."""
    rows = []
    for encoder in ENCODERS:
        for lanes in PROJECTION_LANES:
            config = EngineConfig.from_dict({**json.loads(base.to_json()), "lanes": lanes})
            pattern = encoder_cycles(config, encoder, SEQ)
            dense = encoder_cycles(config, encoder, SEQ, dense=True)
            fmax = fmax_by_lanes.get(lanes)
            rows.append({
                "encoder": encoder.name, "lanes": lanes, "multipliers": config.multipliers,
                "pattern_cycles": pattern["cycles"], "dense_cycles": dense["cycles"],
                "pattern_vs_dense": dense["cycles"] / pattern["cycles"], "utilization": pattern["utilization"],
                "fmax_mhz": fmax, "pattern_ms": pattern["cycles"] / (fmax * 1e3) if fmax else None,
                "dense_ms": dense["cycles"] / (fmax * 1e3) if fmax else None,
                "matmuls": pattern["matmuls"],
            })
    return rows


def matmul_section(matmul: dict) -> str:
    cfg = matmul["config"]
    cfg = {**cfg, **cfg.get("pattern", {})}  # the pattern geometry sits under "pattern" in EngineConfig's JSON
    lines = [f"Engine: {cfg['lanes']} lanes × {cfg['kept_per_block']} multipliers, {cfg['block_size']}×{cfg['block_size']} "
             f"blocks keeping {cfg['kept_per_block']}. Every run's outputs equal the golden model bit for bit.", "",
             "| model | shape (M×K×N) | mode | simulated cycles | model cycles | model error | MAC utilization | pattern vs dense |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for row in matmul["shapes"]:
        shape = f"{row['tokens']}×{row['in_features']}×{row['out_features']}"
        for mode in ("pattern", "dense"):
            r = row[mode]
            ratio = f"**{row['pattern_vs_dense']:.3f}×**" if mode == "pattern" else ""
            util = f"**{r['utilization']:.1%}**" if mode == "pattern" else f"{r['utilization']:.1%}"
            lines.append(f"| {row['model']} | {shape} | {mode} | {r['cycles']:,} | {r['model_cycles']:,} | "
                         f"{r['model_error']:+.2%} | {util} | {ratio} |")
    worst_error = max(abs(row[mode]["model_error"]) for row in matmul["shapes"] for mode in ("pattern", "dense"))
    min_util = min(row["pattern"]["utilization"] for row in matmul["shapes"])
    min_ratio = min(row["pattern_vs_dense"] for row in matmul["shapes"])
    targets = matmul["targets"]
    lines += ["", f"Largest model error: {worst_error:.2%} (target ≤ 2 %). Lowest pattern-mode utilization: "
                  f"{min_util:.1%} (target ≥ {targets['utilization']:.0%}). Lowest pattern-vs-dense ratio: "
                  f"{min_ratio:.3f}× (target ≥ {targets['pattern_vs_dense']}×, limit 2.0×)."]
    return "\n".join(lines)


def projection_section(rows: list[dict]) -> str:
    lines = [f"Every matmul of the encoder at sequence length {SEQ}, one RUN after another on one engine "
             "(`hw.cycle_model.encoder_cycles`): Q, K, V, attention output, FFN in and out per layer, and per "
             "head the scores Q·Kᵀ (dense mode) and the context P·V (pattern mode, the pruned attention map "
             "as weights). Softmax, LayerNorm, GELU and the transfers between RUNs are not counted. "
             "Milliseconds use the ECP5 Fmax measured for that lane count (— where not synthesized).", "",
             "| encoder | lanes | multipliers | pattern cycles | dense cycles | pattern vs dense | MAC utilization | "
             "Fmax (MHz) | pattern ms | dense ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fmax = f"{r['fmax_mhz']:.1f}" if r["fmax_mhz"] else "—"
        ms = [f"{r[key]:.2f}" if r[key] is not None else "—" for key in ("pattern_ms", "dense_ms")]
        lines.append(f"| {r['encoder']} | {r['lanes']} | {r['multipliers']} | {r['pattern_cycles']:,} | "
                     f"{r['dense_cycles']:,} | {r['pattern_vs_dense']:.3f}× | {r['utilization']:.1%} | {fmax} | "
                     f"{ms[0]} | {ms[1]} |")
    eight = next(r for r in rows if r["encoder"] == BERT_BASE.name and r["lanes"] == 8)
    lines += ["", f"Where the cycles go (BERT-base, 8 lanes, pattern mode): " + ", ".join(
        f"{m['name']} {m['cycles'] / eight['pattern_cycles']:.1%}" for m in eight["matmuls"]) + "."]
    return "\n".join(lines)


def synth_section(synth: dict) -> str:
    lines = ["| lanes | multipliers | xc7 LUT | xc7 FF | DSP48E1 | RAMB36 (+RAMB18) | ECP5 LUT4 | ECP5 FF | "
             "MULT18X18D | DP16KD | Fmax ECP5 (MHz) | useful GOPS | effective GOPS | GOPS / MULT18X18D |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in synth["results"]:
        x, e = r["xc7"], r["ecp5_synth"]
        fmax = r.get("pnr", {}).get("fmax_mhz")
        t = r.get("throughput", {})
        cells = [f"{r['lanes']}", f"{r['multipliers']}", f"{x['lut']:,}", f"{x['ff']:,}", f"{x['dsp48e1']}",
                 f"{x['ramb36e1']} (+{x['ramb18e1']})", f"{e['lut4_with_carry']:,}", f"{e['ff']:,}", f"{e['mult18x18d']}",
                 f"{e['dp16kd']}", f"{fmax:.1f}" if fmax else "does not fit",
                 f"{t['useful_gops']:.2f}" if t else "—", f"{t['effective_gops']:.2f}" if t else "—",
                 f"{t['useful_gops_per_mult18x18d']:.3f}" if t else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def simspeed_section(simspeed: dict) -> str:
    return simspeed.get("markdown_table") or (BENCH / "simspeed.md").read_text().split("\n", 2)[-1].strip()


def plot(synth: dict, rows: list[dict], path: Path) -> None:
    results = synth["results"]
    lanes = [r["lanes"] for r in results]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    ax.plot(lanes, [r["ecp5_synth"]["lut4_with_carry"] for r in results], "o-", label="ECP5 LUT4")
    ax.plot(lanes, [r["ecp5_synth"]["ff"] for r in results], "s-", label="ECP5 FF")
    ax.plot(lanes, [r["xc7"]["lut"] for r in results], "o--", label="xc7 LUT")
    ax.plot(lanes, [r["xc7"]["ff"] for r in results], "s--", label="xc7 FF")
    ax.set(xscale="log", yscale="log", xlabel="lanes", ylabel="count", title="Logic")
    ax.set_xticks(lanes, [str(x) for x in lanes], minor=False)
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.plot(lanes, [r["ecp5_synth"]["mult18x18d"] for r in results], "o-", label="MULT18X18D")
    ax.plot(lanes, [r["xc7"]["dsp48e1"] for r in results], "o--", label="DSP48E1")
    ax.plot(lanes, [r["ecp5_synth"]["dp16kd"] for r in results], "s-", label="DP16KD")
    ax.set(xscale="log", yscale="log", xlabel="lanes", ylabel="count", title="Multipliers and block RAM")
    ax.set_xticks(lanes, [str(x) for x in lanes])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    twin = ax.twinx()
    fmax = [(r["lanes"], r["pnr"]["fmax_mhz"]) for r in results if r.get("pnr")]
    twin.plot([f[0] for f in fmax], [f[1] for f in fmax], "k^:", label="Fmax ECP5 (MHz)")
    twin.set_ylabel("Fmax (MHz)")
    twin.set_ylim(bottom=0)
    handles = ax.get_legend_handles_labels()[0] + twin.get_legend_handles_labels()[0]
    ax.legend(handles, [h.get_label() for h in handles], fontsize=8, loc="lower right")
    ax = axes[2]
    for encoder, style in zip(ENCODERS, ("-", "--")):
        mine = [r for r in rows if r["encoder"] == encoder.name]
        x = [r["lanes"] for r in mine]
        ax.plot(x, [r["pattern_cycles"] for r in mine], "o" + style, label=f"{encoder.name} pattern")
        ax.plot(x, [r["dense_cycles"] for r in mine], "s" + style, label=f"{encoder.name} dense")
    ax.set(xscale="log", yscale="log", xlabel="lanes", ylabel=f"matmul cycles per sequence ({SEQ} tokens)",
           title="Whole-encoder cycles (model)")
    ax.set_xticks(PROJECTION_LANES, [str(x) for x in PROJECTION_LANES])
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def main(argv=None) -> int:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    try:
        matmul, synth, simspeed = _load("matmul"), _load("synth"), _load("simspeed")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    base = EngineConfig.from_dict(matmul["config"])
    fmax = {r["lanes"]: r["pnr"]["fmax_mhz"] for r in synth["results"] if r.get("pnr")}
    rows = projections(base, fmax)
    sections = {"matmul": matmul_section(matmul), "projection": projection_section(rows),
                "synth": synth_section(synth), "simspeed": simspeed_section(simspeed)}
    for name, body in sections.items():
        write_between_markers(DOC, f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->", body)
    plot(synth, rows, FIGURE)
    # Other benchmarks (bench/attention.py, bench/synth.py --attention) keep their own keys of the JSON.
    path = DOC.with_suffix(".json")
    results = json.loads(path.read_text()) if path.exists() else {}
    results.update({"matmul": matmul, "projection": rows, "synth": synth, "simspeed": simspeed})
    write_atomic(path, json.dumps(results, indent=2) + "\n")
    print(f"wrote {DOC}, {DOC.with_suffix('.json')} and {FIGURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
