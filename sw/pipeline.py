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

Options that make small tasks hold (Mosbach et al., ICLR 2021: fine-tuning instability): ``min_steps``
(every phase runs at least that many optimizer steps), ``heldout_fraction`` + ``select_every`` (a seeded
slice of the training set is held out, scored every ``select_every`` steps of the fine-tune and retrain
phases, and the phase ends on its best step; never the dev set), and a lower ``learning_rate`` with
warmup. Every phase's dev score is compared with the majority-class prediction (``glue.failure``): a run
at or below it (or at near-zero correlation) is reported as failed in the log and in the summary.

``compression.distillation`` (``{"alpha", "temperature", "hidden"}``) adds knowledge distillation from the
dense fine-tuned model (the state the compression starts from, frozen) to the loss of the ADMM and retrain
phases: ``(1 − α)·task + α·KD + hidden·H`` with KD the temperature-scaled logits KL (MSE of the outputs for
regression) and H the layer-wise hidden-state MSE (``hidden`` 0 by default: logits only).

Data-parallel: under ``torchrun`` every phase trains ``DistributedDataParallel`` over shards of the same
global batches as one process (``sw.distributed``); Z, U, masks and pools are computed on every rank from
the replicated weights and checked to be bit-identical; only rank 0 writes files.

Targets are the ``torch.nn.Linear`` modules whose names match one of ``include`` and none of
``exclude`` (regular expressions, ``re.search``); by default every linear layer of the encoder (Q, K,
V, attention output, FFN in and out). Embeddings, LayerNorms, the pooler and the classifier keep
training in every phase unless a ``freeze`` pattern names them.
"""

from __future__ import annotations

import copy
import functools
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
from core.pattern import PatternConfig, PatternPool
from sw import calibration as edge_calibration
from sw import distributed, glue, importance
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
    distillation: dict | None = None  # DistillationConfig as a dict ({"alpha", "temperature", "hidden"}); None: no KD

    def __post_init__(self):
        if isinstance(self.admm, dict):
            self.admm = ADMMSettings(**self.admm)
        projection_from_dict(self.projection)  # validates early
        if self.distillation is not None:
            DistillationConfig.from_dict(self.distillation)


@dataclass(frozen=True)
class DistillationConfig:
    """Knowledge distillation from the dense fine-tuned model: loss ``(1 − alpha)·task + alpha·KD +
    hidden·H``, with ``H`` the hidden-state matching of :func:`hidden_distillation_loss` (0: logits only)."""

    alpha: float = 0.5
    temperature: float = 2.0
    hidden: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"distillation alpha must be in [0, 1], got {self.alpha}")
        if not self.temperature > 0:
            raise ValueError(f"distillation temperature must be > 0, got {self.temperature}")
        if not self.hidden >= 0:
            raise ValueError(f"distillation hidden weight must be ≥ 0, got {self.hidden}")

    @classmethod
    def from_dict(cls, data: dict) -> "DistillationConfig":
        unknown = set(data) - {"alpha", "temperature", "hidden"}
        if unknown:
            raise ValueError(f"unknown distillation keys: {sorted(unknown)} (known: alpha, temperature, hidden)")
        return cls(**data)


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
                      regression: bool = False) -> torch.Tensor:
    """KD loss of one batch: ``T² · KL(softmax(t/T) ‖ softmax(s/T))`` averaged over the batch (the T²
    keeps its gradient on the scale of the task loss, Hinton et al. 2015); for regression the mean
    squared difference of the outputs. Zero when student and teacher logits are equal."""
    if regression:
        return torch.nn.functional.mse_loss(student_logits.float(), teacher_logits.float())
    t = temperature
    student = torch.nn.functional.log_softmax(student_logits.float() / t, dim=-1)
    teacher = torch.nn.functional.log_softmax(teacher_logits.float() / t, dim=-1)
    return torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean") * (t * t)


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
    admm_weight_decay: float | None = None  # the ADMM phase's AdamW weight decay; None: weight_decay
    retrain_learning_rate: float | None = None  # the retrain phase's peak rate; None: learning_rate
    warmup_ratio: float = 0.1
    finetune_epochs: float = 3.0
    admm_epochs: float = 3.0
    retrain_epochs: float = 3.0
    train_limit: int | None = None  # first N training rows (deterministic subsampling); None: all
    eval_limit: int | None = None
    min_steps: int = 0  # every phase with epochs > 0 runs at least this many optimizer steps
    heldout_fraction: float = 0.0  # seeded slice of the training rows held out for checkpoint selection
    select_every: int = 0  # fine-tune/retrain: score the held-out slice every N steps, end on the best; 0: last step
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
        for name in ("finetune_epochs", "admm_epochs", "retrain_epochs", "min_steps", "select_every"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise ValueError(f"heldout_fraction must be in [0, 1), got {self.heldout_fraction}")
        if self.select_every and not self.heldout_fraction:
            raise ValueError(f"select_every={self.select_every} needs a held-out slice: set heldout_fraction > 0")

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
    """Loaders of one task. ``train`` is this process's share of every global batch (all of it in one
    process); ``train_global`` the whole global batches (calibration), drawing from the same generator;
    ``heldout`` the slice of the training rows kept out of training for checkpoint selection (or None);
    ``baseline`` the majority-class scores on the dev set, the line below which a run has failed."""

    task: glue.TaskSpec
    train: torch.utils.data.DataLoader
    dev: torch.utils.data.DataLoader
    heldout: torch.utils.data.DataLoader | None = None
    train_global: torch.utils.data.DataLoader | None = None
    baseline: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.train_global is None:
            self.train_global = self.train


def split_heldout(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """(training rows, held-out rows): a seeded ``fraction`` of the rows (at least one) held out, both
    parts in file order."""
    if not fraction:
        return list(examples), []
    count = max(1, round(fraction * len(examples)))
    if count >= len(examples):
        raise ValueError(f"heldout_fraction {fraction} leaves no training rows of {len(examples)}")
    held = set(random.Random(seed).sample(range(len(examples)), count))
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def load_task_data(config: TrainConfig, tokenizer, ctx: distributed.Context | None = None) -> TaskData:
    ctx = ctx or distributed.current()
    task = glue.get_task(config.task)
    data_dir = Path(config.data_dir)
    train = glue.load_glue_split(data_dir, task, "train", limit=config.train_limit)
    dev = glue.load_glue_split(data_dir, task, task.dev_splits[0], limit=config.eval_limit)
    train, heldout = split_heldout(train, config.heldout_fraction, config.seed)
    collate = functools.partial(glue.collate, pad_token_id=tokenizer.pad_token_id)

    def dataset(examples):
        return glue.GlueDataset(examples, tokenizer, config.max_length, task.is_regression)

    def loader(examples, batch_size, shuffle):
        generator = torch.Generator().manual_seed(config.seed)
        return torch.utils.data.DataLoader(dataset(examples), batch_size=batch_size, shuffle=shuffle, generator=generator, collate_fn=collate)

    train_set = dataset(train)
    generator = torch.Generator().manual_seed(config.seed)
    train_global = torch.utils.data.DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=generator, collate_fn=collate)
    shard = train_global
    if ctx.distributed:  # same generator, so the shards come from the same global batches as one process draws
        batches = torch.utils.data.BatchSampler(torch.utils.data.RandomSampler(train_set, generator=generator), config.batch_size, drop_last=False)
        shard = torch.utils.data.DataLoader(train_set, batch_sampler=distributed.ShardedBatchSampler(batches, ctx.rank, ctx.world_size),
                                            generator=generator, collate_fn=collate)
    baseline = glue.majority_baseline(task, [e.label for e in train], [e.label for e in dev])
    return TaskData(task, shard, loader(dev, config.eval_batch_size, False),
                    loader(heldout, config.eval_batch_size, False) if heldout else None, train_global, baseline)


# ----------------------------------------------------------------------------------------- training


def _to(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, data: TaskData, loader=None) -> dict[str, float]:
    """Scores on the dev set (or on ``loader``, e.g. ``data.heldout``); every rank scores all of it."""
    model.eval()
    device = next(model.parameters()).device
    predictions, labels = [], []
    for batch in data.dev if loader is None else loader:
        logits = model(**_to({k: v for k, v in batch.items() if k != "labels"}, device)).logits.cpu()
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
    heldout: list[dict] = field(default_factory=list)  # checkpoint selection: {"step", "score"} per held-out evaluation
    selected_step: int | None = None  # the step the phase ended on (None: its last step, no selection)

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0


def hidden_distillation_loss(student_hidden, teacher_hidden, attention_mask: torch.Tensor) -> torch.Tensor:
    """Hidden-state matching (TinyBERT, Jiao et al. 2020, for a student of the teacher's shape): the mean
    over the encoder layers' outputs of the mean squared difference over the real tokens
    (``attention_mask``) and the hidden features. Zero when the states are equal."""
    weight = attention_mask.unsqueeze(-1).float()
    terms = [((s.float() - t.float()).pow(2) * weight).sum() / (weight.sum() * s.shape[-1])
             for s, t in zip(student_hidden[1:], teacher_hidden[1:], strict=True)]
    return torch.stack(terms).mean()


def _loss(model, batch: dict, task: glue.TaskSpec, teacher=None, distillation: DistillationConfig | None = None) -> torch.Tensor:
    """The batch's mean task loss, mixed with the KD losses against ``teacher`` when given."""
    hidden = teacher is not None and distillation is not None and distillation.hidden > 0
    output = model(**batch, output_hidden_states=hidden)
    if teacher is None or distillation is None:
        return output.loss
    with torch.no_grad():
        target = teacher(**{k: v for k, v in batch.items() if k != "labels"}, output_hidden_states=hidden)
    kd = distillation_loss(output.logits, target.logits, distillation.temperature, task.is_regression)
    loss = (1.0 - distillation.alpha) * output.loss + distillation.alpha * kd
    if hidden:
        loss = loss + distillation.hidden * hidden_distillation_loss(output.hidden_states, target.hidden_states,
                                                                     batch["attention_mask"])
    return loss


def train_phase(model, data: TaskData, config: TrainConfig, epochs: float, name: str, admm: ADMM | None = None,
                learning_rate: float | None = None, weight_decay: float | None = None, teacher=None,
                distillation: DistillationConfig | None = None, select: bool = False,
                ctx: distributed.Context | None = None) -> PhaseLog:
    """Train ``epochs`` (fractional allowed; at least ``config.min_steps`` steps) with AdamW + linear
    warmup/decay; ADMM penalty when given; KD from ``teacher`` when given with ``distillation``.

    ``learning_rate`` / ``weight_decay`` override the config's for this phase. ``select``: score
    ``data.heldout`` every ``config.select_every`` steps and at the end, and leave the model at the
    best-scoring step (ties: the later one). Distributed (``ctx``): the model trains wrapped in
    ``DistributedDataParallel``; each rank's mean loss is weighted by its share of the global batch so the
    averaged gradient is the global batch's mean; ADMM's Z/U are checked to stay bit-identical across ranks.
    """
    from transformers import get_linear_schedule_with_warmup

    ctx = ctx or distributed.current()
    log = PhaseLog(name, learning_rate or config.learning_rate)
    total = math.ceil(epochs * len(data.train))
    if total == 0:
        return log
    total = max(total, config.min_steps)
    decay_rate = config.weight_decay if weight_decay is None else weight_decay
    decay = [p for n, p in model.named_parameters() if p.requires_grad and not n.endswith("bias") and "LayerNorm" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and (n.endswith("bias") or "LayerNorm" in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": decay_rate}, {"params": no_decay, "weight_decay": 0.0}],
        lr=log.learning_rate,
    )
    schedule = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total), total)
    if admm is not None:
        admm.plan(total)
    select = select and data.heldout is not None and config.select_every > 0
    metric = data.task.metric
    best: tuple[float, int, dict] | None = None
    trained = ctx.wrap(model)
    model.train()
    progress = tqdm(total=total, desc=name, unit="step", dynamic_ncols=True, disable=not ctx.is_main)
    start = time.perf_counter()
    while log.steps < total:
        for batch in data.train:
            batch = _to(batch, ctx.device)
            loss = _loss(trained, batch, data.task, teacher, distillation)
            logged = loss.detach()
            if ctx.distributed:  # one all-reduce: the global batch size and its summed loss
                local = batch["labels"].shape[0]
                totals = torch.tensor([float(local), float(logged) * local], dtype=torch.float64)
                count, summed = (float(v) for v in ctx.all_reduce_sum(totals))
                loss = loss * (local * ctx.world_size / count)
                logged = torch.tensor(summed / count)
            if admm is not None and admm.settings.penalty_in_loss:
                penalty = admm.penalty()
                loss = loss + penalty
                logged = logged + penalty.detach().cpu()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            log.steps += 1
            log.losses.append(float(logged))
            if admm is not None and admm.step():
                if ctx.distributed:
                    ctx.check_replicated({f"W {n}": p for n, p in admm.params.items()}, "a target weight")
                    ctx.check_replicated({**{f"Z {n}": z for n, z in admm.Z.items()}, **{f"U {n}": u for n, u in admm.U.items()}}, "ADMM state")
                residuals = admm.residuals()
                log.residuals.append({"step": log.steps, "mean": float(np.mean(list(residuals.values()))), "per_layer": residuals})
                progress.set_postfix(loss=f"{log.losses[-1]:.4f}", residual=f"{log.residuals[-1]['mean']:.3f}")
            elif log.steps % 10 == 0:
                progress.set_postfix(loss=f"{log.losses[-1]:.4f}")
            if select and (log.steps % config.select_every == 0 or log.steps == total):
                score = evaluate(model, data, data.heldout)[metric]
                model.train()
                log.heldout.append({"step": log.steps, "score": score})
                if best is None or score >= best[0]:
                    best = (score, log.steps, {k: v.detach().clone() for k, v in model.state_dict().items()})
            progress.update()
            if log.steps >= total:
                break
    if best is not None:
        model.load_state_dict(best[2])
        log.selected_step = best[1]
        if ctx.is_main:
            tqdm.write(f"[{name}] held-out {metric} {best[0]:.2f} at step {best[1]} of {total}: the phase ends there")
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
    baseline: dict = field(default_factory=dict)  # majority-class scores on the dev set
    failures: dict[str, str] = field(default_factory=dict)  # metrics key → why it counts as failed
    admm_state: dict | None = None  # ADMM.state_dict() at the end of the ADMM phase (Z, U, ρ, pools)
    masks: dict[str, torch.Tensor] = field(default_factory=dict)  # the hard-pruning supports
    pools: dict[str, torch.Tensor] = field(default_factory=dict)  # the frozen pattern pools (pattern kinds)
    model: torch.nn.Module | None = None  # the trained model (masked parametrizations in place), on the CPU

    @property
    def final_key(self) -> str:
        """The metrics key a run reports: the artifact's, else the last phase's."""
        return "artifact" if "artifact" in self.metrics else ("retrain" if "retrain" in self.metrics else "finetune")

    @property
    def failed(self) -> str | None:
        """Why the run's reported score counts as failed (see ``glue.failure``), or None."""
        return self.failures.get(self.final_key)

    def summary(self) -> dict:
        return {
            "config": self.config.to_dict(),
            "metrics": self.metrics,
            "baseline": self.baseline,
            "failed": self.failed,
            "failures": self.failures,
            "phases": [
                {"name": p.name, "learning_rate": p.learning_rate, "steps": p.steps, "seconds": p.seconds, "seconds_per_step": p.seconds_per_step,
                 "final_loss": p.losses[-1] if p.losses else None,
                 "residual_mean": [r["mean"] for r in p.residuals],
                 "heldout": p.heldout, "selected_step": p.selected_step}
                for p in self.phases
            ],
            "artifact": str(self.artifact) if self.artifact else None,
        }


def run(config: TrainConfig, export: bool = True, snapshot_layers: int = 2, dense_only: bool = False,
        save_finetuned: str | Path | None = None) -> RunResult:
    """Run every phase of the recipe; returns metrics, phase logs and the artifact path.

    ``save_finetuned`` writes the model and tokenizer after the fine-tune phase (a checkpoint folder
    later runs can start from with ``finetune_epochs=0``); ``dense_only`` stops there.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is joined here (``sw.distributed.init``);
    every rank runs this function and gets the same result, and only rank 0 writes the checkpoint and the
    artifact (the others wait for it).
    """
    from sw import artifact as artifact_io
    from sw import attention as attention_pruning

    ctx = distributed.init()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    model, tokenizer = load_model_and_tokenizer(config)
    model.to(ctx.device)
    data = load_task_data(config, tokenizer, ctx)
    comp = config.compression
    targets = find_targets(model, comp.include, comp.exclude)
    for name, param in model.named_parameters():
        if any(re.search(p, name) for p in comp.freeze):
            param.requires_grad_(False)
    phases, metrics, snapshots, failures = [], {}, {}, {}
    result = RunResult(config, phases, metrics, None, snapshots, data.baseline, failures)

    def say(message: str):
        if ctx.is_main:
            tqdm.write(message)

    def check(key: str):
        reason = glue.failure(data.task, metrics[key], data.baseline)
        if reason:
            failures[key] = reason
            say(f"[{key}] FAILED: {reason} (majority-class baseline {json.dumps(data.baseline)})")

    def record(log: PhaseLog, key: str):
        log.metrics = metrics[key] = evaluate(model, data)
        phases.append(log)
        say(f"[{key}] {json.dumps(log.metrics)}")
        check(key)

    result.model = model
    record(train_phase(model, data, config, config.finetune_epochs, "finetune", select=True, ctx=ctx), "finetune")
    if save_finetuned is not None:
        if ctx.is_main:
            save_checkpoint(model, tokenizer, Path(save_finetuned))
        ctx.barrier()
    if dense_only:
        model.cpu()
        return result

    teacher = None
    distillation = DistillationConfig.from_dict(comp.distillation) if comp.distillation else None
    if distillation is not None and distillation.alpha > 0:
        teacher = copy.deepcopy(model).eval().requires_grad_(False)  # the dense fine-tuned model, frozen
    projections = make_projections(model, targets, comp.projection)
    if any(getattr(p, "weighting", "magnitude") == "activation" for _, p in projections.values()):
        # the activation-aware norm: input RMS per channel of every target, from the model ADMM starts from
        rms = importance.input_rms(model, targets, data.train_global, config.calibration_batches)
        for target in targets:
            projections[f"{target}.weight"][1].set_column_scale(rms[target])
        ctx.check_replicated({f"column scale {n}": p.column_scale for n, (_, p) in projections.items()}, "an activation column scale")
    watched = [f"{t}.weight" for t in targets[:snapshot_layers]]
    snapshots["before_admm"] = {n: model.get_submodule(n.rsplit(".", 1)[0]).weight.detach().clone().cpu() for n in watched}
    if config.admm_epochs > 0:
        admm = ADMM(projections, comp.admm)
        record(train_phase(model, data, config, config.admm_epochs, "admm", admm, config.admm_learning_rate,
                           config.admm_weight_decay, teacher, distillation, ctx=ctx), "admm")
        result.admm_state = admm.state_dict()
    snapshots["after_admm"] = {n: model.get_submodule(n.rsplit(".", 1)[0]).weight.detach().clone().cpu() for n in watched}

    masks = hard_prune(model, projections)
    result.masks = masks
    result.pools = {n: p.pool.masks for n, (_, p) in projections.items() if getattr(p, "pool", None) is not None}
    ctx.check_replicated({**{f"mask {n}": m for n, m in masks.items()}, **{f"pool {n}": p for n, p in result.pools.items()}},
                         "a hard-pruning mask or pattern pool")
    apply_masks(model, masks, comp.srste_decay, comp.quant_bits)
    metrics["pruned"] = evaluate(model, data)
    say(f"[pruned] {json.dumps(metrics['pruned'])}")
    check("pruned")

    attention_state = None
    if comp.attention:
        attention_config = attention_pruning.AttentionPruningConfig.from_dict(comp.attention)
        maps = attention_pruning.collect_attention_maps(model, data.train_global, config.calibration_batches)
        pool = attention_pruning.build_attention_pool(maps, attention_config)
        ctx.check_replicated({"attention pool": pool.masks}, "the attention pattern pool")
        attention_pruning.enable_attention_pruning(model, pool, attention_config)
        attention_state = (attention_config, pool)
        metrics["attention_pruned"] = evaluate(model, data)

    record(train_phase(model, data, config, config.retrain_epochs, "retrain", learning_rate=config.retrain_learning_rate,
                       teacher=teacher, distillation=distillation, select=True, ctx=ctx), "retrain")
    model.cpu()  # export (calibration, integer encoder) runs on the CPU
    for _, projection in projections.values():
        if getattr(projection, "pool", None) is not None and projection.pool.masks.device.type != "cpu":
            projection.pool = PatternPool(projection.config, projection.pool.masks.cpu())

    if export:
        artifact_path = Path(config.output_dir) / "artifact"
        if ctx.is_main:
            scales = edge_calibration.calibrate(model, data.train_global, config.calibration_batches, (config.calibration,))[config.calibration]
            artifact_io.save_artifact(
                artifact_path, model, config, projections, scales, metrics, attention_state,
                tokenizer, config.calibration,
            )
            metrics["artifact"] = evaluate(artifact_io.to_model(load_artifact(artifact_path)), data)
        metrics["artifact"] = ctx.broadcast_object(metrics.get("artifact"))
        result.artifact = artifact_path
        say(f"[artifact] {json.dumps(metrics['artifact'])}")
        check("artifact")
    return result
