"""``describe`` reports what the engine finds, on a fused LSTM, a Loop model and a CNN."""
from pathlib import Path

import pytest

from ebr_onnx import Explainer
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.app.inspect import describe, format_report

KERAS = Path(__file__).parent / "fixtures" / "keras"


@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
def test_bundled_model_report():
    report = describe(Explainer(BUNDLED_MODEL))
    assert report["ops_without_rules"] == []
    (lstm,) = report["recurrences"]
    assert lstm["op_type"] == "LSTM" and lstm["direction"] == "forward" and lstm["time_axis"] == 0
    assert lstm["activations"][1:] == ["Relu", "Relu"]
    assert report["boundary"] == "features" and report["classifier"]
    assert any(m["tensor"] == "relu3" for m in report["map_layers"])
    text = format_report(report)
    assert "RNN→CNN boundary: features" in text and "every op on the signal path has EB and gradient rules" in text
    assert report["lowered_on_cpu"] == {"nodes": 10, "first": "conv1", "last": "flatten"}
    assert "run as one onnxruntime graph on the CPU: 10 nodes, conv1 … flatten" in text
    assert describe(Explainer(BUNDLED_MODEL, lowering=False))["lowered_on_cpu"] is None
    run = report["run"]
    assert run["input_shape"] == [16, 3, 64, 64] and run["logits_time_axis"] == 0 and run["steps"] == 16
    assert run["logits_sequence_axes"] == [1] and run["input_time_axis"] == 0
    assert report["declared_shapes_contradicted"] == [] and report["head"] == ["Softmax"]
    assert "traced: logits (16, 1, 8): time axis 0 (16 steps)" in text


def test_loop_model_reports_unrolled_loop_and_cells():
    report = describe(str(KERAS / "bigru_seq.onnx"))
    assert report["loops_unrolled"] and all(loop["op_type"] == "Loop" for loop in report["loops_unrolled"])
    kinds = [r["kind"] for r in report["recurrences"]]
    assert kinds and all(k == "unrolled GRU cells" for k in kinds)
    assert all(r["steps"] == 6 for r in report["recurrences"])
    assert report["ops_without_rules"] == []
    assert isinstance(report["classifier"], list) and len(report["classifier"]) == 6   # one Dense copy per step


def test_cnn_without_recurrence(tiny_cnn):
    report = describe(tiny_cnn)
    assert report["recurrences"] == [] and report["boundary"] is None
    assert "no recurrent part" in format_report(report)
    assert report["classifier"] == "fc"
    assert report["lowered_on_cpu"] == {"nodes": 3, "first": "conv", "last": "flat"}  # up to the MatMul
