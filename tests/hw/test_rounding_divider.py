"""The pipelined rounded divider against ``core.integer.div_round`` and Python integers, with stalls."""

import random
from fractions import Fraction

import pytest
import torch

from core.integer import div_round
from hw.rounding_divider import RoundingDivider, divider_latency
from sim.amaranth_driver import run_enabled_pipeline


def _exact(num, den):
    return 0 if den == 0 else int((Fraction(num, den) + Fraction(1, 2)).__floor__())


def _cases(rng, num_width, den_width, q_bits):
    cases = [(0, 0), (5, 0), (0, 1), (1, 2), (-1, 2), (3, 2), (-3, 2), (-1, 1), (7, 7), (-7, 7)]
    while len(cases) < 700:
        den = rng.choice([rng.randint(1, 7), rng.randint(1, 2**den_width - 1)])
        bound = min(den * (2**q_bits - 1), 2 ** (num_width - 1) - 1)
        num = rng.choice([rng.randint(-bound, bound), den * rng.randint(-(2**q_bits - 2), 2**q_bits - 2) // 2,
                          rng.choice([-1, 1]) * (den // 2), -(den // 2) - 1])
        if abs(_exact(num, den)) < 2**q_bits and -(2 ** (num_width - 1)) <= num < 2 ** (num_width - 1):
            cases.append((num, den))
    return cases


@pytest.mark.parametrize("num_width, den_width, q_bits", [(43, 32, 16), (38, 13, 25), (8, 4, 6)])
def test_matches_the_contract_with_stalls(num_width, den_width, q_bits):
    rng = random.Random(num_width)
    cases = _cases(rng, num_width, den_width, q_bits)
    dut = RoundingDivider(numerator_width=num_width, denominator_width=den_width, quotient_bits=q_bits, tag_width=10)
    enables = [1] * 20 + [int(rng.random() < 0.7) for _ in range(3 * len(cases))]
    inputs = [{"numerator": n, "denominator": d, "tag": i % 1024} for i, (n, d) in enumerate(cases)]
    got = run_enabled_pipeline(dut, inputs, dut.quotient, divider_latency(q_bits), enables)
    assert got == [_exact(n, d) for n, d in cases]
    num, den = torch.tensor([c[0] for c in cases]), torch.tensor([c[1] for c in cases])
    assert got == div_round(num, den).tolist()
    tags = run_enabled_pipeline(dut, inputs, dut.quotient_tag, divider_latency(q_bits), enables)
    assert tags == [i % 1024 for i in range(len(cases))]


def test_refuses_a_zero_width():
    with pytest.raises(ValueError, match="quotient_bits must be a positive integer"):
        RoundingDivider(numerator_width=8, denominator_width=4, quotient_bits=0)
