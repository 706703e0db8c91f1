"""The compression recipe for a BERT-family classifier, as a plain PyTorch API.

Phases (each optional by its epoch count), all on the same data, optimizer settings and seed::

    finetune   dense fine-tuning of the task
    admm       fine-tuning with the ADMM penalty ρ/2‖W − Z + U‖²_F on every target weight, Z/U updates
               every ``admm.update_every`` steps (weights are pulled towards the constraint set)
    prune      hard pruning: every target is projected onto its set once more (pattern pools frozen);
               the support becomes a fixed mask
    retrain    masked retraining with SR-STE (and int-b fake quantization when ``quant_bits`` is set);
               attention-map pattern pruning is switched on here when configured
    export     calibrated per-edge activation scales, int8 weights, the integer encoder and the tokenizer
               into an artifact (format 2)

Targets are the ``torch.nn.Linear`` modules whose names match one of ``include`` and none of
``exclude`` (regular expressions, ``re.search``); by default every linear layer of the encoder (Q, K,
V, attention output, FFN in and out). Embeddings, LayerNorms, the pooler and the classifier keep
training in every phase unless a ``freeze`` pattern names them.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from core.artifact import load_artifact
from core.pattern import PatternConfig
from sw import calibration as edge_calibration
from sw import glue
from sw.admm import ADMM, ADMMSettings
from sw.masking import apply_masks
from sw.projections import Projection, projection_from_dict

DEFAULT_INCLUDE = (r"encoder\.layer\.\d+\.",)


@dataclass
class CompressionConfig:
    """What to compress and how. ``projection`` is the JSON form of a ``sw.projections`` class."""

    projection: dict = field(default_factory=lambda: {"kind": "pattern", **asdict(PatternConfig())})
    include: list[str] = field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = field(default_factory=list)
    admm: ADMMSettings = field(default_factory=ADMMSettings)
    srste_decay: float = 2e-4
    quant_bits: int | None = 8  # fake-quantized retraining; None: float retraining (export still int8)
    attention: dict | None = None  # AttentionPruningConfig as a dict; None: dense attention
    freeze: list[str] = field(default_factory=list)  # regexes of parameters that do not train (e.g. "embeddings")

    def __post_init__(self):
        if isinstance(self.admm, dict):
            self.admm = ADMMSettings(**self.admm)
        projection_from_dict(self.projection)  # validates early


@dataclass
class TrainConfig:
    """Data, schedule and output of one run; serializes to/from JSON (``configs/*.json``)."""

    model: str = ""  # a checkpoint folder (config.json, weights, tokenizer)
    task: str = "mrpc"
    data_dir: str = "../shared/data/glue"
    output_dir: str = "build/runs/run"
    max_length: int = 128
    batch_size: int = 32
    eval_batch_size: int = 64
    learning_rate: float = 5e-5
    admm_learning_rate: float | None = None  # the ADMM phase's peak rate; None: learning_rate
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    finetune_epochs: float = 3.0
    admm_epochs: float = 3.0
    retrain_epochs: float = 3.0
    train_limit: int | None = None  # first N training rows (deterministic subsampling); None: all
    eval_limit: int | None = None
    calibration_batches: int = 8
    calibration: str = edge_calibration.DEFAULT_METHOD  # per-edge activation scales of the integer encoder: max | percentile | mse
    seed: int = 0
    threads: int | None = None  # torch.set_num_threads; None: library default
    compression: CompressionConfig = field(default_factory=CompressionConfig)

    def __post_init__(self):
        if isinstance(self.compression, dict):
            self.compression = CompressionConfig(**self.compression)
        if self.calibration not in edge_calibration.METHODS:
            raise ValueError(f"calibration must be one of {edge_calibration.METHODS}, got {self.calibration!r}")
        for name in ("finetune_epochs", "admm_epochs", "retrain_epochs"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training config keys: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def find_targets(model: torch.nn.Module, include, exclude) -> list[str]:
    """Names of the ``nn.Linear`` modules selected by the include/exclude patterns."""
    names = [
        name for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear)
        and any(re.search(p, name) for p in include) and not any(re.search(p, name) for p in exclude)
    ]
    if not names:
        raise ValueError(f"no linear layer matches include={list(include)} / exclude={list(exclude)}")
    return names


def make_projections(model, targets: list[str], spec: dict) -> dict[str, tuple[torch.nn.Parameter, Projection]]:
    """One projection object per target (pattern pools are per layer)."""
    return {f"{t}.weight": (model.get_submodule(t).weight, projection_from_dict(spec)) for t in targets}


# --------------------------------------------------------------------------------------------- data


@dataclass
class TaskData:
    task: glue.TaskSpec
    train: torch.utils.data.DataLoader
    dev: torch.utils.data.DataLoader


def load_task_data(config: TrainConfig, tokenizer) -> TaskData:
    task = glue.get_task(config.task)
    data_dir = Path(config.data_dir)
    train = glue.load_glue_split(data_dir, task, "train", limit=config.train_limit)
    dev = glue.load_glue_split(data_dir, task, task.dev_splits[0], limit=config.eval_limit)

    def loader(examples, batch_size, shuffle):
        dataset = glue.GlueDataset(examples, tokenizer, config.max_length, task.is_regression)
        generator = torch.Generator().manual_seed(config.seed)
        return torch.utils.data.DataLoader(
            dataset, batch_size=batch_size, shuffle=shuffle, generator=generator,
            collate_fn=lambda batch: glue.collate(batch, tokenizer.pad_token_id),
        )

    return TaskData(task, loader(train, config.batch_size, True), loader(dev, config.eval_batch_size, False))


# ----------------------------------------------------------------------------------------- training


@torch.no_grad()
def evaluate(model, data: TaskData) -> dict[str, float]:
    model.eval()
    predictions, labels = [], []
    for batch in data.dev:
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        predictions.append(logits.squeeze(-1) if data.task.is_regression else logits.argmax(-1))
        labels.append(batch["labels"])
    return glue.compute_metrics(data.task, torch.cat(predictions), torch.cat(labels))


@dataclass
class PhaseLog:
    name: str
    learning_rate: float = 0.0  # peak rate of the phase's schedule
    steps: int = 0
    seconds: float = 0.0
    losses: list[float] = field(default_factory=list)
    residuals: list[dict] = field(default_factory=list)  # ADMM: ‖W − Z‖/‖W‖ per update
    metrics: dict = field(default_factory=dict)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0


def train_phase(model, data: TaskData, config: TrainConfig, epochs: float, name: str, admm: ADMM | None = None,
                learning_rate: float | None = None) -> PhaseLog:
    """Train ``epochs`` (fractional allowed) with AdamW + linear warmup/decay; ADMM penalty when given.

    ``learning_rate`` overrides ``config.learning_rate`` for this phase.
    """
    from transformers import get_linear_schedule_with_warmup

    log = PhaseLog(name, learning_rate or config.learning_rate)
    total = math.ceil(epochs * len(data.train))
    if total == 0:
        return log
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=log.learning_rate,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    model.train()
    progress = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True)
    start = time.perf_counter()
    while log.steps < total:
        for batch in data.train:
            loss = model(**batch).loss
            if admm is not None:
                loss = loss + admm.penalty()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            log.steps += 1
            log.losses.append(float(loss.detach()))
            if admm is not None and admm.step():
                residuals = admm.residuals()
                log.residuals.append({"step": log.steps, "mean": float(np.mean(list(residuals.values()))), "per_layer": residuals})
                progress.set_postfix(loss=f"{log.losses[-1]:.4f}", residual=f"{log.residuals[-1]['mean']:.3f}")
            elif log.steps % 10 == 0:
                progress.set_postfix(loss=f"{log.losses[-1]:.4f}")
            progress.update()
            if log.steps >= total:
                break
    log.seconds = time.perf_counter() - start
    progress.close()
    return log


@torch.no_grad()
def hard_prune(model, projections: dict[str, tuple[torch.nn.Parameter, Projection]]) -> dict[str, torch.Tensor]:
    """Project every target once more (pools frozen) and return the supports as masks."""
    masks = {}
    for name, (param, projection) in projections.items():
        result = projection(param.detach())
        param.copy_(result.value.to(param.dtype))
        masks[name] = result.mask
    return masks


def load_model_and_tokenizer(config: TrainConfig):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    task = glue.get_task(config.task)
    num_labels = 1 if task.is_regression else len(task.labels)
    model = AutoModelForSequenceClassification.from_pretrained(
        config.model, num_labels=num_labels, problem_type="regression" if task.is_regression else "single_label_classification",
        attn_implementation="eager", ignore_mismatched_sizes=True,  # a classifier head of another size is re-initialized
    )
    tokenizer = AutoTokenizer.from_pretrained(config.model)
    return model, tokenizer


def save_checkpoint(model, tokenizer, folder: Path) -> Path:
    """``save_pretrained`` into a temporary folder beside ``folder``, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp"))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        tmp.rename(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


@dataclass
class RunResult:
    config: TrainConfig
    phases: list[PhaseLog]
    metrics: dict[str, dict]  # per phase end: "finetune", "admm", "pruned", "retrain", "artifact"
    artifact: Path | None
    weight_snapshots: dict[str, dict[str, torch.Tensor]]  # "before_admm"/"after_admm" → {layer: weight}

    def summary(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "phases": [
                {"name": p.name, "learning_rate": p.learning_rate, "steps": p.steps, "seconds": p.seconds, "seconds_per_step": p.seconds_per_step,
                 "final_loss": p.losses[-1] if p.losses else None,
                 "residual_mean": [r["mean"] for r in p.residuals]}
                for p in self.phases
            ],
            "artifact": str(self.artifact) if self.artifact else None,
        }


def run(config: TrainConfig, export: bool = True, snapshot_layers: int = 2, dense_only: bool = False,
        save_finetuned: str | Path | None = None) -> RunResult:
    """Run every phase of the recipe; returns metrics, phase logs and the artifact path.

    ``save_finetuned`` writes the model and tokenizer after the fine-tune phase (a checkpoint folder
    later runs can start from with ``finetune_epochs=0``); ``dense_only`` stops there.
    """
    from sw import artifact as artifact_io
    from sw import attention as attention_pruning

    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    model, tokenizer = load_model_and_tokenizer(config)
    data = load_task_data(config, tokenizer)
    comp = config.compression
    targets = find_targets(model, comp.include, comp.exclude)
    for name, param in model.named_parameters():
        if any(re.search(p, name) for p in comp.freeze):
            param.requires_grad_(False)
    phases, metrics, snapshots = [], {}, {}

    def record(log: PhaseLog, key: str):
        log.metrics = metrics[key] = evaluate(model, data)
        phases.append(log)
        tqdm.write(f"[{key}] {json.dumps(log.metrics)}")

    record(train_phase(model, data, config, config.finetune_epochs, "finetune"), "finetune")
    if save_finetuned is not None:
        save_checkpoint(model, tokenizer, Path(save_finetuned))
    if dense_only:
        return RunResult(config, phases, metrics, None, snapshots)

    projections = make_projections(model, targets, comp.projection)
    watched = [f"{t}.weight" for t in targets[:snapshot_layers]]
    snapshots["before_admm"] = {n: model.get_submodule(n.rsplit(".", 1)[0]).weight.detach().clone() for n in watched}
    if config.admm_epochs > 0:
        admm = ADMM(projections, comp.admm)
        record(train_phase(model, data, config, config.admm_epochs, "admm", admm, config.admm_learning_rate), "admm")
    snapshots["after_admm"] = {n: model.get_submodule(n.rsplit(".", 1)[0]).weight.detach().clone() for n in watched}

    masks = hard_prune(model, projections)
    apply_masks(model, masks, comp.srste_decay, comp.quant_bits)
    metrics["pruned"] = evaluate(model, data)
    tqdm.write(f"[pruned] {json.dumps(metrics['pruned'])}")

    attention_state = None
    if comp.attention:
        attention_config = attention_pruning.AttentionPruningConfig.from_dict(comp.attention)
        maps = attention_pruning.collect_attention_maps(model, data.train, config.calibration_batches)
        pool = attention_pruning.build_attention_pool(maps, attention_config)
        attention_pruning.enable_attention_pruning(model, pool, attention_config)
        attention_state = (attention_config, pool)
        metrics["attention_pruned"] = evaluate(model, data)

    record(train_phase(model, data, config, config.retrain_epochs, "retrain"), "retrain")

    artifact_path = None
    if export:
        scales = edge_calibration.calibrate(model, data.train, config.calibration_batches, (config.calibration,))[config.calibration]
        artifact_path = artifact_io.save_artifact(
            Path(config.output_dir) / "artifact", model, config, projections, scales, metrics, attention_state,
            tokenizer, config.calibration,
        )
        metrics["artifact"] = evaluate(artifact_io.to_model(load_artifact(artifact_path)), data)
        tqdm.write(f"[artifact] {json.dumps(metrics['artifact'])}")
    return RunResult(config, phases, metrics, artifact_path, snapshots)
