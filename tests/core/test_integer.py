"""The integer operators against exact references written with Python integers, row by row."""

import math
import random
from decimal import Decimal, getcontext

import pytest
import torch

from core import encoder, golden
from core.integer import (PROB_ONE, RECIPROCAL_BITS, SELECTION_BITS, attention_probabilities, div_round, int_exp, isqrt, layer_norm,
                          residual_add, rounding_shift, row_reciprocal, scale_by_reciprocal, scaled_sum, select_patterns,
                          table_lookup)
from core.pattern import PatternConfig, build_pool_from_energy

getcontext().prec = 60


# ----------------------------------------------------------------------------------- references


def ref_rounding_shift(x: int, shift: int) -> int:
    return (x + (1 << (shift - 1))) >> shift if shift > 0 else x


def ref_div_round(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den) if den > 0 else 0


def ref_exp(delta: int, multiplier: int, shift: int, table: list[int]) -> int:
    bits = len(table).bit_length() - 1
    t = ref_rounding_shift(delta * multiplier, shift)
    return table[t & ((1 << bits) - 1)] >> min(t >> bits, 62)


def ref_layer_norm(row: list[int], gamma: list[int], beta: list[int], shift: int, z_bits: int) -> list[int]:
    n = len(row)
    mean = ref_div_round(sum(row), n)
    d = [r - mean for r in row]
    sigma = math.isqrt(sum(v * v for v in d))
    out = []
    for v, g, b in zip(d, gamma, beta):
        z = ref_div_round(v << z_bits, sigma)
        out.append(max(-128, min(127, ref_rounding_shift(z * g + b, shift))))
    return out


def ref_scale_by_reciprocal(x: int, total: int, fraction_bits: int, rounded: bool = False) -> int:
    """The per-row reciprocal normalization, in Python ints."""
    if total == 0:
        return 0
    ell = total.bit_length()
    r = (1 << (ell - 1 + RECIPROCAL_BITS)) // total
    shift = ell - 1 + RECIPROCAL_BITS - fraction_bits
    return (x * r + (1 << (shift - 1) if rounded and shift > 0 else 0)) >> shift


def ref_attention_row_block(scores, valid, multiplier, shift, table, masks, k):
    """One [L, L] map: returns (probs, ids) with Python ints and brute force over the pool."""
    length = len(scores)
    e = [[0] * length for _ in range(length)]
    for q in range(length):
        keys = [j for j in range(length) if valid[q] and valid[j]]
        if not keys:
            continue
        top = max(scores[q][j] for j in keys)
        for j in keys:
            e[q][j] = ref_exp(top - scores[q][j], multiplier, shift, table)
    keep = [[bool(valid[q] and valid[j]) for j in range(length)] for q in range(length)]
    ids = None
    if masks is not None:
        dense = [[ref_scale_by_reciprocal(e[q][j], sum(e[q]), SELECTION_BITS) for j in range(length)] for q in range(length)]
        blocks = -(-length // k)
        ids = [[0] * blocks for _ in range(blocks)]
        for bq in range(blocks):
            for bk in range(blocks):
                best, best_mass = None, -1
                for pid, mask in enumerate(masks):
                    mass = 0
                    for pos, kept in enumerate(mask):
                        q, j = bq * k + pos // k, bk * k + pos % k
                        if kept and q < length and j < length:
                            mass += dense[q][j]
                    if mass > best_mass:  # strict: ties keep the lower id
                        best, best_mass = pid, mass
                ids[bq][bk] = best
                for pos in range(k * k):
                    q, j = bq * k + pos // k, bk * k + pos % k
                    if q < length and j < length:
                        keep[q][j] = keep[q][j] and masks[best][pos]
    probs = []
    for q in range(length):
        total = sum(e[q][j] for j in range(length) if keep[q][j])
        probs.append([ref_scale_by_reciprocal(PROB_ONE * e[q][j], total, 0, rounded=True) if keep[q][j] else 0
                      for j in range(length)])
    return probs, ids


# ----------------------------------------------------------------------------------- elementary ops


def test_rounding_shift_and_div_round_match_python_integers():
    rng = random.Random(0)
    xs = [0, 1, -1, 2, -2, 3, -3, 2**40, -(2**40)] + [rng.randint(-(2**45), 2**45) for _ in range(500)]
    for shift in (0, 1, 2, 7, 20, 47):
        got = rounding_shift(torch.tensor(xs), shift).tolist()
        assert got == [ref_rounding_shift(x, shift) for x in xs]
    dens = [rng.randint(0, 10**6) for _ in xs]
    assert div_round(torch.tensor(xs), torch.tensor(dens)).tolist() == [ref_div_round(x, d) for x, d in zip(xs, dens)]


def test_reciprocal_normalization_matches_python_integers_and_is_within_one_unit_of_division():
    rng = random.Random(4)
    totals = [1, 2, 3, 2**15, 2**15 + 1, 2**16 - 1, 2**16, 2**22 - 1, 2**22, 2**23 - 1] + [rng.randint(1, 2**23) for _ in range(300)]
    xs = [rng.randint(0, t) for t in totals] + totals
    totals = totals + totals
    for fraction_bits, rounded in ((SELECTION_BITS, False), (0, True)):
        scale = 1 if fraction_bits else PROB_ONE
        got = scale_by_reciprocal(scale * torch.tensor(xs), torch.tensor(totals), fraction_bits, rounded=rounded).tolist()
        assert got == [ref_scale_by_reciprocal(scale * x, t, fraction_bits, rounded) for x, t in zip(xs, totals)]
        exact = [(scale * x << fraction_bits) // t if not rounded else ref_div_round(scale * x, t) for x, t in zip(xs, totals)]
        assert all(0 <= e - g <= 1 for g, e in zip(got, exact)), "reciprocal normalization is not within one unit"
        assert max(got) <= scale << fraction_bits
    r, ell = row_reciprocal(torch.tensor(totals))
    assert ell.tolist() == [t.bit_length() for t in totals]
    assert bool(((r >= 2 ** (RECIPROCAL_BITS - 1)) & (r <= 2**RECIPROCAL_BITS)).all())
    assert row_reciprocal(torch.tensor([0]))[0].tolist() == [0]
    with pytest.raises(ValueError, match="softmax row sum"):
        row_reciprocal(torch.tensor([-1]))


def test_isqrt_matches_math_isqrt_on_edges_and_random_values():
    rng = random.Random(1)
    values = list(range(0, 300)) + [2**62 - 1]
    for k in range(1, 62):
        values += [2**k - 1, 2**k, 2**k + 1, (2 ** (k // 2)) ** 2 - 1, (2 ** (k // 2)) ** 2]
    values += [rng.randint(0, 2**62 - 1) for _ in range(5000)] + [rng.randint(0, 2**40) ** 2 for _ in range(500)]
    values = [v for v in values if 0 <= v < 2**62]
    assert isqrt(torch.tensor(values)).tolist() == [math.isqrt(v) for v in values]
    with pytest.raises(ValueError, match="isqrt input"):
        isqrt(torch.tensor([-1]))


def test_scaled_sum_is_exact_and_refuses_out_of_range_operands():
    rng = torch.Generator().manual_seed(2)
    a = torch.randint(-128, 128, (3, 17), generator=rng, dtype=torch.int8)
    b = torch.randint(-128, 128, (3, 17), generator=rng, dtype=torch.int8)
    got = scaled_sum([(a, torch.tensor(4096)), (b, torch.tensor(77))])
    assert got.tolist() == [[x * 4096 + y * 77 for x, y in zip(ra, rb)] for ra, rb in zip(a.tolist(), b.tolist())]
    with pytest.raises(ValueError, match="sum term 1"):
        scaled_sum([(a, torch.tensor(1)), (b.to(torch.int64) * 2, torch.tensor(1))])
    with pytest.raises(TypeError, match="sum term 0 must be an integer tensor"):
        scaled_sum([(a.float(), torch.tensor(1))])


def test_residual_add_shifts_the_int8_input_to_the_fine_scale_and_bounds_the_branch():
    g = torch.Generator().manual_seed(12)
    wide = torch.randint(-(2**23), 2**23, (4, 9), generator=g)
    x = torch.randint(-128, 128, (4, 9), generator=g, dtype=torch.int8)
    got = residual_add(wide, x, 8)
    assert got.tolist() == [[w + v * 256 for w, v in zip(rw, rx)] for rw, rx in zip(wide.tolist(), x.tolist())]
    with pytest.raises(ValueError, match="residual branch has values"):
        residual_add(wide * 2, x, 8)


def test_wide_requantization_saturates_to_its_width():
    acc = torch.tensor([[2**30, -(2**30), 1000]])
    mult, shift = torch.tensor([2**15, 2**15, 2**15]), torch.tensor([0, 0, 15])
    assert golden.requantize(acc, mult, shift, out_bits=24).tolist() == [[2**23 - 1, -(2**23), 1000]]
    assert golden.requantize(acc, mult, shift).tolist() == [[127, -128, 127]]
    with pytest.raises(ValueError, match="out_bits must be in 8..32"):
        golden.requantize(acc, mult, shift, out_bits=40)


# ----------------------------------------------------------------------------------- exponential


def test_exp_table_entries_are_correctly_rounded_powers_of_two():
    table = encoder.exp_table()
    bits, out_bits = encoder.EXP_FRACTION_BITS, encoder.EXP_OUT_BITS
    assert table.shape == (2**bits,) and int(table[0]) == 2**out_bits
    for f, value in enumerate(table.tolist()):
        exact = Decimal(2) ** (Decimal(out_bits) - Decimal(f) / Decimal(2**bits))
        assert abs(Decimal(value) - exact) <= Decimal("0.5"), f


def test_int_exp_over_its_whole_input_range():
    """Every exponent the table can produce (all integer parts up to where the result is 0, every
    fraction), against Python integers, and within its error bound of the real exponential."""
    table = encoder.exp_table()
    multiplier, shift = encoder.exp_parameters(0.05, 0.04, 32)
    c = multiplier / 2**shift  # exponent (fixed point) per unit of delta
    bits = encoder.EXP_FRACTION_BITS
    last = math.ceil((encoder.EXP_OUT_BITS + 2) * 2**bits / c) + 2
    deltas = torch.arange(0, last)
    got = int_exp(deltas, multiplier, shift, table)
    table_list = table.tolist()
    assert got.tolist() == [ref_exp(d, multiplier, shift, table_list) for d in range(last)]
    assert int(got[-1]) == 0 and int(got[0]) == 2**encoder.EXP_OUT_BITS
    # error bound: exponent rounding (half a fraction step), table rounding (1/2), floor of the shift (1)
    real = 2.0**encoder.EXP_OUT_BITS * torch.exp2(-deltas.double() * c / 2**bits)
    bound = real * (2.0 ** (0.5 / 2**bits) - 1) + 1.5
    assert bool(((got.double() - real).abs() <= bound).all())
    huge = torch.tensor([2**21, 2**30])  # far beyond: shifts out to zero, no wrap
    assert int_exp(huge, multiplier, shift, table).tolist() == [0, 0]


# ----------------------------------------------------------------------------------- tables


def test_gelu_grid_keeps_the_top_and_starts_at_gelus_minimum():
    low = encoder.gelu_minimum()
    assert -0.17 < low < -0.1699 and low <= float(encoder.gelu(torch.linspace(-3, 3, 60001, dtype=torch.float64)).min())
    for scale in (0.01, 0.0437, 0.2):
        step, zero = encoder.gelu_grid(scale)
        assert -128 <= zero <= 127
        assert round(low / step) + zero == -128 and abs((127 * scale) / step + zero - 127) <= 1
        table = encoder.activation_table(encoder.gelu, 0.05, step, zero)
        for x in range(-128, 128):
            v = x * 0.05
            expected = max(-128, min(127, round(0.5 * v * (1 + math.erf(v / math.sqrt(2))) / step) + zero))
            assert int(table[x + 128]) == expected, (scale, x)


@pytest.mark.parametrize("function,name", [(encoder.gelu, "gelu"), (torch.tanh, "tanh")])
def test_activation_tables_over_all_256_inputs(function, name):
    s_in, s_out = 0.0437, (encoder.TANH_SCALE if name == "tanh" else 0.0213)
    table = encoder.activation_table(function, s_in, s_out)
    reference_function = (lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2)))) if name == "gelu" else math.tanh
    for x in range(-128, 128):
        expected = max(-128, min(127, round(reference_function(x * s_in) / s_out)))  # round() is half-even
        assert int(table[x + 128]) == expected, x
    xs = torch.arange(-128, 128, dtype=torch.int8)
    assert torch.equal(table_lookup(xs, table), table)
    with pytest.raises(ValueError, match="gelu input has values"):
        table_lookup(torch.tensor([128]), table, "gelu input")


# ----------------------------------------------------------------------------------- LayerNorm


def _norm_case(seed, n=48):
    g = torch.Generator().manual_seed(seed)
    gamma_f = 0.5 + torch.rand(n, generator=g, dtype=torch.float64)
    beta_f = torch.randn(n, generator=g, dtype=torch.float64) * 0.1
    return encoder.norm_constants(gamma_f, beta_f, 0.03, "test LayerNorm")


def test_layer_norm_matches_python_integers_on_random_constant_and_extreme_rows():
    n = 48
    gamma, beta, shift = _norm_case(3, n)
    g = torch.Generator().manual_seed(4)
    rows = [torch.randint(-(2**20), 2**20, (n,), generator=g) for _ in range(40)]
    rows += [torch.full((n,), 12345), torch.zeros(n, dtype=torch.int64), torch.full((n,), -(2**24))]  # variance 0
    rows += [torch.tensor([2**24, -(2**24)] * (n // 2)), torch.tensor([2**24] + [-(2**24)] * (n - 1))]  # extremes
    rows += [torch.tensor([1] + [0] * (n - 1)), torch.tensor([0, 1] * (n // 2))]  # tiny variance
    r = torch.stack(rows)
    got = layer_norm(r, gamma, beta, shift, encoder.NORM_Z_BITS)
    assert got.dtype == torch.int8
    expected = [ref_layer_norm(row.tolist(), gamma.tolist(), beta.tolist(), shift, encoder.NORM_Z_BITS) for row in r]
    assert got.tolist() == expected
    constant = got[40:43]
    assert torch.equal(constant, rounding_shift(beta, shift).clamp(-128, 127).to(torch.int8).expand(3, -1))
    with pytest.raises(ValueError, match="layer_norm input has values"):
        layer_norm(r * 2, gamma, beta, shift, encoder.NORM_Z_BITS)


def test_layer_norm_is_close_to_float_layer_norm():
    n = 384
    gamma, beta, shift = _norm_case(5, n)
    gamma_f = torch.Generator().manual_seed(5)
    g = torch.Generator().manual_seed(6)
    r = (torch.randn(64, n, generator=g, dtype=torch.float64) * 3000).round().to(torch.int64)
    got = layer_norm(r, gamma, beta, shift, encoder.NORM_Z_BITS).double() * 0.03
    real = 0.5 + torch.rand(n, generator=gamma_f, dtype=torch.float64)
    bias = torch.randn(n, generator=gamma_f, dtype=torch.float64) * 0.1
    expected = torch.nn.functional.layer_norm(r.double(), (n,), real, bias, eps=0.0).clamp(-128 * 0.03, 127 * 0.03)
    assert float((got - expected).abs().max()) <= 0.03 * 0.51 + 0.002  # half an output step plus the constants' rounding


# ----------------------------------------------------------------------------------- softmax and selection


def test_pattern_selection_matches_brute_force_over_the_pool():
    config = PatternConfig(4, 8, 6)
    g = torch.Generator().manual_seed(7)
    pool = build_pool_from_energy(torch.rand(200, 16, generator=g, dtype=torch.float64), config)
    weights = torch.randint(0, 4, (2, 3, 10, 10), generator=g)  # small values: many ties
    ids = select_patterns(weights, pool.masks)
    padded = torch.nn.functional.pad(weights, (0, 2, 0, 2))
    for idx in torch.cartesian_prod(*(torch.arange(s) for s in ids.shape)).tolist():
        b, h, bq, bk = idx
        block = padded[b, h, bq * 4:(bq + 1) * 4, bk * 4:(bk + 1) * 4].reshape(-1).tolist()
        masses = [sum(v for v, m in zip(block, mask) if m) for mask in pool.masks.tolist()]
        assert int(ids[b, h, bq, bk]) == masses.index(max(masses))


@pytest.mark.parametrize("pruned", [False, True])
def test_attention_probabilities_match_python_integers(pruned):
    """Padding, ties, empty rows (no valid key, or every kept key pruned away), lengths not divisible
    by the block size."""
    g = torch.Generator().manual_seed(8 + pruned)
    length, k = 11, 4
    scores = torch.randint(-3000, 3000, (3, 2, length, length), generator=g)
    scores[0, 0, 2] = 500  # a row of ties
    scores[1, 1, :, 3] = scores[1, 1, :, 4]  # tied columns
    valid = torch.ones(3, length, dtype=torch.bool)
    valid[1, 7:] = False  # padding
    valid[2, 1:] = False  # one token
    pool = None
    if pruned:
        pool = build_pool_from_energy(torch.rand(100, 16, generator=g, dtype=torch.float64), PatternConfig(4, 8, 5)).masks
        pool[4] = torch.tensor([True] * 8 + [False] * 8)  # keeps only the block's top two rows: empty rows appear
    multiplier, shift = encoder.exp_parameters(0.06, 0.05, 16)
    table = encoder.exp_table()
    probs, ids = attention_probabilities(scores.to(torch.int32), valid, multiplier, shift, table, pool)
    for b in range(3):
        for h in range(2):
            expected, expected_ids = ref_attention_row_block(scores[b, h].tolist(), valid[b].tolist(), multiplier, shift,
                                                             table.tolist(), pool.tolist() if pruned else None, k)
            assert probs[b, h].tolist() == expected
            if pruned:
                assert ids[b, h].tolist() == expected_ids
    assert int(probs.max()) <= PROB_ONE and int(probs.min()) >= 0
    assert bool((probs[1, :, 7:] == 0).all()) and bool((probs[1, :, :, 7:] == 0).all())  # padding gets nothing
    assert probs[2, :, 0, 0].tolist() == [PROB_ONE, PROB_ONE]


def test_attention_probabilities_refuse_non_integer_scores():
    table = encoder.exp_table()
    with pytest.raises(TypeError, match="scores must be an integer tensor"):
        attention_probabilities(torch.zeros(1, 1, 2, 2), torch.ones(1, 2, dtype=torch.bool), 1, 0, table)
    with pytest.raises(ValueError, match="scores has values"):
        attention_probabilities(torch.full((1, 1, 2, 2), 2**40), torch.ones(1, 2, dtype=torch.bool), 1, 0, table)


# ----------------------------------------------------------------------------------- export constants


def test_export_refuses_what_does_not_fit_and_names_it():
    with pytest.raises(ValueError, match="sum operand 1 has a scale below"):
        encoder.sum_multipliers([torch.tensor([1.0]), torch.tensor([1e-6])])
    with pytest.raises(ValueError, match="layer 3 attention LayerNorm: LayerNorm weight or output scale is not finite"):
        encoder.norm_constants(torch.tensor([float("inf")]), torch.tensor([0.0]), 0.1, "layer 3 attention LayerNorm")
    with pytest.raises(ValueError, match="too large"):
        encoder.exp_parameters(1e3, 1e3, 64)
    assert golden.quantize_multiplier(1.0) == (2**15, 15)
