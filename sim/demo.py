"""`make demo`: one linear layer through the whole flow, checked bit for bit on the RTL.

Embedded default: a 256 → 192 linear layer with 64 tokens (shapes and seed fixed), pattern-pruned to
8 of 16 per 4×4 block with a pool of 32, int8-quantized, packed, generated as Verilog, simulated on
Verilator in pattern mode and dense mode, and compared with the golden model.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import torch

from firmware_gen.image import LinearImage
from firmware_gen.program import build_program
from hw.config import EngineConfig
from hw.gen import generate
from sim.rtl import build_harness, run_program
from sim.toolchain import LINT_WAIVERS, configure_verilator
from core.pattern import PatternConfig
from core.quantize import compress_linear

OUT = Path("build/demo")
TOKENS, IN_FEATURES, OUT_FEATURES, SEED = 64, 256, 192, 0


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    noise = float(((reference - approx) ** 2).sum())
    return float("inf") if noise == 0 else 10 * torch.log10(((reference**2).sum()) / noise).item()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(SEED)
    config = EngineConfig()
    linear = torch.nn.Linear(IN_FEATURES, OUT_FEATURES)
    x = torch.randn(TOKENS, IN_FEATURES)

    step(f"sw: pattern pruning + int8 of a {IN_FEATURES}→{OUT_FEATURES} linear layer "
         f"({config.pattern.block_size}×{config.pattern.block_size} blocks, {config.pattern.kept_per_block} kept, pool {config.pattern.pool_size})")
    layer = compress_linear(linear, x, config.pattern)
    kept = float((layer.weight_q.double() * layer.weight_scale[:, None]).pow(2).sum() / linear.weight.detach().double().pow(2).sum())
    used = len(torch.unique(layer.pattern_ids))
    print(f"   {layer.pattern_ids.numel()} blocks, {used} of {config.pattern.pool_size} patterns used, "
          f"{kept:.1%} of the squared weight magnitude kept")

    step("sim: golden integer model against the float model")
    x_q = layer.quantize_input(x)
    acc, y_q = layer.forward_int(x_q)
    with torch.no_grad():
        dense_out = linear(x).double()
        pruned_float = torch.nn.functional.linear(x.double(), layer.weight_q.double() * layer.weight_scale[:, None], linear.bias.double())
    y = layer.dequantize_output(y_q)
    print(f"   SQNR of the int8 golden vs the pruned float layer: {sqnr_db(pruned_float, y):.1f} dB")
    print(f"   SQNR of the int8 golden vs the dense float layer:  {sqnr_db(dense_out, y):.1f} dB (random weights prune badly)")

    step("firmware_gen: packed weight image")
    image = LinearImage.from_layer(layer)
    image.save(OUT / "layer.tslw")
    loaded = LinearImage.load(OUT / "layer.tslw")
    assert loaded.to_bytes() == image.to_bytes() and torch.equal(loaded.weight_q(), layer.weight_q)
    size = (OUT / "layer.tslw").stat().st_size
    print(f"   {OUT / 'layer.tslw'}: {size} bytes ({size * 8 / (IN_FEATURES * OUT_FEATURES):.2f} bits per weight), round trip exact")

    step("hw: Verilog and lint")
    verilog = generate(config, OUT / "rtl")
    lint = subprocess.run(["verilator", "--lint-only", "-Wall", str(LINT_WAIVERS), str(verilog)],
                          capture_output=True, text=True, env=configure_verilator(dict(__import__("os").environ)))
    print(f"   {verilog}: {config.multipliers} multipliers; verilator -Wall: {'clean' if lint.returncode == 0 else 'FAILED'}")
    if lint.returncode:
        print(lint.stderr, file=sys.stderr)
        return 1

    step("sim: Verilator + cocotb, whole output tensor against the golden model")
    started = time.perf_counter()
    harness = build_harness(config, OUT / "verilator")
    print(f"   harness built in {time.perf_counter() - started:.1f} s")
    results = {}
    for mode in ("pattern", "dense"):
        program = build_program(loaded, x_q, config, dense=mode == "dense")
        result = run_program(harness, program, y_q, OUT / "cases" / mode, stall_percent=0, check=False)
        results[mode] = result
        useful = TOKENS * OUT_FEATURES * IN_FEATURES * config.pattern.kept_per_block / config.pattern.block_size**2
        print(f"   {mode:7s}: {'bit-exact' if result['passed'] else 'MISMATCH'} "
              f"({result['elements'] - (result['mismatches'] or 0)}/{result['elements']} outputs equal), "
              f"{result['cycles']} cycles, MAC utilization {useful / (config.multipliers * result['cycles']):.1%}")
    print(f"\n   pattern mode is {results['dense']['cycles'] / results['pattern']['cycles']:.2f}× faster than dense on the same array")
    ok = all(r["passed"] for r in results.values())
    print("\nDEMO PASSED" if ok else "\nDEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
