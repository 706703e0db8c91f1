"""The accelerator top under cocotb + Verilator, with cocotbext-axi's ``AxiRam`` as external memory and
``AxiLiteMaster`` as the host: build it, play runs on it, and compare each run's whole memory with the
command model's (``sim/command_model.py``).

A run is a memory image and the address of its commands; the cocotb test (``sim/cocotb_accelerator.py``)
writes the image into the RAM, starts the core through its registers, waits for done or error, and
writes the whole memory and the registers back. Options per run: random AXI backpressure on every
channel, and a reset through ``CONTROL.reset`` a given number of cycles after the start (the run is
abandoned; the next run must be clean).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog

from core.atomic import write_atomic
from hw.accelerator import Accelerator
from hw.commands import ErrorCause, Op
from hw.config import AcceleratorConfig, AttentionConfig, EngineConfig
from sim.command_model import CommandError, CommandModel
from hw import registers as regs
from sim.rtl import (CLOCK_NS, COCOTB_MAIN, CXX_MAKE_FLAGS, TIMESCALE, VERILATOR_FLAGS, _verilator_build, prepare_case_dir,
                     run_cocotb_case)
from sim.toolchain import HDL_DIR

TOP = "accelerator"
HARNESS_TOP = "tb_accelerator"


#: The small configuration the tests build (the tiny trained model fits it: hidden 64, FFN 128, 64 tokens).
SMALL = AcceleratorConfig(engine=EngineConfig(max_in_features=256), attention=AttentionConfig(max_seq=64), max_width=64,
                          scratch_bytes=32 * 1024, wide_words=4 * 1024, chunk_rows=4)


@dataclass
class AcceleratorHarness:
    config: AcceleratorConfig
    build_dir: Path
    build_seconds: float
    memory_words: int = 0


@dataclass
class Run:
    image: bytearray
    command_address: int = 0
    pause: bool = False  # random backpressure on every AXI channel
    reset_after: int | None = None  # cycles after start to write CONTROL.reset
    max_cycles: int = 2_000_000


def build_accelerator(config: AcceleratorConfig, build_dir: str | Path, *, always: bool = False) -> AcceleratorHarness:
    """The top alone, for cocotb to drive its AXI ports (cocotbext-axi): built with the clock in C++ and
    only its ports public; an unchanged build is reused unless ``always``."""
    return _build(config, Path(build_dir).resolve(), TOP, [], HDL_DIR / "accelerator.vlt", "sim", always)


def _build(config: AcceleratorConfig, build_dir: Path, top: str, harness: list[Path], vlt: Path, folder: str, always: bool,
           parameters: dict | None = None) -> AcceleratorHarness:
    import cocotb_tools.config

    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{TOP}.v"
    text = verilog.convert(Accelerator(config), name=TOP)
    if not source.exists() or source.read_text() != text:
        write_atomic(source, text)
    libs = cocotb_tools.config.libs_dir
    command = (["verilator", "--cc", "--exe", "--top-module", top, "--prefix", "Vtop", "-o", top,
                "--vpi", "-LDFLAGS", f"-Wl,-rpath,{libs} -L{libs} -lcocotbvpi_verilator"]
               + VERILATOR_FLAGS + ["--timescale", "/".join(TIMESCALE)]
               + [f"-G{name}={value}" for name, value in (parameters or {}).items()]
               + [str(COCOTB_MAIN), str(source), *map(str, harness), str(vlt)])
    seconds = _verilator_build(command, CXX_MAKE_FLAGS, build_dir / folder, build_dir / f"build-{folder}.log", always=always, binary=top)
    return AcceleratorHarness(config, build_dir, seconds, (parameters or {}).get("WORDS", 0))


def run_accelerator(harness: AcceleratorHarness, runs: list[Run], case_dir: str | Path) -> list[dict]:
    """Play ``runs`` one after another on one simulation (the core is not reset between them); return per
    run the registers after it (``done``, ``error``, ``cause``, ``command``, ``cycles``, ``layers``) and
    its memory (``memory``, a bytearray)."""
    case_dir = prepare_case_dir(case_dir)
    spec = []
    for i, run in enumerate(runs):
        (case_dir / f"image{i}.bin").write_bytes(bytes(run.image))
        spec.append({"image": f"image{i}.bin", "command_address": run.command_address, "pause": run.pause,
                     "reset_after": run.reset_after, "max_cycles": run.max_cycles})
    (case_dir / "case.json").write_text(json.dumps({"runs": spec}, indent=2))
    result = run_cocotb_case("verilator", "sim.cocotb_accelerator", TOP, harness.build_dir / "sim", case_dir,
                             [f"+main_clock_ns={CLOCK_NS}"],
                             {"COCOTB_REWRITE_ASSERTION_FILES": "cocotb_accelerator.py"})
    if not result.get("passed") or "runs" not in result:
        raise RuntimeError(f"the accelerator simulation failed; see {case_dir / 'sim.log'}")
    out = []
    for i, registers in enumerate(result["runs"]):
        registers["memory"] = bytearray((case_dir / f"memory{i}.bin").read_bytes())
        out.append(registers)
    return out


def expected_run(config: AcceleratorConfig, image: bytearray, command_address: int = 0) -> dict:
    """What the command model makes of ``image``: the memory after the run, and done/error/cause/command."""
    memory = bytearray(image)
    model = CommandModel(config, memory)
    try:
        stats = model.run(command_address)
        return {"done": 1, "error": 0, "cause": ErrorCause.NONE.value, "memory": memory, "layers": stats.layers,
                "commands": stats.commands}
    except CommandError as failure:
        return {"done": 0, "error": 1, "cause": failure.cause.value, "command": failure.index, "memory": memory}


# ------------------------------------------------------------------------------------------ long runs

def build_accelerator_harness(config: AcceleratorConfig, build_dir: str | Path, *, memory_words: int = 1 << 20,
                              always: bool = False) -> AcceleratorHarness:
    """The top inside ``sim/hdl/tb_accelerator.sv`` (a Verilog AXI memory and register host), built with
    the clock in C++ and only the harness's ports public: long runs with no Python per cycle."""
    parameters = {"WORDS": memory_words, "START_BIT": regs.Control.field("start").offset,
                  "BUSY_BIT": regs.Status.field("busy").offset,
                  **{f"REG_{name}": regs.offset(name) for name in ("CONTROL", "STATUS", "ERROR", "COMMAND_ADDR", "CYCLES_LO",
                                                                    "CYCLES_HI", "LAYER")}}
    return _build(config, Path(build_dir).resolve(), HARNESS_TOP, [HDL_DIR / "axi_ram.sv", HDL_DIR / f"{HARNESS_TOP}.sv"],
                  HDL_DIR / f"{HARNESS_TOP}.vlt", "fast", always, parameters)


def run_accelerator_fast(harness: AcceleratorHarness, image: bytearray, case_dir: str | Path, *, command_address: int = 0,
                         max_cycles: int = 200_000_000) -> dict:
    """One run on :func:`build_accelerator_harness`'s harness: the registers after it and its memory."""
    case_dir = prepare_case_dir(case_dir)
    words = -(-len(image) // 4)
    if words > harness.memory_words:
        raise ValueError(f"the image needs {words} words; the harness memory holds {harness.memory_words}")
    padded = bytes(image) + bytes(4 * words - len(image))
    (case_dir / "image.hex").write_text("".join(f"{int.from_bytes(padded[i:i + 4], 'little'):08x}\n" for i in range(0, len(padded), 4)))
    (case_dir / "case.json").write_text(json.dumps({"max_cycles": max_cycles, "clock_ns": CLOCK_NS}))
    plusargs = [f"+main_clock_ns={CLOCK_NS}", f"+ops_file={case_dir / 'ops.txt'}", f"+image_file={case_dir / 'image.hex'}", f"+memory_file={case_dir / 'memory.hex'}", f"+memory_words={words}",
                f"+command_addr={command_address}"]
    result = run_cocotb_case("verilator", "sim.cocotb_accelerator_fast", HARNESS_TOP, harness.build_dir / "fast", case_dir, plusargs,
                             {"COCOTB_REWRITE_ASSERTION_FILES": "cocotb_accelerator_fast.py"})
    if not result.get("passed"):
        raise RuntimeError(f"the accelerator simulation failed; see {case_dir / 'sim.log'}")
    memory = bytearray()
    for line in (case_dir / "memory.hex").read_text().split():
        if not line.startswith("//"):
            memory += int(line, 16).to_bytes(4, "little")
    result["memory"] = memory[:len(image)]
    ops = case_dir / "ops.txt"
    if ops.exists():  # written when the simulation ends
        result["op_cycles"] = {Op(int(code)).name: int(cycles) for code, cycles in (line.split() for line in ops.read_text().splitlines())}
    return result
