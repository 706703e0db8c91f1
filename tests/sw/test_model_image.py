"""The model compiler on the tiny trained model (pattern + ADMM + int8 + attention-map pruning): its
memory image, run by the command model, gives the integer encoder's tensors at every layer boundary, its
pooled vector, logits and labels, for real MRPC sentences with padding; corruption and models that do not
fit are reported."""

import json
import re
from dataclasses import fields, replace

import pytest
import torch

from core.artifact import load_artifact
from core.pattern import PatternConfig
from firmware_gen.compiler import UNSTORED_TENSORS, CompileError, compile_model, decode_command, encode_command, load_image
from hw.commands import COMMAND_BYTES, ErrorCause, Op
from hw.config import AcceleratorConfig, AttentionConfig, EngineConfig
from sim.command_model import CommandError, CommandModel
from sw.evaluate import dev_batch
from tests.sw.tiny_run import GLUE

SEQ_LEN = 64
CONFIG = AcceleratorConfig(engine=EngineConfig(max_in_features=256), attention=AttentionConfig(max_seq=SEQ_LEN),
                           max_width=64, scratch_bytes=64 * 1024, wide_words=8 * 1024)


@pytest.fixture(scope="module")
def model(result):
    artifact = load_artifact(result.artifact)
    return artifact, dev_batch(artifact, GLUE, "mrpc", 3, SEQ_LEN)


def _run(compiled, encoder, batch, index, image=None):
    ids, mask, types = (batch[n][index:index + 1] for n in ("input_ids", "attention_mask", "token_type_ids"))
    image = compiled.image() if image is None else image
    rows = encoder.embed(ids, types)[0]
    inp = compiled.region("input")
    image[inp.address:inp.address + inp.size] = compiled.input_bytes(rows, int(mask.sum()))
    model = CommandModel(compiled.config, image)
    stats = model.run()
    return image, stats, encoder(ids, mask, types, trace=True)


def test_every_layer_boundary_pooled_and_logits_equal_the_integer_encoder(model):
    artifact, batch = model
    compiled = compile_model(artifact, CONFIG, SEQ_LEN, trace=True)
    encoder = artifact.encoder()
    lengths = batch["attention_mask"].sum(1).tolist()
    assert len(set(lengths)) > 1 and min(lengths) < SEQ_LEN  # different lengths, padding included
    for index in range(batch["input_ids"].shape[0]):
        image, stats, golden = _run(compiled, encoder, batch, index)
        # every tensor of the golden model's trace is stored, but those that never leave a unit
        traced = {f.name for f in fields(golden.layers[0])} - set(UNSTORED_TENSORS)
        assert {f"layer{i}.{name}" for i in range(len(golden.layers)) for name in traced} | {"pooled", "logits"} == set(compiled.outputs)
        mismatches = compiled.mismatches(image, golden)
        assert not any(mismatches.values()), {name: n for name, n in mismatches.items() if n}
        logits = compiled.read(image, "logits")
        assert torch.equal(logits, golden.logits[0])
        assert int(logits.argmax()) == int(golden.logits[0].argmax())
        assert stats.layers == len(golden.layers) and stats.commands == len(compiled.commands)
        # Every constant byte is read once per run, but the attention constants and the length word,
        # which every layer's ATTENTION reads again; every command once; the input rows once.
        layers = len(golden.layers)
        constants = compiled.constant_bytes - compiled.region("commands").size
        again = (layers - 1) * compiled.region("attention.constants").size + layers * 4
        assert sum(v for k, v in stats.read.items() if k not in ("COMMANDS", "LOAD")) == constants + again
        assert stats.read["COMMANDS"] == compiled.region("commands").size
        assert stats.read["LOAD"] == SEQ_LEN * compiled.hidden


def test_a_flipped_weight_changes_the_outputs(model):
    artifact, batch = model
    compiled = compile_model(artifact, CONFIG, SEQ_LEN)
    encoder = artifact.encoder()
    image = compiled.image()
    region = compiled.region("layer1.ffn_input")
    image[region.address + region.size - 3] ^= 0x40  # one kept value of the last block
    image, _, golden = _run(compiled, encoder, batch, 0, image)
    mismatches = compiled.mismatches(image, golden)["layer1.output_norm"]
    assert mismatches > 0


def test_written_image_round_trips_and_a_corrupted_region_is_named(model, tmp_path):
    artifact, _ = model
    compiled = compile_model(artifact, CONFIG, SEQ_LEN)
    folder = compiled.write(tmp_path / "image")
    manifest, image = load_image(folder)
    assert image == compiled.image()
    assert manifest["commands"] == len(compiled.commands)
    header = (folder / "tessera_model.h").read_text()
    for r in compiled.regions:
        assert f"TESSERA_{r.name.upper().replace('.', '_')}_ADDR 0x{r.address:08X}u" in header
    victim = folder / "regions" / "layer0.query.bin"
    blob = bytearray(victim.read_bytes())
    blob[10] ^= 1
    victim.write_bytes(bytes(blob))
    with pytest.raises(CompileError, match="region layer0.query does not match its sha256"):
        load_image(folder)
    victim.write_bytes(bytes(blob[:-1]))
    with pytest.raises(CompileError, match="region layer0.query is"):
        load_image(folder)


def test_models_that_do_not_fit_are_refused_with_how_much(model, tmp_path):
    artifact, _ = model
    with pytest.raises(CompileError, match=r"sequence length: the model needs 65 tokens, the hardware has 64 tokens \(short by 1 tokens\)"):
        compile_model(artifact, CONFIG, SEQ_LEN + 1)
    small = AcceleratorConfig(engine=CONFIG.engine, attention=CONFIG.attention, max_width=64, scratch_bytes=1000, wide_words=8 * 1024)
    with pytest.raises(CompileError, match=r"scratch memory: the model needs \d+ bytes, the hardware has 1000 bytes") as caught:
        compile_model(artifact, small, 32)
    need, short = (int(v) for v in re.search(r"needs (\d+) bytes.*short by (\d+) bytes", str(caught.value)).groups())
    assert need - 1000 == short and compile_model(artifact, replace(small, scratch_bytes=need), 32).scratch_bytes == need
    with pytest.raises(CompileError, match="LayerNorm row"):
        compile_model(artifact, AcceleratorConfig(engine=CONFIG.engine, attention=CONFIG.attention, max_width=32), SEQ_LEN)
    other = EngineConfig(pattern=PatternConfig(block_size=4, kept_per_block=4, pool_size=32), max_in_features=256)
    with pytest.raises(CompileError, match="pattern blocks 4×4 keeping 8, the hardware's are 4×4 keeping 4"):
        compile_model(artifact, AcceleratorConfig(engine=other, attention=CONFIG.attention, max_width=64), SEQ_LEN)
    few = AttentionConfig(engine=EngineConfig(pattern=PatternConfig(4, 8, 4), weight_bits=9), max_seq=SEQ_LEN, patterns_per_cycle=4)
    with pytest.raises(CompileError, match="attention pool: the model needs 8 patterns, the hardware has 4 patterns"):
        compile_model(artifact, AcceleratorConfig(engine=CONFIG.engine, attention=few, max_width=64), SEQ_LEN)
    assert not (tmp_path / "image").exists()


def test_a_bad_opcode_and_an_undersized_region_stop_the_run_with_their_cause(model):
    artifact, batch = model
    compiled = compile_model(artifact, CONFIG, SEQ_LEN)
    image = compiled.image()
    image[5 * COMMAND_BYTES] = 0x7F
    with pytest.raises(CommandError, match="command 5: BAD_OPCODE") as caught:
        CommandModel(CONFIG, image).run()
    assert caught.value.cause is ErrorCause.BAD_OPCODE
    image = compiled.image()
    op, fields = decode_command(image[COMMAND_BYTES:2 * COMMAND_BYTES])
    assert op is Op.MATMUL
    image[COMMAND_BYTES:2 * COMMAND_BYTES] = encode_command({"op": op, **dict(fields, weight_bytes=fields["weight_bytes"] - 1)})
    with pytest.raises(CommandError, match="command 1: BAD_SIZE") as caught:
        CommandModel(CONFIG, image).run()
    assert caught.value.cause is ErrorCause.BAD_SIZE
    assert json.loads(CONFIG.to_json())["max_width"] == 64
