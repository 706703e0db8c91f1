"""Generate Verilog for the pattern-sparse matmul engine.

    python -m hw.gen --out build/rtl                      # default config
    python -m hw.gen --lanes 16 --pool-size 64 --out build/rtl
    python -m hw.gen --config my_engine.json --out build/rtl

Writes ``pattern_matmul.v`` and ``pattern_matmul.json`` (the config it was built from).
"""

from __future__ import annotations

import argparse
import re
import os
import sys
from dataclasses import fields, replace
from pathlib import Path

from amaranth.back import verilog

from core.pattern import PatternConfig
from hw.config import EngineConfig
from hw.pattern_matmul import PatternMatmulEngine
from core.atomic import write_atomic

TOP_NAME = "pattern_matmul"
VERILOG_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def generate(config: EngineConfig, out_dir: str | os.PathLike, name: str = TOP_NAME) -> Path:
    """Write ``<name>.v`` and ``<name>.json`` into ``out_dir`` (atomically); return the Verilog path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text = verilog.convert(PatternMatmulEngine(config), name=name, emit_src=False)
    write_atomic(out_dir / f"{name}.json", config.to_json() + "\n")
    return write_atomic(out_dir / f"{name}.v", text)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hw.gen", description="Generate the engine's Verilog.")
    parser.add_argument("--config", type=Path, help="engine config JSON (flags below override its fields)")
    for f in fields(PatternConfig):
        parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, help=f"EngineConfig.pattern.{f.name}")
    for f in fields(EngineConfig):
        if f.name != "pattern":
            parser.add_argument("--" + f.name.replace("_", "-"), type=int, default=None, help=f"EngineConfig.{f.name}")
    parser.add_argument("--out", type=Path, default=Path("build/rtl"), help="output folder (default build/rtl)")
    parser.add_argument("--name", default=TOP_NAME, help=f"top module name (default {TOP_NAME})")
    args = parser.parse_args(argv)
    try:
        config = EngineConfig.from_json(args.config.read_text()) if args.config else EngineConfig()
        given = lambda cls: {f.name: getattr(args, f.name) for f in fields(cls) if getattr(args, f.name, None) is not None}
        pattern = replace(config.pattern, **given(PatternConfig))
        config = replace(config, **{**given(EngineConfig), "pattern": pattern})
    except (ValueError, OSError) as e:
        print(f"error: invalid engine config: {e}", file=sys.stderr)
        return 2
    if not VERILOG_IDENTIFIER.fullmatch(args.name):
        print(f"error: --name {args.name!r} is not a plain Verilog identifier (a letter or _, then letters, digits, _ or $)",
              file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: --out {args.out} is a file; give a folder for the Verilog", file=sys.stderr)
        return 2
    try:
        path = generate(config, args.out, args.name)
    except OSError as e:
        print(f"error: cannot write the Verilog into {args.out}: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({config.multipliers} multipliers, {config.pattern.block_size}x{config.pattern.block_size} blocks keeping "
          f"{config.pattern.kept_per_block}, pool {config.pattern.pool_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
