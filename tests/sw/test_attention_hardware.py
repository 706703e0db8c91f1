"""Real data on the attention unit's Verilog: the Q, K and V that the integer encoder of the tiny trained
model (pattern + ADMM + int8 + attention-map pruning) computes for real MRPC sentences give the encoder's
own scores, pattern ids, probabilities and context, bit for bit, in cocotb + Verilator."""

from pathlib import Path

import pytest
import torch

from core.artifact import load_artifact
from firmware_gen.attention import AttentionHead, AttentionProgram
from hw.config import AttentionConfig
from sim.attention_rtl import build_attention_harness, run_attention_program
from sw import glue
from sw.evaluate import load_tokenizer
from tests.sw.tiny_run import GLUE

BUILD = Path(__file__).resolve().parents[2] / "build" / "tests"


@pytest.fixture(scope="module")
def traced(result):
    artifact = load_artifact(result.artifact)
    tokenizer = load_tokenizer(artifact)
    examples = glue.load_glue_split(GLUE, "mrpc", "dev", limit=6)
    dataset = glue.GlueDataset(examples, tokenizer, 64, False)
    batch = glue.collate([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id)
    out = artifact.encoder()(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], trace=True)
    return artifact, batch["attention_mask"], out


def test_real_sentences_through_the_attention_rtl_equal_the_integer_encoder(traced):
    artifact, mask, out = traced
    spec = artifact.manifest["integer"]
    heads_per_layer, head_dim = spec["heads"], spec["head_dim"]
    pool = artifact.tensors["attention.pool"].to(torch.bool)
    heads, expected = [], []
    for index, layer in enumerate(out.layers):
        entry = spec["layers"][index]
        for b in range(mask.shape[0]):
            for h in range(heads_per_layer):
                part = slice(h * head_dim, (h + 1) * head_dim)
                heads.append(AttentionHead(layer.query[b, :, part], layer.key[b, :, part], layer.value[b, :, part],
                                           int(mask[b].sum()), entry["exp_multiplier"], entry["exp_shift"],
                                           entry["context_multiplier"], entry["context_shift"]))
                expected.append((layer.scores[b, h], layer.pattern_ids[b, h], layer.probabilities[b, h],
                                 layer.context[b, :, part]))
    program = AttentionProgram(AttentionConfig(), heads, pool)
    # The attention unit's golden model is the encoder's attention, head by head ...
    for (scores, ids, probs, context), (s, p, i, c) in zip(expected, program.golden()):
        assert torch.equal(s, scores) and torch.equal(i, ids) and torch.equal(p, probs) and torch.equal(c, context)
    # ... and the RTL equals it at every boundary.
    result = run_attention_program(build_attention_harness(program.config, BUILD / "attention"), program,
                                   BUILD / "attention_cases" / "tiny_trained", stall_percent=10)
    assert result["passed"] and not any(result["mismatches"].values())
