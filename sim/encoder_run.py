"""A compiled model's sequences on the accelerator RTL (the long-run harness), each checked against the
integer golden model: every stored tensor (every layer's output; with a traced image every boundary tensor
of every layer), the pooled vector, the logits and the label, and the whole memory against the command
model. Used by ``bench/encoder.py`` and the whole flow (``python -m flow``).

Cycle accounting: :func:`useful_macs` counts the multiply-accumulates the model needs (kept weights of
the linears, the attention map as the attention unit computes it), as the cycle model does, so that
``useful / (cycles · multipliers)`` is the MAC utilization over the whole run, every cycle counted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from core.encoder import LINEAR_ROLES, IntegerEncoder
from firmware_gen.compiler import CompiledModel
from hw.cycle_model import AttentionHeadShape, attention_cycles, matmul_cycles
from sim.accelerator_rtl import AcceleratorHarness, expected_run, run_accelerator_fast


def useful_macs(compiled: CompiledModel, encoder: IntegerEncoder, valid: int) -> int:
    """MACs on kept weights (linears) and on the attention map (Q·Kᵀ over every key, P·V over the kept
    entries), as the cycle model counts them, for one sequence of ``valid`` real tokens."""
    config, spec, L = compiled.config, encoder.spec, compiled.seq_len
    total = 0
    for i in range(len(spec["layers"])):
        for role in LINEAR_ROLES:
            n, k = encoder.weights[f"{i}.{role}"].shape
            total += matmul_cycles(config.engine, L, k, n).useful_macs
    heads = [AttentionHeadShape(L, spec["head_dim"], valid, ())] * spec["heads"]
    return total + len(spec["layers"]) * attention_cycles(config.attention, heads, pruned=encoder.attention_pool is not None).useful_macs


@dataclass
class SequenceRun:
    """One sequence on the RTL: what it cost and whether it equals the golden model."""

    valid_tokens: int
    cycles: int
    read_bytes: int
    written_bytes: int
    wall_seconds: float
    useful_macs: int
    utilization_one_array: float  # useful MACs / (cycles × the linear engine's multipliers)
    utilization_both_arrays: float  # … × the multipliers of both arrays (linear engine and attention unit)
    label: int
    golden_label: int
    bit_exact: bool
    mismatches: dict[str, int]  # values that differ, per stored tensor, plus the memory against the command model
    op_cycles: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def run_sequence(harness: AcceleratorHarness, compiled: CompiledModel, encoder: IntegerEncoder, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None, case_dir: str | Path) -> SequenceRun:
    """Run one sequence (a batch of one, padded to ``compiled.seq_len``) on ``harness`` and check it."""
    if input_ids.shape != (1, compiled.seq_len):
        raise ValueError(f"input_ids is {tuple(input_ids.shape)}; one sequence of {compiled.seq_len} tokens is (1, {compiled.seq_len})")
    valid = int(attention_mask.sum())
    golden = encoder(input_ids, attention_mask, token_type_ids, trace=True)
    image = compiled.image()
    region = compiled.region("input")
    image[region.address:region.address + region.size] = compiled.input_bytes(encoder.embed(input_ids, token_type_ids)[0], valid)
    result = run_accelerator_fast(harness, image, case_dir)
    memory = result["memory"]
    mismatches = compiled.mismatches(memory, golden)
    mismatches["memory_vs_command_model"] = int(memory != expected_run(compiled.config, image)["memory"])
    config = compiled.config
    useful = useful_macs(compiled, encoder, valid)
    return SequenceRun(
        valid_tokens=valid, cycles=result["cycles"], read_bytes=result["read_bytes"], written_bytes=result["written_bytes"],
        wall_seconds=result["wall_seconds"], useful_macs=useful,
        utilization_one_array=useful / (result["cycles"] * config.engine.multipliers),
        utilization_both_arrays=useful / (result["cycles"] * (config.engine.multipliers + config.attention.engine.multipliers)),
        label=int(compiled.read(memory, "logits").argmax()), golden_label=int(golden.logits[0].argmax()),
        bit_exact=result["done"] == 1 and not any(mismatches.values()), mismatches=mismatches,
        op_cycles=result.get("op_cycles", {}),
    )
