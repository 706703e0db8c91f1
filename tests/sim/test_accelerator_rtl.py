"""The accelerator top in cocotb + Verilator, with cocotbext-axi's AxiRam and AxiLiteMaster: command
streams run through the registers, and the whole memory after each run equals the command model's."""

import random
from pathlib import Path

import pytest

from firmware_gen.compiler import encode_command
from hw.commands import COMMAND_BYTES, ErrorCause, Op
from sim.accelerator_rtl import SMALL, Run, build_accelerator, expected_run, run_accelerator

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests" / "accelerator"
CONFIG = SMALL


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


def _matmul_program(rng, cases):
    """LOAD random int8 rows, one MATMUL per case (pattern or dense; int8, int8 through a random table, wide
    or raw), STORE every output."""
    import torch

    from firmware_gen.compiler import pack_linear
    from hw.dram_formats import linear_region_bytes
    from sim.cases import random_case

    pattern = CONFIG.engine.pattern
    commands, data, address, local_in, dram_out = [], {}, 0x2000, 0, 0xA000
    local_out = 8 * 1024
    for i, (tokens, k_in, n_out, dense, mode) in enumerate(cases):
        image, x = random_case(tokens, k_in, n_out, pattern, seed=rng.randrange(1 << 20), extremes=(mode != "int8"))
        if mode == "wide":
            image.shift[:] = 6  # results beyond 24 bits, saturated
        region = pack_linear(image.weight_q(), image.bias[:n_out], image.multiplier[:n_out], image.shift[:n_out], pattern.block_size,
                             pattern.kept_per_block, None if dense else image.pool(), None if dense else image.pattern_ids)
        assert len(region) == linear_region_bytes(n_out, k_in, block_size=pattern.block_size, kept=pattern.kept_per_block,
                                                  pool_size=pattern.pool_size, dense=dense)
        data[address] = region
        data[address + len(region) + 64] = x.numpy().tobytes()
        table = None
        if mode == "table":
            table = -(-(address + len(region) + 64 + tokens * k_in) // 64) * 64
            data[table] = bytes(rng.randrange(256) for _ in range(256))
        wide = mode not in ("int8", "table")
        out_local = 1024 * i if wide else local_out
        out_bytes = tokens * n_out * (4 if wide else 1)
        commands += [
            {"op": Op.LOAD, "bytes": tokens * k_in, "dram": address + len(region) + 64, "local": local_in},
            {"op": Op.MATMUL, "dense": int(dense), "raw": int(mode == "raw"), "wide": int(wide), "tokens": tokens, "in_features": k_in,
             "out_features": n_out, "pool_size": 0 if dense else pattern.pool_size, "src": local_in, "dst": out_local,
             "weights": address, "weight_bytes": len(region), "activate": int(table is not None), "table": table or 0},
            {"op": Op.STORE, "wide": int(wide), "bytes": out_bytes, "dram": dram_out, "local": out_local},
        ]
        address = -(-(address + len(region) + 64 + tokens * k_in) // 64) * 64 + (256 if table else 0)
        dram_out += -(-out_bytes // 64) * 64
        local_out += -(-tokens * n_out // 4) * 4
    return _image(commands + [{"op": Op.END}], data), commands


# (tokens, in, out, dense, mode): 40, 72 and 36 outputs are several passes of SMALL's 4-row chunks (and a
# shorter last one), 13, 21, 17 and 11 tokens end in a part tile
MATMUL_CASES = [(13, 64, 40, False, "int8"), (8, 32, 24, False, "wide"), (1, 64, 2, True, "raw"), (10, 16, 36, True, "wide"),
                (9, 16, 12, True, "int8"), (17, 128, 8, False, "int8"), (11, 32, 20, False, "table"), (1, 64, 16, True, "table"),
                (21, 32, 72, False, "table")]


def test_matmul_equals_the_command_model(harness, tmp_path):
    rng = random.Random(4)
    image, commands = _matmul_program(rng, MATMUL_CASES)
    bad_size = bytearray(image)
    matmul = [i for i, c in enumerate(commands) if c["op"] is Op.MATMUL]
    first = commands[matmul[0]]
    bad_size[matmul[0] * COMMAND_BYTES:(matmul[0] + 1) * COMMAND_BYTES] = encode_command(dict(first, weight_bytes=first["weight_bytes"] + 4))
    bad_id = bytearray(image)
    table = CONFIG.engine.pattern.pool_size * CONFIG.engine.pattern.kept_per_block
    bad_id[first["weights"] + table + 4 * 8 + 9 * 3] = 0xFF  # the pattern id of one block of the first row
    tabled = [i for i in matmul if commands[i]["activate"]]
    bad_table = bytearray(image)  # a table on wide outputs
    bad_table[tabled[0] * COMMAND_BYTES:(tabled[0] + 1) * COMMAND_BYTES] = encode_command(dict(commands[tabled[0]], wide=1))
    runs = [Run(image), Run(image, pause=True), Run(bad_size), Run(bad_id), Run(bad_table)]
    got = run_accelerator(harness, runs, tmp_path / "case")
    wants = [expected_run(CONFIG, run.image) for run in runs]
    assert wants[0]["done"] and wants[0]["memory"][0xA000:] != image[0xA000:]
    assert wants[2]["cause"] == ErrorCause.BAD_SIZE.value and wants[3]["cause"] == ErrorCause.OUT_OF_RANGE.value
    assert wants[4]["cause"] == ErrorCause.BAD_SIZE.value and wants[4]["command"] == tabled[0]
    # the check can fail: one table entry changed, and the model's outputs are no longer the RTL's
    changed = bytearray(image)
    changed[commands[tabled[0]]["table"]:commands[tabled[0]]["table"] + 256] = bytes(255 - b for b in image[commands[tabled[0]]["table"]:commands[tabled[0]]["table"] + 256])
    assert expected_run(CONFIG, changed)["memory"] != got[0]["memory"]
    for result, want in zip(got, wants):
        _check(result, want)
