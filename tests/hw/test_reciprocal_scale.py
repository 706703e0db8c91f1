"""The per-entry reciprocal scaling against ``core.integer.scale_by_reciprocal``, both uses of the softmax."""

import random

import pytest
import torch

from core.encoder import EXP_OUT_BITS
from core.integer import PROB_ONE, SELECTION_BITS, row_reciprocal, scale_by_reciprocal
from hw.reciprocal_scale import SCALE_LATENCY, ReciprocalScale
from sim.amaranth_driver import run_enabled_pipeline

X_BITS = EXP_OUT_BITS + 1
ELL_BITS = 5


def _cases(seed):
    """(x, total) with 0 ≤ x ≤ total: row sums from one entry (2^15) up to 128 entries, and edges."""
    rng = random.Random(seed)
    cases = [(0, 0), (5, 0), (1, 1), (2**15, 2**15), (2**15, 2**15 + 1), (1, 2**22), (2**15, 2**22 - 1), (0, 2**20)]
    for _ in range(600):
        total = rng.choice([rng.randint(1, 2**15), rng.randint(2**15, 2**22)])
        cases.append((rng.randint(0, min(total, 2**15)), total))
    return cases


def _run(dut, cases, stalls):
    rows = row_reciprocal(torch.tensor([t for _, t in cases]))
    inputs = [(x, r, ell) for (x, _), r, ell in zip(cases, rows[0].tolist(), rows[1].tolist())]
    # The pipeline holds while en is low; a result is out after SCALE_LATENCY enabled cycles.
    return run_enabled_pipeline(dut, [{"x": x, "r": r, "ell": ell} for x, r, ell in inputs], dut.y, SCALE_LATENCY, stalls)


@pytest.mark.parametrize("use", ["selection", "probability"])
def test_matches_the_contract_with_stalls(use):
    fraction_bits, scale, rounded = (SELECTION_BITS, 1, False) if use == "selection" else (0, PROB_ONE, True)
    dut = ReciprocalScale(x_bits=X_BITS, ell_bits=ELL_BITS, fraction_bits=fraction_bits, scale=scale, rounded=rounded)
    cases = _cases(1)
    rng = random.Random(2)
    stalls = [1] * 30 + [int(rng.random() < 0.7) for _ in range(3 * len(cases))]
    got = _run(dut, cases, stalls)
    x = torch.tensor([c[0] for c in cases])
    total = torch.tensor([c[1] for c in cases])
    assert got == scale_by_reciprocal(scale * x, total, fraction_bits, rounded=rounded).tolist()


def test_refuses_a_scale_it_cannot_make_from_a_shift():
    with pytest.raises(ValueError, match="scale must be"):
        ReciprocalScale(x_bits=X_BITS, ell_bits=ELL_BITS, fraction_bits=0, scale=100)
