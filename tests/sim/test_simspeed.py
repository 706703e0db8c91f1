"""The plain Verilator C++ harness (the simulation-speed ceiling of bench/simspeed.py) is a bit-exact
run too, and agrees cycle for cycle with the cocotb runs, whichever drives the clock."""

from pathlib import Path

import pytest

from firmware_gen.image import LinearImage
from firmware_gen.program import build_program
from hw.config import EngineConfig
from sim.cases import random_case
from sim.rtl import BitExactMismatch, build_harness, run_program

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests"
CONFIG = EngineConfig()


@pytest.fixture(scope="module")
def harnesses():
    # The same folder as tests/sim/test_rtl.py: the cocotb build is reused when unchanged.
    return {kind: build_harness(CONFIG, BUILD / "verilator", kind) for kind in ("verilator", "verilator-cpp")}


@pytest.mark.parametrize("tokens, in_features, out_features, stall, extremes", [
    (17, 50, 37, 50, False),
    (20, 36, 18, 30, True),
])
def test_cpp_harness_and_both_cocotb_clocks_agree(harnesses, tokens, in_features, out_features, stall, extremes):
    image, x_q = random_case(tokens, in_features, out_features, CONFIG.pattern, seed=tokens + out_features,
                             extremes=extremes)
    _, expected = image.golden(x_q)
    program = build_program(image, x_q, CONFIG)
    name = f"speed_m{tokens}_k{in_features}_n{out_features}_s{stall}"
    runs = {
        "cpp": run_program(harnesses["verilator-cpp"], program, expected, BUILD / "cases" / f"{name}_cpp",
                           stall_percent=stall, seed=3),
        "simulator clock": run_program(harnesses["verilator"], program, expected, BUILD / "cases" / f"{name}_sim",
                                       stall_percent=stall, seed=3),
        "cocotb clock": run_program(harnesses["verilator"], program, expected, BUILD / "cases" / f"{name}_gpi",
                                    stall_percent=stall, seed=3, clock="cocotb"),
    }
    for kind, result in runs.items():
        assert result["passed"] and result["mismatches"] == 0, kind
        assert result["cycles_per_second"] > 0 and result["wall_seconds"] > 0, kind
    assert len({result["cycles"] for result in runs.values()}) == 1, {k: r["cycles"] for k, r in runs.items()}


def test_cpp_harness_catches_a_flipped_weight(harnesses):
    image, x_q = random_case(12, 40, 24, CONFIG.pattern, seed=99)
    _, expected = image.golden(x_q)
    mutated = LinearImage.from_bytes(image.to_bytes())
    mutated.values[2, 3, 4] = -mutated.values[2, 3, 4] if mutated.values[2, 3, 4] != 0 else 77
    with pytest.raises(BitExactMismatch, match="outputs differ") as failure:
        run_program(harnesses["verilator-cpp"], build_program(mutated, x_q, CONFIG), expected, BUILD / "cases" / "mutation_cpp")
    assert not failure.value.result["passed"] and failure.value.result["mismatches"] > 0


def test_simulator_clock_needs_the_verilator_harness(harnesses):
    image, x_q = random_case(2, 8, 8, CONFIG.pattern, seed=1)
    _, expected = image.golden(x_q)
    with pytest.raises(ValueError, match="clock"):
        run_program(harnesses["verilator-cpp"], build_program(image, x_q, CONFIG), expected,
                    BUILD / "cases" / "bad_clock", clock="simulator")
