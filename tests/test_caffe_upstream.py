"""Upstream Caffe's LRCN activity-recognition deploy (``examples/LRCN_activity_recognition/deploy_lstm.prototxt``):
T·N frames through a CNN, a Reshape to (T, N, C), an LSTM with clip markers (T, N), fc8 at every step.

The tiny copy below keeps the upstream structure (legacy ``input_dim`` inputs, TEST-only Reshapes, a tanh LSTM) with
T = 4 steps of N = 3 interleaved streams: frame t·N + n is step t of stream n.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from caffe_nets import caffe_conv, caffe_lstm, caffe_pool, input_layer, layer, run, write_net

from converters.caffe import CaffeConversionError, convert_caffe
from ebr_onnx.app.cli import main as ebr_onnx_main

STEPS, STREAMS, FEATURES, HIDDEN, CLASSES = 4, 3, 16, 5, 7
GAUSSIAN = 'weight_filler { type: "gaussian" std: 0.3 } bias_filler { type: "constant" value: 0.1 }'


def lrcn_deploy(data: str = "shape { dim: 4 dim: 3 dim: 16 }", cm: str = "shape { dim: 4 dim: 3 }",
                flatten: str | None = None) -> str:
    """The upstream deploy's layers, small: conv1 → relu1 → pool1 → fc6 → relu6 → reshape → lstm1 → fc8 → probs.

    ``data`` and ``cm`` are the two Reshapes' ``reshape_param``; ``flatten`` adds a per-frame Reshape before fc6.
    """
    frames = STEPS * STREAMS
    header = (
        'name: "LRCN-tiny"\n'
        f'input: "data"\ninput_dim: {frames}\ninput_dim: 3\ninput_dim: 8\ninput_dim: 8\n'
        f'input: "clip_markers"\ninput_dim: {frames}\ninput_dim: 1\ninput_dim: 1\ninput_dim: 1\n'
    )
    return header + "".join([
        layer("conv1", "Convolution", ["data"],
              params=f"convolution_param {{ num_output: 4 kernel_size: 3 {GAUSSIAN} }}"),
        layer("relu1", "ReLU", ["conv1"], ["conv1"]),
        layer("pool1", "Pooling", ["conv1"], params="pooling_param { pool: MAX kernel_size: 2 stride: 2 }"),
        layer("flat", "Reshape", ["pool1"], params=f"reshape_param {{ shape {{ {flatten} }} }}") if flatten else "",
        layer("fc6", "InnerProduct", ["flat" if flatten else "pool1"],
              params=f"inner_product_param {{ num_output: {FEATURES} {GAUSSIAN} }}"),
        layer("relu6", "ReLU", ["fc6"], ["fc6"]),
        layer("reshape-data", "Reshape", ["fc6"], ["fc6-reshape"],
              params=f"reshape_param {{ {data} }}\n  include: {{ phase: TEST }}"),
        layer("reshape-cm", "Reshape", ["clip_markers"], ["reshape-cm"],
              params=f"reshape_param {{ {cm} }}\n  include: {{ phase: TEST }}"),
        layer("lstm1", "LSTM", ["fc6-reshape", "reshape-cm"],
              params=f'recurrent_param {{ num_output: {HIDDEN} weight_filler {{ type: "uniform" min: -0.5 max: 0.5 }} '
                     'bias_filler { type: "constant" value: 0 } }'),
        layer("fc8-final", "InnerProduct", ["lstm1"],
              params=f"inner_product_param {{ num_output: {CLASSES} axis: 2 {GAUSSIAN} }}"),
        layer("probs", "Softmax", ["fc8-final"], params="softmax_param { axis: 2 }"),
    ])


def shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    infos = [*model.graph.input, *model.graph.value_info, *model.graph.output]
    return {i.name: tuple(d.dim_value for d in i.type.tensor_type.shape.dim) for i in infos}


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def reference_stream(frames: np.ndarray, w: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """One stream in NumPy, as Caffe runs it: the CNN per frame, then upstream's tanh LSTM (cont 0, 1, 1, …), fc8."""
    conv = np.maximum(caffe_conv(frames, w["conv1/weight"], w["conv1/bias"], (1, 1), (0, 0), (1, 1), 1), 0)
    pooled = caffe_pool(conv, "MAX", (2, 2), (2, 2), (0, 0)).reshape(len(frames), -1)
    fc6 = np.maximum(pooled @ w["fc6/weight"].T + w["fc6/bias"], 0)
    cont = np.ones((len(frames), 1))
    cont[0] = 0
    h = caffe_lstm(fc6[:, None], cont, w["lstm1/W_xc_T"].T, w["lstm1/b_c"], w["lstm1/W_hc_T"].T, np.tanh)[:, 0]
    return h, h @ w["fc8-final/weight"].T + w["fc8-final/bias"]


RESHAPES = [
    ("shape { dim: 4 dim: 3 dim: 16 }", "shape { dim: 4 dim: 3 }", None),  # upstream's (16, 10, 4096), (16, 10)
    ("shape { dim: -1 dim: 3 dim: 16 }", "shape { dim: -1 dim: 3 }", None),  # T inferred
    ("shape { dim: 4 dim: -1 dim: 16 }", "shape { dim: 4 dim: -1 }", "dim: 0 dim: -1"),  # N inferred; 0 copies T·N
    ("shape { dim: 4 dim: 3 dim: -1 }", "shape { dim: 4 dim: 3 }", "dim: 12 dim: -1"),  # C inferred; T·N written
    ("shape { dim: 4 dim: 3 } num_axes: 1", "shape { dim: 4 dim: 3 }", None),  # only axis 0 split
]


@pytest.mark.parametrize(("data", "cm", "flatten"), RESHAPES)
@pytest.mark.parametrize("frames", [None, 1, 2, 6])
def test_frames_rewrites_input_and_time_reshape(tmp_path, data, cm, flatten, frames):
    """--frames T keeps N: the inputs take T·N frames, the reshapes give (T, N, C) and (T, N)."""
    proto, _ = write_net(tmp_path, lrcn_deploy(data, cm, flatten))
    model = convert_caffe(proto, random_weights=0, frames=frames, lstm_activation="tanh")
    onnx.checker.check_model(model, full_check=True)
    steps = STEPS if frames is None else frames
    got = shapes(model)
    assert got["data"] == (steps * STREAMS, 3, 8, 8) and got["clip_markers"] == (steps * STREAMS, 1, 1, 1)
    assert got["fc6-reshape"] == (steps, STREAMS, FEATURES) and got["reshape-cm"] == (steps, STREAMS)
    assert got["lstm1"] == (steps, STREAMS, HIDDEN) and got["probs"] == (steps, STREAMS, CLASSES)
    meta = metadata(model)
    assert meta["ebr_onnx.frames"] == str(steps * STREAMS) and meta["ebr_onnx.streams"] == str(STREAMS)
    markers = np.asarray(json.loads(meta["ebr_onnx.input_defaults"])["clip_markers"])
    assert markers.shape == (steps * STREAMS, 1, 1, 1)
    np.testing.assert_array_equal(markers.reshape(steps, STREAMS), np.r_[np.zeros((1, STREAMS)),
                                                                          np.ones((steps - 1, STREAMS))])


@pytest.mark.parametrize("frames", [2, 5])
def test_each_stream_matches_caffe_lstm_on_its_own_frames(tmp_path, frames):
    """ONNX Runtime on the converted net vs NumPy on each stream alone: frame t·N + n belongs to stream n only."""
    proto, _ = write_net(tmp_path, lrcn_deploy())
    model = convert_caffe(proto, random_weights=3, frames=frames, lstm_activation="tanh")
    w = {t.name: onnx.numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    data = np.random.default_rng(frames).standard_normal((frames * STREAMS, 3, 8, 8)).astype(np.float32)
    markers = np.asarray(json.loads(metadata(model)["ebr_onnx.input_defaults"])["clip_markers"], np.float32)
    got = run(model, {"data": data, "clip_markers": markers}, ["lstm1", "fc8-final"])
    for n in range(STREAMS):
        h, scores = reference_stream(data[n::STREAMS].astype(np.float64), w)
        assert np.abs(h).max() > 0.05  # the check is not vacuous
        np.testing.assert_allclose(got["lstm1"][:, n], h, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got["fc8-final"][:, n], scores, rtol=1e-4, atol=1e-5)
    # changing one stream's frames changes nothing in the others
    changed = data.copy()
    changed[1::STREAMS] = 0
    again = run(model, {"data": changed, "clip_markers": markers}, ["lstm1"])["lstm1"]
    np.testing.assert_array_equal(again[:, [0, 2]], got["lstm1"][:, [0, 2]])
    assert not np.allclose(again[:, 1], got["lstm1"][:, 1])


def test_cli_frames_on_the_upstream_deploy(tmp_path):
    proto, _ = write_net(tmp_path, lrcn_deploy())
    out = tmp_path / "lrcn.onnx"
    args = [str(proto), "-o", str(out), "--random-weights", "0", "--frames", "2", "--lstm-activation", "tanh"]
    assert ebr_onnx_main(["convert", "caffe", *args]) == 0
    got = shapes(onnx.load(out))
    assert got["data"] == (6, 3, 8, 8) and got["fc6-reshape"] == (2, 3, FEATURES) and got["probs"] == (2, 3, CLASSES)


def test_frames_need_the_frame_count_to_be_a_multiple_of_the_steps(tmp_path):
    """An LSTM over its own input (5 steps) next to a first input of 12 frames: --frames cannot split 12 into T·N."""
    text = (
        input_layer("data", (12, 4))
        + input_layer("x", (5, 2, 4))
        + input_layer("cont", (5, 2))
        + layer("lstm1", "LSTM", ["x", "cont"], params="recurrent_param { num_output: 3 }")
    )
    proto, _ = write_net(tmp_path, text)
    assert metadata(convert_caffe(proto, random_weights=0)).get("ebr_onnx.streams") is None
    with pytest.raises(CaffeConversionError, match="the LSTM runs 5 steps but the first input has 12 frames"):
        convert_caffe(proto, random_weights=0, frames=2)


def test_single_stream_release_layout_is_unchanged(tmp_path):
    """The release's layout (T frames, Reshape to (T, 1, C) and (T, 1)) is N = 1: --frames T gives T frames."""
    text = (
        layer("data", "DummyData", params="dummy_data_param { shape { dim: 6 dim: 5 } }")
        + layer("clip_markers", "DummyData", params="dummy_data_param { shape { dim: 6 dim: 1 dim: 1 dim: 1 } }")
        + layer("reshape-data", "Reshape", ["data"], ["x"], params="reshape_param { shape { dim: 6 dim: 1 dim: 5 } }")
        + layer("reshape-cm", "Reshape", ["clip_markers"], ["cm"], params="reshape_param { shape { dim: 6 dim: 1 } }")
        + layer("lstm1", "LSTM", ["x", "cm"], params="recurrent_param { num_output: 3 }")
    )
    model = convert_caffe(write_net(tmp_path, text)[0], random_weights=0, frames=3)
    got = shapes(model)
    assert got["data"] == (3, 5) and got["x"] == (3, 1, 5) and got["lstm1"] == (3, 1, 3)
    assert metadata(model)["ebr_onnx.streams"] == "1"
    assert json.loads(metadata(model)["ebr_onnx.input_defaults"])["clip_markers"] == [[[[0.0]]], [[[1.0]]], [[[1.0]]]]
