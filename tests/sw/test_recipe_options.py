"""Recipe options for accuracy and small tasks: knowledge distillation, failed-run detection against the
majority-class score, held-out checkpoint selection, minimum steps, GLUE subsets, and the study on tasks
beyond the shipped three (RTE, STS-B, MNLI in the standard TSV layout)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from core.pattern import PatternConfig, PatternPool
from sw import glue, pipeline
from sw.pipeline import DistillationConfig, TrainConfig, distillation_loss, run
from sw.study import DENSE, Study, load_results, run_one, table
from tests.sw.tiny_run import GLUE, tiny_config

# ------------------------------------------------------------------------------------- distillation


def _batch(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"input_ids": torch.randint(5, 200, (6, 12), generator=g), "attention_mask": torch.ones(6, 12, dtype=torch.long),
            "labels": torch.tensor([0, 1, 1, 0, 1, 0])}


def _model(checkpoint):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(checkpoint, attn_implementation="eager")


def test_kd_loss_is_zero_for_an_identical_teacher_and_alpha_one(checkpoint):
    student = _model(checkpoint).eval()
    teacher = _model(checkpoint).eval()
    loss = pipeline._loss(student, _batch(), glue.get_task("mrpc"), teacher, DistillationConfig(alpha=1.0, temperature=3.0))
    assert float(loss.detach()) == 0.0
    task_only = pipeline._loss(student, _batch(), glue.get_task("mrpc"))
    assert float(task_only.detach()) > 0  # the task loss itself is not zero: alpha = 1 really left only KD


def test_kd_gradient_reaches_the_student_and_not_the_teacher(checkpoint):
    student, teacher = _model(checkpoint).eval(), _model(checkpoint).eval()
    with torch.no_grad():
        teacher.classifier.weight.add_(torch.randn_like(teacher.classifier.weight))
    loss = pipeline._loss(student, _batch(), glue.get_task("mrpc"), teacher, DistillationConfig(alpha=1.0))
    assert float(loss.detach()) > 0
    loss.backward()
    assert float(student.classifier.weight.grad.abs().sum()) > 0
    assert float(student.bert.encoder.layer[0].attention.self.query.weight.grad.abs().sum()) > 0
    assert all(p.grad is None for p in teacher.parameters())


def test_kd_loss_is_the_temperature_scaled_kl_and_mixes_with_the_task_loss(checkpoint):
    s, t = torch.tensor([[1.0, -0.5], [0.2, 0.3]]), torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    T = 2.0
    p = torch.softmax(t / T, -1)
    expected = (p * (p.log() - torch.log_softmax(s / T, -1))).sum(-1).mean() * T * T
    torch.testing.assert_close(distillation_loss(s, t, T), expected)
    torch.testing.assert_close(distillation_loss(s[:, :1], t[:, :1], T, regression=True), ((s[:, 0] - t[:, 0]) ** 2).mean())
    student, teacher = _model(checkpoint).eval(), _model(checkpoint).eval()
    with torch.no_grad():
        teacher.classifier.bias.add_(torch.tensor([1.0, -1.0]))
    task = pipeline._loss(student, _batch(), glue.get_task("mrpc"))
    kd = pipeline._loss(student, _batch(), glue.get_task("mrpc"), teacher, DistillationConfig(alpha=1.0, temperature=T))
    mixed = pipeline._loss(student, _batch(), glue.get_task("mrpc"), teacher, DistillationConfig(alpha=0.25, temperature=T))
    torch.testing.assert_close(mixed, 0.75 * task + 0.25 * kd)


def test_hidden_state_matching_is_the_masked_layer_mean_and_adds_to_the_logits_kd(checkpoint):
    student, teacher = _model(checkpoint).eval(), _model(checkpoint).eval()
    batch = _batch()
    batch["attention_mask"][:, 9:] = 0  # padding: its states must not count
    task = glue.get_task("mrpc")
    logits_only = DistillationConfig(alpha=0.5, temperature=2.0)
    with_hidden = DistillationConfig(alpha=0.5, temperature=2.0, hidden=3.0)
    assert float(pipeline._loss(student, batch, task, teacher, with_hidden).detach()) == float(
        pipeline._loss(student, batch, task, teacher, logits_only).detach())  # equal states: H = 0
    with torch.no_grad():
        weight = teacher.bert.embeddings.word_embeddings.weight  # a different change for every token
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    s_states = student(**inputs, output_hidden_states=True).hidden_states
    t_states = teacher(**inputs, output_hidden_states=True).hidden_states
    real = batch["attention_mask"].bool()
    expected = torch.stack([((s - t)[real] ** 2).mean() for s, t in zip(s_states[1:], t_states[1:])]).mean()
    h = pipeline.hidden_distillation_loss(s_states, t_states, batch["attention_mask"])
    torch.testing.assert_close(h, expected)
    assert float(h.detach()) > 0
    mixed = pipeline._loss(student, batch, task, teacher, with_hidden)
    torch.testing.assert_close(mixed, pipeline._loss(student, batch, task, teacher, logits_only) + 3.0 * expected)


def test_kd_runs_in_the_admm_and_retrain_phases_only(checkpoint, tmp_path, monkeypatch):
    """The recipe calls the KD loss once per step of the ADMM and retrain phases (never while fine-tuning)
    against a frozen copy of the fine-tuned model, and the run differs from the same run without KD."""
    calls = []

    def counting(student, teacher, temperature, regression=False):
        calls.append(temperature)
        return distillation_loss(student, teacher, temperature, regression)

    monkeypatch.setattr(pipeline, "distillation_loss", counting)
    settings = dict(attention=None, projection={"kind": "pattern", "block_size": 4, "kept_per_block": 8, "pool_size": 8})
    with_kd = tiny_config(checkpoint, tmp_path / "kd", compression=dict(_compression(**settings), distillation={"alpha": 0.7, "temperature": 4.0}))
    result = run(with_kd, export=False)
    steps = {p.name: p.steps for p in result.phases}
    assert len(calls) == steps["admm"] + steps["retrain"] > 0 and set(calls) == {4.0}
    plain = run(tiny_config(checkpoint, tmp_path / "plain", compression=_compression(**settings)), export=False)
    assert result.metrics["finetune"] == plain.metrics["finetune"]  # identical up to the ADMM phase
    assert [p.losses for p in result.phases[1:]] != [p.losses for p in plain.phases[1:]]


def test_proximal_admm_takes_the_penalty_out_of_the_loss(checkpoint, tmp_path, monkeypatch):
    """With ``admm.proximal`` the ADMM phase never adds the penalty to its loss and takes one proximal
    step per optimizer step; the default adds the penalty once per step and takes none."""
    from sw.admm import ADMM

    calls = {"penalty": 0, "proximal": 0}
    penalty, proximal_step = ADMM.penalty, ADMM.proximal_step

    def counting(name, method):
        def wrapped(self, *args):
            calls[name] += 1
            return method(self, *args)
        return wrapped

    monkeypatch.setattr(ADMM, "penalty", counting("penalty", penalty))
    monkeypatch.setattr(ADMM, "proximal_step", counting("proximal", proximal_step))
    admm = {"rho": 0.05, "rho_growth": 1.5, "update_every": 2, "proximal": 0.5}
    result = run(tiny_config(checkpoint, tmp_path / "prox", compression=_compression(attention=None, admm=admm)), export=False)
    steps = {p.name: p.steps for p in result.phases}
    assert calls == {"penalty": 0, "proximal": steps["admm"]} and steps["admm"] > 0
    calls.update(penalty=0, proximal=0)
    run(tiny_config(checkpoint, tmp_path / "plain", compression=_compression(attention=None)), export=False)
    assert calls == {"penalty": steps["admm"], "proximal": 0}


def test_input_rms_is_the_rms_of_each_input_feature_over_real_tokens(checkpoint):
    """The scales of the activation-aware projection: for layer N's query, the RMS per feature of the
    hidden state entering layer N, padding excluded; a batch limit is honoured; a non-token input is refused."""
    from sw.importance import input_rms

    model = _model(checkpoint).eval()
    batches = [_batch(0), _batch(1), _batch(2)]
    for b in batches[:2]:
        b["attention_mask"][:3, 8:] = 0  # padding on half the rows
    targets = ["bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"]
    rms = input_rms(model, targets, batches, max_batches=2)
    for layer, target in enumerate(targets):
        total, tokens = 0, 0.0
        for b in batches[:2]:
            with torch.no_grad():
                hidden = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], output_hidden_states=True).hidden_states[layer]
            keep = b["attention_mask"].reshape(-1).bool()
            total = total + hidden.to(torch.float64).reshape(-1, hidden.shape[-1])[keep].pow(2).sum(0)
            tokens += float(keep.sum())
        assert torch.equal(rms[target], (total / tokens).sqrt())
    with pytest.raises(ValueError, match="input of bert.pooler.dense has 6 rows, not one per token"):
        input_rms(model, ["bert.pooler.dense"], batches, max_batches=1)
    with pytest.raises(ValueError, match="at least one batch"):
        input_rms(model, targets, batches, max_batches=0)


def test_activation_weighted_recipe_measures_scales_and_prunes_in_their_norm(checkpoint, tmp_path, monkeypatch):
    """``weighting: "activation"`` in the recipe: the scales are measured once, on the model the pruning
    starts from, over ``calibration_batches`` global batches, and the hard-pruning masks are the weighted
    projection's (they differ from the plain projection's for the same weights and pool)."""
    from sw import importance
    from sw.projections import Pattern

    seen, measure = [], importance.input_rms

    def recording(model, targets, batches, max_batches):
        rms = measure(model, targets, batches, max_batches)
        weights = {t: model.get_submodule(t).weight.detach().clone() for t in targets}
        seen.append((rms, weights, max_batches))
        return rms

    monkeypatch.setattr(pipeline.importance, "input_rms", recording)
    projection = {"kind": "pattern", "block_size": 4, "kept_per_block": 8, "pool_size": 8, "weighting": "activation"}
    config = tiny_config(checkpoint, tmp_path / "act", admm_epochs=0, retrain_epochs=0,
                         compression=_compression(attention=None, projection=projection))
    result = run(config, export=False)
    assert len(seen) == 1 and seen[0][2] == config.calibration_batches
    rms, weights, _ = seen[0]
    assert set(rms) == {name.rsplit(".", 1)[0] for name in result.masks} and result.masks
    plain_differs = 0
    for name, mask in result.masks.items():
        target = name.rsplit(".", 1)[0]
        pool = PatternPool(PatternConfig(4, 8, 8), result.pools[name])
        weighted = Pattern(4, 8, 8, weighting="activation", pool=pool)
        weighted.set_column_scale(rms[target])
        assert torch.equal(weighted(weights[target]).mask, mask)
        plain_differs += not torch.equal(Pattern(4, 8, 8, pool=pool)(weights[target]).mask, mask)
    assert plain_differs > 0


def _compression(**changes) -> dict:
    compression = tiny_config(".", ".").compression
    data = {k: v for k, v in compression.__dict__.items()}
    data["admm"] = compression.admm.__dict__
    data.update(changes)
    return data


@pytest.mark.parametrize("settings, message", [
    ({"alpha": 1.5}, "alpha must be in"), ({"temperature": 0}, "temperature must be > 0"), ({"beta": 1}, "unknown distillation keys"),
    ({"hidden": -1.0}, "hidden weight must be ≥ 0"),
])
def test_bad_distillation_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict({"compression": {"distillation": settings}})


def test_seed000_admm_preset_has_the_papers_settings():
    preset = TrainConfig.load(Path(__file__).resolve().parents[2] / "configs" / "minilm_mrpc_admm_seed000.json")
    assert preset.compression.admm.rho == 0.01 and preset.compression.admm.rho_growth == 1.0
    assert preset.admm_learning_rate == 7e-5 and preset.admm_weight_decay == 0.001


# --------------------------------------------------------------------------------- failed-run detection


def test_majority_baseline_of_the_real_mrpc_dev_set():
    train = [e.label for e in glue.load_glue_split(GLUE, "mrpc", "train")]
    dev = [e.label for e in glue.load_glue_split(GLUE, "mrpc", "dev")]
    baseline = glue.majority_baseline("mrpc", train, dev)
    assert baseline["accuracy"] == pytest.approx(100 * 279 / 408)  # class 1 is the majority
    assert baseline["f1"] == pytest.approx(100 * 2 * 279 / (2 * 279 + 129))
    assert glue.majority_baseline("cola", [1, 1, 0], [0, 1, 1]) == {"mcc": 0.0}
    assert glue.majority_baseline("stsb", [1.0, 2.0], [0.5, 4.0]) == {"spearman": 0.0, "pearson": 0.0}


@pytest.mark.parametrize("task, scores, failed", [
    ("mrpc", {"f1": 81.22, "accuracy": 70.0}, True),   # F1 at the majority's (81.22)
    ("mrpc", {"f1": 85.0, "accuracy": 68.0}, True),    # accuracy below the majority's 68.4
    ("mrpc", {"f1": 86.0, "accuracy": 78.0}, False),
    ("cola", {"mcc": 0.0}, True),
    ("cola", {"mcc": 12.0}, False),
    ("stsb", {"spearman": 4.0, "pearson": 30.0}, True),
    ("stsb", {"spearman": -60.0, "pearson": -55.0}, False),  # strongly (anti-)correlated is not "near zero"
    ("stsb", {"spearman": math.nan, "pearson": math.nan}, True),
    ("rte", {"accuracy": 52.0}, True),
])
def test_failure_is_at_or_below_the_majority_class_or_near_zero_correlation(task, scores, failed):
    baseline = {"mrpc": {"f1": 81.22, "accuracy": 68.4}, "cola": {"mcc": 0.0}, "stsb": {"spearman": 0.0, "pearson": 0.0},
                "rte": {"accuracy": 52.7}}[task]
    reason = glue.failure(task, scores, baseline)
    assert (reason is not None) == failed
    if failed:
        assert glue.get_task(task).metric in reason or "accuracy" in reason


def test_constant_regression_predictions_score_zero_correlation():
    assert glue.compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 3.0, 4.0]) == {"spearman": 0.0, "pearson": 0.0}


def test_failure_needs_the_primary_metric():
    with pytest.raises(ValueError, match="lack MRPC's metric 'f1'"):
        glue.failure("mrpc", {"accuracy": 70.0}, {"f1": 81.0})


@pytest.fixture(scope="module")
def constant_checkpoint(checkpoint, tmp_path_factory):
    """The tiny BERT with a classifier that answers class 0 whatever the input: every run from it at
    learning rate 0 ends below the majority class (class 1) of MRPC."""
    model = _model(checkpoint)
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor([5.0, -5.0]))
    folder = tmp_path_factory.mktemp("constant")
    model.save_pretrained(folder)
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"):
        if (Path(checkpoint) / name).exists():
            (folder / name).write_bytes((Path(checkpoint) / name).read_bytes())
    return folder


def test_a_run_at_the_majority_class_score_is_flagged_in_the_summary(constant_checkpoint, tmp_path, capsys):
    result = run(tiny_config(constant_checkpoint, tmp_path, learning_rate=0.0, eval_limit=64), dense_only=True)
    assert result.metrics["finetune"]["f1"] == 0.0
    assert result.failed and "f1 0.00 ≤ majority-class" in result.failed
    summary = result.summary()
    assert summary["failed"] == result.failed and summary["baseline"]["f1"] > 50 and "finetune" in summary["failures"]
    assert "[finetune] FAILED: f1 0.00" in capsys.readouterr().out
    json.dumps(summary)


def test_the_study_records_and_marks_a_failed_dense_run(constant_checkpoint, tmp_path):
    config = tmp_path / "study.json"
    config.write_text(json.dumps({
        "model": str(constant_checkpoint), "data_dir": str(GLUE), "work_dir": str(tmp_path / "work"),
        "results": str(tmp_path / "results.json"), "doc": str(tmp_path / "glue.md"), "figures_dir": str(tmp_path / "figures"),
        "base": {"batch_size": 16, "learning_rate": 0.0, "finetune_epochs": 1, "train_limit": 32, "eval_limit": 64},
        "tasks": {"mrpc": {"max_length": 32}}, "rows": {"dense": {"label": "dense"}},
    }))
    study = Study.load(config)
    messages = []
    record = run_one(study, DENSE, "mrpc", 0, log=messages.append)
    assert record["failed"] and record["baseline"]["f1"] > 50
    assert any("FAILED" in m for m in messages)
    summary = json.loads((study.run_dir(DENSE, "mrpc", 0) / "summary.json").read_text())
    assert summary["failed"] == record["failed"]
    text = table(study, load_results(study.results))
    assert "| dense | 0.0 ✗ |" in text and f"- dense / MRPC / seed 0: {record['failed']}" in text


# ------------------------------------------------------------------- held-out selection, minimum steps


def test_heldout_slice_is_seeded_disjoint_and_never_trained_on():
    rows = list(range(40))
    train, held = pipeline.split_heldout(rows, 0.25, seed=3)
    assert len(held) == 10 and sorted(train + held) == rows and not set(train) & set(held)
    assert pipeline.split_heldout(rows, 0.25, seed=3) == (train, held) and pipeline.split_heldout(rows, 0.25, seed=4) != (train, held)
    assert pipeline.split_heldout(rows, 0.0, seed=3) == (rows, [])
    with pytest.raises(ValueError, match="select_every=5 needs a held-out slice"):
        TrainConfig(select_every=5)
    with pytest.raises(ValueError, match="heldout_fraction must be in"):
        TrainConfig(heldout_fraction=1.0)


def test_checkpoint_selection_ends_the_phase_on_its_best_heldout_step(checkpoint, tmp_path):
    config = tiny_config(checkpoint, tmp_path, heldout_fraction=0.25, select_every=1, finetune_epochs=2, learning_rate=3e-3)
    result = run(config, dense_only=True)
    log = result.phases[0]
    assert log.steps == 6 and [h["step"] for h in log.heldout] == list(range(1, 7))  # 48 training rows, batch 16
    scores = [h["score"] for h in log.heldout]
    assert log.selected_step == max(i + 1 for i, s in enumerate(scores) if s == max(scores))
    from transformers import AutoTokenizer

    data = pipeline.load_task_data(config, AutoTokenizer.from_pretrained(checkpoint))
    assert len(data.heldout.dataset) == 16 and len(data.train.dataset) == 48
    assert pipeline.evaluate(result.model, data, data.heldout)["f1"] == max(scores)
    assert result.summary()["phases"][0]["selected_step"] == log.selected_step


def test_min_steps_extends_a_short_phase(checkpoint, tmp_path):
    result = run(tiny_config(checkpoint, tmp_path, finetune_epochs=0.25, min_steps=7), dense_only=True)
    assert result.phases[0].steps == 7


# ------------------------------------------------------------------------------- GLUE beyond three


def test_write_subset_keeps_header_rows_and_dev(tmp_path):
    out = glue.write_subset(GLUE, "mrpc", tmp_path / "small", rows=250, seed=1)
    train = glue.load_glue_split(out, "mrpc", "train")
    full = glue.load_glue_split(GLUE, "mrpc", "train")
    assert len(train) == 250 and all(e in full for e in train)
    assert [full.index(e) for e in train] == sorted(full.index(e) for e in train)  # file order kept
    assert glue.load_glue_split(out, "mrpc", "dev") == glue.load_glue_split(GLUE, "mrpc", "dev")
    assert glue.write_subset(GLUE, "mrpc", tmp_path / "again", rows=250, seed=1).joinpath("MRPC", "train.tsv").read_text() == \
        (out / "MRPC" / "train.tsv").read_text()
    with pytest.raises(ValueError, match="has 3668 training rows; cannot take a subset of 5000"):
        glue.write_subset(GLUE, "mrpc", tmp_path / "big", rows=5000)


def _other_tasks(root: Path) -> Path:
    """RTE, STS-B and MNLI folders in the standard GLUE TSV layout, their sentences taken from MRPC, labels
    made from a word-overlap rule so there is something to learn."""
    pairs = glue.load_glue_split(GLUE, "mrpc", "train", limit=120)
    overlap = [len(set(e.text_a.split()) & set(e.text_b.split())) / len(set(e.text_a.split()) | set(e.text_b.split())) for e in pairs]
    median = float(np.median(overlap))

    def write(folder, split, header, rows):
        path = root / folder / f"{split}.tsv"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join([header] + rows) + "\n", encoding="utf-8")

    for split, part in (("train", slice(0, 80)), ("dev", slice(80, 120))):
        items = list(zip(pairs[part], overlap[part]))
        write("RTE", split, "index\tsentence1\tsentence2\tlabel",
              [f"{i}\t{e.text_a}\t{e.text_b}\t{'entailment' if o > median else 'not_entailment'}" for i, (e, o) in enumerate(items)])
        write("STS-B", split, "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore",
              [f"{i}\tmain\tx\t2012\t{i}\tnone\tnone\t{e.text_a}\t{e.text_b}\t{5 * o:.3f}" for i, (e, o) in enumerate(items)])
    labels = ("entailment", "neutral", "contradiction")
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label"
    for split, part in (("train", slice(0, 80)), ("dev_matched", slice(80, 100)), ("dev_mismatched", slice(100, 120))):
        write("MNLI", split, header, [f"{i}\t{i}\t{i}e\tfiction\t{e.text_a}\t{e.text_b}\t-\t{labels[min(2, int(3 * o / (2 * median)))]}"
                                      for i, (e, o) in enumerate(zip(pairs[part], overlap[part]))])
    return root


def test_study_runs_on_rte_stsb_and_mnli_with_their_metrics(checkpoint, tmp_path):
    data = _other_tasks(tmp_path / "glue")
    config = tmp_path / "study.json"
    pattern = {"kind": "pattern", "block_size": 4, "kept_per_block": 8, "pool_size": 8}
    config.write_text(json.dumps({
        "model": str(checkpoint), "data_dir": str(data), "work_dir": str(tmp_path / "work"),
        "results": str(tmp_path / "results.json"), "doc": str(tmp_path / "glue.md"), "figures_dir": str(tmp_path / "figures"),
        "base": {"batch_size": 16, "learning_rate": 1e-3, "finetune_epochs": 1, "admm_epochs": 1, "retrain_epochs": 1,
                 "compression": {"admm": {"rho": 0.05, "update_every": 2}}},
        "tasks": {"rte": {"max_length": 48}, "stsb": {"max_length": 48}, "mnli": {"max_length": 48}},
        "rows": {"dense": {"label": "dense"},
                 "pattern_admm": {"label": "pattern + ADMM", "overrides": {"compression": {"projection": pattern, "quant_bits": None}}}},
    }))
    study = Study.load(config)
    records = {}
    for task in study.tasks:
        for row in (DENSE, "pattern_admm"):
            records[(row, task)] = run_one(study, row, task, 0, log=lambda message: None)
    assert {(r, t): rec["metric"] for (r, t), rec in records.items()} == {
        (r, t): m for r in (DENSE, "pattern_admm") for t, m in (("rte", "accuracy"), ("stsb", "spearman"), ("mnli", "accuracy"))}
    for row in (DENSE, "pattern_admm"):
        assert set(records[(row, "stsb")]["scores"]) == {"spearman", "pearson"}
        assert records[(row, "stsb")]["baseline"] == {"spearman": 0.0, "pearson": 0.0}
        # MNLI is scored on its matched dev set (20 rows): accuracy is a multiple of 5 %
        assert records[(row, "mnli")]["score"] / 5 == pytest.approx(round(records[(row, "mnli")]["score"] / 5))
    text = table(study, load_results(study.results))
    assert "RTE (acc) | STS-B (Spearman) | MNLI (acc)" in text
    assert "- STS-B Pearson: dense " in text and "Majority-class scores" in text
