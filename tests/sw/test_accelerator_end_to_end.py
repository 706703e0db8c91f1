"""End to end on the RTL: the tiny trained model (pattern + ADMM + int8 + attention-map pruning),
compiled by firmware_gen, run by the accelerator top in cocotb + Verilator (cocotbext-axi's AxiRam as
DRAM, AxiLiteMaster as the host) on real MRPC sentences with padding: every layer boundary, the pooled
vector, the logits and the label equal the integer encoder's; the whole memory equals the command
model's. Attention pruning on and off, AXI backpressure, a reset in the middle of a run followed by a
clean run."""

from pathlib import Path

import pytest
import torch

from core.artifact import load_artifact
from firmware_gen.compiler import TRACE_TENSORS, compile_model, encoder_of
from hw.config import AcceleratorConfig, AttentionConfig, EngineConfig
from sim.accelerator_rtl import Run, build_accelerator, expected_run, run_accelerator
from sw import glue
from sw.evaluate import load_tokenizer
from tests.sw.tiny_run import GLUE

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests" / "accelerator_model"
SEQ_LEN = 64
CONFIG = AcceleratorConfig(engine=EngineConfig(max_in_features=128), attention=AttentionConfig(max_seq=SEQ_LEN),
                           max_width=64, scratch_bytes=32 * 1024, wide_words=4 * 1024, chunk_rows=4)


@pytest.fixture(scope="module")
def harness():
    return build_accelerator(CONFIG, BUILD / "build")


@pytest.fixture(scope="module")
def sentences(result):
    artifact = load_artifact(result.artifact)
    tokenizer = load_tokenizer(artifact)
    examples = glue.load_glue_split(GLUE, "mrpc", "dev", limit=2)
    dataset = glue.GlueDataset(examples, tokenizer, SEQ_LEN, False)
    batch = glue.collate([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id)
    pad = SEQ_LEN - batch["input_ids"].shape[1]
    for name, value in (("input_ids", tokenizer.pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
        batch[name] = torch.nn.functional.pad(batch[name], (0, pad), value=value)
    return artifact, batch


def _image(compiled, encoder, batch, index):
    ids, mask, types = (batch[n][index:index + 1] for n in ("input_ids", "attention_mask", "token_type_ids"))
    image = compiled.image()
    region = compiled.region("input")
    image[region.address:region.address + region.size] = compiled.input_bytes(encoder.embed(ids, types)[0], int(mask.sum()))
    return image, encoder(ids, mask, types, trace=True)


def _read(compiled, memory, name):
    out = compiled.outputs[name]
    region = compiled.region(out.region)
    blob = bytearray(memory[region.address:region.address + region.size])
    return torch.frombuffer(blob, dtype=torch.int32 if out.wide else torch.int8).to(torch.int64).reshape(out.shape)


def _check_against_the_encoder(compiled, memory, golden):
    for i, layer in enumerate(golden.layers):
        for name in TRACE_TENSORS:
            assert torch.equal(_read(compiled, memory, f"layer{i}.{name}"), getattr(layer, name)[0].to(torch.int64)), (i, name)
    assert torch.equal(_read(compiled, memory, "pooled"), golden.pooled[0].to(torch.int64))
    logits = _read(compiled, memory, "logits")
    assert torch.equal(logits, golden.logits[0])
    return int(logits.argmax())


@pytest.mark.parametrize("pruning", [True, False], ids=["attention-pruned", "attention-dense"])
def test_the_trained_model_on_the_rtl_equals_the_integer_encoder_at_every_boundary(harness, sentences, pruning, tmp_path):
    artifact, batch = sentences
    compiled = compile_model(artifact, CONFIG, SEQ_LEN, trace=True, attention_pruning=pruning)
    encoder = encoder_of(artifact, pruning)
    lengths = batch["attention_mask"].sum(1).tolist()
    assert min(lengths) < SEQ_LEN and len(set(lengths)) == 2
    cases = [_image(compiled, encoder, batch, i) for i in range(2)]
    runs = [Run(cases[0][0], pause=True), Run(cases[1][0])]
    if pruning:  # a reset in the middle of a run, then a clean run of the same image
        runs += [Run(cases[1][0], reset_after=20_000), Run(cases[1][0])]
    got = run_accelerator(harness, runs, tmp_path / "case")
    for result, (image, golden) in zip(got[:2] + got[3:], [cases[0], cases[1], cases[1]]):
        want = expected_run(CONFIG, image)
        assert result["done"] and not result["error"] and result["layers"] == len(golden.layers)
        assert result["memory"] == want["memory"]
        label = _check_against_the_encoder(compiled, result["memory"], golden)
        assert label == int(golden.logits[0].argmax())
    if pruning:
        assert not got[2]["done"] and not got[2]["error"]
