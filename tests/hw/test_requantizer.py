import random

import torch

from core import golden
from hw.requantizer import REQUANTIZER_LATENCY, Requantizer
from sim.amaranth_driver import run_enabled_pipeline


def _cases():
    rng = random.Random(4)
    cases = [(golden.ACC_MIN, golden.MULTIPLIER_MAX, 0), (golden.ACC_MAX, golden.MULTIPLIER_MAX, golden.SHIFT_MAX),
             (-3, 1, 1), (-1, 1, 1), (1, 1, 1), (3, 1, 1), (0, 0, 0), (-129, 1, 0), (128, 1, 0)]
    cases += [(rng.randint(golden.ACC_MIN, golden.ACC_MAX), rng.randint(0, golden.MULTIPLIER_MAX), rng.randint(0, golden.SHIFT_MAX))
              for _ in range(400)]
    cases += [(rng.randint(-(2**20), 2**20), rng.randint(2**15, 2**16 - 1), rng.randint(20, 30)) for _ in range(400)]
    return cases


def _golden(cases):
    return [int(golden.requantize(torch.tensor([[a]], dtype=torch.int32), torch.tensor([m]), torch.tensor([s]))[0, 0])
            for a, m, s in cases]


def _run(cases, enables):
    """Feed ``cases`` one per enabled cycle; return the results in the order they come out."""
    dut = Requantizer()
    inputs = [{"value": a, "multiplier": mult, "shift": s} for a, mult, s in cases]
    return run_enabled_pipeline(dut, inputs, dut.result, REQUANTIZER_LATENCY, enables)


def test_requantizer_equals_golden():
    cases = _cases()
    assert _run(cases, [1] * (len(cases) + REQUANTIZER_LATENCY - 1)) == _golden(cases)


def test_requantizer_holds_while_disabled():
    cases = _cases()[:200]
    rng = random.Random(9)
    enables = [1 if rng.random() < 0.6 else 0 for _ in range(4 * len(cases))]
    assert sum(enables) >= len(cases) + REQUANTIZER_LATENCY - 1
    assert _run(cases, enables) == _golden(cases)
