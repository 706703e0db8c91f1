import subprocess
import sys

import pytest

from core.pattern import PatternConfig
from hw.config import AcceleratorConfig, AttentionConfig, EngineConfig
from hw.gen import generate
from hw.pattern_select import select_interval
from sim.toolchain import LINT_WAIVERS, configure_verilator


@pytest.mark.parametrize("flags, message", [
    (["--kept-per-block", "17"], "kept_per_block=17 exceeds the 16 positions"),
    (["--pattern-id-bits", "4"], "pool_size=32 does not fit pattern_id_bits=4"),
    (["--max-in-features", "766"], "not a multiple of block_size"),
    (["--lanes", "0"], "lanes must be a positive integer"),
    (["--attention", "--lanes", "6"], "lanes=6 must be a multiple of block_size=4"),
    (["--attention", "--weight-bits", "8"], "need 9 signed bits"),
    (["--attention", "--max-head-dim", "30"], "max_head_dim=30 is not a multiple of block_size=4"),
    (["--max-seq", "64"], "--max-seq need --attention"),
])
def test_generator_refuses_invalid_config(flags, message, tmp_path):
    result = subprocess.run([sys.executable, "-m", "hw.gen", *flags, "--out", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2
    assert message in result.stderr
    assert not any(tmp_path.iterdir())  # nothing written


def test_generator_refuses_a_file_as_out_and_a_non_identifier_name(tmp_path):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    result = subprocess.run([sys.executable, "-m", "hw.gen", "--out", str(target)], capture_output=True, text=True)
    assert result.returncode == 2 and "is a file; give a folder" in result.stderr and "Traceback" not in result.stderr
    assert target.read_text() == "keep me"
    out = tmp_path / "rtl"
    result = subprocess.run([sys.executable, "-m", "hw.gen", "--out", str(out), "--name", "1abc"], capture_output=True, text=True)
    assert result.returncode == 2 and "'1abc' is not a plain Verilog identifier" in result.stderr
    assert not out.exists()


def test_attention_unit_verilog_and_config_round_trip(tmp_path):
    result = subprocess.run([sys.executable, "-m", "hw.gen", "--attention", "--max-seq", "32", "--out", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "module attention_unit" in (tmp_path / "attention_unit.v").read_text()
    config = AttentionConfig.from_json((tmp_path / "attention_unit.json").read_text())
    assert config.max_seq == 32 and config.engine.weight_bits == 9 and config.engine.max_in_features == 64
    with pytest.raises(ValueError, match="unknown attention config keys"):
        AttentionConfig.from_json('{"max_sequence": 3}')


def test_config_json_round_trip():
    config = EngineConfig(pattern=PatternConfig(pool_size=16), lanes=3)
    assert EngineConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown engine config keys"):
        EngineConfig.from_json('{"lane": 3}')
    legacy = {"block_size": 4, "kept_per_block": 8, "pool_size": 16, "lanes": 3}  # flat: before `pattern` held them
    assert EngineConfig.from_dict(legacy) == config
    with pytest.raises(ValueError, match="gives both 'pattern' and"):
        EngineConfig.from_dict({**legacy, "pattern": {"block_size": 4}})


def test_chunks_are_a_power_of_two_and_patterns_per_cycle_fit_the_pool():
    assert AcceleratorConfig(chunk_rows=8).chunk_rows == 8
    with pytest.raises(ValueError, match="chunk_rows=12 must be a power of two"):
        AcceleratorConfig(chunk_rows=12)
    small_pool = EngineConfig(pattern=PatternConfig(pool_size=8), weight_bits=9)
    for config in (AttentionConfig(), AttentionConfig(engine=small_pool)):
        # the default: the fewest masses a cycle that choose a block within its k reads
        k, pool, group = config.engine.pattern.block_size, config.engine.pattern.pool_size, config.patterns_per_cycle
        assert select_interval(pool, group) <= k < select_interval(pool, group - 1)
    with pytest.raises(ValueError, match="patterns_per_cycle=16 exceeds pool_size=8"):
        AttentionConfig(engine=small_pool, patterns_per_cycle=16)


@pytest.mark.parametrize("config", [EngineConfig(), EngineConfig(pattern=PatternConfig(block_size=2, kept_per_block=2, pool_size=4), lanes=3, max_in_features=32)],
                         ids=["default", "k2"])
def test_verilog_is_lint_clean_with_wall(config, tmp_path):
    verilog = generate(config, tmp_path)
    env = configure_verilator({"PATH": "/usr/bin:/bin"})
    result = subprocess.run(["verilator", "--lint-only", "-Wall", str(LINT_WAIVERS), str(verilog)],
                            capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stderr
    # The waivers matter: without them -Wall rejects the generated file.
    bare = subprocess.run(["verilator", "--lint-only", "-Wall", str(verilog)], capture_output=True, text=True, env=env)
    assert bare.returncode != 0


def test_accelerator_from_a_config_file_and_refusals(tmp_path):
    from hw.config import AcceleratorConfig
    from hw.gen import main

    config = tmp_path / "accelerator.json"
    config.write_text(AcceleratorConfig(scratch_bytes=4096, wide_words=1024).to_json())
    assert main(["--accelerator", "--config", str(config), "--out", str(tmp_path / "rtl")]) == 0
    text = (tmp_path / "rtl" / "accelerator.v").read_text()
    assert "module accelerator(" in text and "m_axi_araddr" in text and "s_axil_wdata" in text
    eight = AcceleratorConfig(engine={"pattern": {"block_size": 8, "kept_per_block": 32, "pool_size": 32}})
    config.write_text(eight.to_json())
    assert main(["--accelerator", "--config", str(config), "--out", str(tmp_path / "bad")]) == 2
    assert main(["--accelerator", "--lanes", "4", "--out", str(tmp_path / "bad")]) == 2
    assert not (tmp_path / "bad").exists()
