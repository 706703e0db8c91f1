"""``python -m flow``, the whole flow in one command, on the tiny BERT: training config in; artifact,
evaluation, Verilog, memory image and a bit-exact RTL run of real MRPC sentences out, with the report
``make demo`` writes. Bad inputs are refused with what is wrong."""

import json

import pytest

from core.artifact import load_artifact
from firmware_gen.compiler import TRACE_TENSORS
from flow.run import main
from tests.sw.tiny_run import GLUE, tiny_config

REPORT_KEYS = {"bit_exact", "layers", "seq_len", "cycles", "mac_utilization", "float_metric", "int_metric", "label_agreement",
               "sparsity"}


def test_the_flow_from_a_checkpoint_to_a_bit_exact_rtl_run(checkpoint, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps(tiny_config(checkpoint, "replaced by the flow").to_dict()))
    out = tmp_path / "flow"
    assert main(["--config", str(config), "--out", str(out), "--sentences", "2"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(report)
    artifact = load_artifact(out / "train" / "artifact")
    assert report["layers"] == len(artifact.manifest["integer"]["layers"])
    assert report["bit_exact"] and len(report["runs"]) == 2
    for run in report["runs"]:
        assert run["bit_exact"] and not any(run["mismatches"].values()) and run["label"] == run["golden_label"]
        assert run["valid_tokens"] <= report["seq_len"] and run["cycles"] > 0
    # every boundary tensor of every layer was compared
    assert len(report["runs"][0]["mismatches"]) == len(TRACE_TENSORS) * report["layers"] + 2 + 1
    evaluation = json.loads((out / "evaluation.json").read_text())
    assert (report["float_metric"], report["int_metric"]) == (evaluation["float_metric"], evaluation["int_metric"])
    pattern = artifact.layers[next(iter(artifact.layers))]["pattern"]
    assert report["sparsity"]["pruned_share"] == pytest.approx(1 - pattern["kept_per_block"] / pattern["block_size"] ** 2)
    assert report["lint_clean"] and (out / "rtl" / "accelerator.v").is_file()
    assert json.loads((out / "image" / "manifest.json").read_text())["seq_len"] == report["seq_len"]


def test_bad_inputs_are_refused_with_what_is_wrong(result, tmp_path):
    with pytest.raises(SystemExit, match="--artifact: .*nowhere"):
        main(["--artifact", str(tmp_path / "nowhere"), "--data-dir", str(GLUE), "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match="--seq-len 2: the first 1 dev sentences need .* tokens \\(short by"):
        main(["--artifact", str(result.artifact), "--data-dir", str(GLUE), "--task", "mrpc", "--seq-len", "2", "--sentences", "1",
              "--out", str(tmp_path / "b")])
    with pytest.raises(SystemExit, match="--sentences 0"):
        main(["--artifact", str(result.artifact), "--data-dir", str(GLUE), "--out", str(tmp_path / "c"), "--sentences", "0"])
    with pytest.raises(SystemExit, match="no model"):
        main(["--out", str(tmp_path / "d")])
