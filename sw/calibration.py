"""Per-edge activation scales of the integer encoder, calibrated on a Hugging Face BERT classifier.

Forward hooks record, for every tensor edge of :func:`core.encoder.edge_names`, the exact peak |x| and a
fixed-size uniform sample of the values (real tokens only: padding positions are left out). Three rules
turn them into a scale ``s`` (int8: ``x ≈ s · clamp(round(x/s), −128, 127)``):

* ``max``: ``s = max|x| / 127`` — nothing clips; outliers stretch the grid.
* ``percentile``: ``s = q_99.99(|x|) / 127`` — the top 0.01 % clip.
* ``mse``: the ``s = α · max|x| / 127`` (α on a grid in [0.05, 1]) with the least squared quantization
  error over the sample, clipping included.

The study of which rule serves the integer encoder best is in ``docs/results/integer.md``.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from core import golden
from core.encoder import EncoderFloats, LayerFloats, edge_names

METHODS = ("max", "percentile", "mse")
#: The rule the export uses unless told otherwise: the best on the trained models (docs/results/integer.md).
DEFAULT_METHOD = "mse"
PERCENTILE = 0.9999
SAMPLE_PER_EDGE = 1 << 18
_MSE_GRID = torch.linspace(0.05, 1.0, 96, dtype=torch.float64)
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def bert_parts(model) -> tuple:
    """``(base model, encoder layers)`` of a BERT classifier; refuses other architectures by name."""
    if getattr(model.config, "model_type", None) != "bert":
        raise ValueError(f"the integer encoder supports BERT models; this one is {getattr(model.config, 'model_type', '?')!r}")
    if getattr(model.config, "hidden_act", None) != "gelu":
        raise ValueError(f"the integer encoder's GELU table is the exact (erf) GELU; the model uses {model.config.hidden_act!r}")
    base = model.base_model
    if base.pooler is None:
        raise ValueError("the integer encoder needs the pooler (a BertForSequenceClassification-style head)")
    return base, list(base.encoder.layer)


def linear_modules(model) -> list[dict[str, str]]:
    """Per layer, role → module name of its six linear layers."""
    names = {module: name for name, module in model.named_modules()}
    _, layers = bert_parts(model)
    return [{"query": names[l.attention.self.query], "key": names[l.attention.self.key], "value": names[l.attention.self.value],
             "attention_output": names[l.attention.output.dense], "ffn_input": names[l.intermediate.dense],
             "ffn_output": names[l.output.dense]} for l in layers]


def encoder_floats(model) -> EncoderFloats:
    """The float parameters the integer encoder's export needs, out of a HF BERT classifier."""
    base, layers = bert_parts(model)
    emb = base.embeddings

    def norm(ln):
        return ln.weight.detach().clone(), ln.bias.detach().clone()

    return EncoderFloats(
        heads=model.config.num_attention_heads,
        word=emb.word_embeddings.weight.detach().clone(), position=emb.position_embeddings.weight.detach().clone(),
        token_type=emb.token_type_embeddings.weight.detach().clone(), embedding_norm=norm(emb.LayerNorm),
        layers=[LayerFloats(modules, norm(l.attention.output.LayerNorm), norm(l.output.LayerNorm))
                for modules, l in zip(linear_modules(model), layers)],
        pooler=(base.pooler.dense.weight.detach().clone(), base.pooler.dense.bias.detach().clone()),
        classifier=(model.classifier.weight.detach().clone(), model.classifier.bias.detach().clone()),
    )


def edge_points(model) -> dict[str, tuple[torch.nn.Module, str]]:
    """Where each edge is observed: ``edge → (module, "output" | "input")``."""
    base, layers = bert_parts(model)
    points = {"embeddings": (base.embeddings, "output"), "pooler": (base.pooler.dense, "output")}
    for i, l in enumerate(layers):
        points.update({
            f"{i}.query": (l.attention.self.query, "output"), f"{i}.key": (l.attention.self.key, "output"),
            f"{i}.value": (l.attention.self.value, "output"), f"{i}.context": (l.attention.output.dense, "input"),
            f"{i}.attention_output": (l.attention.output.dense, "output"),
            f"{i}.attention_norm": (l.attention.output.LayerNorm, "output"),
            f"{i}.ffn_hidden": (l.intermediate.dense, "output"), f"{i}.gelu": (l.output.dense, "input"),
            f"{i}.ffn_output": (l.output.dense, "output"), f"{i}.output_norm": (l.output.LayerNorm, "output"),
        })
    assert sorted(points) == sorted(edge_names(len(layers)))
    return points


@dataclass
class EdgeStats:
    """Peak |x| (exact) and a uniform sample of the values of one edge."""

    peak: float = 0.0
    samples: list[torch.Tensor] = field(default_factory=list)
    seen: int = 0

    def sample(self) -> torch.Tensor:
        return torch.cat(self.samples) if self.samples else torch.zeros(0, dtype=torch.float64)


class ActivationRecorder:
    """Forward hooks on every edge; use as a context manager around the model's forwards.

    With ``statistics`` every edge's values of real tokens (``attention_mask``) update its
    :class:`EdgeStats`: each batch contributes at most ``SAMPLE_PER_EDGE / batches`` values, drawn with a
    fixed generator. With ``keep_last`` the last float tensor of every edge (all tokens) is kept in
    ``last``, for comparisons against the integer model.
    """

    def __init__(self, model, batches: int, keep_last: bool = False, statistics: bool = True):
        self.model, self.points = model, edge_points(model)
        self.stats = {edge: EdgeStats() for edge in self.points}
        self.per_batch = max(1, SAMPLE_PER_EDGE // max(1, batches))
        self.generator = torch.Generator().manual_seed(0)
        self.mask: torch.Tensor | None = None
        self.keep_last, self.last, self.statistics = keep_last, {}, statistics
        self._handles = []

    def _hook(self, edge: str, where: str):
        def hook(module, inputs, output):
            value = (inputs[0] if where == "input" else output).detach()
            if self.keep_last:
                self.last[edge] = value
            if self.statistics:
                self.record(edge, value)
        return hook

    def record(self, edge: str, value: torch.Tensor) -> None:
        if value.dim() == 3 and self.mask is not None:
            value = value[self.mask.bool()]
        flat = value.reshape(-1).to(torch.float64)
        stats = self.stats[edge]
        stats.peak = max(stats.peak, float(flat.abs().max()) if flat.numel() else 0.0)
        stats.seen += flat.numel()
        if flat.numel() > self.per_batch:
            flat = flat[torch.randperm(flat.numel(), generator=self.generator)[: self.per_batch]]
        stats.samples.append(flat.cpu())

    def __enter__(self):
        for edge, (module, where) in self.points.items():
            self._handles.append(module.register_forward_hook(self._hook(edge, where)))
        return self

    def __exit__(self, *exc):
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def forward(self, batch: Mapping[str, torch.Tensor]):
        inputs = {name: batch[name] for name in _MODEL_INPUTS if batch.get(name) is not None}
        self.mask = inputs.get("attention_mask")
        return self.model(**inputs)


def scale_from(stats: EdgeStats, method: str, edge: str = "edge") -> float:
    """The int8 scale of one edge under a calibration ``method`` (see the module docstring)."""
    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; known: {', '.join(METHODS)}")
    if not stats.peak > 0:
        raise ValueError(f"calibration edge {edge} saw only zeros; cannot set its scale")
    if method == "max":
        return stats.peak / golden.INT8_MAX
    x = stats.sample()
    if method == "percentile":
        value = float(torch.quantile(x.abs(), PERCENTILE)) if x.numel() <= 16_000_000 else stats.peak
        return max(value, stats.peak * 1e-3) / golden.INT8_MAX
    scales = _MSE_GRID * stats.peak / golden.INT8_MAX
    errors = torch.stack([((x - s * torch.round(x / s).clamp(golden.INT8_MIN, golden.INT8_MAX)) ** 2).mean() for s in scales])
    return float(scales[int(errors.argmin())])


@torch.no_grad()
def calibrate(model, batches: Iterable[Mapping[str, torch.Tensor]], max_batches: int, methods=METHODS) -> dict[str, dict[str, float]]:
    """``{method: {edge: scale}}`` from ``max_batches`` calibration batches through the float model."""
    model.eval()
    recorder = ActivationRecorder(model, max_batches)
    with recorder:
        for batch in itertools.islice(batches, max_batches):
            recorder.forward(batch)
    return {method: {edge: scale_from(stats, method, edge) for edge, stats in recorder.stats.items()} for method in methods}
