"""Generate Verilog for the pattern-sparse matmul engine, or for the attention unit.

    python -m hw.gen --out build/rtl                      # default config
    python -m hw.gen --lanes 16 --pool-size 64 --out build/rtl
    python -m hw.gen --config my_engine.json --out build/rtl
    python -m hw.gen --attention --max-seq 128 --max-head-dim 64 --out build/rtl
    python -m hw.gen --accelerator [--config accelerator.json] --out build/rtl

Writes ``pattern_matmul.v`` and ``pattern_matmul.json`` (the config it was built from), or with
``--attention`` ``attention_unit.v`` and ``attention_unit.json`` (the engine flags then describe the
attention unit's MAC array; its ``weight_bits`` is 9 and its ``max_in_features`` follows the
sequence length and head dimension), or with ``--accelerator`` the whole-encoder top
``accelerator.v`` and ``accelerator.json`` (from an ``AcceleratorConfig`` JSON; no flags).
"""

from __future__ import annotations

import argparse
import re
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from amaranth.back import verilog

from core.atomic import write_atomic
from core.pattern import PatternConfig
from hw.attention_unit import AttentionUnit
from hw.accelerator import Accelerator
from hw.config import AcceleratorConfig, AttentionConfig, EngineConfig
from hw.pattern_matmul import PatternMatmulEngine

TOP_NAME = "pattern_matmul"
ATTENTION_NAME = "attention_unit"
ACCELERATOR_NAME = "accelerator"
VERILOG_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def generate(config: EngineConfig, out_dir: str | os.PathLike, name: str = TOP_NAME) -> Path:
    """Write ``<name>.v`` and ``<name>.json`` into ``out_dir`` (atomically); return the Verilog path."""
    return _write(PatternMatmulEngine(config), config.to_json(), out_dir, name)


def generate_attention(config: AttentionConfig, out_dir: str | os.PathLike, name: str = ATTENTION_NAME) -> Path:
    """Write the attention unit's ``<name>.v`` and ``<name>.json`` into ``out_dir`` (atomically)."""
    return _write(AttentionUnit(config), config.to_json(), out_dir, name)


def generate_accelerator(config: AcceleratorConfig, out_dir: str | os.PathLike, name: str = ACCELERATOR_NAME) -> Path:
    """Write the accelerator top's ``<name>.v`` and ``<name>.json`` into ``out_dir`` (atomically)."""
    return _write(Accelerator(config), config.to_json(), out_dir, name)


def _write(component, config_json: str, out_dir: str | os.PathLike, name: str) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(component, name=name, emit_src=False)
    write_atomic(out_dir / f"{name}.json", config_json + "\n")
    return write_atomic(out_dir / f"{name}.v", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.gen", description="Generate the engine's or the attention unit's Verilog.")
    parser.add_argument("--config", type=Path, help="engine config JSON (flags below override its fields)")
    for f in fields(PatternConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, help=f"EngineConfig.pattern.{f.name}")
    for f in fields(EngineConfig):
        if f.name != "pattern":
            parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, help=f"EngineConfig.{f.name}")
    parser.add_argument("--attention", action="store_true", help="generate the attention unit (--config is then an "
                        "attention config JSON, its engine under \"engine\")")
    for f in fields(AttentionConfig):
        if f.name != "engine":
            parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, help=f"AttentionConfig.{f.name} (with --attention)")
    parser.add_argument("--accelerator", action="store_true", help="generate the whole-encoder top (--config is then an "
                        "accelerator config JSON; no other flags)")
    parser.add_argument("--out", type=Path, default=Path("build/rtl"), help="output folder (default build/rtl)")
    parser.add_argument("--name", help=f"top module name (default {TOP_NAME}, or {ATTENTION_NAME} with --attention)")
    args = parser.parse_args(argv)
    given = lambda cls: {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
    if args.accelerator:
        return _main_accelerator(args, given(PatternConfig) | given(EngineConfig) | given(AttentionConfig))
    try:
        text = args.config.read_text() if args.config else None
        attention = AttentionConfig.from_json(text) if args.attention and text else AttentionConfig()
        config = EngineConfig.from_json(text) if text and not args.attention else (attention.engine if args.attention else EngineConfig())
        pattern = replace(config.pattern, **given(PatternConfig))
        config = replace(config, **{**given(EngineConfig), "pattern": pattern})
        if args.attention:
            attention = replace(attention, **{**given(AttentionConfig), "engine": config})
        elif given(AttentionConfig):
            raise ValueError(f"{', '.join('--' + n.replace('_', '-') for n in given(AttentionConfig))} need --attention")
    except (ValueError, OSError) as e:
        print(f"error: invalid {'attention' if args.attention else 'engine'} config: {e}", file=sys.stderr)
        return 2
    args.name = args.name or (ATTENTION_NAME if args.attention else TOP_NAME)
    if not VERILOG_IDENTIFIER.fullmatch(args.name):
        print(f"error: --name {args.name!r} is not a plain Verilog identifier (a letter or _, then letters, digits, _ or $)",
              file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file; give a folder for the Verilog", file=sys.stderr)
        return 2
    try:
        path = generate_attention(attention, args.out, args.name) if args.attention else generate(config, args.out, args.name)
    except OSError as e:
        print(f"error: cannot write the Verilog into {args.out}: {e}", file=sys.stderr)
        return 2
    if args.attention:
        config = attention.engine
    print(f"wrote {path} ({config.multipliers} multipliers, {config.pattern.block_size}x{config.pattern.block_size} blocks keeping "
          f"{config.pattern.kept_per_block}, pool {config.pattern.pool_size})")
    return 0


def _main_accelerator(args, flags: dict) -> int:
    try:
        if flags or args.attention:
            raise ValueError(f"--accelerator takes its parameters from --config only, not {sorted(flags) or ['--attention']}")
        config = AcceleratorConfig.from_json(args.config.read_text()) if args.config else AcceleratorConfig()
        Accelerator(config)._MustUse__silence = True  # refuses what the top cannot build, before anything is written
    except (ValueError, OSError) as e:
        print(f"error: invalid accelerator config: {e}", file=sys.stderr)
        return 2
    name = args.name or ACCELERATOR_NAME
    if not VERILOG_IDENTIFIER.fullmatch(name) or (args.out.exists() and not args.out.is_dir()):
        print(f"error: --name {name!r} must be a Verilog identifier and --out {args.out} a folder", file=sys.stderr)
        return 2
    path = generate_accelerator(config, args.out, name)
    print(f"wrote {path} (scratch {config.scratch_bytes} bytes, wide {config.wide_words} words)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
