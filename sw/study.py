"""The GLUE study: seed 000's Table 1 rows on a pretrained model, one resumable command per row.

A study config (``configs/glue_study.json``) names the model, the data, one shared schedule
(``base``: any :class:`~sw.pipeline.TrainConfig` field), per-task overrides (``tasks``: sequence length,
subsampling), the recipe every compressed row shares (``compressed``: merged into every row but dense, so the
dense start and its fingerprint do not depend on it) and the rows (``rows``: overrides of the schedule and the
compression, deep-merged on top).
Every run is one (row, task, seed); its record is appended to the results JSON, keyed by a fingerprint of
the fully merged config, so re-running a command skips what is already done and a changed schedule runs
again::

    python -m sw.study run --config configs/glue_study.json --rows pattern_admm --tasks mrpc
    python -m sw.study run --config configs/glue_study.json            # every row × task × seed
    python -m sw.study status --config configs/glue_study.json
    python -m sw.study report --config configs/glue_study.json         # table into the results doc
    python -m sw.study adopt --config configs/glue_study.json --from configs/glue_schedule.json

The dense row fine-tunes the pretrained model and keeps the checkpoint (``<work_dir>/<task>/seed<s>/
dense/model``); every other row starts from that checkpoint with ``finetune_epochs = 0``, so all rows of a
task and seed share one dense starting point and their times exclude the fine-tuning. A missing
checkpoint (a fresh clone) is fine-tuned again first; the run is deterministic, and a recorded dense
score that does not come out the same is reported.

Any GLUE task in the standard TSV layout can be a column (``sw.glue.TASKS``: CoLA, SST-2, MRPC, QQP,
STS-B with Spearman and Pearson, MNLI on its matched dev set, QNLI, RTE, WNLI). A run whose reported
score is at or below the majority-class prediction's (near-zero correlation for STS-B) is recorded as
failed (``failed``: the reason), logged, and marked ✗ in the table with the reasons listed under it.

Under ``torchrun`` every rank runs the same rows (each run data-parallel, see ``sw.distributed``) and only
rank 0 writes records, summaries, figures and the report.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
import torch

from sw import distributed, glue
from core.atomic import write_atomic, write_between_markers

DENSE = "dense"
TABLE_START, TABLE_END = "<!-- glue-table:start -->", "<!-- glue-table:end -->"
METRIC_NAMES = {"mcc": "MCC", "f1": "F1", "accuracy": "acc", "spearman": "Spearman", "pearson": "Pearson"}
SCHEDULE_START, SCHEDULE_END = "<!-- glue-schedule:start -->", "<!-- glue-schedule:end -->"


def deep_merge(base: dict, update: dict) -> dict:
    """``base`` with ``update`` merged in, recursively for nested dicts (neither input is changed)."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


@dataclass
class Row:
    """One line of the table: how its runs differ from the shared schedule."""

    name: str
    label: str
    overrides: dict = field(default_factory=dict)  # TrainConfig fields, deep-merged
    export: bool = False  # write the int8 artifact (pattern rows only)
    figures: bool = False  # write the per-block sparsity PNGs (seed Fig. 4/5) of this row's runs


@dataclass
class Study:
    path: Path
    model: str
    data_dir: str
    work_dir: Path
    results: Path
    doc: Path
    figures_dir: Path
    base: dict
    tasks: dict[str, dict]
    rows: dict[str, Row]
    seeds: list[int]
    average: str = "geometric"
    differences: list[tuple[str, str]] = field(default_factory=list)  # (row, reference): paired by seed in the report
    compressed: dict = field(default_factory=dict)  # merged into every row but dense, under the row's own overrides

    @classmethod
    def load(cls, path: str | Path) -> "Study":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"study config {path}: {error}") from None
        required = ("model", "base", "tasks", "rows")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"study config {path}: missing {missing}")
        unknown = set(data) - set(required) - {"data_dir", "work_dir", "results", "doc", "figures_dir", "seeds", "average",
                                               "differences", "compressed"}
        if unknown:
            raise ValueError(f"study config {path}: unknown keys {sorted(unknown)}")
        rows = {}
        for name, spec in data["rows"].items():
            unknown = set(spec) - {"label", "overrides", "export", "figures"}
            if unknown:
                raise ValueError(f"study config {path}: row {name!r} has unknown keys {sorted(unknown)}")
            rows[name] = Row(name, spec.get("label", name), spec.get("overrides", {}),
                             bool(spec.get("export", False)), bool(spec.get("figures", False)))
        if DENSE not in rows:
            raise ValueError(f"study config {path}: needs a {DENSE!r} row (the shared fine-tuned start)")
        for task in data["tasks"]:
            glue.get_task(task)  # unknown task names fail here, not hours later
        differences = [tuple(pair) for pair in data.get("differences", [])]
        for pair in differences:
            if len(pair) != 2 or any(name not in rows for name in pair):
                raise ValueError(f"study config {path}: differences entry {list(pair)} must name two of the rows {sorted(rows)}")
        study = cls(
            path=path, model=data["model"], data_dir=data.get("data_dir", "../shared/data/glue"),
            work_dir=Path(data.get("work_dir", "build/glue")), results=Path(data.get("results", "docs/results/glue_runs.json")),
            doc=Path(data.get("doc", "docs/results/glue.md")), figures_dir=Path(data.get("figures_dir", "docs/results/figures")),
            base=data["base"], tasks=data["tasks"], rows=rows, seeds=list(data.get("seeds", [0])),
            average=data.get("average", "geometric"), differences=differences, compressed=data.get("compressed", {}),
        )
        for row in rows:  # every merged config must be valid before anything runs
            for task in study.tasks:
                study.train_config(row, task, study.seeds[0])
        return study

    def run_dir(self, row: str, task: str, seed: int) -> Path:
        return self.work_dir / task / f"seed{seed}" / row

    def dense_checkpoint(self, task: str, seed: int) -> Path:
        return self.run_dir(DENSE, task, seed) / "model"

    def config_dict(self, row: str, task: str, seed: int) -> dict:
        """The fully merged TrainConfig of one run, as JSON data (what the fingerprint covers)."""
        if row not in self.rows:
            raise ValueError(f"unknown row {row!r}; the study has {sorted(self.rows)}")
        if task not in self.tasks:
            raise ValueError(f"unknown task {task!r}; the study has {sorted(self.tasks)}")
        data = deep_merge(self.base, self.tasks[task])
        if row != DENSE:
            data = deep_merge(data, self.compressed)
        data = deep_merge(data, self.rows[row].overrides)
        data.update(task=task, seed=seed, data_dir=self.data_dir, output_dir=str(self.run_dir(row, task, seed)))
        if row == DENSE:  # fine-tuning only: the compression settings do not touch it (nor its fingerprint)
            data.update(model=self.model, admm_epochs=0, retrain_epochs=0)
            data.pop("compression", None)
        else:
            data.update(model=f"{DENSE}:{task}:seed{seed}", finetune_epochs=0)
        return data

    def train_config(self, row: str, task: str, seed: int):
        from sw.pipeline import TrainConfig

        try:
            return TrainConfig.from_dict(self.config_dict(row, task, seed))
        except (TypeError, ValueError) as error:
            raise ValueError(f"study config {self.path}: row {row!r}, task {task!r}: {error}") from None


def fingerprint(config: dict) -> str:
    """Hash of everything that decides a run's result; where files live (data, outputs) is left out so a
    moved work folder or another checkout of the data keeps its records."""
    decisive = {k: v for k, v in config.items() if k not in ("data_dir", "output_dir")}
    return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------- results


def load_results(path: Path) -> list[dict]:
    if not path.exists():
        return []
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"results file {path}: not JSON ({error})") from None
    if not isinstance(records, list):
        raise ValueError(f"results file {path}: expected a JSON list of run records")
    return records


def find_record(records: list[dict], row: str, task: str, seed: int, config_key: str | None = None) -> dict | None:
    for record in records:
        if (record["row"], record["task"], record["seed"]) == (row, task, seed) and (config_key is None or record["fingerprint"] == config_key):
            return record
    return None


@contextlib.contextmanager
def _folder_lock(folder: Path):
    """An exclusive lock on ``folder`` (``flock`` on the directory itself, so no lock file is left behind)."""
    handle = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield
    finally:
        os.close(handle)  # releases the lock


def store_record(path: Path, record: dict) -> None:
    """Replace any record of the same (row, task, seed), append, write atomically. Study processes that
    share one results file (say one per seed) store one at a time: none loses another's record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with _folder_lock(path.parent):
        records = [r for r in load_results(path) if (r["row"], r["task"], r["seed"]) != (record["row"], record["task"], record["seed"])]
        records.append(record)
        records.sort(key=lambda r: (r["task"], r["seed"], r["row"]))
        write_atomic(path, json.dumps(records, indent=1) + "\n")


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def final_metrics(row: str, metrics: dict) -> dict:
    """The scores a row reports: dense after fine-tuning; compressed after retraining (the artifact's
    own evaluation when one was exported)."""
    if row == DENSE:
        return metrics["finetune"]
    return metrics.get("artifact", metrics["retrain"])


# ---------------------------------------------------------------------------------------------- runs


def run_one(study: Study, row: str, task: str, seed: int, force: bool = False, log=print) -> dict:
    """Run (row, task, seed) unless an up-to-date record exists; returns the record."""
    from sw.pipeline import run
    from sw.train import plot_sparsity, resolve_model

    config_data = study.config_dict(row, task, seed)
    config_key = fingerprint(config_data)
    records = load_results(study.results)
    done = find_record(records, row, task, seed, config_key)
    dense_missing = row == DENSE and not study.dense_checkpoint(task, seed).joinpath("config.json").is_file()
    if done and not force and not dense_missing:
        log(f"[{row} / {task} / seed {seed}] up to date ({config_key}), skipped")
        return done
    if row != DENSE:
        checkpoint = study.dense_checkpoint(task, seed)
        if not checkpoint.joinpath("config.json").is_file():
            log(f"[{row} / {task} / seed {seed}] needs the dense checkpoint: fine-tuning it first")
            run_one(study, DENSE, task, seed, log=log)
        config_data = dict(config_data, model=str(checkpoint))

    config = study.train_config(row, task, seed)
    config.model = resolve_model(config.model) if row == DENSE else config_data["model"]
    spec = study.rows[row]
    log(f"[{row} / {task} / seed {seed}] running ({config_key})")
    start = time.perf_counter()
    if row == DENSE:
        result = run(config, export=False, dense_only=True, save_finetuned=study.dense_checkpoint(task, seed))
    else:
        result = run(config, export=spec.export)
    seconds = time.perf_counter() - start
    ctx = distributed.current()
    if ctx.is_main:
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        write_atomic(Path(config.output_dir) / "summary.json", json.dumps(result.summary(), indent=1))

    scores = final_metrics(row, result.metrics)
    record = {
        "row": row, "task": task, "seed": seed, "fingerprint": config_key,
        "score": scores[glue.primary_metric(task)], "metric": glue.primary_metric(task), "scores": scores,
        "metrics": result.metrics, "seconds": seconds,
        "failed": result.failed, "failures": result.failures, "baseline": result.baseline,
        "phases": [{"name": p.name, "learning_rate": p.learning_rate, "steps": p.steps, "seconds": p.seconds} for p in result.phases],
        "residual_mean": [r["mean"] for p in result.phases for r in p.residuals],
        "artifact": str(result.artifact) if result.artifact else None,
        "commit": _git_commit(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }
    if dense_missing and done and done["score"] != record["score"]:
        log(f"[{row} / {task} / seed {seed}] WARNING: re-fine-tuned dense score {record['score']:.2f} differs from "
            f"the recorded {done['score']:.2f} (not deterministic on this machine?); the new record replaces it")
    if spec.figures and row != DENSE:
        figures = study.figures_dir / f"{task}_seed{seed}_{row}"
        record["figures"] = sorted(str(figures / name) for name in FIGURES)
        if ctx.is_main:
            figures.mkdir(parents=True, exist_ok=True)
            plot_sparsity(result, figures)
            record["figures"] = sorted(str(p) for p in figures.glob("*.png"))
    if ctx.is_main:
        store_record(study.results, record)
    ctx.barrier()  # every rank reads the new record before deciding what runs next
    log(f"[{row} / {task} / seed {seed}] {record['metric']} {record['score']:.2f} in {seconds / 60:.1f} min")
    if record["failed"]:
        log(f"[{row} / {task} / seed {seed}] FAILED: {record['failed']} (majority-class baseline {json.dumps(result.baseline)})")
    return record


def adopt(study: Study, source: Study, rows, tasks, seeds, log=print) -> list[dict]:
    """Take over runs another study (a schedule of probes, say) already made with the very same merged
    config: a (row, task, seed) that is not up to date here takes the source's record of that task and seed
    whose fingerprint equals its own, whatever the source called the row, so freezing a probed recipe does
    not train it again. The record keeps ``adopted_from`` (results file and row); its run's summary is
    copied. Rows that export an artifact are not adopted (the artifact belongs in their own folder: run
    them). A figure row's adopted record has no figures (they are drawn from the weights during a run);
    a figure folder left there by an earlier run of another config is removed. Returns the adopted records."""
    source_records = load_results(source.results)
    adopted = []
    for seed in seeds:
        for task in tasks:
            for row in rows:
                where = f"[{row} / {task} / seed {seed}]"
                config_key = fingerprint(study.config_dict(row, task, seed))
                if find_record(load_results(study.results), row, task, seed, config_key):
                    log(f"{where} up to date ({config_key}), nothing to adopt")
                    continue
                match = next((r for r in source_records if (r["task"], r["seed"], r["fingerprint"]) == (task, seed, config_key)), None)
                if match is None:
                    log(f"{where} {source.results} has no run of this config ({config_key}): run it")
                    continue
                spec = study.rows[row]
                if spec.export:
                    log(f"{where} exports an artifact: not adopted from {match['row']!r}, run it")
                    continue
                record = dict(copy.deepcopy(match), row=row, adopted_from={"results": str(source.results), "row": match["row"]})
                if spec.figures:
                    record["figures"] = []
                    stale = study.figures_dir / f"{task}_seed{seed}_{row}"
                    if stale.is_dir():
                        shutil.rmtree(stale)
                        log(f"{where} removed {stale}: figures of an earlier config (an adopted run has none; --force draws them)")
                summary_file = source.run_dir(match["row"], task, seed) / "summary.json"
                if summary_file.is_file():
                    study.run_dir(row, task, seed).mkdir(parents=True, exist_ok=True)
                    write_atomic(study.run_dir(row, task, seed) / "summary.json", summary_file.read_text())
                store_record(study.results, record)
                log(f"{where} adopted {source.results} row {match['row']!r} ({config_key}): {record['metric']} {record['score']:.2f}")
                adopted.append(record)
    return adopted


# -------------------------------------------------------------------------------------------- report


def _mean_spread(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{np.mean(values):.1f} ± {np.std(values, ddof=1):.1f}"


def _current(study: Study, records: list[dict]) -> dict[tuple[str, str, int], dict]:
    """The records that match the study's present config, by (row, task, seed)."""
    return {(r["row"], r["task"], r["seed"]): r for r in records
            if r["row"] in study.rows and r["task"] in study.tasks and r["seed"] in study.seeds
            and r["fingerprint"] == fingerprint(study.config_dict(r["row"], r["task"], r["seed"]))}


def _scores_by_seed(study: Study, current: dict, row: str) -> dict[int, dict[str, float]]:
    return {s: {t: current[(row, t, s)]["score"] for t in study.tasks if (row, t, s) in current} for s in study.seeds}


def _averages(study: Study) -> list[str]:
    """The kinds of average the report gives: the study's own, and the arithmetic mean beside it."""
    return list(dict.fromkeys([study.average, "arithmetic"]))


def _complete(study: Study, per_seed: dict[int, dict[str, float]]) -> dict[int, dict[str, float]]:
    """The seeds that have a score for every task (the only ones an average over tasks can use)."""
    return {seed: scores for seed, scores in per_seed.items() if len(scores) == len(study.tasks)}


def _average_cells(study: Study, per_seed: dict[int, dict[str, float]], most_seeds: int) -> list[str]:
    """The study's averages over the seeds that have every task; the seed count is given when some
    task has more seeds than the average could use."""
    complete = list(_complete(study, per_seed).values())
    cells = []
    for kind in _averages(study):
        if not complete:
            cells.append("—")
            continue
        try:
            cell = _mean_spread([glue.glue_average(s, kind) for s in complete])
        except ValueError:  # a negative MCC has no geometric mean
            cell = "n/a (negative score)"
        cells.append(cell + (f" ({len(complete)} seed{'s' * (len(complete) > 1)})" if len(complete) < most_seeds else ""))
    return cells


def table(study: Study, records: list[dict]) -> str:
    """Markdown: one line per row with the primary metric per task (mean ± sample std over seeds), the
    average as the study defines it (and the arithmetic mean beside it when that is another) over the
    seeds that have every task, and the seed count (per task when they differ); then the differences the
    study asks for, paired by seed; then the minutes per run, per row and task."""
    tasks = list(study.tasks)
    current = _current(study, records)
    averages = _averages(study)
    folder = {t: glue.get_task(t).folder for t in tasks}
    header = ["row"] + [f"{folder[t]} ({METRIC_NAMES.get(glue.primary_metric(t), glue.primary_metric(t))})" for t in tasks] + [f"average ({kind})" for kind in averages] + ["seeds"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" + "---:|" * (len(header) - 1)]
    time_lines = ["| " + " | ".join(["row"] + [folder[t] for t in tasks]) + " |", "|" + "---|" + "---:|" * len(tasks)]
    for name, row in study.rows.items():
        per_seed = _scores_by_seed(study, current, name)
        counts = [sum(task in scores for scores in per_seed.values()) for task in tasks]
        cells = [_mean_spread([scores[task] for scores in per_seed.values() if task in scores]) if n else "—" for task, n in zip(tasks, counts)]
        cells = [cell + (" ✗" if any(current.get((name, task, s), {}).get("failed") for s in study.seeds) else "")
                 for cell, task in zip(cells, tasks)]
        minutes = [f"{np.median(times):.1f}" if (times := [current[(name, t, s)]["seconds"] / 60 for s in study.seeds if (name, t, s) in current]) else "—"
                   for t in tasks]
        seeds = str(counts[0]) if len(set(counts)) == 1 else " / ".join(map(str, counts))
        lines.append("| " + " | ".join([row.label] + cells + _average_cells(study, per_seed, max(counts)) + [seeds]) + " |")
        time_lines.append("| " + " | ".join([row.label] + minutes) + " |")
    out = lines + [""]
    if study.differences:
        out += ["Differences, paired by seed (both runs of a pair start from the same dense checkpoint); mean ± sample std "
                "over the seeds that have both, the 95 % Student-t interval of the mean in square brackets, the number of seeds in round ones:", "",
                "| difference | " + " | ".join(folder[t] for t in tasks) + " | " + " | ".join(f"average ({kind})" for kind in averages) + " |",
                "|---|" + "---:|" * (len(tasks) + len(averages))]
        for name, reference in study.differences:
            a, b = _scores_by_seed(study, current, name), _scores_by_seed(study, current, reference)
            cells = []
            for task in tasks:
                paired = [a[s][task] - b[s][task] for s in study.seeds if task in a[s] and task in b[s]]
                cells.append(f"{_signed(paired)} ({len(paired)})" if paired else "—")
            both = sorted(_complete(study, a).keys() & _complete(study, b).keys())
            for kind in averages:
                try:
                    paired = [glue.glue_average(a[s], kind) - glue.glue_average(b[s], kind) for s in both]
                    cells.append(f"{_signed(paired)} ({len(paired)})" if paired else "—")
                except ValueError:
                    cells.append("n/a (negative score)")
            out.append(f"| {study.rows[name].label} − {study.rows[reference].label} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out + ["Minutes per run (median over seeds; compressed rows exclude the dense fine-tuning they start from):", ""]
                     + time_lines + ["", PHASES_INTRO, ""] + phase_lines(study, current) + failure_lines(study, current)
                     + adopted_lines(study, current) + other_score_lines(study, current))


def adopted_lines(study: Study, current: dict) -> list[str]:
    """One bullet per source row whose runs this study adopted (same merged config, not trained again)."""
    by_source = {}
    for (row, task, seed), record in sorted(current.items(), key=lambda item: item[0]):
        if record.get("adopted_from"):
            source = record["adopted_from"]
            by_source.setdefault((row, source["results"], source["row"]), []).append(f"{glue.get_task(task).folder} seed {seed}")
    if not by_source:
        return []
    return ["", "Runs adopted from another study with the very same merged config (`adopted_from` in the records; not trained again):", ""] + [
        f"- {study.rows[row].label}: {', '.join(runs)}, from `{results}` row `{source}`" for (row, results, source), runs in by_source.items()]


def failure_lines(study: Study, current: dict) -> list[str]:
    """Markdown bullets: the majority-class score of every task and every run flagged as failed (✗)."""
    baselines = {}
    for (_, task, _), record in current.items():
        if record.get("baseline"):
            baselines.setdefault(task, record["baseline"])
    failed = [(key, record) for key, record in current.items() if record.get("failed")]
    if not baselines and not failed:
        return []
    lines = ["", "Majority-class scores (the constant prediction of the most frequent training class; for STS-B no "
             "correlation): " + "; ".join(f"{glue.get_task(t).folder} " + ", ".join(f"{k} {v:.1f}" for k, v in b.items())
                                          for t, b in baselines.items()) + "."]
    if failed:
        lines += ["", "Runs flagged as failed (✗: the reported score at or below the majority-class one, or |correlation| "
                  f"< {glue.MIN_CORRELATION:g}); the averages above include them:", ""]
        lines += [f"- {study.rows[row].label} / {glue.get_task(task).folder} / seed {seed}: {record['failed']}"
                  for (row, task, seed), record in sorted(failed, key=lambda item: (item[0][1], item[0][2], item[0][0]))]
    else:
        lines += ["", "No run is flagged as failed."]
    return lines


def other_score_lines(study: Study, current: dict) -> list[str]:
    """Markdown bullets: the scores besides the primary one (MRPC accuracy, STS-B Pearson), mean over seeds."""
    lines = []
    for task in study.tasks:
        primary = glue.primary_metric(task)
        for metric in sorted({k for (_, t, _), r in current.items() if t == task for k in r.get("scores", {})} - {primary}):
            cells = []
            for name, row in study.rows.items():
                values = [current[(name, task, s)]["scores"][metric] for s in study.seeds
                          if (name, task, s) in current and metric in current[(name, task, s)].get("scores", {})]
                if values:
                    cells.append(f"{row.label} {_mean_spread(values)}")
            lines.append(f"- {glue.get_task(task).folder} {METRIC_NAMES.get(metric, metric)}: " + "; ".join(cells))
    return ["", "Other scores of the same runs (mean ± sample std over seeds):", ""] + lines if lines else []


PHASES = {"admm": "after ADMM", "pruned": "after the hard cut", "retrain": "after retraining"}
PHASES_INTRO = ("Scores after each phase of the compressed rows (mean ± sample std over seeds), and the mean ADMM "
                "residual ‖W − Z‖/‖W‖ at the last Z/U update: where each row gains and loses.")


def phase_lines(study: Study, current: dict) -> list[str]:
    """Markdown lines: per compressed row and task, the primary metric at the end of every phase it ran."""
    lines = ["| row | task | " + " | ".join(PHASES.values()) + " | ADMM residual at the last update | seeds |",
             "|---|---|" + "---:|" * (len(PHASES) + 2)]
    for name, row in study.rows.items():
        for task in study.tasks:
            runs = [current[(name, task, s)] for s in study.seeds if (name, task, s) in current]
            if name == DENSE or not runs:
                continue
            metric = glue.primary_metric(task)
            cells = [_mean_spread(values) if (values := [r["metrics"][phase][metric] for r in runs if phase in r["metrics"]]) else "—"
                     for phase in PHASES]
            residuals = [r["residual_mean"][-1] for r in runs if r["residual_mean"]]
            cells.append(f"{np.mean(residuals):.2f}" if residuals else "—")
            lines.append(f"| {row.label} | {glue.get_task(task).folder} | " + " | ".join(cells) + f" | {len(runs)} |")
    return lines


def interval(values: list[float]) -> dict:
    """Mean, sample std and the 95 % Student-t interval of the mean of ``values`` (one per seed);
    std and interval are None for a single value."""
    mean = float(np.mean(values))
    if len(values) == 1:
        return {"mean": mean, "std": None, "ci95": None, "seeds": 1}
    std = float(np.std(values, ddof=1))
    half = float(scipy.stats.t.ppf(0.975, len(values) - 1)) * std / np.sqrt(len(values))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "seeds": len(values)}


def _signed(values: list[float]) -> str:
    """Mean difference; with two or more seeds also the sample std and the 95 % Student-t interval of
    the mean, so a reader sees at once whether zero is inside it."""
    stats = interval(values)
    if stats["std"] is None:
        return f"{stats['mean']:+.1f}"
    low, high = stats["ci95"]
    return f"{stats['mean']:+.1f} ± {stats['std']:.1f} [{low:+.1f}, {high:+.1f}]"


def _threads(count: int | None) -> str:
    return str(count) if count else "library default"


def schedule(study: Study) -> str:
    """The shared schedule and the per-task settings as a markdown table (from the study config)."""
    from sw.pipeline import TrainConfig

    # the compressed rows' schedule (the dense row reads only the fine-tuning settings, which it shares)
    base = TrainConfig.from_dict(deep_merge(deep_merge(study.base, study.compressed), {"model": study.model}))
    admm = base.compression.admm
    settings = [
        ("model", study.model),
        ("batch size", base.batch_size),
        ("optimizer", f"AdamW, weight decay {base.weight_decay}, linear warmup ({base.warmup_ratio:.0%}) and decay per phase"),
        ("learning rate", f"{study.base.get('learning_rate', base.learning_rate):g} (fine-tune); ADMM phase {base.admm_learning_rate or base.learning_rate:g}; "
                          f"retrain phase {base.retrain_learning_rate or base.learning_rate:g}"),
        ("epochs", f"fine-tune {base.finetune_epochs:g} (dense row), ADMM {base.admm_epochs:g}, retrain {base.retrain_epochs:g}"),
        ("ADMM ρ", f"{admm.rho:g}, ×{admm.rho_growth:g} per Z/U update (cap {admm.rho_max:g}), "
                   + (f"{admm.updates} updates spread over the ADMM phase, " if admm.updates else f"update every {admm.update_every} steps, ")
                   + f"pool rebuilt every {admm.pool_rebuild_every} update(s)"
                   + (f"; penalty as a proximal step after each optimizer step, η {admm.proximal:g}" if admm.proximal else "")),
        ("SR-STE λ", f"{base.compression.srste_decay:g}"),
        *([("ADMM weight decay", f"{base.admm_weight_decay:g}")] if base.admm_weight_decay is not None else []),
        *([("minimum steps per phase", base.min_steps)] if base.min_steps else []),
        *([("checkpoint selection", f"fine-tune and retrain end on their best step on a {base.heldout_fraction:.0%} held-out slice "
                                    f"of train, scored every {base.select_every} steps")] if base.select_every else []),
        *([("knowledge distillation", "α {alpha:g}, T {temperature:g} from the dense model, in ADMM and retraining".format(
            **{"alpha": 0.5, "temperature": 2.0, **base.compression.distillation}))] if base.compression.distillation else []),
        ("seeds", ", ".join(str(s) for s in study.seeds)),
        ("threads", _threads(study.base.get("threads")) if "threads" not in study.compressed else
                    f"{_threads(study.base.get('threads'))} (dense), {_threads(study.compressed['threads'])} (the other rows)"),
    ]
    lines = ["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in settings]
    lines += ["", "| task | max length | training rows | dev rows |", "|---|---:|---:|---:|"]
    for task, overrides in study.tasks.items():
        config = study.train_config(DENSE, task, study.seeds[0])
        limit = config.train_limit
        lines.append(f"| {glue.get_task(task).folder} | {config.max_length} | "
                     f"{'all' if limit is None else f'first {limit} (subsampled)'} | {'all' if config.eval_limit is None else config.eval_limit} |")
    rows = [f"- **{row.label}** (`{name}`): " + json.dumps(row.overrides) for name, row in study.rows.items() if row.overrides]
    shared = ["", "Every row but dense shares: " + json.dumps(study.compressed)] if study.compressed else []
    return "\n".join(lines + shared + ["", "Row overrides of this schedule:", ""] + rows)


FIGURES = ("block_sparsity.png", "submatrix_sparsity.png", "weight_distribution.png")
PLOT_PHASES = {"finetune": "dense", "admm": "after ADMM", "pruned": "hard cut", "retrain": "retrained"}


def plot_scores(study: Study, records: list[dict], path: Path) -> Path:
    """A PNG with a column per task. Top: every row's final score, one dot per seed and a bar at the mean,
    so the spread between seeds is seen beside the gaps between rows. Bottom: the rows named in the
    study's ``differences`` through their phases (fine-tuned, after ADMM, after the hard cut, retrained),
    one line per seed."""
    from matplotlib.figure import Figure

    from sw.analysis import save_png

    current = _current(study, records)
    tasks = list(study.tasks)
    traced = list(dict.fromkeys(name for pair in study.differences for name in pair if name != DENSE))
    fig = Figure(figsize=(4.2 * len(tasks), 7.5 if traced else 4.2), layout="constrained")
    axes = fig.subplots(2 if traced else 1, len(tasks), squeeze=False)
    colours = {name: f"C{i}" for i, name in enumerate(study.rows)}
    for column, task in enumerate(tasks):
        metric = glue.primary_metric(task)
        title = f"{glue.get_task(task).folder} ({METRIC_NAMES.get(metric, metric)}, dev)"
        top = axes[0][column]
        for x, name in enumerate(study.rows):
            scores = [current[(name, task, s)]["score"] for s in study.seeds if (name, task, s) in current]
            if scores:
                top.scatter([x] * len(scores), scores, color=colours[name], s=18, zorder=3)
                top.hlines(np.mean(scores), x - 0.3, x + 0.3, color=colours[name], linewidth=2)
        top.set_xticks(range(len(study.rows)), [row.name for row in study.rows.values()], rotation=60, ha="right", fontsize=7)
        top.set_title(title, fontsize=9)
        top.grid(axis="y", alpha=0.3)
        if not traced:
            continue
        bottom = axes[1][column]
        for name in traced:
            for i, seed in enumerate(s for s in study.seeds if (name, task, s) in current):
                metrics = current[(name, task, seed)]["metrics"]
                dense = current.get((DENSE, task, seed), {}).get("metrics", {}).get("finetune")
                points = [(x, (dense if phase == "finetune" else metrics.get(phase) or {}).get(metric))
                          for x, phase in enumerate(PLOT_PHASES) if phase != "finetune" or dense]
                points = [(x, y) for x, y in points if y is not None]
                bottom.plot(*zip(*points), marker="o", color=colours[name], alpha=0.8, label=study.rows[name].label if i == 0 else None)
        bottom.set_xticks(range(len(PLOT_PHASES)), list(PLOT_PHASES.values()), fontsize=8)
        bottom.set_title(f"{title}: through the phases, a line per seed", fontsize=9)
        bottom.grid(alpha=0.3)
        if column == 0:
            bottom.legend(fontsize=7, loc="lower left")
    return save_png(fig, path)


def summary(study: Study, records: list[dict]) -> dict:
    """The table's numbers for machines (``<doc>.json`` beside the doc). Per row: ``average_<kind>`` (the
    study's average and the arithmetic one: mean over the seeds that have every task), ``seeds`` (per seed its
    task scores and, where complete, its averages), ``tasks`` (mean, std, ci95 over seeds) and the runs flagged
    as failed; per listed difference, paired by seed: ``mean``, ``std``, ``ci95`` (95 % Student-t interval of
    the mean) and ``seeds`` of the study's average at the top, of each average under ``average_<kind>`` and of
    each task under ``tasks``. An average a negative score leaves undefined (the geometric mean of a negative
    MCC) is None."""
    current = _current(study, records)

    def averages(per_seed: dict[int, dict[str, float]]) -> dict[str, dict[int, float] | None]:
        out = {}
        for kind in _averages(study):
            try:
                out[kind] = {seed: glue.glue_average(scores, kind) for seed, scores in _complete(study, per_seed).items()}
            except ValueError:
                out[kind] = None
        return out

    rows = {}
    for name, row in study.rows.items():
        per_seed = _scores_by_seed(study, current, name)
        seeds = {seed: dict(scores) for seed, scores in per_seed.items() if scores}
        entry = {"label": row.label}
        for kind, by_seed in averages(per_seed).items():
            entry[f"average_{kind}"] = float(np.mean(list(by_seed.values()))) if by_seed else None
            for seed, value in (by_seed or {}).items():
                seeds[seed][f"average_{kind}"] = value
        entry["seeds"] = {str(seed): scores for seed, scores in seeds.items()}
        entry["tasks"] = {task: interval(values) for task in study.tasks
                          if (values := [scores[task] for scores in per_seed.values() if task in scores])}
        entry["failed"] = [{"task": t, "seed": s, "reason": current[(name, t, s)]["failed"]}
                           for s in study.seeds for t in study.tasks if current.get((name, t, s), {}).get("failed")]
        rows[name] = entry

    differences = []
    for name, reference in study.differences:
        a, b = _scores_by_seed(study, current, name), _scores_by_seed(study, current, reference)
        entry = {"row": name, "reference": reference, "tasks": {}}
        for task in study.tasks:
            paired = [a[s][task] - b[s][task] for s in study.seeds if task in a[s] and task in b[s]]
            if paired:
                entry["tasks"][task] = interval(paired)
        mine, theirs = averages(a), averages(b)
        for kind in _averages(study):
            both = sorted((mine[kind] or {}).keys() & (theirs[kind] or {}).keys())
            entry[f"average_{kind}"] = interval([mine[kind][s] - theirs[kind][s] for s in both]) if both else None
        entry.update(entry[f"average_{study.average}"] or {"mean": None, "std": None, "ci95": None, "seeds": 0})
        differences.append(entry)
    return {"config": str(study.path), "average": study.average, "seeds": study.seeds,
            "metrics": {task: glue.primary_metric(task) for task in study.tasks}, "rows": rows, "differences": differences}


def write_report(study: Study) -> Path:
    """Put the schedule and the results table between their markers in the results doc (the prose
    around them is kept), write the same numbers as JSON (:func:`summary`, ``<doc>.json``), and draw the
    scores (``<figures_dir>/<doc name>_scores.png``)."""
    records = load_results(study.results)
    write_between_markers(study.doc, TABLE_START, TABLE_END, table(study, records), title="# GLUE study")
    write_atomic(study.doc.with_suffix(".json"), json.dumps(summary(study, records), indent=1) + "\n")
    plot_scores(study, records, study.figures_dir / f"{study.doc.stem}_scores.png")
    text = study.doc.read_text()
    if SCHEDULE_START in text:
        write_between_markers(study.doc, SCHEDULE_START, SCHEDULE_END, schedule(study))
    return study.doc


def status(study: Study) -> list[tuple[str, str, int, str]]:
    """(row, task, seed, state) for every run of the study: done, stale (config changed) or pending."""
    records = load_results(study.results)
    out = []
    for seed in study.seeds:
        for task in study.tasks:
            for row in study.rows:
                config_key = fingerprint(study.config_dict(row, task, seed))
                if find_record(records, row, task, seed, config_key):
                    state = "done"
                elif find_record(records, row, task, seed):
                    state = "stale"
                else:
                    state = "pending"
                out.append((row, task, seed, state))
    return out


def _names(value: str | None, known, what: str) -> list:
    if value is None:
        return list(known)
    names = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--{what}: unknown {unknown}; the study has {list(known)}")
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run", "status", "report", "adopt"])
    parser.add_argument("--config", default="configs/glue_study.json")
    parser.add_argument("--rows", help="comma-separated row names (default: all)")
    parser.add_argument("--tasks", help="comma-separated task names (default: all)")
    parser.add_argument("--seeds", help="comma-separated seeds (default: the study's)")
    parser.add_argument("--from", dest="source", help="adopt: the study config whose matching runs are taken over")
    parser.add_argument("--force", action="store_true", help="run again even when an up-to-date record exists")
    args = parser.parse_args(argv)
    try:
        study = Study.load(args.config)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    rows = _names(args.rows, study.rows, "rows")
    tasks = _names(args.tasks, study.tasks, "tasks")
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else study.seeds

    if args.command == "run":
        rows = sorted(rows, key=lambda r: r != DENSE)  # dense first: the others start from it
        ctx = distributed.init()
        log = print if ctx.is_main else (lambda message: None)
        for seed in seeds:
            for task in tasks:
                for row in rows:
                    run_one(study, row, task, seed, force=args.force, log=log)
        if ctx.is_main:
            write_report(study)
        distributed.shutdown()
    elif args.command == "adopt":
        if not args.source:
            raise SystemExit("adopt needs --from SOURCE_CONFIG (the study whose runs are taken over)")
        try:
            source = Study.load(args.source)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        adopt(study, source, rows, tasks, seeds)
        print(f"wrote {write_report(study)}")
    elif args.command == "status":
        for row, task, seed, state in status(study):
            if row in rows and task in tasks and seed in seeds:
                print(f"{state:8s} {row:32s} {task:6s} seed {seed}")
    else:
        print(f"wrote {write_report(study)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
