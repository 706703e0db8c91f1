"""The analytical cycle model: its closed form, its regimes and its errors (tests/sim/test_rtl.py checks
it against Verilator cycle counts)."""

import pytest

from hw.config import EngineConfig
from hw.cycle_model import BERT_BASE, MINILM_L6, RUN_TAIL_CYCLES, encoder_cycles, matmul_cycles

CONFIG = EngineConfig()


@pytest.mark.parametrize("tokens, in_features, out_features, dense", [
    (128, 768, 768, False), (128, 768, 3072, True), (100, 3072, 768, False), (9, 384, 1536, True),
])
def test_closed_form_when_loading_hides_behind_compute(tokens, in_features, out_features, dense):
    k, lanes = CONFIG.pattern.block_size, CONFIG.lanes
    kb, nb = in_features // k, out_features // k
    chunks = CONFIG.dense_chunks if dense else 1
    tiles = [min(lanes, tokens - base) for base in range(0, tokens, lanes)]
    expected = tiles[0] * kb + len(tiles) * nb * kb * chunks + tiles[-1] + RUN_TAIL_CYCLES
    assert matmul_cycles(CONFIG, tokens, in_features, out_features, dense=dense).cycles == expected


def test_load_bound_tiles_take_the_load_time():
    # 2 block rows of 16 blocks: 32 compute cycles per tile against 8 × 16 = 128 load cycles.
    run = matmul_cycles(CONFIG, 64, 64, 8)
    assert run.cycles >= 8 * 16 * 8
    assert run.utilization < 0.3


def test_dense_mode_takes_twice_the_weight_beats():
    pattern = matmul_cycles(CONFIG, 128, 768, 768)
    dense = matmul_cycles(CONFIG, 128, 768, 768, dense=True)
    assert dense.useful_macs == pattern.useful_macs
    assert 1.9 < dense.cycles / pattern.cycles < 2.0


def test_encoder_total_is_the_sum_of_its_matmuls():
    for encoder in (BERT_BASE, MINILM_L6):
        report = encoder_cycles(CONFIG, encoder, 128)
        assert report["cycles"] == sum(row["cycles"] for row in report["matmuls"])
        assert all(row["cycles"] == row["cycles_each"] * row["count"] * encoder.layers for row in report["matmuls"])
        dense = encoder_cycles(CONFIG, encoder, 128, dense=True)
        assert all(row["dense"] for row in dense["matmuls"])
        assert dense["cycles"] > report["cycles"]


@pytest.mark.parametrize("kwargs, message", [
    ({"tokens": 0}, "tokens"), ({"in_features": -4}, "in_features"), ({"out_features": 2.0}, "out_features"),
    ({"in_features": CONFIG.max_in_features + 4}, "activation buffer"),
])
def test_bad_shapes_are_refused(kwargs, message):
    shape = {"tokens": 8, "in_features": 16, "out_features": 16, **kwargs}
    with pytest.raises(ValueError, match=message):
        matmul_cycles(CONFIG, **shape)
