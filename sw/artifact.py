"""Export of a trained Hugging Face model into an artifact, and the model back from one.

The format, its reader and its validation are the contract's (:mod:`core.artifact`); this module holds
the two steps that need the training side: reading the effective weights out of a trained (masked,
fake-quantized) model, and rebuilding the Hugging Face model from an artifact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.artifact import TOKENIZER, Artifact, ArtifactError, write_artifact
from core.encoder import build_integer_encoder, linear_edges
from core.pattern import PatternPool
from core.quantize import quantize_rows
from sw import attention as attention_pruning
from sw.masking import apply_masks, masked_weights
from sw.calibration import encoder_floats as calibration_floats
from sw.projections import Pattern


def save_artifact(path, model, config, projections, scales, metrics, attention=None, tokenizer=None,
                  calibration: str = "") -> Path:
    """Write the artifact of ``model`` (its effective, masked weights) into the folder ``path``.

    ``projections``: ``{"<module>.weight": (param, projection)}`` of the run; ``scales``: the calibrated
    scale of every tensor edge of the integer encoder (:func:`sw.calibration.calibrate`);
    ``attention``: ``(AttentionPruningConfig, PatternPool)``; ``tokenizer`` is saved beside the tensors.
    """
    bits = config.compression.quant_bits or 8
    targets = [name.rsplit(".", 1)[0] for name in projections]
    tensors = trained_tensors(model, targets, bits)
    layers = {}
    for name, (_, projection) in projections.items():
        module_name = name.rsplit(".", 1)[0]
        weight = tensors[f"linear.{module_name}.weight_q"]
        entry = {"out_features": weight.shape[0], "in_features": weight.shape[1], "bits": bits, "projection": projection.to_dict()}
        if isinstance(projection, Pattern):
            prefix = f"linear.{module_name}."
            tensors[prefix + "pool"] = projection.pool.masks.contiguous()
            tensors[prefix + "pattern_ids"] = projection.pattern_ids.to(torch.int32)  # ids of the hard-pruning projection
            entry["pattern"] = {"block_size": projection.block_size, "kept_per_block": projection.kept_per_block, "pool_size": projection.pool_size}
        layers[module_name] = entry
    attention_config = None
    if attention is not None:
        attention_config, pool = attention
        tensors["attention.pool"] = pool.masks.contiguous()
        attention_config = attention_config.to_dict()

    manifest = {
        "model": {"architecture": type(model).__name__, "config": model.config.to_dict()},
        "task": config.task, "metrics": metrics, "training": config.to_dict(),
        "layers": layers, "attention_pruning": attention_config,
    }
    return write_integer_artifact(path, tensors, manifest, model, scales, tokenizer, calibration)


def integer_section(tensors: dict, manifest: dict, model, scales: dict[str, float], calibration: str = "") -> tuple[dict, dict]:
    """The integer encoder of a float artifact: ``(int.* tensors, manifest integer section)``.

    ``model`` is the float model those tensors came from (embeddings, LayerNorms, pooler and classifier
    are read from it); ``scales`` the calibrated scale of every edge.
    """
    linears = {}
    for module, entry in manifest["layers"].items():
        if entry["bits"] != 8:
            raise ValueError(f"layer {module} has {entry['bits']}-bit weights; the integer encoder runs int8")
        linears[module] = {"weight_q": tensors[f"linear.{module}.weight_q"], "weight_scale": tensors[f"linear.{module}.weight_scale"],
                           "bias": tensors[f"linear.{module}.bias"]}
    pool = tensors.get("attention.pool") if manifest.get("attention_pruning") else None
    int_tensors, spec = build_integer_encoder(linears, calibration_floats(model), scales, pool)
    spec["calibration"] = calibration
    return int_tensors, spec


def write_integer_artifact(path, tensors: dict, manifest: dict, model, scales: dict[str, float], tokenizer=None,
                           calibration: str = "") -> Path:
    """Add the integer encoder (``int.*`` tensors, the manifest's ``integer`` section, every linear's
    edge scales) to a float artifact's ``tensors`` and ``manifest`` and write the folder ``path``; the
    tokenizer, when given, goes to ``path/tokenizer``."""
    tensors = {name: t for name, t in tensors.items() if not name.startswith("int.")}
    int_tensors, spec = integer_section(tensors, manifest, model, scales, calibration)
    layers = {module: dict(entry) for module, entry in manifest["layers"].items()}
    for i, entry in enumerate(spec["layers"]):
        for role, (edge_in, edge_out) in linear_edges(i).items():
            layers[entry["modules"][role]].update(input_scale=spec["scales"][edge_in], output_scale=spec["scales"][edge_out])
    manifest = {**manifest, "layers": layers, "integer": spec}
    path = Path(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path / TOKENIZER)
    return write_artifact(path, {**tensors, **int_tensors}, manifest)


def trained_tensors(model, targets: list[str], bits: int) -> dict[str, torch.Tensor]:
    """The artifact tensors of a trained model: per target linear its ``bits``-bit levels of the effective
    (masked, fake-quantized) weight, row scales, bias and mask; every other parameter and buffer as
    ``dense.*`` (the targets' weights, biases and mask buffers excluded)."""
    masks = {name: p.mask for name, p in masked_weights(model).items()}
    tensors = {}
    for module_name in targets:
        module = model.get_submodule(module_name)
        weight = module.weight.detach()  # effective weight (masked, fake-quantized)
        mask = masks.get(f"{module_name}.weight", torch.ones_like(weight, dtype=torch.bool))
        weight_q, weight_scale = quantize_rows(weight * mask, bits)
        bias = module.bias.detach() if module.bias is not None else torch.zeros(weight.shape[0])
        prefix = f"linear.{module_name}."
        tensors.update({prefix + "weight_q": weight_q, prefix + "weight_scale": weight_scale,
                        prefix + "bias": bias.float().contiguous(), prefix + "mask": mask.contiguous()})
    for name, value in model.state_dict().items():
        if not any(name.startswith(t + ".") for t in targets):
            tensors["dense." + name] = value.detach().contiguous()
    return tensors


def to_model(artifact: Artifact, masked: bool = True, decay: float = 2e-4, bits: int | None = None):
    """The Hugging Face model with the artifact's weights; with ``masked`` the masks are applied as
    SR-STE parametrizations, so training can continue on the same supports."""
    import transformers

    config_dict = dict(artifact.manifest["model"]["config"])
    config = transformers.AutoConfig.for_model(config_dict.pop("model_type"), **config_dict)
    config._attn_implementation = "eager"
    architecture = getattr(transformers, artifact.manifest["model"]["architecture"])
    model = architecture(config)
    state = {name[len("dense."):]: value for name, value in artifact.tensors.items() if name.startswith("dense.")}
    for module in artifact.layers:
        state[f"{module}.weight"] = artifact.weight(module)
        state[f"{module}.bias"] = artifact.tensor(module, "bias")
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ArtifactError(f"{artifact.path}: tensors do not fit the model config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    if masked:
        apply_masks(model, artifact.masks(), decay, bits)
    if artifact.manifest.get("attention_pruning"):
        config = attention_pruning.AttentionPruningConfig.from_dict(artifact.manifest["attention_pruning"])
        attention_pruning.enable_attention_pruning(model, PatternPool(config.pattern, artifact.tensors["attention.pool"]), config)
    model.eval()
    return model

