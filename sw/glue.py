"""GLUE tasks: loading from a TSV folder (or the Hugging Face hub), tokenized datasets, metrics.

The TSV folder has the layout of the classic ``download_glue_data.py``::

    <data_dir>/CoLA/train.tsv, dev.tsv          (no header: source, label, author mark, sentence)
    <data_dir>/SST-2/train.tsv, dev.tsv         (sentence, label)
    <data_dir>/MRPC/train.tsv, dev.tsv          (Quality, #1 ID, #2 ID, #1 String, #2 String)
    <data_dir>/MNLI/train.tsv, dev_matched.tsv, dev_mismatched.tsv
    <data_dir>/QQP, STS-B, QNLI, RTE, WNLI/train.tsv, dev.tsv

Every file is read with ``csv`` (tab-delimited, ``QUOTE_NONE``: GLUE text holds unbalanced quotes) and
``utf-8-sig`` (the MRPC files start with a byte-order mark). Columns are found by header name, so
extra columns do not matter; CoLA has no header and is read by position.

Label ids match the Hugging Face ``glue`` configs, so both loading routes give the same ids:
MNLI is entailment=0, neutral=1, contradiction=2; RTE and QNLI are entailment=0, not_entailment=1;
the 0/1 tasks keep their value. STS-B is a regression task with float scores in [0, 5].

Metrics follow the GLUE evaluation of the ADMM pattern-pruning paper: Matthews correlation for CoLA,
F1 for MRPC and QQP, Spearman correlation for STS-B, accuracy for the rest, all in percent, and the
geometric mean over the reported scores as the average (see :func:`glue_average`).
"""

from __future__ import annotations

import csv
import itertools
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.nn.utils.rnn import pad_sequence

__all__ = [
    "TASKS", "TaskSpec", "GlueExample", "GlueDataset", "get_task", "load_glue_split", "load_glue_hf", "subsample",
    "collate", "compute_metrics", "primary_metric", "glue_average", "majority_baseline", "failure", "write_subset",
]


@dataclass(frozen=True)
class TaskSpec:
    """How one GLUE task is stored and scored.

    Attributes
    ----------
    name : str
        Canonical lower-case name (``"cola"``, ``"sst2"``, ...), also the Hugging Face config name.
    folder : str
        Folder name in the GLUE data directory (``"CoLA"``, ``"SST-2"``, ...).
    text_columns : tuple of str
        Column(s) holding the sentence, or the sentence pair.
    label_column : str
        Column holding the label (class string, or score for regression).
    labels : tuple of str or None
        Label strings in class-id order; ``None`` for a regression task.
    metric : str
        Key of the headline score in :func:`compute_metrics`.
    columns : tuple of str or None
        Column names of a headerless file (CoLA); ``None`` when the file has a header row.
    dev_splits : tuple of str
        Dev split file names without ``.tsv``.
    hf_text_columns : tuple of str
        Text columns of the Hugging Face ``glue`` config.
    """

    name: str
    folder: str
    text_columns: tuple[str, ...]
    label_column: str
    labels: tuple[str, ...] | None
    metric: str
    columns: tuple[str, ...] | None = None
    dev_splits: tuple[str, ...] = ("dev",)
    hf_text_columns: tuple[str, ...] = ("sentence1", "sentence2")

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def has_header(self) -> bool:
        return self.columns is None

    @property
    def splits(self) -> tuple[str, ...]:
        return ("train", *self.dev_splits)


_BINARY = ("0", "1")
_ENTAILMENT = ("entailment", "not_entailment")

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("cola", "CoLA", ("sentence",), "label", _BINARY, "mcc",
             columns=("source", "label", "author_mark", "sentence"), hf_text_columns=("sentence",)),
    TaskSpec("sst2", "SST-2", ("sentence",), "label", _BINARY, "accuracy", hf_text_columns=("sentence",)),
    TaskSpec("mrpc", "MRPC", ("#1 String", "#2 String"), "Quality", _BINARY, "f1"),
    TaskSpec("qqp", "QQP", ("question1", "question2"), "is_duplicate", _BINARY, "f1",
             hf_text_columns=("question1", "question2")),
    TaskSpec("stsb", "STS-B", ("sentence1", "sentence2"), "score", None, "spearman"),
    TaskSpec("mnli", "MNLI", ("sentence1", "sentence2"), "gold_label", ("entailment", "neutral", "contradiction"),
             "accuracy", dev_splits=("dev_matched", "dev_mismatched"), hf_text_columns=("premise", "hypothesis")),
    TaskSpec("qnli", "QNLI", ("question", "sentence"), "label", _ENTAILMENT, "accuracy",
             hf_text_columns=("question", "sentence")),
    TaskSpec("rte", "RTE", ("sentence1", "sentence2"), "label", _ENTAILMENT, "accuracy"),
    TaskSpec("wnli", "WNLI", ("sentence1", "sentence2"), "label", _BINARY, "accuracy"),
)}


def get_task(name: str | TaskSpec) -> TaskSpec:
    """Look up a task by name, case-insensitively; ``-`` and ``_`` are ignored (``"SST-2"``, ``"STS-B"``).

    Raises
    ------
    ValueError
        If the name is not a GLUE task; the message lists the known ones.
    """
    if isinstance(name, TaskSpec):
        return name
    key = name.lower().replace("-", "").replace("_", "")
    if key not in TASKS:
        raise ValueError(f"unknown GLUE task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[key]


@dataclass
class GlueExample:
    """One example: a sentence (``text_b`` is None) or a sentence pair, and its label.

    ``label`` is a class id (int) for classification and a score (float) for regression.
    """

    text_a: str
    text_b: str | None
    label: int | float


def load_glue_split(data_dir: str | Path, task: str | TaskSpec, split: str = "train",
                    limit: int | None = None) -> list[GlueExample]:
    """Read one split of a GLUE task from ``<data_dir>/<TaskFolder>/<split>.tsv``.

    Parameters
    ----------
    data_dir : str or Path
        The GLUE data directory (the one holding ``CoLA/``, ``SST-2/``, ...).
    task : str or TaskSpec
        Task name, see :func:`get_task`.
    split : str
        ``"train"`` or one of the task's dev splits: ``"dev"``, or for MNLI ``"dev_matched"`` and
        ``"dev_mismatched"``.
    limit : int, optional
        Read only the first ``limit`` rows: a deterministic subsample (file order). For a random one
        load everything and use :func:`subsample`.

    Returns
    -------
    list of GlueExample
        One example per data row, in file order; no row is ever dropped.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        For an unknown task or split, a header without a needed column, a row with the wrong
        number of columns, an unknown label string or a non-numeric score. The message names the
        file and, for a bad row, its line number.
    """
    spec = get_task(task)
    if split not in spec.splits:
        raise ValueError(f"{spec.folder} has no split {split!r}; choose from {', '.join(spec.splits)}")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be non-negative, got {limit}")
    path = Path(data_dir) / spec.folder / f"{split}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"GLUE file not found: {path}")

    examples: list[GlueExample] = []
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        columns = spec.columns
        if columns is None:
            columns = [name.strip() for name in next(reader, [])]
        missing = [c for c in (*spec.text_columns, spec.label_column) if c not in columns]
        if missing:
            raise ValueError(f"{path}: header has no column(s) {missing}; found {list(columns)}")
        text_index = [columns.index(c) for c in spec.text_columns]
        label_index = columns.index(spec.label_column)

        for row in itertools.islice(reader, limit):
            where = f"{path}, line {reader.line_num}"
            if len(row) != len(columns):
                raise ValueError(f"{where}: expected {len(columns)} tab-separated columns, found {len(row)}")
            texts = [row[i] for i in text_index]
            label = _parse_label(spec, row[label_index], where)
            examples.append(GlueExample(texts[0], texts[1] if len(texts) > 1 else None, label))
    return examples


def _parse_label(spec: TaskSpec, value: str, where: str) -> int | float:
    value = value.strip()
    if spec.labels is None:
        try:
            score = float(value)
        except ValueError:
            score = math.nan
        if not math.isfinite(score):
            raise ValueError(f"{where}: score {value!r} of {spec.folder} is not a finite number")
        return score
    if value not in spec.labels:
        raise ValueError(f"{where}: unknown {spec.folder} label {value!r}; expected one of {list(spec.labels)}")
    return spec.labels.index(value)


def load_glue_hf(task: str | TaskSpec, split: str = "train", limit: int | None = None) -> list[GlueExample]:
    """Load a GLUE split from the Hugging Face hub (needs network and ``pip install tessera[datasets]``).

    Takes the same task and split names as :func:`load_glue_split` (``"dev"`` is the hub's
    ``"validation"``) and returns the same examples and label ids.
    """
    try:
        import datasets
    except ImportError as error:
        raise ImportError("load_glue_hf needs the datasets package: pip install tessera[datasets]") from error
    spec = get_task(task)
    if split not in spec.splits:
        raise ValueError(f"{spec.folder} has no split {split!r}; choose from {', '.join(spec.splits)}")
    # "nyu-mll/glue" is the hub id of the dataset formerly named "glue" (parquet, no loading script).
    rows = datasets.load_dataset("nyu-mll/glue", spec.name, split=split.replace("dev", "validation"))
    if limit is not None:
        rows = rows.select(range(min(limit, len(rows))))
    first, *second = spec.hf_text_columns
    cast = float if spec.is_regression else int
    return [GlueExample(row[first], row[second[0]] if second else None, cast(row["label"])) for row in rows]


def subsample(examples: Sequence[GlueExample], n: int, seed: int = 0) -> list[GlueExample]:
    """A seeded random subset of ``min(n, len(examples))`` examples, kept in their original order."""
    indices = random.Random(seed).sample(range(len(examples)), min(n, len(examples)))
    return [examples[i] for i in sorted(indices)]


class GlueDataset(torch.utils.data.Dataset):
    """GLUE examples tokenized once up front (truncated to ``max_length``, unpadded).

    Items are dicts of 1-D tensors ``input_ids``, ``attention_mask``, ``token_type_ids`` (when the
    tokenizer makes them) and a scalar ``labels`` (``torch.long``, or ``torch.float`` for regression).
    Batch them with :func:`collate`, which pads to the longest item of each batch.
    """

    def __init__(self, examples: Sequence[GlueExample], tokenizer, max_length: int = 128,
                 is_regression: bool = False):
        pairs = {e.text_b is not None for e in examples}
        if len(pairs) > 1:
            raise ValueError("examples mix single sentences and sentence pairs")
        if not is_regression and not all(isinstance(e.label, int) for e in examples):
            raise ValueError("classification labels must be int class ids; pass is_regression=True for scores")
        text_b = [e.text_b for e in examples] if pairs == {True} else None
        encoded = tokenizer([e.text_a for e in examples], text_b, truncation=True, max_length=max_length)
        keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in encoded]
        self.features = [{k: torch.tensor(encoded[k][i], dtype=torch.long) for k in keys}
                         for i in range(len(examples))]
        self.labels = torch.tensor([e.label for e in examples], dtype=torch.float if is_regression else torch.long)

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {**self.features[index], "labels": self.labels[index]}


def collate(batch: Sequence[dict[str, torch.Tensor]], pad_token_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Stack :class:`GlueDataset` items, right-padding to the longest sequence in the batch (or to
    ``length`` tokens, e.g. an accelerator's compiled sequence length).

    ``input_ids`` are padded with ``pad_token_id``, the masks and token types with 0. Use it as
    ``DataLoader(..., collate_fn=functools.partial(collate, pad_token_id=tokenizer.pad_token_id))``.
    """
    out = {}
    for key in batch[0]:
        values = [item[key] for item in batch]
        if key == "labels":
            out[key] = torch.stack(values)
            continue
        padded = pad_sequence(values, batch_first=True, padding_value=pad_token_id if key == "input_ids" else 0)
        if length is not None:
            if padded.shape[1] > length:
                raise ValueError(f"a sequence has {padded.shape[1]} tokens, more than length={length}")
            padded = torch.nn.functional.pad(padded, (0, length - padded.shape[1]), value=pad_token_id if key == "input_ids" else 0)
        out[key] = padded
    return out


def primary_metric(task: str | TaskSpec) -> str:
    """Key of the task's headline score: ``"mcc"`` (CoLA), ``"f1"`` (MRPC, QQP), ``"spearman"`` (STS-B)
    or ``"accuracy"``."""
    return get_task(task).metric


def compute_metrics(task: str | TaskSpec, predictions, labels) -> dict[str, float]:
    """Scores of one evaluation split, in percent.

    Parameters
    ----------
    task : str or TaskSpec
        The task. MNLI matched and mismatched are scored by separate calls, one per dev split.
    predictions : array-like
        Class ids ``[N]`` or logits ``[N, C]`` (argmax is taken) for classification; scores ``[N]``
        or ``[N, 1]`` for regression. Numpy arrays, tensors and lists are accepted.
    labels : array-like
        Gold class ids or scores ``[N]``.

    Returns
    -------
    dict of str to float
        CoLA ``{"mcc"}``; MRPC and QQP ``{"f1", "accuracy"}`` (F1 of class 1); STS-B
        ``{"spearman", "pearson"}`` (0 for constant predictions, where no correlation is defined);
        all other tasks ``{"accuracy"}``. All × 100.
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = get_task(task)
    predictions, labels = _as_numpy(predictions), _as_numpy(labels).reshape(-1)
    if spec.is_regression:
        predictions = predictions.reshape(-1).astype(float)
    elif predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    if predictions.shape != labels.shape:
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")

    if spec.is_regression:
        constant = np.ptp(predictions) == 0 or np.ptp(labels) == 0  # no correlation defined: scored 0, as MCC is
        scores = {"spearman": 0.0, "pearson": 0.0} if constant else {
            "spearman": spearmanr(predictions, labels)[0], "pearson": pearsonr(predictions, labels)[0]}
    elif spec.metric == "mcc":
        scores = {"mcc": matthews_corrcoef(labels, predictions)}
    elif spec.metric == "f1":
        scores = {"f1": f1_score(labels, predictions, pos_label=1, zero_division=0),
                  "accuracy": accuracy_score(labels, predictions)}
    else:
        scores = {"accuracy": accuracy_score(labels, predictions)}
    return {key: 100.0 * float(value) for key, value in scores.items()}


def _as_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().cpu().numpy()
    return np.asarray(values)


def glue_average(scores: dict[str, float], kind: str = "geometric") -> float:
    """Average of reported GLUE scores, geometric by default as in the ADMM pattern-pruning paper.

    The paper's average is the geometric mean of its reported scores, with MNLI's matched and
    mismatched accuracies counted as two separate scores. Its Table 1 baseline (MNLI 84.5/84.8,
    SST-2 92.5, QNLI 91.6, CoLA 56.7, STS-B 89.6, MRPC 91.7, RTE 70.7) gives 81.78, reported as 81.8;
    the arithmetic mean, which most other papers use, would be 82.76.

    Parameters
    ----------
    scores : dict of str to float
        One entry per reported score, e.g. ``{"mnli-m": 84.5, "mnli-mm": 84.8, "sst2": 92.5, ...}``;
        the keys are only labels, every value counts once.
    kind : {"geometric", "arithmetic"}

    Raises
    ------
    ValueError
        For no scores, an unknown ``kind``, or a negative score in a geometric mean (CoLA's MCC can
        be negative).
    """
    values = np.asarray(list(scores.values()), dtype=float)
    if values.size == 0:
        raise ValueError("no scores to average")
    if kind == "arithmetic":
        return float(values.mean())
    if kind != "geometric":
        raise ValueError(f"kind must be 'geometric' or 'arithmetic', got {kind!r}")
    if (values < 0).any():
        negative = {k: v for k, v in scores.items() if v < 0}
        raise ValueError(f"the geometric mean needs non-negative scores, got {negative}")
    if (values == 0).any():
        return 0.0
    return float(np.exp(np.log(values).mean()))


# ---------------------------------------------------------------------------------- failed runs

MIN_CORRELATION = 10.0  # percent: a regression run below this |correlation| has learned next to nothing
FAILURE_METRICS = ("accuracy",)  # checked beside the primary metric where a task reports them


def majority_baseline(task: str | TaskSpec, train_labels, dev_labels) -> dict[str, float]:
    """Scores of the constant prediction a model needs no input for, on the dev labels.

    Classification: the most frequent class of ``train_labels`` (ties: the lower id) predicted for every
    dev example, scored by :func:`compute_metrics` (MRPC: F1 81.2 / accuracy 68.4 on its dev set, since
    class 1 is the majority; CoLA: MCC 0). Regression: a constant has no correlation, both scores 0.
    """
    spec = get_task(task)
    dev = _as_numpy(dev_labels).reshape(-1)
    if dev.size == 0:
        raise ValueError("majority_baseline: no dev labels")
    if spec.is_regression:
        return {"spearman": 0.0, "pearson": 0.0}
    train = _as_numpy(train_labels).reshape(-1).astype(int)
    if train.size == 0:
        raise ValueError("majority_baseline: no training labels")
    majority = int(np.bincount(train, minlength=len(spec.labels)).argmax())
    return compute_metrics(spec, np.full(dev.shape, majority), dev)


def failure(task: str | TaskSpec, scores: dict[str, float], baseline: dict[str, float]) -> str | None:
    """Why a run counts as failed, or ``None``.

    Failed: a classification run whose primary score or accuracy is at or below the majority-class
    prediction's (``baseline``, from :func:`majority_baseline`); a regression run whose primary
    correlation is below :data:`MIN_CORRELATION` in magnitude (or not a number). Small GLUE tasks fail
    this way on some seeds (fine-tuning instability, Mosbach et al., ICLR 2021).
    """
    spec = get_task(task)
    value = scores.get(spec.metric)
    if value is None:
        raise ValueError(f"failure: scores {sorted(scores)} lack {spec.folder}'s metric {spec.metric!r}")
    if spec.is_regression:
        if not math.isfinite(value) or abs(value) < MIN_CORRELATION:
            return f"{spec.metric} {value:.1f} is a near-zero correlation (|r| < {MIN_CORRELATION:g})"
        return None
    reasons = [f"{key} {scores[key]:.2f} ≤ majority-class {baseline[key]:.2f}"
               for key in (spec.metric, *FAILURE_METRICS)
               if key in scores and key in baseline and not scores[key] > baseline[key]]
    return "; ".join(dict.fromkeys(reasons)) or None


def write_subset(data_dir: str | Path, task: str | TaskSpec, out_dir: str | Path, rows: int, seed: int = 0) -> Path:
    """A smaller copy of a GLUE task: ``rows`` training rows drawn at random (``seed``, file order kept),
    copied verbatim with the header, and every dev split unchanged, into ``<out_dir>/<TaskFolder>/``.

    Returns the new data directory (``out_dir``), which :func:`load_glue_split` reads like any other.
    Raises ``ValueError`` when the task has fewer training rows than asked for.
    """
    spec = get_task(task)
    source, target = Path(data_dir) / spec.folder, Path(out_dir) / spec.folder
    train = source / "train.tsv"
    if not train.is_file():
        raise FileNotFoundError(f"GLUE file not found: {train}")
    lines = train.read_text(encoding="utf-8-sig").splitlines(keepends=True)
    header, body = (lines[:1], lines[1:]) if spec.has_header else ([], lines)
    body = [line for line in body if line.strip()]
    if not 0 < rows <= len(body):
        raise ValueError(f"{train} has {len(body)} training rows; cannot take a subset of {rows}")
    keep = sorted(random.Random(seed).sample(range(len(body)), rows))
    target.mkdir(parents=True, exist_ok=True)
    (target / "train.tsv").write_text("".join(header + [body[i] for i in keep]), encoding="utf-8")
    for split in spec.dev_splits:
        dev = source / f"{split}.tsv"
        if not dev.is_file():
            raise FileNotFoundError(f"GLUE file not found: {dev}")
        (target / f"{split}.tsv").write_text(dev.read_text(encoding="utf-8-sig"), encoding="utf-8")
    load_glue_split(out_dir, spec, "train")  # the copy parses like the original
    return Path(out_dir)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Write a random training subset of a GLUE task (dev splits copied).")
    parser.add_argument("--task", required=True)
    parser.add_argument("--data-dir", default="../shared/data/glue")
    parser.add_argument("--out", required=True, help="new GLUE data directory")
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(write_subset(args.data_dir, args.task, args.out, args.rows, args.seed))
