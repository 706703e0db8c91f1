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
import time
from dataclasses import dataclass
from pathlib import Path

from amaranth.back import verilog
from cocotb_tools.runner import get_runner

from core.atomic import write_atomic
from hw.accelerator import Accelerator
from hw.commands import ErrorCause
from hw.config import AcceleratorConfig
from sim.command_model import CommandError, CommandModel
from sim.rtl import TIMESCALE, VERILATOR_FLAGS, prepare_case_dir, run_cocotb_case
from sim.toolchain import configure_verilator

TOP = "accelerator"


@dataclass
class AcceleratorHarness:
    config: AcceleratorConfig
    build_dir: Path
    build_seconds: float


@dataclass
class Run:
    image: bytearray
    command_address: int = 0
    pause: bool = False  # random backpressure on every AXI channel
    reset_after: int | None = None  # cycles after start to write CONTROL.reset
    max_cycles: int = 2_000_000


def build_accelerator(config: AcceleratorConfig, build_dir: str | Path, *, always: bool = False) -> AcceleratorHarness:
    build_dir = Path(build_dir).resolve()
    build_dir.mkdir(parents=True, exist_ok=True)
    source = build_dir / f"{TOP}.v"
    text = verilog.convert(Accelerator(config), name=TOP)
    if not source.exists() or source.read_text() != text:
        write_atomic(source, text)
    configure_verilator()
    started = time.perf_counter()
    get_runner("verilator").build(sources=[source], hdl_toplevel=TOP, build_args=VERILATOR_FLAGS, build_dir=build_dir / "sim",
                                  timescale=TIMESCALE, always=always, log_file=build_dir / "build.log")
    return AcceleratorHarness(config, build_dir, time.perf_counter() - started)


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
    result = run_cocotb_case("verilator", "sim.cocotb_accelerator", TOP, harness.build_dir / "sim", case_dir, [],
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
