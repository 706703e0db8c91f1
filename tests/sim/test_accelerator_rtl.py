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


def _norm_and_table_program(rng, tokens, width):
    """Random rows in wide and scratch memory, a NORM over them, TABLEs (one in place), STOREs of all
    (only of what the program writes: on-chip memory keeps its contents from run to run)."""
    import numpy as np

    from firmware_gen.compiler import pack_norm, pack_table
    import torch

    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    wide = torch.randint(-(2**20), 2**20, (tokens * width,), generator=gen)
    wide[:width] = 5000  # a constant row: σ = 0
    residual = torch.randint(-128, 128, (tokens * width,), generator=gen)
    gamma = torch.randint(-(2**15), 2**15, (width,), generator=gen)
    beta = torch.randint(-(2**24), 2**24, (width,), generator=gen)
    table = torch.randint(-128, 128, (256,), generator=gen)
    n = tokens * width
    data = {0x1000: wide.numpy().astype("<i4").tobytes(), 0x3000: residual.numpy().astype(np.int8).tobytes(),
            0x4000: pack_norm(gamma, beta), 0x4800: pack_table(table)}
    commands = [
        {"op": Op.LOAD, "wide": 1, "bytes": 4 * n, "dram": 0x1000, "local": 7},
        {"op": Op.LOAD, "bytes": -(-n // 4) * 4, "dram": 0x3000, "local": 64},
        {"op": Op.NORM, "ends_layer": 1, "tokens": tokens, "width": width, "shift": 20, "wide_src": 7, "residual": 64,
         "dst": 2048 + 1, "params": 0x4000},
        {"op": Op.TABLE, "count": n // 4 * 4, "src": 64, "dst": 4096, "table": 0x4800},
        {"op": Op.TABLE, "count": n // 8 * 4, "src": 4096, "dst": 4096, "table": 0x4800},  # in place
        {"op": Op.STORE, "bytes": n - 1, "dram": 0x6000, "local": 2048},  # a partial last word
        {"op": Op.STORE, "bytes": n // 4 * 4, "dram": 0x7000, "local": 4096},
        {"op": Op.END},
    ]
    return _image(commands, data)


def test_norm_and_table_equal_the_command_model(harness, tmp_path):
    rng = random.Random(3)
    images = [_norm_and_table_program(rng, 5, 48), _norm_and_table_program(rng, 3, 64)]
    bad_width = bytearray(images[1])
    bad_width[2 * COMMAND_BYTES + 4] = 65  # NORM width 65 > max_width 64
    bad_table = bytearray(images[0])
    bad_table[3 * COMMAND_BYTES + 4] = 2  # TABLE count not whole words
    runs = [Run(images[0]), Run(images[1], pause=True), Run(bad_width), Run(bad_table)]
    got = run_accelerator(harness, runs, tmp_path / "case")
    for run, result in zip(runs, got):
        want = expected_run(CONFIG, run.image)
        _check(result, want)
    assert got[0]["layers"] == 1 and got[2]["cause"] == ErrorCause.OUT_OF_RANGE.value and got[3]["cause"] == ErrorCause.BAD_SIZE.value
    flipped = bytearray(images[0])
    flipped[0x4000 + 8 * 5 + 1] ^= 0x40  # bit 14 of one channel's γ
    assert expected_run(CONFIG, flipped)["memory"][0x6000:0x6100] != got[0]["memory"][0x6000:0x6100]
