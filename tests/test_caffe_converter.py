"""The Caffe converter as a whole: the release's nets, the golden forward, names, metadata, errors and the CLI."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from caffe_nets import SHARED, caffemodel_bytes, input_layer, layer, run, write_net

from converters.caffe import CaffeConversionError, convert_caffe
from ebr_onnx.app.cli import main as ebr_onnx_main

RELEASE = SHARED / "caffe-release"
GOLDEN = SHARED / "golden" / "vgg16_lstm_small_a"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"the shared ground truth {SHARED} is not present")


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def nodes_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {node.name: node for node in model.graph.node}


# --- the release's nets and the golden outputs ------------------------------------------------------------------------


@needs_shared
def test_golden_forward_matches_caffe():
    """The authors' Caffe outputs on the reduced VGG16_LSTM (conv5_1 is after the in-place relu5_1)."""
    model = convert_caffe(GOLDEN / "deploy.prototxt", GOLDEN / "weights.caffemodel")
    inputs, golden = np.load(GOLDEN / "inputs.npz"), np.load(GOLDEN / "golden.npz")
    got = run(model, {"data": inputs["data"], "clip_markers": inputs["clip_markers"]}, ["fc8-final", "fc7", "conv5_1"])
    for ours, theirs in [("probs", "probs"), ("fc8-final", "fc8"), ("fc7", "fc7"), ("conv5_1", "conv5_1")]:
        want = golden[theirs]
        assert got[ours].shape == want.shape, ours
        assert np.abs(got[ours] - want).max() <= 1e-4 * np.abs(want).max(), ours


@needs_shared
def test_golden_structure_and_metadata():
    model = convert_caffe(GOLDEN / "deploy.prototxt", GOLDEN / "weights.caffemodel")
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["data", "clip_markers"]
    assert [o.name for o in model.graph.output] == ["probs"]
    meta = metadata(model)
    assert meta["ebr_onnx.source"] == "caffe"
    assert meta["ebr_onnx.lstm_activation"] == "relu"
    assert meta["ebr_onnx.frames"] == "8"
    defaults = json.loads(meta["ebr_onnx.input_defaults"])
    np.testing.assert_array_equal(np.asarray(defaults["clip_markers"]), np.load(GOLDEN / "inputs.npz")["clip_markers"])
    # every blob is addressable; earlier in-place versions carry /pre_<next writer>
    tensors = {out for node in model.graph.node for out in node.output}
    assert {"conv5_1", "conv5_1/pre_relu5_1", "fc6/pre_relu6", "fc6/pre_drop6", "fc6", "fc7", "fc7-reshape",
            "reshape-cm", "lstm1", "lstm1-drop", "fc8-final", "probs"} <= tensors
    named = nodes_by_name(model)
    assert named["relu5_1"].input == ["conv5_1/pre_relu5_1"] and named["relu5_1"].output == ["conv5_1"]
    assert named["conv5_2"].input[0] == "conv5_1"
    assert named["fc8-final"].op_type == "Gemm" and named["probs"].op_type == "Softmax"


@needs_shared
def test_lstm_is_unrolled_in_the_release_structure():
    model = convert_caffe(GOLDEN / "deploy.prototxt", random_weights=0, frames=3)
    named = nodes_by_name(model)
    inits = {t.name: t for t in model.graph.initializer}
    xt = named["lstm1/x_transform"]
    assert xt.op_type == "Add" and xt.output == ["lstm1/x_transform"]
    matmul = named[xt.input[0]]
    assert matmul.op_type == "MatMul" and matmul.input == ["fc7-reshape", "lstm1/W_xc_T"]
    assert xt.input[1] == "lstm1/b_c" and list(inits["lstm1/W_xc_T"].dims) == [64, 64]
    for t in range(3):
        gather = named[f"lstm1/W_xc_x_{t}"]
        assert gather.op_type == "Gather" and gather.input[0] == "lstm1/x_transform"
        assert onnx.numpy_helper.to_array(inits[gather.input[1]]).item() == t
        cont = named[f"lstm1/cont_{t}"]
        assert cont.op_type == "Unsqueeze" and named[cont.input[0]].input[0] == "reshape-cm"
        assert named[f"lstm1/h_conted_{t - 1}"].input == [f"lstm1/h_{t - 1}", f"lstm1/cont_{t}"]
        assert named[f"lstm1/W_hc_h_{t - 1}"].input == [f"lstm1/h_conted_{t - 1}", "lstm1/W_hc_T"]
        assert named[f"lstm1/gate_input_{t}"].input == [f"lstm1/W_hc_h_{t - 1}", f"lstm1/W_xc_x_{t}"]
        assert named[f"lstm1/gates_{t}"].output == [f"lstm1/a_{g}_{t}" for g in "ifog"]
        assert [named[f"lstm1/{g}_{t}"].op_type for g in "ifog"] == ["Sigmoid"] * 3 + ["Relu"]
        assert named[f"lstm1/c_{t}"].op_type == "Add" and named[f"lstm1/h_{t}"].op_type == "Mul"
    for state in ("h_-1", "c_-1"):
        assert not onnx.numpy_helper.to_array(inits[f"lstm1/{state}"]).any()
    assert named["lstm1"].op_type == "Concat" and named["lstm1"].output == ["lstm1"]


@needs_shared
def test_frames_override_and_tanh():
    model = convert_caffe(GOLDEN / "deploy.prototxt", random_weights=1, frames=4, lstm_activation="tanh")
    shapes = {i.name: [d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert shapes == {"data": [4, 3, 64, 64], "clip_markers": [4, 1, 1, 1]}
    assert metadata(model)["ebr_onnx.frames"] == "4"
    assert metadata(model)["ebr_onnx.lstm_activation"] == "tanh"
    assert nodes_by_name(model)["lstm1/g_3"].op_type == "Tanh"
    out = run(model, {"data": np.zeros((4, 3, 64, 64)), "clip_markers": np.ones((4, 1, 1, 1))})
    assert out["probs"].shape == (4, 1, 10)


@needs_shared
def test_random_weights_are_seeded_and_follow_fillers():
    first = convert_caffe(GOLDEN / "deploy.prototxt", random_weights=7)
    again = convert_caffe(GOLDEN / "deploy.prototxt", random_weights=7)
    arrays = {t.name: onnx.numpy_helper.to_array(t) for t in first.graph.initializer}
    for tensor in again.graph.initializer:
        np.testing.assert_array_equal(onnx.numpy_helper.to_array(tensor), arrays[tensor.name])
    np.testing.assert_array_equal(arrays["conv1_1/bias"], np.full(8, 0.1, np.float32))  # constant 0.1
    assert np.abs(arrays["lstm1/W_hc_T"]).max() <= 0.01  # uniform ±0.01
    assert 0.005 < arrays["conv3_1/weight"].std() < 0.015  # gaussian std 0.01


@needs_shared
def test_googlenet_coco_converts_and_runs():
    model = convert_caffe(RELEASE / "GoogleNet_COCO" / "deploy.prototxt", random_weights=0, frames=16)
    onnx.checker.check_model(model, full_check=True)
    ops = {node.op_type for node in model.graph.node}
    assert {"Conv", "LRN", "MaxPool", "AveragePool", "Concat", "Sigmoid"} <= ops
    out = run(model, {"data": np.random.default_rng(0).random((16, 3, 224, 224))})
    assert list(out) == ["prob"] and out["prob"].shape == (16, 80, 1, 1)


@needs_shared
@pytest.mark.slow  # ~10 s and 2.3 GB peak here: 138 M random weights, a 555 MB model, 16 VGG-16 frames
def test_vgg16_lstm_release_converts_and_runs_16_frames():
    model = convert_caffe(RELEASE / "VGG16_LSTM" / "deploy.prototxt", random_weights=0, frames=16)
    serialized = model.SerializeToString()
    onnx.checker.check_model(serialized, full_check=True)
    session = ort.InferenceSession(serialized, providers=["CPUExecutionProvider"])
    del serialized
    defaults = json.loads(metadata(model)["ebr_onnx.input_defaults"])
    feeds = {"data": np.zeros((16, 3, 224, 224), np.float32),
             "clip_markers": np.asarray(defaults["clip_markers"], np.float32)}
    (probs,) = session.run(None, feeds)
    assert probs.shape == (16, 1, 101)
    np.testing.assert_allclose(probs.sum(axis=2), 1, rtol=1e-5)
    del session
    # With the engine: cEB-R from fc8-final to conv5_1 (the release's notebook flow) gives one 14×14 map per frame.
    from ebr_onnx import Explainer

    labels = (RELEASE / "VGG16_LSTM" / "catName.txt").read_text().split()
    clip = np.random.default_rng(1).normal(0, 60, (16, 3, 224, 224)).astype(np.float32)
    res = Explainer(model, labels=labels).explain(clip, target="HorseRiding", method="cebr", layer="conv5_1")
    assert res.maps.shape == (16, 14, 14) and res.temporal.shape == (16,)
    assert np.isfinite(res.maps).all()
    assert res.info.boundary in ("fc7", "fc7/pre_drop7")  # the same values: drop7 is the identity
    np.testing.assert_allclose(res.info.boundary_signal.sum(), 0.0, atol=1e-5)


# --- inputs, phases, names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    ['input: "data"\ninput_dim: 2\ninput_dim: 3\ninput_dim: 4\ninput_dim: 4\n',
     'input: "data"\ninput_shape { dim: 2 dim: 3 dim: 4 dim: 4 }\n',
     input_layer("data", (2, 3, 4, 4)),
     layer("data", "DummyData", params="dummy_data_param { num: 2 channels: 3 height: 4 width: 4 }")],
)
def test_input_forms(tmp_path, header):
    proto, _ = write_net(tmp_path, header + layer("relu", "ReLU", ["data"]))
    model = convert_caffe(proto)
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [2, 3, 4, 4]
    assert model.graph.input[0].name == "data" and model.graph.output[0].name == "relu"


def test_train_only_layers_and_losses_are_dropped(tmp_path):
    text = (
        input_layer("data", (2, 3))
        + layer("drop", "Dropout", ["data"], params="include { phase: TRAIN }")
        + layer("test_only", "ReLU", ["data"], ["r"], params="include { phase: TEST }")
        + layer("no_test", "TanH", ["data"], ["t"], params="exclude { phase: TEST }")
        + layer("loss", "EuclideanLoss", ["r", "r"])
        + layer("acc", "Accuracy", ["r", "data"])
    )
    model = convert_caffe(write_net(tmp_path, text)[0])
    assert [node.name for node in model.graph.node] == ["test_only"]
    assert [o.name for o in model.graph.output] == ["r"]


def test_in_place_chain_names(tmp_path):
    text = (
        input_layer("data", (2, 3))
        + layer("fc", "InnerProduct", ["data"], params="inner_product_param { num_output: 4 }")
        + layer("relu", "ReLU", ["fc"], ["fc"])
        + layer("drop", "Dropout", ["fc"], ["fc"])
    )
    w, b = np.ones((4, 3), np.float32), -np.arange(4, dtype=np.float32)
    proto, weights = write_net(tmp_path, text, {"fc": [w, b]})
    model = convert_caffe(proto, weights)
    assert [(n.name, list(n.input[:1]), list(n.output)) for n in model.graph.node] == [
        ("fc", ["data"], ["fc/pre_relu"]), ("relu", ["fc/pre_relu"], ["fc/pre_drop"]), ("drop", ["fc/pre_drop"], ["fc"])
    ]
    x = np.ones((2, 3), np.float32)
    got = run(model, {"data": x}, ["fc/pre_relu"])
    np.testing.assert_allclose(got["fc/pre_relu"], x @ w.T + b)
    np.testing.assert_allclose(got["fc"], np.maximum(x @ w.T + b, 0))


# --- bad input --------------------------------------------------------------------------------------------------------


def test_parse_error_names_file_and_line(tmp_path):
    proto, _ = write_net(tmp_path, input_layer("data", (1, 2)) + 'layer {\n  name: "x"\n  type: \n}\n')
    with pytest.raises(CaffeConversionError, match=rf"{proto}:\d+:\d+: prototxt does not parse"):
        convert_caffe(proto)


def test_unknown_fields_are_skipped_but_unknown_layer_types_are_errors(tmp_path):
    text = 'force_backward: true\nfancy_field { x: 1 }\n' + input_layer("data", (1, 2)) + layer(
        "warp", "Warp", ["data"], params="relu_param { negative_slope: 0 engine: CAFFE }"
    )
    proto, _ = write_net(tmp_path, text)
    with pytest.raises(CaffeConversionError, match="layer 'warp' has unsupported type 'Warp'; supported types: .*LSTM"):
        convert_caffe(proto)


def test_v1_layers_are_rejected(tmp_path):
    proto, _ = write_net(tmp_path, 'layers { name: "conv" type: CONVOLUTION bottom: "data" top: "conv" }\n')
    with pytest.raises(CaffeConversionError, match="deprecated V1 'layers' format"):
        convert_caffe(proto)


IP_NET = input_layer("data", (2, 3)) + layer(
    "fc", "InnerProduct", ["data"], params="inner_product_param { num_output: 4 }"
)


@pytest.mark.parametrize(
    ("blobs", "message"),
    [
        ({"fc": [np.zeros((4, 5)), np.zeros(4)]},
         r"layer 'fc' \(InnerProduct\) weight blob 0 has shape \(4, 5\).*needs \(4, 3\)"),
        ({"fc": [np.zeros((4, 3))]},
         r"layer 'fc' \(InnerProduct\) needs 2 weight blobs.* has 1: weight blob 1 is missing"),
        ({"other": [np.zeros(1)]}, r"layer 'fc' \(InnerProduct\) needs 2 weight blobs.* has 0"),
    ],
)
def test_weight_errors(tmp_path, blobs, message):
    proto, weights = write_net(tmp_path, IP_NET, blobs)
    with pytest.raises(CaffeConversionError, match=message):
        convert_caffe(proto, weights)


def test_legacy_4d_blobs_are_accepted(tmp_path):
    """Old caffemodels store num/channels/height/width instead of shape; an IP weight (4, 3) is (1, 1, 4, 3)."""
    proto, weights = write_net(tmp_path, IP_NET, {"fc": [np.ones((4, 3)), np.ones(4)]})
    from converters.caffe.schema import NetParameter

    net = NetParameter.FromString(weights.read_bytes())
    for blob, dims in zip(net.layer[0].blobs, [(1, 1, 4, 3), (1, 1, 1, 4)]):
        blob.ClearField("shape")
        blob.num, blob.channels, blob.height, blob.width = dims
    weights.write_bytes(net.SerializeToString())
    out = run(convert_caffe(proto, weights), {"data": np.ones((2, 3))})
    np.testing.assert_allclose(out["fc"], np.full((2, 4), 4.0))


def test_reading_an_unproduced_blob_is_an_error(tmp_path):
    text = input_layer("data", (2, 3)) + layer("loss", "EuclideanLoss", ["data", "data"]) + layer("r", "ReLU", ["loss"])
    with pytest.raises(CaffeConversionError, match="layer 'r' reads blob 'loss', which no earlier layer produces"):
        convert_caffe(write_net(tmp_path, text)[0])


def test_weights_are_required_for_parameter_layers(tmp_path):
    with pytest.raises(CaffeConversionError, match="pass a caffemodel or random_weights"):
        convert_caffe(write_net(tmp_path, IP_NET)[0])


# --- CLI --------------------------------------------------------------------------------------------------------------


def convert(args: list[str]) -> int:
    """``ebr-onnx convert caffe ARGS``, as the command runs it."""
    return ebr_onnx_main(["convert", "caffe", *args])


def test_cli_writes_the_model(tmp_path):
    proto, weights = write_net(tmp_path, IP_NET, {"fc": [np.ones((4, 3)), np.zeros(4)]})
    out = tmp_path / "model.onnx"
    assert convert([str(proto), str(weights), "-o", str(out)]) == 0
    model = onnx.load(out)
    assert [n.name for n in model.graph.node] == ["fc"]
    assert convert([str(proto), "-o", str(out), "--random-weights", "3", "--lstm-activation", "tanh"]) == 0
    assert metadata(onnx.load(out))["ebr_onnx.lstm_activation"] == "tanh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "net.caffemodel", "net.prototxt"]


@pytest.mark.parametrize(
    ("text", "blobs", "expected"),
    [
        (IP_NET + "layer {\n", None, "prototxt does not parse"),
        (input_layer("data", (1, 2)) + layer("w", "Warp", ["data"]), None, "unsupported type 'Warp'"),
        (IP_NET, {"fc": [np.zeros((4, 5)), np.zeros(4)]}, "weight blob 0 has shape (4, 5)"),
        (IP_NET, {"fc": [np.zeros((4, 3))]}, "weight blob 1 is missing"),
        (input_layer("data", (1, 2)) + layer("am", "ArgMax", ["data"]) + layer("r", "ReLU", ["am"]), None,
         "layer 'am' (ArgMax): only supported at the output (where it is dropped), but layer 'r' (ReLU) reads"),
        (input_layer("data", (1, 2, 3, 3)) + layer("up", "Deconvolution", ["data"], params="convolution_param "
                                                   "{ num_output: 2 kernel_size: 2 group: 2 bias_term: false }"),
         {"up": [np.zeros((2, 2, 2, 2))]}, "layer 'up' (Deconvolution) weight blob 0 has shape (2, 2, 2, 2)"),
    ],
)
def test_cli_reports_errors_on_one_line_and_writes_nothing(tmp_path, capsys, text, blobs, expected):
    proto, weights = write_net(tmp_path, text, blobs)
    out = tmp_path / "model.onnx"
    assert convert([str(proto), *([str(weights)] if weights else []), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebr-onnx: error: ") and err.count("\n") == 1 and expected in err
    assert not out.exists() and not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_cli_prints_conversion_notes_as_warnings(tmp_path, capsys):
    text = (IP_NET + layer("prob", "Softmax", ["fc"]) + layer("argmax", "ArgMax", ["prob"])
            + layer("bn", "BatchNorm", ["data"], params="batch_norm_param { use_global_stats: false }"))
    proto, _ = write_net(tmp_path, text)
    out = tmp_path / "model.onnx"
    assert convert([str(proto), "-o", str(out), "--random-weights", "0"]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("ebr-onnx: warning: layer '") for line in lines)
    assert "'argmax' (ArgMax): dropped" in lines[0] and "'bn' (BatchNorm): use_global_stats: false" in lines[1]
    model = onnx.load(out)
    assert sorted(o.name for o in model.graph.output) == ["bn", "prob"]
    assert len(json.loads(metadata(model)["ebr_onnx.conversion_notes"])) == 2


def test_cli_missing_file(tmp_path, capsys):
    assert convert([str(tmp_path / "absent.prototxt"), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ebr-onnx: error: ") and "cannot read" in err and err.count("\n") == 1


def test_caffemodel_helper_round_trips():
    from converters.caffe.schema import NetParameter

    net = NetParameter.FromString(caffemodel_bytes({"a": [np.arange(6.0).reshape(2, 3)]}))
    assert list(net.layer[0].blobs[0].shape.dim) == [2, 3] and list(net.layer[0].blobs[0].data) == list(range(6))
