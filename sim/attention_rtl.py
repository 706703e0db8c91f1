"""The attention unit's Verilog under cocotb + Verilator: build the harness, run programs, check every
boundary (scores, pattern ids, probabilities, context) against the golden model as whole tensors.

The harness (``sim/hdl/tb_attention.sv``) streams every input from memory files and writes the context
and the two taps to files, so no Python runs per cycle; the cocotb test (``sim/cocotb_attention.py``)
resets the unit, waits for ``done`` and compares once. The build is made here, exposing only the
harness's ports, as :mod:`sim.rtl` does for the engine.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from core.encoder import exp_table
from core.integer import int_exp
from core.pattern import from_blocks
from firmware_gen.attention import AttentionProgram
from hw.config import AttentionConfig
from hw.cycle_model import AttentionHeadShape
from hw.gen import ATTENTION_NAME, generate_attention
from sim.rtl import (CLOCK_NS, COCOTB_MAIN, CXX_MAKE_FLAGS, RESET_CYCLES, TIMESCALE, VERILATOR_FLAGS, BitExactMismatch,
                     _verilator_build, prepare_case_dir, run_cocotb_case)
from sim.toolchain import HDL_DIR

HARNESS_TOP = "tb_attention"
BOUNDARIES = ("scores", "pattern_ids", "probabilities", "context")
#: Beats the harness's memories hold, per stream (a program that needs more is refused before it runs).
DEPTHS = {"cmd": 1 << 10, "queries": 1 << 17, "keys": 1 << 17, "values": 1 << 17, "context": 1 << 17,
          "scores": 1 << 19, "blocks": 1 << 17}


@dataclass
class AttentionHarness:
    config: AttentionConfig
    build_dir: Path
    build_seconds: float


def build_attention_harness(config: AttentionConfig, build_dir: str | Path, *, always: bool = False) -> AttentionHarness:
    """Generate the attention unit's Verilog for ``config`` and compile it with the stream harness
    (cocotb + Verilator); an unchanged build is reused unless ``always``."""
    import cocotb_tools.config

    build_dir = Path(build_dir).resolve()
    unit_v = generate_attention(config, build_dir / "rtl", ATTENTION_NAME)
    widths = AttentionProgram(config, []).widths()
    parameters = {"CMD_W": widths["cmd"], "POOL_W": widths["pool"], "EXP_W": widths["exp_table"], "ACT_W": widths["queries"],
                  "OUT_W": widths["context"], "SCORE_W": widths["scores"], "BLOCK_W": widths["blocks"],
                  "CMD_DEPTH": DEPTHS["cmd"], "ACT_DEPTH": DEPTHS["queries"], "CONTEXT_DEPTH": DEPTHS["context"],
                  "SCORE_DEPTH": DEPTHS["scores"], "BLOCK_DEPTH": DEPTHS["blocks"]}
    libs = cocotb_tools.config.libs_dir
    sources = [unit_v, HDL_DIR / "stream_source.sv", HDL_DIR / "stream_sink.sv", HDL_DIR / f"{HARNESS_TOP}.sv"]
    command = (["verilator", "--cc", "--exe", "--top-module", HARNESS_TOP, "--prefix", "Vtop", "-o", HARNESS_TOP,
                "--vpi", "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator"]
               + VERILATOR_FLAGS + ["--timescale", "/".join(TIMESCALE)]
               + [f"-G{name}={value}" for name, value in parameters.items()]
               + [str(COCOTB_MAIN), *map(str, sources), str(HDL_DIR / f"{HARNESS_TOP}.vlt")])
    seconds = _verilator_build(command, CXX_MAKE_FLAGS, build_dir / "sim", build_dir / "build.log", always=always,
                               binary=HARNESS_TOP)
    return AttentionHarness(config, build_dir, seconds)


def run_attention_program(harness: AttentionHarness, program: AttentionProgram, case_dir: str | Path, *,
                          stall_percent: int = 0, seed: int = 1, check: bool = True,
                          reference: AttentionProgram | None = None) -> dict:
    """Run ``program`` on the harness and compare scores, pattern ids, probabilities and context of every
    head with the golden model of ``reference`` (default: ``program`` itself; another one shows that a
    corrupted input is caught). Returns the result (``cycles`` from the first command to the last context
    beat, ``scores_cycles`` and ``context_cycles`` of the two stages, ``head_cycles`` per head (see
    :func:`read_head_cycles`), ``mismatches`` per boundary, ``passed``, times); a mismatch raises
    :class:`BitExactMismatch` unless ``check=False``. ``case_dir`` follows :func:`sim.rtl.prepare_case_dir`."""
    if program.config != harness.config:
        raise ValueError("the program was built for another attention config than the harness")
    streams = program.streams()
    counts = {"context": program.context_beats(), "scores": program.score_beats(), "blocks": program.block_beats()}
    for name, count in [*((n, len(b)) for n, b in streams.items()), *counts.items()]:
        if name in DEPTHS and count > DEPTHS[name]:
            raise ValueError(f"the program needs {count} {name} beats; the harness holds {DEPTHS[name]}: run fewer heads at a time")
    case_dir = prepare_case_dir(case_dir)
    paths = program.write_hex(case_dir)
    busy = sum(h.length * h.length * h.q.shape[1] for h in program.heads) // program.config.engine.multipliers
    max_cycles = 20 * (busy + sum(h.length ** 2 for h in program.heads) + 1000) * (1 + stall_percent)
    plusargs = [f"+stall={stall_percent}", f"+tb_seed={seed}", f"+main_clock_ns={CLOCK_NS}"]
    for name, beats in streams.items():
        plusargs += [f"+{name}_file={paths[name]}", f"+{name}_count={len(beats)}", f"+{name}_replays=1"]
    for name, count in counts.items():
        plusargs += [f"+{name}_file={case_dir / (name + '_out.hex')}", f"+{name}_count={count}"]
    stages_file = case_dir / "stages.txt"
    plusargs.append(f"+stages_file={stages_file}")
    torch.save({"program": reference or program}, case_dir / "case.pt")
    (case_dir / "case.json").write_text(json.dumps({"max_cycles": max_cycles, "clock_ns": CLOCK_NS,
                                                    "reset_cycles": RESET_CYCLES}))
    result = run_cocotb_case("verilator", "sim.cocotb_attention", HARNESS_TOP, harness.build_dir / "sim", case_dir,
                             plusargs, {"COCOTB_REWRITE_ASSERTION_FILES": "cocotb_attention.py"})
    result["head_cycles"] = read_head_cycles(stages_file) if stages_file.exists() else None
    if check and not result["passed"]:
        what = (", ".join(f"{v} {k}" for k, v in result["mismatches"].items() if v) + " differ from the golden model"
                if result.get("mismatches") else "the run did not complete (no output, an error flag or a timeout)")
        raise BitExactMismatch(f"attention RTL is not bit-exact: {what}; see {case_dir / 'sim.log'}", result)
    return result


def head_shapes(program: AttentionProgram) -> list[AttentionHeadShape]:
    """Every head of ``program`` as the cycle model sees it (:func:`hw.cycle_model.attention_cycles`),
    with the real rows whose kept exponential sum is 0 under pruning, found from the golden model."""
    k = program.config.engine.pattern.block_size
    table = exp_table() if program.exp_table is None else program.exp_table
    shapes = []
    for h in program.heads:
        zero = ()
        if program.pool is not None and h.valid_length:
            scores, _, ids, _ = h.golden(program.pool, program.exp_table)
            real = h.valid_length
            s = scores[:real, :real]
            e = int_exp(s.amax(-1, keepdim=True) - s, h.exp_multiplier, h.exp_shift, table)
            keep = from_blocks(program.pool[ids], k)[:real, :real]
            zero = tuple(int(q) for q in torch.nonzero((e * keep).sum(-1) == 0).flatten())
        shapes.append(AttentionHeadShape(h.length, h.q.shape[1], h.valid_length, zero))
    return shapes


def read_head_cycles(path: str | Path) -> list[dict[str, int]]:
    """The harness's per-head counts: ``other`` (stage-0 cycles before and between its stages), ``scores``
    (Q·Kᵀ and softmax), ``context`` (P·V), and their sum ``cycles``."""
    heads = []
    for line in Path(path).read_text().split("\n"):
        if line.strip():
            other, scores, context = (int(v) for v in line.split())
            heads.append({"other": other, "scores": scores, "context": context, "cycles": other + scores + context})
    return heads


def read_hex(path: str | Path) -> list[int]:
    lines = Path(path).read_text().splitlines()
    return [int(line, 16) for line in lines if line.strip() and not line.startswith(("//", "@"))]


def compare(program: AttentionProgram, context: list[int], scores: list[int], blocks: list[int]) -> dict[str, int]:
    """Mismatching elements per boundary over every head (0 everywhere when bit-exact)."""
    mismatches = dict.fromkeys(BOUNDARIES, 0)
    got = zip(program.decode_scores(scores), program.decode_blocks(blocks), program.decode_context(context))
    for (s, p, ids, c), (hs, (hp, hids), hc) in zip(program.golden(), got):
        mismatches["scores"] += int((hs != s).sum())
        mismatches["probabilities"] += int((hp != p).sum())
        if ids is not None:
            mismatches["pattern_ids"] += int((hids != ids).sum())
        mismatches["context"] += int((hc != c.to(torch.int64)).sum())
    return mismatches
