"""The integer encoder of a trained tiny BERT, end to end: export, golden model, evaluation, re-export."""

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from core.artifact import MANIFEST, TENSORS, ArtifactError, load_artifact
from sw import evaluate as evaluate_cli
from sw import glue
from sw.evaluate import evaluate_artifact, load_tokenizer
from sw.export import export_integer
from tests.sw.tiny_run import GLUE


@pytest.fixture(scope="module")
def artifact(result):
    return load_artifact(result.artifact)


@pytest.fixture(scope="module")
def batch(artifact):
    tokenizer = load_tokenizer(artifact)
    examples = glue.load_glue_split(GLUE, "mrpc", "dev", limit=12)
    dataset = glue.GlueDataset(examples, tokenizer, 64, False)
    return glue.collate([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id)


def run(encoder, batch, trace=True):
    return encoder(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], trace=trace)


def boundaries(out):
    """Every boundary tensor of a run, by name."""
    named = {"embeddings": out.embeddings, "pooled": out.pooled, "logits": out.logits}
    for i, layer in enumerate(out.layers):
        named.update({f"{i}.{k}": v for k, v in vars(layer).items() if v is not None})
    return named


def test_integer_model_is_deterministic_and_traces_every_boundary(artifact, batch):
    first, second = run(artifact.encoder(), batch), run(artifact.encoder(), batch)
    a, b = boundaries(first), boundaries(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    spec = artifact.manifest["integer"]
    assert len(first.layers) == len(spec["layers"]) and first.logits.shape == (12, 2)
    layer = first.layers[0]
    assert layer.pattern_ids is not None and int(layer.pattern_ids.max()) < artifact.tensors["attention.pool"].shape[0]
    # kept rows of real tokens sum to about 1.0 (255) in probability units; padding rows are empty
    real = batch["attention_mask"].bool()
    sums = layer.probabilities.sum(-1)
    rows = sums.transpose(1, 2)[real]
    assert bool(((rows == 0) | ((rows - 255).abs() <= rows.new_tensor(real.shape[1]) // 2)).all())  # ≤ ½ per entry
    assert bool((sums.transpose(1, 2)[~real] == 0).all())
    # layer i + 1 reads layer i's output: recompute layer 1 from the trace and compare exactly
    again = artifact.encoder().layer(1, first.layers[0].output_norm, real)
    assert all(torch.equal(getattr(again, k), getattr(first.layers[1], k)) for k in vars(again) if getattr(again, k) is not None)


def test_integer_model_tracks_the_float_model(artifact):
    result = evaluate_artifact(artifact, load_tokenizer(artifact), GLUE, limit=48, batch_size=16, progress=False)
    assert result["label_agreement"] >= 0.9
    assert result["sqnr_db"]["logits"] > 20 and result["sqnr_db"]["embeddings"] > 30
    assert set(result["sqnr_db"]) >= {"0.query", "1.output_norm", "pooled"}


def _corrupted(artifact, edit):
    tensors = dict(artifact.tensors)
    edit(tensors)
    from core.encoder import IntegerEncoder

    return IntegerEncoder.from_tensors(tensors, artifact.manifest["integer"])


def test_one_corrupted_table_entry_or_weight_changes_the_result(artifact, batch):
    """The comparison can fail: one GELU table entry that the batch uses, or one weight, moved."""
    good = run(artifact.encoder(), batch)
    used = int(good.layers[0].ffn_hidden.flatten()[0])
    table = artifact.tensors["int.layer.0.gelu_table"].clone()
    table[used + 128] += 1 if table[used + 128] < 127 else -1
    bad = run(_corrupted(artifact, lambda t: t.update({"int.layer.0.gelu_table": table})), batch)
    assert torch.equal(bad.layers[0].ffn_hidden, good.layers[0].ffn_hidden)
    assert not torch.equal(bad.layers[0].gelu, good.layers[0].gelu)

    module = artifact.manifest["integer"]["layers"][0]["modules"]["query"]
    weight = artifact.tensors[f"linear.{module}.weight_q"].clone()
    row = weight[0]
    j = int(row.abs().argmax())
    row[j] = -row[j]
    bad = run(_corrupted(artifact, lambda t: t.update({f"linear.{module}.weight_q": weight})), batch)
    assert torch.equal(bad.embeddings, good.embeddings)
    assert not torch.equal(bad.layers[0].query, good.layers[0].query)


def test_bad_inputs_are_refused_with_the_name_of_the_input(artifact, batch):
    encoder = artifact.encoder()
    ids = batch["input_ids"]
    with pytest.raises(TypeError, match="input_ids must be an integer tensor"):
        encoder(ids.float())
    with pytest.raises(ValueError, match="input_ids has values in"):
        encoder(ids + 10**6)
    with pytest.raises(ValueError, match="attention_mask has values in"):
        encoder(ids, batch["attention_mask"] * 2)
    with pytest.raises(ValueError, match="token_type_ids has shape"):
        encoder(ids, batch["attention_mask"], batch["token_type_ids"][:, :3])
    positions = artifact.tensors["int.embeddings.position"].shape[0]
    with pytest.raises(ValueError, match=f"the model has {positions} positions"):
        encoder(torch.zeros(1, positions + 1, dtype=torch.int64))


def test_version_1_artifact_is_refused_and_re_exported(artifact, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(artifact.path, old)
    tensors = {k: v for k, v in load_file(old / TENSORS).items() if not k.startswith("int.")}
    save_file(tensors, old / TENSORS)
    manifest = json.loads((old / MANIFEST).read_text())
    manifest.pop("integer")
    manifest["version"] = 1
    import hashlib

    manifest["tensors"]["sha256"] = hashlib.sha256((old / TENSORS).read_bytes()).hexdigest()
    (old / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="re-export it with `python -m sw.export"):
        load_artifact(old)
    assert load_artifact(old, integer=False).manifest["version"] == 1

    new = export_integer(old, tmp_path / "v2", GLUE, method="percentile", batches=2, batch_size=8)
    upgraded = load_artifact(new)
    assert upgraded.manifest["version"] == 2 and upgraded.manifest["integer"]["calibration"] == "percentile"
    assert all(torch.equal(upgraded.tensors[k], v) for k, v in tensors.items())  # float part unchanged
    with pytest.raises(ValueError, match="exists and is not empty"):
        export_integer(old, new, GLUE)
    with pytest.raises(ValueError, match="is the source artifact"):
        export_integer(old, old, GLUE)


def test_evaluate_command_prints_and_writes_the_comparison(artifact, tmp_path, capsys):
    out = tmp_path / "result.json"
    code = evaluate_cli.main(["--artifact", str(artifact.path), "--data-dir", str(GLUE), "--limit", "16", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "integer golden model" in printed and "label agreement" in printed
    result = json.loads(out.read_text())
    assert {"float_metric", "int_metric", "label_agreement", "sqnr_db"} <= set(result) and result["examples"] == 16
    assert evaluate_cli.main(["--artifact", str(tmp_path / "nothing"), "--data-dir", str(GLUE)]) == 2
    assert "no manifest.json" in capsys.readouterr().err


def test_export_names_a_scale_that_does_not_fit_the_multiplier_range(artifact, result):
    from core.encoder import build_integer_encoder
    from sw.artifact import to_model
    from sw.calibration import encoder_floats

    model = to_model(artifact)
    spec = artifact.manifest["integer"]
    linears = {m: {"weight_q": artifact.tensor(m, "weight_q"), "weight_scale": artifact.tensor(m, "weight_scale"),
                   "bias": artifact.tensor(m, "bias")} for m in artifact.layers}
    scales = dict(spec["scales"])
    scales["0.query"] = 1e-12  # the query linear's output ratio s_x·s_w/s_y leaves the 16-bit multiplier
    with pytest.raises(ValueError, match=r"int.layer.0.query.multiplier: requantization scale ratio .* is too large"):
        build_integer_encoder(linears, encoder_floats(model), scales)
    scales = dict(spec["scales"], **{"1.context": 1e9})
    with pytest.raises(ValueError, match="int.layer.1.attention_output.multiplier"):
        build_integer_encoder(linears, encoder_floats(model), scales)
    with pytest.raises(ValueError, match=r"scale of edge pooler must be a positive finite float"):
        build_integer_encoder(linears, encoder_floats(model), dict(spec["scales"], pooler=float("nan")))


def test_fake_quantized_edges_put_every_edge_on_the_encoders_grid(artifact, batch):
    from core.encoder import gelu_grid, wide_edges
    from sw import calibration
    from sw.artifact import to_model
    from sw.calibration import ActivationRecorder
    from sw.integer_aware import FakeQuantizedEdges, fake_quantize

    model = to_model(artifact)
    scales = calibration.calibrate(model, [batch], 1, ("mse",))["mse"]
    recorder = ActivationRecorder(model, 1, keep_last=True, statistics=False)
    with FakeQuantizedEdges(model, scales), recorder, torch.no_grad():
        recorder.forward(batch)
    assert set(recorder.last) == set(scales)
    wide = set(wide_edges(len(artifact.manifest["integer"]["layers"])))
    assert sorted(artifact.manifest["integer"]["zero_points"]) == sorted(e for e in scales if e.endswith(".gelu"))
    for edge, value in recorder.last.items():
        scale, zero = gelu_grid(scales[edge]) if edge.endswith(".gelu") else (scales[edge], 0)
        on_grid = torch.equal(fake_quantize(value, scale, zero), value)  # a grid point maps to itself, bit for bit
        assert on_grid != (edge in wide), edge  # the wide branch ends stay float, as the encoder keeps them
        if edge not in wide:
            levels = torch.round(value.double() / scale) + zero
            assert -128 <= int(levels.min()) and int(levels.max()) <= 127, edge


@pytest.mark.parametrize("control", [False, True])
def test_integer_aware_retraining_writes_a_format_2_artifact(artifact, tmp_path, control):
    from sw.integer_aware import retrain_integer_aware

    out = tmp_path / "retrained"
    result = retrain_integer_aware(artifact.path, out, GLUE, epochs=0.5, control=control, batches=2, batch_size=16)
    retrained = load_artifact(out)
    info = retrained.manifest["integer_aware"]
    assert info["control"] is control and info["after"] == result["after"] and set(result["before"]) == {"f1", "accuracy"}
    for module in retrained.layers:  # masks and patterns are the source's
        assert torch.equal(retrained.tensor(module, "mask"), artifact.tensor(module, "mask"))
        assert torch.equal(retrained.tensor(module, "pattern_ids"), artifact.tensor(module, "pattern_ids"))
    assert torch.equal(retrained.tensors["attention.pool"], artifact.tensors["attention.pool"])
