"""The whole recipe on a tiny BERT: ADMM → hard prune → SR-STE retrain → export → load, and the artifact checks."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from firmware_gen.image import LinearImage
from sw import glue
from sw.admm import ADMM, ADMMSettings
from core.artifact import MANIFEST, TENSORS, ArtifactError, load_artifact
from sw.artifact import to_model
from sw.masking import masked_weights
from sw.pipeline import DEFAULT_INCLUDE, CompressionConfig, TrainConfig, find_targets, make_projections, run
from sw.tiny import make_tiny_checkpoint

from tests.sw.tiny_run import GLUE, tiny_config


def test_every_phase_runs_and_is_measured(result):
    assert [p.name for p in result.phases] == ["finetune", "admm", "retrain"]
    for key in ("finetune", "admm", "pruned", "attention_pruned", "retrain", "artifact"):
        assert set(result.metrics[key]) == {"f1", "accuracy"}
    admm = result.phases[1]
    assert len(admm.residuals) == admm.steps // 2 and admm.residuals[0]["per_layer"]
    json.dumps(result.summary())  # the summary is JSON


def test_admm_moves_weights_towards_the_pattern_set(result):
    from sw.analysis import pruned_energy_fraction

    for name, before in result.weight_snapshots["before_admm"].items():
        after = result.weight_snapshots["after_admm"][name]
        assert float(pruned_energy_fraction(after).mean()) < float(pruned_energy_fraction(before).mean())


def test_artifact_holds_pattern_int8_layers_that_feed_the_golden_model(result):
    artifact = load_artifact(result.artifact)
    model_targets = find_targets(to_model(artifact), DEFAULT_INCLUDE, [])
    assert sorted(artifact.layers) == sorted(model_targets)  # Q, K, V, attention output, FFN in/out per layer
    assert len(model_targets) == 12
    name = model_targets[0]
    layer = artifact.quantized_linear(name)
    pool = artifact.pool(name)
    assert torch.equal(layer.weight_q != 0, (layer.weight_q != 0) & artifact.tensor(name, "mask"))
    assert int(artifact.tensor(name, "mask").sum()) == layer.weight_q.numel() // 2
    image = LinearImage.from_layer(layer)
    x_q = torch.randint(-127, 128, (5, layer.in_features), dtype=torch.int8)
    acc, y = image.golden(x_q)
    assert torch.equal(acc, layer.forward_int(x_q)[0]) and torch.equal(y, layer.forward_int(x_q)[1])
    assert pool.config.pool_size == 16
    assert artifact.manifest["attention_pruning"]["pattern"]["pool_size"] == 8


def test_masks_survive_save_load_and_continued_training(result):
    artifact = load_artifact(result.artifact)
    model = to_model(artifact)
    masks = artifact.masks()
    assert set(masked_weights(model)) == set(masks)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    batch = {"input_ids": torch.randint(5, 100, (4, 12)), "attention_mask": torch.ones(4, 12, dtype=torch.long), "labels": torch.tensor([0, 1, 1, 0])}
    for _ in range(3):
        optimizer.zero_grad()
        model(**batch).loss.backward()
        optimizer.step()
    for name, mask in masks.items():
        weight = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert not bool(weight[~mask].any()), name
        assert torch.equal(masked_weights(model)[name].mask, mask)


def corrupt(artifact_dir, tmp_path, edit_tensors=None, edit_manifest=None, rehash=True):
    target = tmp_path / "bad"
    shutil.copytree(artifact_dir, target)
    if edit_tensors:
        tensors = load_file(target / TENSORS)
        edit_tensors(tensors)
        save_file(tensors, target / TENSORS)
    manifest = json.loads((target / MANIFEST).read_text())
    if rehash:
        manifest["tensors"]["sha256"] = hashlib.sha256((target / TENSORS).read_bytes()).hexdigest()
    if edit_manifest:
        edit_manifest(manifest)
    (target / MANIFEST).write_text(json.dumps(manifest))
    return target


def first_layer(artifact_dir):
    return next(iter(json.loads((Path(artifact_dir) / MANIFEST).read_text())["layers"]))


def test_loader_refuses_corrupted_artifacts(result, tmp_path):
    good = result.artifact
    layer = first_layer(good)
    p = f"linear.{layer}."

    cases = {
        "ids outside the pool": dict(edit_tensors=lambda t: t[p + "pattern_ids"].view(-1)[0].fill_(16)),
        "does not follow its block patterns": dict(edit_tensors=lambda t: t[p + "pattern_ids"].view(-1)[0].apply_(lambda v: (v + 1) % 16)),
        "nonzero weights outside its mask": dict(edit_tensors=lambda t: t[p + "weight_q"].masked_fill_(~t[p + "mask"], 3)),
        "values outside ±127": dict(edit_tensors=lambda t: t[p + "weight_q"].view(-1).index_fill_(0, t[p + "mask"].view(-1).nonzero()[0], -128)),
        "not a valid pattern pool": dict(edit_tensors=lambda t: t[p + "pool"][0].fill_(True)),
        "tensor .*weight_scale is missing": dict(edit_tensors=lambda t: t.pop(p + "weight_scale")),
        "version 3 is not supported": dict(edit_manifest=lambda m: m.update(version=3)),
        "version 1 lacks the integer encoder: re-export it with `python -m sw.export": dict(edit_manifest=lambda m: m.update(version=1)),
        "missing the integer encoder section": dict(edit_manifest=lambda m: m.pop("integer")),
        "tensor int.layer.0.gelu_table is missing": dict(edit_tensors=lambda t: t.pop("int.layer.0.gelu_table")),
        r"int.exp_table is torch.int64 .*, expected torch.int32": dict(edit_tensors=lambda t: t.update({"int.exp_table": t["int.exp_table"].long()})),
        r"int.layer.1.ffn_output.shift has values in \[.*, 60\], outside \[0, 47\]": dict(edit_tensors=lambda t: t["int.layer.1.ffn_output.shift"].view(-1)[3].fill_(60)),
        "int.embeddings.word_multiplier has values": dict(edit_tensors=lambda t: t["int.embeddings.word_multiplier"].view(-1)[7].fill_(-1)),
        "layer 0 exp_multiplier 70000 is not a 16-bit multiplier": dict(edit_manifest=lambda m: m["integer"]["layers"][0].update(exp_multiplier=70000)),
        "bad input_scale": dict(edit_manifest=lambda m: m["layers"][layer].update(input_scale=-1.0)),
    }
    for message, edits in cases.items():
        bad = corrupt(good, tmp_path, **edits)
        with pytest.raises(ArtifactError, match=message):
            load_artifact(bad)
        shutil.rmtree(bad)
    flipped = corrupt(good, tmp_path)
    blob = bytearray((flipped / TENSORS).read_bytes())
    blob[len(blob) // 2] ^= 0x01
    (flipped / TENSORS).write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="sha256 does not match"):
        load_artifact(flipped)
    shutil.rmtree(flipped)
    truncated = corrupt(good, tmp_path)
    (truncated / TENSORS).write_bytes((truncated / TENSORS).read_bytes()[:1000])
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(truncated)
    (truncated / MANIFEST).unlink()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load_artifact(truncated)


def test_runs_are_deterministic_given_the_seed(checkpoint, tmp_path):
    hashes = []
    for i in range(2):
        config = tiny_config(checkpoint, tmp_path / str(i), finetune_epochs=0, admm_epochs=1, retrain_epochs=0.5)
        config.compression.attention = None
        artifact = run(config).artifact
        hashes.append(json.loads((artifact / MANIFEST).read_text())["tensors"]["sha256"])
    assert hashes[0] == hashes[1]


def test_admm_trainer_adds_the_penalty_and_updates(checkpoint, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, TrainingArguments

    from sw.hf_trainer import ADMMTrainer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    examples = glue.load_glue_split(GLUE, "mrpc", "train", limit=32)
    dataset = glue.GlueDataset(examples, tokenizer, 64)
    targets = find_targets(model, DEFAULT_INCLUDE, [])
    admm = ADMM(make_projections(model, targets, {"kind": "nm", "n": 2, "m": 4}), ADMMSettings(rho=0.1, update_every=2))
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=8, max_steps=4, logging_steps=2,
                             report_to=[], save_strategy="no", use_cpu=True, seed=0)
    trainer = ADMMTrainer(model=model, args=args, train_dataset=dataset, admm=admm,
                          data_collator=lambda batch: glue.collate(batch, tokenizer.pad_token_id))
    trainer.train()
    assert admm.steps == 4 and admm.updates == 2
    logged = [entry for entry in trainer.state.log_history if "admm_residual" in entry]
    assert logged and all(0 < entry["admm_residual"] < 1 for entry in logged)
    model.train()
    batch = glue.collate([dataset[i] for i in range(4)], tokenizer.pad_token_id)
    torch.manual_seed(1)  # same dropout masks in both forwards
    plain = model(**batch).loss
    torch.manual_seed(1)
    assert torch.allclose(trainer.compute_loss(model, batch), plain + admm.penalty())


def test_regression_task_runs_end_to_end(checkpoint, tmp_path):
    """STS-B-style regression (float scores, one output, Spearman/Pearson) through every phase."""
    folder = tmp_path / "glue" / "STS-B"
    folder.mkdir(parents=True)
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    g = torch.Generator().manual_seed(0)
    rows = [f"{i}\tmain\tf\t2012\t{i}\ts\ts\tthe man said {i}\ta man says {i % 7}\t{float(torch.rand(1, generator=g)) * 5:.2f}\n" for i in range(48)]
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text(header + "".join(rows))
    config = tiny_config(checkpoint, tmp_path / "run", task="stsb", data_dir=str(tmp_path / "glue"), train_limit=None,
                         eval_limit=None, admm_epochs=1, retrain_epochs=1)
    config.compression.attention = None
    result = run(config)
    assert set(result.metrics["retrain"]) == {"spearman", "pearson"}
    model = to_model(load_artifact(result.artifact))
    assert model.config.num_labels == 1 and model.config.problem_type == "regression"


def test_train_cli_names_a_missing_or_broken_config(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "sw.train", "--config", str(tmp_path / "nope.json")], capture_output=True, text=True)
    assert result.returncode != 0 and "nope.json: no such file" in result.stderr and "Traceback" not in result.stderr
    (tmp_path / "broken.json").write_text("{not json")
    result = subprocess.run([sys.executable, "-m", "sw.train", "--config", str(tmp_path / "broken.json")], capture_output=True, text=True)
    assert "broken.json: not valid JSON" in result.stderr and "Traceback" not in result.stderr
