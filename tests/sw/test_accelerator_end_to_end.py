"""End to end on the RTL: the tiny trained model (pattern + ADMM + int8 + attention-map pruning),
compiled by firmware_gen, run by the accelerator top in cocotb + Verilator (cocotbext-axi's AxiRam as
DRAM, AxiLiteMaster as the host) on real MRPC sentences with padding: every layer boundary, the pooled
vector, the logits and the label equal the integer encoder's; the whole memory equals the command
model's. Attention pruning on and off, AXI backpressure, a reset in the middle of a run followed by a
clean run."""

from pathlib import Path

import pytest

from core.artifact import load_artifact
from firmware_gen.compiler import TRACE_TENSORS, compile_model, encoder_of
from sim.accelerator_rtl import (SMALL, Run, build_accelerator, build_accelerator_harness, expected_run, run_accelerator,
                                 run_accelerator_fast)
from sw.evaluate import dev_batch
from tests.sw.tiny_run import GLUE

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests" / "accelerator"  # shared with tests/sim/test_accelerator_rtl.py
CONFIG = SMALL
SEQ_LEN = CONFIG.max_seq


@pytest.fixture(scope="module")
def harness():
    return build_accelerator(CONFIG, BUILD / "build")


@pytest.fixture(scope="module")
def long_harness():
    return build_accelerator_harness(CONFIG, BUILD / "build", memory_words=1 << 16)


@pytest.fixture(scope="module")
def sentences(result):
    artifact = load_artifact(result.artifact)
    return artifact, dev_batch(artifact, GLUE, "mrpc", 2, SEQ_LEN)


def _image(compiled, encoder, batch, index):
    ids, mask, types = (batch[n][index:index + 1] for n in ("input_ids", "attention_mask", "token_type_ids"))
    image = compiled.image()
    region = compiled.region("input")
    image[region.address:region.address + region.size] = compiled.input_bytes(encoder.embed(ids, types)[0], int(mask.sum()))
    return image, encoder(ids, mask, types, trace=True)


def _check_against_the_encoder(compiled, memory, golden):
    mismatches = compiled.mismatches(memory, golden)
    stored = {f"layer{i}.{name}" for i in range(len(golden.layers)) for name in TRACE_TENSORS} | {"pooled", "logits"}
    assert set(mismatches) == stored  # every boundary of every layer was stored and compared
    assert not any(mismatches.values()), {name: n for name, n in mismatches.items() if n}
    return int(compiled.read(memory, "logits").argmax())


@pytest.mark.parametrize("pruning", [True, False], ids=["attention-pruned", "attention-dense"])
def test_the_trained_model_on_the_rtl_equals_the_integer_encoder_at_every_boundary(harness, sentences, pruning, tmp_path):
    artifact, batch = sentences
    compiled = compile_model(artifact, CONFIG, SEQ_LEN, trace=True, attention_pruning=pruning)
    encoder = encoder_of(artifact, pruning)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert min(lengths) < SEQ_LEN and len(set(lengths)) == 2
    cases = [_image(compiled, encoder, batch, i) for i in range(2)]
    if pruning:  # with AXI backpressure; a reset in the middle of a run, then a clean run of another sentence
        runs, checked = [Run(cases[0][0], pause=True), Run(cases[1][0], reset_after=20_000), Run(cases[1][0])], [0, 2]
    else:
        runs, checked = [Run(cases[1][0])], [0]
    got = run_accelerator(harness, runs, tmp_path / "case")
    for index in checked:
        image, golden = cases[0] if runs[index].pause else cases[1]
        _check_run(compiled, got[index], image, golden)
    if pruning:
        assert not got[1]["done"] and not got[1]["error"]


def _check_run(compiled, result, image, golden):
    want = expected_run(CONFIG, image)
    assert result["done"] and not result["error"] and result["layers"] == len(golden.layers)
    assert result["memory"] == want["memory"]
    label = _check_against_the_encoder(compiled, result["memory"], golden)
    assert label == int(golden.logits[0].argmax())


def test_the_long_run_harness_gives_the_same(long_harness, sentences, tmp_path):
    """The Verilog AXI memory and register host of the long runs (benchmarks) against the same check."""
    artifact, batch = sentences
    compiled = compile_model(artifact, CONFIG, SEQ_LEN, trace=True)
    image, golden = _image(compiled, artifact.encoder(), batch, 0)
    result = run_accelerator_fast(long_harness, image, tmp_path / "case")
    _check_run(compiled, result, image, golden)
    assert result["commands"] == len(compiled.commands) and result["cycles"] > 0
    # The check can fail: one flipped weight byte in the image, and the RTL's outputs are not the golden's.
    region = compiled.region("layer1.ffn_input")
    image[region.address + region.size - 3] ^= 0x40
    flipped = run_accelerator_fast(long_harness, image, tmp_path / "flipped")
    assert flipped["done"]
    mismatches = compiled.mismatches(flipped["memory"], golden)
    assert mismatches["layer1.gelu"] > 0 and mismatches["layer1.output_norm"] > 0
