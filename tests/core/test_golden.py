import random
from fractions import Fraction
import math

import pytest
import torch

from core import golden


def reference_requantize(acc: int, mult: int, shift: int) -> int:
    """Independent reference: exact rational, round half up, saturate."""
    value = Fraction(acc * mult, 2**shift)
    rounded = math.floor(value + Fraction(1, 2))
    return max(-128, min(127, rounded))


def test_requantize_matches_exact_rational_reference():
    rng = random.Random(0)
    accs = [golden.ACC_MIN, golden.ACC_MAX, 0, 1, -1, 3, -3, 5, -5] + [rng.randint(golden.ACC_MIN, golden.ACC_MAX) for _ in range(300)]
    accs += [rng.randint(-(2**20), 2**20) for _ in range(300)]
    for shift in (0, 1, 2, 15, 24, 31, golden.SHIFT_MAX):
        mults = [0, 1, golden.MULTIPLIER_MAX] + [rng.randint(0, golden.MULTIPLIER_MAX) for _ in range(5)]
        for mult in mults:
            acc = torch.tensor(accs, dtype=torch.int32)[:, None]
            got = golden.requantize(acc, torch.tensor([mult]), torch.tensor([shift]))[:, 0].tolist()
            assert got == [reference_requantize(a, mult, shift) for a in accs], (mult, shift)


def test_requantize_rounds_half_up():
    acc = torch.tensor([[-3, -1, 1, 3]], dtype=torch.int32)
    assert golden.requantize(acc, torch.ones(4, dtype=torch.int64), torch.ones(4, dtype=torch.int64)).tolist() == [[-1, 0, 1, 2]]


def test_linear_accumulate_matches_python_integers():
    g = torch.Generator().manual_seed(1)
    x = torch.randint(-128, 128, (5, 37), generator=g, dtype=torch.int8)
    x[0] = -128
    w = torch.randint(-127, 128, (6, 37), generator=g, dtype=torch.int8)
    w[0] = -127
    b = torch.randint(-(2**30), 2**30, (6,), generator=g, dtype=torch.int32)
    acc = golden.linear_accumulate(x, w, b)
    assert acc.dtype == torch.int32
    expected = [[sum(int(x[i, j]) * int(w[o, j]) for j in range(37)) + int(b[o]) for o in range(6)] for i in range(5)]
    assert acc.tolist() == expected


def test_accumulator_overflow_is_refused():
    x = torch.full((1, 4), -128, dtype=torch.int8)
    w = torch.full((1, 4), -127, dtype=torch.int8)
    with pytest.raises(golden.AccumulatorOverflowError, match="exceeds int32"):
        golden.linear_accumulate(x, w, torch.tensor([golden.ACC_MAX], dtype=torch.int32))


def test_float_tensors_are_refused():
    with pytest.raises(TypeError, match="x_q must be an integer tensor"):
        golden.linear_accumulate(torch.zeros(2, 3), torch.zeros(4, 3, dtype=torch.int8))


@pytest.mark.parametrize("real", [1.0, 0.5, 3e-3, 1.2345e-5, 0.999999, 65535.0, 2.0**-30])
def test_quantize_multiplier_is_accurate(real):
    mult, shift = golden.quantize_multiplier(real)
    assert 0 < mult <= golden.MULTIPLIER_MAX and 0 <= shift <= golden.SHIFT_MAX
    assert abs(mult / 2**shift - real) <= 2 ** -(shift + 1)  # within half a unit of the last place


@pytest.mark.parametrize("real, message", [(0.0, "positive"), (-1.0, "positive"), (float("nan"), "positive"),
                                           (70000.0, "too large"), (2.0**-60, "too small")])
def test_quantize_multiplier_refuses(real, message):
    with pytest.raises(ValueError, match=message):
        golden.quantize_multiplier(real)
