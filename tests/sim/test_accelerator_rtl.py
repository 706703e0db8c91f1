"""The accelerator top in cocotb + Verilator, with cocotbext-axi's AxiRam and AxiLiteMaster: command
streams run through the registers, and the whole memory after each run equals the command model's."""

import random
from pathlib import Path

import pytest

from firmware_gen.compiler import encode_command
from hw.commands import COMMAND_BYTES, ErrorCause, Op
from hw.config import AcceleratorConfig
from sim.accelerator_rtl import Run, build_accelerator, expected_run, run_accelerator

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests" / "accelerator"
CONFIG = AcceleratorConfig(scratch_bytes=16 * 1024, wide_words=4 * 1024, max_width=64)


@pytest.fixture(scope="module")
def harness():
    return build_accelerator(CONFIG, BUILD / "build")


def _image(commands, data: dict[int, bytes], size=64 * 1024):
    image = bytearray(size)
    blob = b"".join(encode_command(c) for c in commands)
    image[:len(blob)] = blob
    for address, payload in data.items():
        image[address:address + len(payload)] = payload
    return image


def _transfers(rng):
    """LOADs and STOREs of scratch and wide memory, partial last words, a transfer across 4 KiB."""
    src, values = 0x2000, bytes(rng.randrange(256) for _ in range(6000))
    commands = [
        {"op": Op.LOAD, "bytes": 6000, "dram": src, "local": 256},
        {"op": Op.STORE, "bytes": 5998, "dram": 0x5000, "local": 256},
        {"op": Op.STORE, "bytes": 10, "dram": 0x8000, "local": 1000},
        {"op": Op.LOAD, "wide": 1, "bytes": 36, "dram": src + 100, "local": 3},
        {"op": Op.STORE, "wide": 1, "bytes": 44, "dram": 0x8100, "local": 1},
        {"op": Op.BARRIER},
        {"op": Op.END},
    ]
    return _image(commands, {src: values})


def _check(got, want):
    for key in ("done", "error", "cause"):
        assert got[key] == want[key], (key, got[key], want[key])
    if want["error"]:
        assert got["command"] == want["command"]
    else:
        assert got["commands"] == want["commands"]
    assert got["memory"] == want["memory"]


def test_transfers_equal_the_command_model_with_and_without_backpressure(harness, tmp_path):
    rng = random.Random(1)
    image = _transfers(rng)
    want = expected_run(CONFIG, image)
    assert want["done"] and want["memory"] != image
    runs = run_accelerator(harness, [Run(image), Run(image, pause=True)], tmp_path / "case")
    for got in runs:
        _check(got, want)
        assert got["cycles"] > 0


def test_errors_stop_at_the_failing_command_and_a_reset_run_is_followed_by_a_clean_one(harness, tmp_path):
    rng = random.Random(2)
    good = _transfers(rng)
    bad_opcode = bytearray(good)
    bad_opcode[3 * COMMAND_BYTES] = 0x3F
    too_far = _image([{"op": Op.LOAD, "bytes": 64, "dram": 0x2000, "local": CONFIG.scratch_bytes - 32}, {"op": Op.END}], {})
    misaligned = _image([{"op": Op.LOAD, "bytes": 6, "dram": 0x2000, "local": 0}, {"op": Op.END}], {})
    long_run = _image([{"op": Op.LOAD, "bytes": 12000, "dram": 0x2000, "local": 0},
                       {"op": Op.STORE, "bytes": 12000, "dram": 0x8000, "local": 0}, {"op": Op.END}],
                      {0x2000: bytes(rng.randrange(256) for _ in range(12000))})
    runs = [Run(bad_opcode), Run(too_far), Run(misaligned), Run(long_run, pause=True, reset_after=3000), Run(good)]
    got = run_accelerator(harness, runs, tmp_path / "case")
    for run, result, cause in zip(runs[:3], got[:3], (ErrorCause.BAD_OPCODE, ErrorCause.OUT_OF_RANGE, ErrorCause.BAD_SIZE)):
        want = expected_run(CONFIG, run.image)
        assert want["cause"] == cause.value
        _check(result, want)
    abandoned = got[3]
    assert not abandoned["done"] and not abandoned["error"]
    _check(got[4], expected_run(CONFIG, good))
