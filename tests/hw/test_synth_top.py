"""The synthesis harness drives the engine through its pins; the tool-report parsers read real tool output."""

import importlib.util
from functools import reduce
from operator import xor
from pathlib import Path

import pytest
from amaranth import Cat, Module, Signal, signed
from amaranth.back import verilog
from amaranth.hdl import Fragment
from amaranth.hdl._ast import SignalSet  # the statements' driven signals (no public API for them)
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from firmware_gen.beats import encode
from firmware_gen.program import build_program
from core.pattern import PatternConfig
from hw.config import EngineConfig
from hw.layouts import Opcode, command_layout, output_layout
from hw.synth_top import INPUT_STREAMS, SynthTop
from sim.cases import random_case

SMALL = EngineConfig(pattern=PatternConfig(block_size=4, kept_per_block=8, pool_size=4), lanes=2, max_in_features=16)


def _load_bench_synth():
    path = Path(__file__).resolve().parents[2] / "bench" / "synth.py"
    spec = importlib.util.spec_from_file_location("bench_synth", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serial_beats(program):
    """Input beats (pattern mode) in an order that one-beat-at-a-time driving cannot deadlock on:
    commands; per tile its activations, then per block row its weights followed by its parameters."""
    cfg, nb = program.config, program.out_blocks
    kb = len(program.weights) // nb  # the weights of one tile: nb × kb beats
    beats = [("cmd", b) for b in program.commands]
    for tile in range(program.tiles):
        first = tile * cfg.lanes
        tile_tokens = min(cfg.lanes, program.tokens - first)
        beats += [("activations", b) for b in program.activations[first * kb:(first + tile_tokens) * kb]]
        for bn in range(nb):
            beats += [("weights", b) for b in program.weights[bn * kb:(bn + 1) * kb]]
            beats.append(("params", program.params[bn]))
    return beats


def _drive(dut, beats, *, timeout=2000):
    """Testbench: shift each beat in, offer it, wait until it is taken; return the final pin values."""
    seen = {}

    async def bench(ctx):
        ctx.set(dut.out_ready, 1)
        for name, beat in beats:
            for bit in dut.serial_bits(name, beat):
                ctx.set(dut.sdi, bit)
                ctx.set(dut.shift, 1)
                await ctx.tick()
            ctx.set(dut.shift, 0)
            ctx.set(dut.load, 1 << INPUT_STREAMS.index(name))
            await ctx.tick()
            ctx.set(dut.load, 0)
            for _ in range(timeout):
                await ctx.tick()
                if not ctx.get(dut.pending):
                    break
            else:
                raise TimeoutError(f"the engine did not take a {name} beat")
        for _ in range(timeout):  # let the last outputs drain
            await ctx.tick()
            if not ctx.get(dut.busy):
                break
        await ctx.tick()
        seen.update(checksum=ctx.get(dut.checksum), busy=ctx.get(dut.busy), error=ctx.get(dut.error),
                    pending=ctx.get(dut.pending))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return seen


def _fold(word, width, bits):
    """Bit i of the result is the XOR of bits i, i + bits, … of ``word``."""
    return reduce(xor, ((word >> i) & ((1 << bits) - 1) for i in range(0, width, bits)), 0)


def _case():
    """A 3-token matmul (two tiles of the 2-lane engine) and the checksum of its golden output beats."""
    tokens = 3
    image, x_q = random_case(tokens, 8, 8, SMALL.pattern, seed=4)
    _, y = image.golden(x_q)
    program = build_program(image, x_q, SMALL)
    k, lanes = SMALL.pattern.block_size, SMALL.lanes
    expected = 0
    for tile in range(program.tiles):  # output beats in stream order: tile, block row, lane
        for bn in range(program.out_blocks):
            for token in range(tile * lanes, min(tokens, (tile + 1) * lanes)):
                beat = encode(output_layout(SMALL), {"values": y[token, bn * k:(bn + 1) * k].tolist()})
                expected ^= _fold(beat, output_layout(SMALL).size, 8)
    return program, expected


def test_harness_runs_a_matmul_through_the_pins():
    program, expected = _case()
    assert expected != 0  # a checksum of 0 would not show that outputs arrived
    seen = _drive(SynthTop(SMALL), _serial_beats(program))
    assert seen == {"checksum": expected, "busy": 0, "error": 0, "pending": 0}


def test_checksum_sees_one_flipped_weight_bit():
    program, expected = _case()
    program.weights[1] ^= 1 << 10  # one bit of one kept weight
    seen = _drive(SynthTop(SMALL), _serial_beats(program))
    assert seen["checksum"] != expected and seen["error"] == 0


def test_harness_refused_command_reaches_error_pin():
    dut = SynthTop(SMALL)
    run = encode(command_layout(SMALL), {"op": Opcode.RUN.value, "dense": 0, "raw": 0, "wide": 0, "pattern_id": 0, "tokens": 1,
                                         "in_blocks": SMALL.max_in_blocks + 1, "out_blocks": 1,
                                         "positions": [{"row": 0, "col": 0}] * SMALL.pattern.kept_per_block})
    seen = _drive(dut, [("cmd", run)])
    assert seen == {"checksum": 0, "busy": 0, "error": 1, "pending": 0}


def test_harness_accounting():
    dut = SynthTop(SMALL, checksum_bits=5)
    fields = dut.chain_fields
    assert list(fields) == list(INPUT_STREAMS)
    assert fields["cmd"] == (0, command_layout(SMALL).size)
    offsets = [offset for offset, _ in fields.values()]
    assert offsets == sorted(offsets) and sum(w for _, w in fields.values()) == dut.chain_width
    # the flip-flops the harness's own module drives in its clock domain (the engine is a submodule)
    harness = Fragment.get(dut, None)
    driven = SignalSet()
    for statement in harness.statements["sync"]:
        driven |= statement._lhs_signals()
    assert dut.harness_flip_flops == sum(len(signal) for signal in driven)
    assert dut.pins == 1 + 1 + 4 + 1 + 1 + 1 + 1 + 5 + 2  # sdi shift load out_ready pending busy error checksum clk rst
    with pytest.raises(ValueError):
        dut.serial_bits("weights", 1 << fields["weights"][1])
    verilog.convert(dut)  # elaborated, so amaranth does not warn about an unused design


def test_several_placer_seeds_report_the_median_run():
    bench = _load_bench_synth()
    runs = [{"fmax_mhz": f, "seed": i} for i, f in enumerate([91.0, 85.5, 97.2])]
    assert bench.median_run(runs)["seed"] == 0
    assert bench.median_run(runs[:2])["fmax_mhz"] == 85.5  # even count: the lower middle one
    assert bench.median_run(runs[2:]) is runs[2]
    record = {"pnr": runs[0], "pnr_seeds": [{"seed": r["seed"], "fmax_mhz": r["fmax_mhz"]} for r in runs]}
    assert bench._fmax_text(record) == "91.0 (91.0 / 85.5 / 97.2)"
    assert bench._fmax_text({"pnr": runs[0]}) == "91.0"
    with pytest.raises(ValueError, match="at least one run"):
        bench.median_run([])


def test_slow_endpoints_group_late_register_inputs_and_leave_out_resets():
    bench = _load_bench_synth()
    clock = "posedge clk"

    def net(driver_event, *ends):
        return {"net": "n", "driver": "d", "port": "F", "event": driver_event,
                "endpoints": [{"cell": cell, "port": port, "event": clock, "delay": [0.5, late]} for cell, port, late in ends]}
    report = {"detailed_net_timings": [
        net(clock, ("u.count[0]_TRELLIS_FF_Q", "DI", 12.5), ("u.count[1]_TRELLIS_FF_Q", "CE", 11.5),
            ("u.count[2]_TRELLIS_FF_Q", "DI", 9.0), ("u.flag_TRELLIS_FF_Q", "LSR", 20.0)),
        net(clock, ("u.count[0]_TRELLIS_FF_Q", "DI", 13.0), ("u.mem$DPRAM_COMB1", "WD", 11.2)),
        net("<async>", ("u.other_TRELLIS_FF_Q", "DI", 30.0)),
    ]}
    slow = bench.slow_endpoints(report, 11.0)
    # count[0] is one endpoint (its latest arrival counts), count[2] is in time, the reset and the
    # unclocked driver are left out
    assert slow["count"] == 3
    assert slow["groups"] == [{"register": "u.count[]", "endpoints": 2, "worst_ns": 13.0},
                              {"register": "u.mem", "endpoints": 1, "worst_ns": 11.2}]
    assert bench.slow_endpoints({}, 11.0) is None


def test_parse_yosys_stat_sums_modules_without_design_totals():
    bench = _load_bench_synth()
    stat = {"modules": {"\\a": {"num_cells_by_type": {"LUT4": 3, "TRELLIS_FF": 2}},
                        "\\b": {"num_cells_by_type": {"LUT4": 1}}}}
    assert bench.parse_yosys_stat(stat) == {"LUT4": 4, "TRELLIS_FF": 2}


class _Multiply(wiring.Component):
    a: In(signed(8))
    b: In(signed(8))
    p: Out(signed(16))

    def elaborate(self, platform):
        m = Module()
        ra, rb = Signal(signed(8)), Signal(signed(8))
        m.d.sync += [ra.eq(self.a), rb.eq(self.b), self.p.eq(ra * rb)]
        return m


def test_tool_reports_parse_on_a_tiny_design(tmp_path):
    bench = _load_bench_synth()
    v = tmp_path / "mul.v"
    v.write_text(verilog.convert(_Multiply(), name="mul", emit_src=False))

    cells, seconds = bench.synthesize(v, "mul", "xc7", tmp_path)
    assert bench.xc7_resources(cells)["dsp48e1"] >= 1 and seconds > 0

    cells, _ = bench.synthesize(v, "mul", "ecp5", tmp_path)
    ecp5 = bench.ecp5_resources(cells)
    assert ecp5["mult18x18d"] >= 1
    assert ecp5["ff"] >= 16  # the registered operands at least (yosys does not pack them into the MULT18X18D)

    pnr, _ = bench.place_and_route(tmp_path, device_flag="--25k")  # the smallest part: quick
    assert pnr["fmax_mhz"] > 0
    assert pnr["utilization"]["MULT18X18D"]["used"] >= 1
    assert pnr["utilization"]["MULT18X18D"]["used"] <= pnr["utilization"]["MULT18X18D"]["available"]
    path = pnr["critical_path"]
    assert path is not None and path["from"].startswith("posedge") and path["to"].startswith("posedge")
    assert path["delay_ns"] == pytest.approx(1000 / pnr["fmax_mhz"], rel=0.02)  # Fmax is 1 / the worst path
    assert path["logic_ns"] + path["routing_ns"] == pytest.approx(path["delay_ns"])


def test_a_failed_synthesis_reports_yosys_own_error_line(tmp_path):
    """A yosys failure raises ToolError with the error line from the log yosys writes itself."""
    bench = _load_bench_synth()
    v = tmp_path / "broken.v"
    v.write_text("module broken(input a, output b); assign b = a &; endmodule\n")
    with pytest.raises(bench.ToolError, match=r"(?s)yosys ecp5 failed.*broken\.v:1: ERROR: syntax error"):
        bench.synthesize(v, "broken", "ecp5", tmp_path)


class _TwoScales(wiring.Component):
    """Two ``ReciprocalScale`` fed the same inputs, as a softmax feeds its instances the same row reciprocal."""

    def __init__(self):
        super().__init__({"x": In(17), "r": In(19), "ell": In(8), "y": Out(18)})

    def elaborate(self, platform):
        from hw.reciprocal_scale import ReciprocalScale

        m = Module()
        outputs = []
        for i in range(2):
            m.submodules[f"scale_{i}"] = scale = ReciprocalScale(x_bits=17, ell_bits=8, fraction_bits=0, scale=255, rounded=True)
            m.d.comb += [scale.en.eq(1), scale.x.eq(self.x), scale.r.eq(self.r), scale.ell.eq(self.ell)]
            outputs.append(scale.y)
        m.d.comb += self.y.eq(Cat(*outputs))
        return m


@pytest.mark.parametrize("family, multiplier", [("ecp5", "MULT18X18D"), ("xc7", "DSP48E1")])
def test_registers_marked_keep_stay_beside_their_own_multiplier(tmp_path, family, multiplier):
    """yosys would merge the two instances' equal input registers, and with them the multipliers; the flow keeps
    a flip-flop that drives a ``keep`` wire as its own cell. Without the marks the two become one (the check's
    other side)."""
    bench = _load_bench_synth()
    marked = verilog.convert(_TwoScales(), name="two", emit_src=False)
    assert "keep" in marked
    counts = {}
    for name, text in (("marked", marked), ("unmarked", marked.replace("(* keep = 32'd1 *)", ""))):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "two.v").write_text(text)
        cells, _ = bench.synthesize(folder / "two.v", "two", family, folder)
        counts[name] = cells.get(multiplier, 0)
    assert counts == {"marked": 2, "unmarked": 1}
