"""The generated Verilog against the golden model, through cocotb: Verilator, and Icarus for a cross-check.

Each case streams a whole program from memory files and compares the whole output tensor with the
golden model (exact equality) inside the cocotb test.
"""

from pathlib import Path

import pytest
import torch

from firmware_gen.image import LinearImage
from firmware_gen.program import build_program
from hw.config import EngineConfig
from hw.cycle_model import matmul_cycles
from sim.cases import random_case
from sim.rtl import BitExactMismatch, build_harness, run_program
from sim.toolchain import icarus_available
from core.quantize import compress_linear

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests"
CONFIG = EngineConfig()


@pytest.fixture(scope="module")
def verilator_harness():
    return build_harness(CONFIG, BUILD / "verilator")


def _run(harness, image, x_q, name, *, dense=False, raw=False, stall=0, seed=1):
    acc, y = image.golden(x_q)
    program = build_program(image, x_q, harness.config, dense=dense, raw=raw)
    return run_program(harness, program, acc if raw else y, BUILD / "cases" / name, stall_percent=stall, seed=seed)


@pytest.mark.parametrize("tokens, in_features, out_features, stall, extremes, dense, raw", [
    (1, 4, 4, 0, False, False, False),
    (9, 13, 10, 30, True, False, True),
    (9, 13, 10, 30, True, False, False),
    (17, 50, 37, 50, False, False, False),
    (8, 64, 64, 0, False, True, False),
    (20, 36, 18, 60, True, False, False),
    (5, 100, 7, 30, False, True, True),
    (33, 257, 65, 20, False, False, False),
])
def test_random_cases_equal_golden(verilator_harness, tokens, in_features, out_features, stall, extremes, dense, raw):
    seed = tokens * 1000 + in_features
    image, x_q = random_case(tokens, in_features, out_features, CONFIG.pattern, seed, extremes)
    name = f"m{tokens}_k{in_features}_n{out_features}_s{stall}{'_x' if extremes else ''}{'_dense' if dense else ''}{'_raw' if raw else ''}"
    result = _run(verilator_harness, image, x_q, name, dense=dense, raw=raw, stall=stall, seed=seed)
    assert result["passed"] and result["mismatches"] == 0


@pytest.mark.parametrize("tokens, in_features, out_features, dense", [
    (1, 4, 4, False),        # one block
    (33, 257, 65, False),    # many tiles, short last tile, loading hidden
    (64, 384, 384, False),   # a MiniLM layer's tiles
    (64, 64, 8, False),      # loading slower than compute
    (24, 16, 64, False),     # rows shorter than the output drain
    (8, 64, 64, True),       # dense mode
    (5, 100, 7, True),       # dense, one partial tile
])
def test_cycle_model_equals_simulated_cycles(verilator_harness, tokens, in_features, out_features, dense):
    image, x_q = random_case(tokens, in_features, out_features, CONFIG.pattern, seed=tokens + in_features)
    result = _run(verilator_harness, image, x_q, f"cycles_m{tokens}_k{in_features}_n{out_features}{'_dense' if dense else ''}",
                  dense=dense)
    assert result["passed"]
    assert result["cycles"] == matmul_cycles(CONFIG, tokens, in_features, out_features, dense=dense).cycles


def test_bert_base_shape_from_the_training_side(verilator_harness):
    # 128 tokens × 768 in × 768 out, through sw/ (pool built from the weights, projection, int8).
    torch.manual_seed(0)
    linear = torch.nn.Linear(768, 768)
    x = torch.randn(128, 768)
    layer = compress_linear(linear, x)
    image = LinearImage.from_layer(layer)
    result = _run(verilator_harness, image, layer.quantize_input(x), "bert_base_768x768", stall=10)
    assert result["passed"] and result["mismatches"] == 0


def test_flipped_weight_in_the_image_is_caught(verilator_harness):
    image, x_q = random_case(12, 40, 24, CONFIG.pattern, seed=99)
    _, expected = image.golden(x_q)
    mutated = LinearImage.from_bytes(image.to_bytes())
    mutated.values[2, 3, 4] = -mutated.values[2, 3, 4] if mutated.values[2, 3, 4] != 0 else 77
    program = build_program(mutated, x_q, CONFIG)
    with pytest.raises(BitExactMismatch, match="outputs differ from the golden model") as failure:
        run_program(verilator_harness, program, expected, BUILD / "cases" / "mutation")
    assert not failure.value.result["passed"] and failure.value.result["mismatches"] > 0
    result = run_program(verilator_harness, program, expected, BUILD / "cases" / "mutation", check=False)
    assert not result["passed"] and result["mismatches"] > 0


def test_run_program_refuses_foreign_folders_and_wrong_expectations(verilator_harness, tmp_path):
    image, x_q = random_case(4, 8, 8, CONFIG.pattern, seed=7)
    _, expected = image.golden(x_q)
    program = build_program(image, x_q, CONFIG)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("the user's own file")
    with pytest.raises(ValueError, match="not empty and was not made by run_program"):
        run_program(verilator_harness, program, expected, mine)
    assert (mine / "notes.txt").read_text() == "the user's own file"
    with pytest.raises(ValueError, match=r"expected must be a tensor \[4, 8\]"):
        run_program(verilator_harness, program, expected[:, :3], tmp_path / "case")
    case = tmp_path / "case"
    assert run_program(verilator_harness, program, expected, case)["passed"]
    assert run_program(verilator_harness, program, expected, case)["passed"]  # its own folder is reused


def test_icarus_cross_check():
    assert icarus_available(), "Icarus Verilog (iverilog, vvp) is not on PATH; 'make setup' installs it from Debian"
    config = EngineConfig(lanes=4, max_in_features=64)
    harness = build_harness(config, BUILD / "icarus", simulator="icarus")
    image, x_q = random_case(6, 14, 9, config.pattern, seed=5, extremes=True)
    result = _run(harness, image, x_q, "icarus", stall=30)
    assert result["passed"] and result["mismatches"] == 0
