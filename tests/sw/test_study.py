"""The GLUE study driver on a tiny BERT: rows share one dense start, records append and resume."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.stats

from sw import glue, study as study_mod
from sw.study import DENSE, Study, fingerprint, load_results, run_one, status, store_record, write_report
from tests.sw.tiny_run import GLUE

PATTERN = {"kind": "pattern", "block_size": 4, "kept_per_block": 8, "pool_size": 8}


def study_config(tmp: Path, checkpoint: Path, **changes) -> Path:
    data = {
        "model": str(checkpoint), "data_dir": str(GLUE), "work_dir": str(tmp / "work"),
        "results": str(tmp / "results.json"), "doc": str(tmp / "glue.md"), "figures_dir": str(tmp / "figures"),
        "seeds": [0],
        "base": {"batch_size": 16, "learning_rate": 1e-3, "finetune_epochs": 1, "admm_epochs": 1, "retrain_epochs": 1,
                 "train_limit": 48, "eval_limit": 32, "calibration_batches": 1,
                 "compression": {"admm": {"rho": 0.05, "update_every": 1}}},
        "tasks": {"mrpc": {"max_length": 48}},
        "rows": {
            "dense": {"label": "dense"},
            "pattern_no_admm": {"label": "pattern, no ADMM", "overrides": {"admm_epochs": 0, "retrain_epochs": 2, "compression": {"projection": PATTERN, "quant_bits": None}}},
            "pattern_admm": {"label": "pattern + ADMM", "figures": True,
                             "overrides": {"admm_learning_rate": 3e-3, "retrain_learning_rate": 5e-4, "compression": {"projection": PATTERN, "quant_bits": None}}},
            "pattern_admm_int8": {"label": "pattern + ADMM, int8", "export": True,
                                  "overrides": {"compression": {"projection": dict(PATTERN, kind="pattern_quantize", bits=8), "quant_bits": 8}}},
        },
    }
    data.update(changes)
    path = tmp / "study.json"
    path.write_text(json.dumps(data))
    return path


@pytest.fixture(scope="module")
def done(checkpoint, tmp_path_factory):
    """Every row of the tiny study, run once in the order the CLI uses (dense last: it must be made on demand)."""
    tmp = tmp_path_factory.mktemp("study")
    study = Study.load(study_config(tmp, checkpoint))
    for row in ["pattern_no_admm", "pattern_admm", "pattern_admm_int8", DENSE]:
        run_one(study, row, "mrpc", 0, log=lambda message: None)
    return study


def test_every_row_is_recorded_with_its_final_scores(done):
    records = load_results(done.results)
    assert sorted(r["row"] for r in records) == sorted(done.rows)
    for record in records:
        assert record["fingerprint"] == fingerprint(done.config_dict(record["row"], "mrpc", 0))
        expected = record["metrics"]["finetune"] if record["row"] == DENSE else record["metrics"].get("artifact", record["metrics"]["retrain"])
        assert record["scores"] == expected and record["score"] == expected["f1"] and record["metric"] == "f1"
        assert record["seconds"] > 0 and record["phases"]
    by_row = {r["row"]: r for r in records}
    assert by_row["pattern_admm_int8"]["artifact"] and Path(by_row["pattern_admm_int8"]["artifact"], "manifest.json").is_file()
    assert by_row["pattern_admm"]["artifact"] is None
    assert by_row["pattern_admm"]["residual_mean"] and not by_row["pattern_no_admm"]["residual_mean"]
    assert [p["name"] for p in by_row[DENSE]["phases"]] == ["finetune"]
    rates = {p["name"]: p["learning_rate"] for p in by_row["pattern_admm"]["phases"]}
    assert rates == {"finetune": 1e-3, "admm": 3e-3, "retrain": 5e-4}  # the ADMM and retrain phases have their own rates


def test_compressed_rows_start_from_the_shared_dense_checkpoint(done):
    checkpoint = done.dense_checkpoint("mrpc", 0)
    assert (checkpoint / "config.json").is_file()
    dense = next(r for r in load_results(done.results) if r["row"] == DENSE)
    for row in ("pattern_no_admm", "pattern_admm"):
        summary = json.loads((done.run_dir(row, "mrpc", 0) / "summary.json").read_text())
        assert summary["config"]["model"] == str(checkpoint) and summary["config"]["finetune_epochs"] == 0
        # the evaluation before any compression is the dense model's score, to the last bit
        assert summary["metrics"]["finetune"] == dense["scores"]


def test_pattern_admm_rows_write_the_sparsity_figures(done):
    record = next(r for r in load_results(done.results) if r["row"] == "pattern_admm")
    names = sorted(Path(p).name for p in record["figures"])
    assert names == ["block_sparsity.png", "submatrix_sparsity.png", "weight_distribution.png"]
    for path in record["figures"]:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_done_run_is_skipped_and_a_changed_schedule_is_stale(done, monkeypatch, tmp_path):
    import sw.pipeline

    def no_training(*args, **kwargs):
        raise AssertionError("an up-to-date run must not train again")

    monkeypatch.setattr(sw.pipeline, "run", no_training)
    before = done.results.read_text()
    for row in done.rows:
        run_one(done, row, "mrpc", 0, log=lambda message: None)
    assert done.results.read_text() == before
    assert {state for *_, state in status(done)} == {"done"}

    changed = json.loads(done.path.read_text())
    changed["base"]["retrain_epochs"] = 2
    path = tmp_path / "changed.json"
    path.write_text(json.dumps(changed))
    states = {row: state for row, _, _, state in status(Study.load(path))}
    assert states == {DENSE: "done", "pattern_no_admm": "done", "pattern_admm": "stale", "pattern_admm_int8": "stale"}


def test_a_lost_dense_checkpoint_is_fine_tuned_again_to_the_same_score(done, tmp_path):
    copy = tmp_path / "copy"
    data = json.loads(done.path.read_text())
    copy.mkdir()
    data.update(work_dir=str(copy / "work"), results=str(copy / "results.json"))
    shutil.copy(done.results, copy / "results.json")
    (copy / "study.json").write_text(json.dumps(data))
    moved = Study.load(copy / "study.json")
    recorded = next(r for r in load_results(moved.results) if r["row"] == DENSE)
    messages = []
    run_one(moved, "pattern_no_admm", "mrpc", 0, force=True, log=messages.append)
    assert any("fine-tuning it first" in m for m in messages)
    assert not any("WARNING" in m for m in messages)
    again = next(r for r in load_results(moved.results) if r["row"] == DENSE)
    assert again["scores"] == recorded["scores"]  # CPU fine-tuning with a fixed seed is deterministic


def test_a_frozen_recipe_adopts_the_probe_runs_of_the_very_same_config(done, monkeypatch, tmp_path):
    """A schedule of probes ran the recipe under other row names; the study that freezes it takes those runs
    over (same fingerprint, whatever the row is called) and trains nothing, but only where the config is equal."""
    import sw.pipeline

    probe_of = {"pattern_no_admm": "probe_no_admm", "pattern_admm": "probe_admm", "pattern_admm_int8": "probe_int8"}
    source_data = json.loads(done.path.read_text())
    source_data["rows"] = {probe_of.get(row, row): spec for row, spec in source_data["rows"].items()}
    source_data["rows"]["probe_admm"].pop("figures")
    source_data.update(work_dir=str(tmp_path / "probe_work"), results=str(tmp_path / "probe_runs.json"))
    (tmp_path / "probe.json").write_text(json.dumps(source_data))
    source = Study.load(tmp_path / "probe.json")
    for record in load_results(done.results):
        row = probe_of.get(record["row"], record["row"])
        store_record(source.results, dict(record, row=row))
        shutil.copytree(done.run_dir(record["row"], "mrpc", 0), source.run_dir(row, "mrpc", 0))

    target_data = json.loads(done.path.read_text())
    target_data["rows"]["pattern_longer"] = dict(target_data["rows"]["pattern_no_admm"], overrides=dict(
        target_data["rows"]["pattern_no_admm"]["overrides"], retrain_epochs=3))
    target_data.update(work_dir=str(tmp_path / "work"), results=str(tmp_path / "runs.json"), figures_dir=str(tmp_path / "figures"),
                       doc=str(tmp_path / "glue.md"))
    (tmp_path / "study.json").write_text(json.dumps(target_data))
    target = Study.load(tmp_path / "study.json")
    stale = target.figures_dir / "mrpc_seed0_pattern_admm"
    stale.mkdir(parents=True)
    (stale / "block_sparsity.png").write_bytes(b"an earlier config's figure")

    monkeypatch.setattr(sw.pipeline, "run", lambda *args, **kwargs: pytest.fail("adopting must not train"))
    messages = []
    adopted = study_mod.adopt(target, source, list(target.rows), ["mrpc"], [0], log=messages.append)

    assert sorted(r["row"] for r in adopted) == [DENSE, "pattern_admm", "pattern_no_admm"]
    originals = {r["row"]: r for r in load_results(done.results)}
    for record in adopted:
        source_row = probe_of.get(record["row"], record["row"])
        assert record["adopted_from"] == {"results": str(source.results), "row": source_row}
        expected = dict(originals[record["row"]], adopted_from=record["adopted_from"])
        if record["row"] == "pattern_admm":
            expected["figures"] = []  # drawn from the weights during a run: an adopted record has none
        assert record == expected
        summary = target.run_dir(record["row"], "mrpc", 0) / "summary.json"
        assert summary.read_text() == (source.run_dir(source_row, "mrpc", 0) / "summary.json").read_text()
    assert not stale.exists()
    assert any("pattern_admm_int8" in m and "exports an artifact" in m for m in messages)
    assert any("pattern_longer" in m and "no run of this config" in m for m in messages)
    assert sorted(r["row"] for r in load_results(target.results)) == sorted(r["row"] for r in adopted)

    states = {row: state for row, _, _, state in status(target)}
    assert states == {DENSE: "done", "pattern_no_admm": "done", "pattern_admm": "done",
                      "pattern_admm_int8": "pending", "pattern_longer": "pending"}
    report = write_report(target).read_text()
    assert f"- pattern + ADMM: MRPC seed 0, from `{source.results}` row `probe_admm`" in report
    assert "- dense:" in report and "- pattern + ADMM, int8:" not in report
    before = target.results.read_text()
    assert study_mod.adopt(target, source, list(target.rows), ["mrpc"], [0], log=messages.append) == []
    assert target.results.read_text() == before


def test_report_table_has_a_line_per_row_with_the_recorded_scores(done):
    doc = write_report(done)
    text = doc.read_text()
    assert (done.figures_dir / "glue_scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert study_mod.TABLE_START in text and study_mod.TABLE_END in text
    scores, minutes = text.split("Minutes per run")
    minutes, phases = minutes.split(study_mod.PHASES_INTRO)
    lines = [line for line in scores.splitlines() if line.startswith("| ")]
    time_lines = [line for line in minutes.splitlines() if line.startswith("| ")]
    phase_lines = [line for line in phases.splitlines() if line.startswith("| ")]
    assert len(lines) == len(time_lines) == 1 + len(done.rows)
    assert len(phase_lines) == len(done.rows)  # a header and every row but dense
    for record in load_results(done.results):
        label = done.rows[record["row"]].label
        if record["row"] != DENSE:  # every phase the run went through, in order, and its last residual
            cells = [c.strip() for c in next(l for l in phase_lines if l.startswith(f"| {label} |")).strip("|").split("|")]
            metrics = record["metrics"]
            with_admm = record["row"] != "pattern_no_admm"
            after_admm, residual = (f"{metrics['admm']['f1']:.1f}", f"{record['residual_mean'][-1]:.2f}") if with_admm else ("—", "—")
            assert cells[1:] == ["MRPC", after_admm, f"{metrics['pruned']['f1']:.1f}", f"{metrics['retrain']['f1']:.1f}", residual, "1"]
        cells = [c.strip() for c in next(l for l in lines if l.startswith(f"| {label} |")).strip("|").split("|")]
        assert cells[1] == f"{record['score']:.1f}" + (" ✗" if record["failed"] else "")
        if record["failed"]:  # the tiny model's runs sit at the majority-class score: listed with the reason
            assert f"- {label} / MRPC / seed 0: {record['failed']}" in text
        assert cells[2] == f"{glue.glue_average({'mrpc': record['score']}):.1f}"
        assert cells[3] == f"{glue.glue_average({'mrpc': record['score']}, 'arithmetic'):.1f}"
        time_cells = [c.strip() for c in next(l for l in time_lines if l.startswith(f"| {label} |")).strip("|").split("|")]
        assert time_cells[1] == f"{record['seconds'] / 60:.1f}"
    # the same numbers as JSON beside the doc
    assert json.loads(doc.with_suffix(".json").read_text()) == json.loads(json.dumps(study_mod.summary(done, load_results(done.results))))
    # prose around the markers survives a rewrite; a schedule region is filled from the config
    doc.write_text(text.replace(study_mod.TABLE_START, f"My reading.\n\n{study_mod.SCHEDULE_START}\n{study_mod.SCHEDULE_END}\n" + study_mod.TABLE_START))
    text = write_report(done).read_text()
    assert "My reading." in text
    schedule = text.split(study_mod.SCHEDULE_START)[1].split(study_mod.SCHEDULE_END)[0]
    assert "| batch size | 16 |" in schedule and "| MRPC | 48 |" in schedule
    assert "ADMM 1, retrain 1" in schedule and '"retrain_epochs": 2' in schedule


def test_report_averages_seeds_and_pairs_differences_by_seed(done, checkpoint, tmp_path):
    """Two tasks, MRPC with seeds 0 and 1, RTE with seed 0 only: cells are mean ± sample std over their
    seeds, the averages use only the seeds that have every task, and differences pair runs by seed."""
    study = Study.load(study_config(tmp_path, checkpoint, seeds=[0, 1], tasks={"mrpc": {"max_length": 48}, "rte": {"max_length": 48}},
                                    differences=[["pattern_admm", "pattern_no_admm"]]))
    seed0 = {r["row"]: r for r in load_results(done.results)}
    scores = {}  # (row, task, seed) -> score, derived from the real seed-0 runs
    records = []
    for row, record in seed0.items():
        for task, seed, shift in [("mrpc", 0, 0.0), ("mrpc", 1, 3.0 + len(row)), ("rte", 0, -2.0)]:
            scores[(row, task, seed)] = record["score"] + shift
            records.append(dict(record, task=task, seed=seed, score=scores[(row, task, seed)], failed=None,
                                fingerprint=fingerprint(study.config_dict(row, task, seed))))
    records.append(dict(records[0], seed=1, fingerprint="stale"))  # a record of another schedule is left out
    text = study_mod.table(study, records).split("Minutes per run")[0]
    lines = {line.split(" | ")[0][2:]: [c.strip() for c in line.strip("|").split("|")[1:]] for line in text.splitlines() if line.startswith("| ")}
    for row, spec in study.rows.items():
        mrpc = [scores[(row, "mrpc", 0)], scores[(row, "mrpc", 1)]]
        both = {"mrpc": scores[(row, "mrpc", 0)], "rte": scores[(row, "rte", 0)]}
        assert lines[spec.label] == [f"{np.mean(mrpc):.1f} ± {np.std(mrpc, ddof=1):.1f}", f"{scores[(row, 'rte', 0)]:.1f}",
                                     f"{glue.glue_average(both):.1f} (1 seed)", f"{glue.glue_average(both, 'arithmetic'):.1f} (1 seed)", "2 / 1"]
    paired = [scores[("pattern_admm", "mrpc", s)] - scores[("pattern_no_admm", "mrpc", s)] for s in (0, 1)]
    rte = scores[("pattern_admm", "rte", 0)] - scores[("pattern_no_admm", "rte", 0)]
    label = f"{study.rows['pattern_admm'].label} − {study.rows['pattern_no_admm'].label}"
    half = scipy.stats.t.ppf(0.975, 1) * np.std(paired, ddof=1) / np.sqrt(2)
    interval = f"[{np.mean(paired) - half:+.1f}, {np.mean(paired) + half:+.1f}]"
    assert lines[label][:2] == [f"{np.mean(paired):+.1f} ± {np.std(paired, ddof=1):.1f} {interval} (2)", f"{rte:+.1f} (1)"]
    # the plot draws the same records, with the phase lines of the rows the differences name
    assert study_mod.plot_scores(study, records, tmp_path / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_json_gives_row_averages_and_difference_intervals(done, checkpoint, tmp_path):
    """Three seeds of two tasks (RTE missing on seed 2 for one row): row averages are means over the seeds
    with every task of the per-seed geometric means; differences pair those by seed, with the Student-t
    interval; a negative score leaves a geometric average undefined (None), never dropped silently."""
    study = Study.load(study_config(tmp_path, checkpoint, seeds=[0, 1, 2], tasks={"mrpc": {"max_length": 48}, "rte": {"max_length": 48}},
                                    differences=[["pattern_admm", "pattern_no_admm"], ["pattern_admm_int8", DENSE]]))
    seed0 = {r["row"]: r for r in load_results(done.results)}
    rng = np.random.default_rng(1)
    scores, records = {}, []
    for row, record in seed0.items():
        for task in ("mrpc", "rte"):
            for seed in (0, 1, 2):
                if (row, task, seed) == ("pattern_no_admm", "rte", 2):
                    continue
                score = float(rng.uniform(40, 90)) if (row, task, seed) != ("pattern_admm_int8", "rte", 1) else -3.0
                scores[(row, task, seed)] = score
                records.append(dict(record, task=task, seed=seed, score=score, failed=None,
                                    fingerprint=fingerprint(study.config_dict(row, task, seed))))
    out = study_mod.summary(study, records)

    def geometric(row, seed):
        return float(scipy.stats.gmean([scores[(row, "mrpc", seed)], scores[(row, "rte", seed)]]))

    complete = {row: [s for s in (0, 1, 2) if (row, "rte", s) in scores] for row in study.rows}
    for row in (DENSE, "pattern_admm", "pattern_no_admm"):
        entry = out["rows"][row]
        per_seed = [geometric(row, s) for s in complete[row]]
        assert entry["average_geometric"] == pytest.approx(np.mean(per_seed), rel=1e-12)
        assert entry["seeds"]["0"]["mrpc"] == scores[(row, "mrpc", 0)]
        assert entry["seeds"]["0"]["average_geometric"] == pytest.approx(per_seed[0], rel=1e-12)
        assert entry["tasks"]["mrpc"]["mean"] == pytest.approx(np.mean([scores[(row, "mrpc", s)] for s in (0, 1, 2)]), rel=1e-12)
    assert "average_geometric" not in out["rows"]["pattern_no_admm"]["seeds"]["2"]  # RTE missing there
    assert out["rows"]["pattern_admm_int8"]["average_geometric"] is None  # its negative RTE score
    assert out["rows"]["pattern_admm_int8"]["average_arithmetic"] is not None
    first, second = out["differences"]
    paired = [geometric("pattern_admm", s) - geometric("pattern_no_admm", s) for s in (0, 1)]
    low, high = scipy.stats.t.interval(0.95, 1, loc=np.mean(paired), scale=scipy.stats.sem(paired))
    assert (first["row"], first["reference"], first["seeds"]) == ("pattern_admm", "pattern_no_admm", 2)
    assert first["mean"] == pytest.approx(np.mean(paired), rel=1e-12)
    assert first["ci95"] == pytest.approx([low, high], rel=1e-12)
    assert first["tasks"]["mrpc"]["seeds"] == 3 and first["tasks"]["rte"]["seeds"] == 2
    assert second["mean"] is None and second["ci95"] is None and second["average_arithmetic"]["seeds"] == 3


@pytest.mark.parametrize("change, message", [
    ({"rows": {"pattern": {"overrides": {}}}}, "needs a 'dense' row"),
    ({"rows": {"dense": {"colour": "red"}}}, "unknown keys ['colour']"),
    ({"tasks": {"nosuchtask": {}}}, "nosuchtask"),
    ({"base": {"admm_epochs": -1}}, "admm_epochs must be ≥ 0"),
    ({"differences": [["pattern_admm", "nosuchrow"]]}, "differences entry ['pattern_admm', 'nosuchrow'] must name two of the rows"),
    ({"compresed": {}}, "unknown keys ['compresed']"),
    ({"compressed": {"retrain_epochs": -1}}, "row 'pattern_admm', task 'mrpc': retrain_epochs must be ≥ 0"),
])
def test_bad_study_configs_are_refused_with_the_reason(checkpoint, tmp_path, change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Study.load(study_config(tmp_path, checkpoint, **change))


def test_phase_table_gives_each_phase_per_row_and_task_over_seeds(checkpoint, tmp_path):
    """Scores after ADMM, the hard cut and retraining are averaged per (row, task) over the seeds that ran;
    a row without ADMM shows no ADMM score and no residual, dense has no line."""
    study = Study.load(study_config(tmp_path, checkpoint, seeds=[0, 1]))
    rng = np.random.default_rng(0)
    current = {}
    for row in study.rows:
        for seed in (0, 1):
            phases = ["finetune"] if row == DENSE else ["pruned", "retrain"] if row == "pattern_no_admm" else ["admm", "pruned", "retrain"]
            current[(row, "mrpc", seed)] = {"metrics": {p: {"f1": float(rng.uniform(50, 90))} for p in phases},
                                            "residual_mean": [] if len(phases) < 3 else [0.5, float(rng.uniform(0.1, 0.3))]}
    lines = study_mod.phase_lines(study, current)
    cells = {line.split(" | ")[0][2:]: [c.strip() for c in line.strip("|").split("|")[1:]] for line in lines[2:]}
    assert set(cells) == {spec.label for name, spec in study.rows.items() if name != DENSE}
    for name, spec in study.rows.items():
        if name == DENSE:
            continue
        runs = [current[(name, "mrpc", s)] for s in (0, 1)]
        expected = []
        for phase in ("admm", "pruned", "retrain"):
            values = [r["metrics"][phase]["f1"] for r in runs if phase in r["metrics"]]
            expected.append(f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}" if values else "—")
        residual = f"{np.mean([r['residual_mean'][-1] for r in runs]):.2f}" if name != "pattern_no_admm" else "—"
        assert cells[spec.label] == ["MRPC"] + expected + [residual, "2"]


def test_the_compressed_recipe_reaches_every_row_but_dense(checkpoint, tmp_path):
    """``compressed`` is merged into each compressed row under its own overrides; dense and its fingerprint ignore it."""
    recipe = {"retrain_learning_rate": 2e-5, "compression": {"distillation": {"alpha": 0.5, "temperature": 2.0}}}
    (tmp_path / "plain").mkdir(), (tmp_path / "shared").mkdir()
    plain = Study.load(study_config(tmp_path / "plain", checkpoint))
    shared = Study.load(study_config(tmp_path / "shared", checkpoint, compressed=recipe))
    for row in shared.rows:
        with_recipe, without = shared.config_dict(row, "mrpc", 0), plain.config_dict(row, "mrpc", 0)
        for config in (with_recipe, without):
            config.pop("output_dir")
        if row == DENSE:
            assert with_recipe == without
            continue
        assert with_recipe["compression"]["distillation"] == recipe["compression"]["distillation"]
        assert with_recipe["compression"]["projection"] == without["compression"]["projection"]
        # a row's own setting wins over the shared recipe
        own = plain.rows[row].overrides.get("retrain_learning_rate", 2e-5)
        assert with_recipe["retrain_learning_rate"] == own
        assert fingerprint(with_recipe) != fingerprint(without)
    assert "Every row but dense shares: " + json.dumps(recipe) in study_mod.schedule(shared)


def _store_many(path: str, seed: int, count: int) -> None:
    for i in range(count):
        store_record(Path(path), {"row": f"row{i}", "task": "mrpc", "seed": seed, "score": float(i), "padding": "x" * 20000})


def test_processes_sharing_a_results_file_lose_no_record(tmp_path):
    """Two study processes (one per seed) store into one results file at once: every record survives."""
    import multiprocessing

    path = tmp_path / "results.json"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_store_many, args=(str(path), seed, 40)) for seed in (0, 1)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=600)
        assert worker.exitcode == 0
    records = load_results(path)
    assert sorted((r["seed"], r["row"]) for r in records) == sorted((s, f"row{i}") for s in (0, 1) for i in range(40))
    assert not [p for p in tmp_path.iterdir() if p != path]  # no lock or temporary file left behind
