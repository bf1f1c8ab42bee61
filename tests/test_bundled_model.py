"""The bundled action models ``models/action_lstm.onnx`` and ``models/action_lrcn.onnx`` (LRCN-style): structure,
metadata, accuracy on fresh clips, and their LSTM op checked against an independent NumPy ReLU-LSTM (ONNX gate order
i, o, f, c) built from the model's own weights."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from ebr_onnx.app.synthetic import CLASS_NAMES, make_clip, make_dataset

ort = pytest.importorskip("onnxruntime")

MODELS = Path(__file__).resolve().parents[1] / "models"
KEYS = ("labels", "input_size", "preprocess", "frames", "boundary", "classifier", "map_layer", "test_accuracy")


@pytest.fixture(scope="module", params=["action_lstm.onnx", "action_lrcn.onnx"])
def path(request) -> Path:
    return MODELS / request.param


@pytest.fixture(scope="module")
def model(path: Path) -> onnx.ModelProto:
    return onnx.load(path)


@pytest.fixture(scope="module")
def meta(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key.removeprefix("ebr_onnx."): p.value for p in model.metadata_props}


def _session(model: onnx.ModelProto, *extra_outputs: str) -> ort.InferenceSession:
    """A session that also returns ``extra_outputs`` (intermediate tensors) after ``probs``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra_outputs)
    return ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])


def _preprocess(frames: np.ndarray, spec: dict) -> np.ndarray:
    """uint8 (T, H, W, 3) RGB → (T, 3, H, W) float32 with ``(float32(x / 255) * scale - mean) / std``."""
    unit = (np.arange(256) / 255.0).astype(np.float32)[frames] * np.float32(spec["scale"])
    x = (unit - np.float32(spec["mean"])) / np.float32(spec["std"])
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)


def test_size_checker_and_structure(path: Path, model: onnx.ModelProto) -> None:
    assert path.stat().st_size <= 3 * 2**20
    onnx.checker.check_model(model, full_check=True)
    (frames,) = model.graph.input
    assert frames.name == "frames" and frames.type.tensor_type.shape.dim[0].dim_param
    assert [o.name for o in model.graph.output] == ["probs"]
    (lstm,) = [n for n in model.graph.node if n.op_type == "LSTM"]
    attrs = {a.name: helper.get_attribute_value(a) for a in lstm.attribute}
    assert attrs["activations"] == [b"Sigmoid", b"Relu", b"Relu"] and attrs.get("layout", 0) == 0
    assert [n.op_type for n in model.graph.node][-5:] == ["LSTM", "Squeeze", "MatMul", "Add", "Softmax"]


def test_metadata(path: Path, model: onnx.ModelProto, meta: dict[str, str]) -> None:
    assert all(key in meta for key in KEYS)
    assert json.loads(meta["labels"]) == CLASS_NAMES
    assert path.with_suffix(".labels.txt").read_text().split() == CLASS_NAMES
    assert json.loads(meta["input_size"]) == [64, 64] and json.loads(meta["frames"]) == 16
    tensors = {out for n in model.graph.node for out in n.output}
    assert meta["boundary"] in tensors and meta["map_layer"] in tensors
    classifier = [n for n in model.graph.node if n.name == meta["classifier"]]
    assert [n.op_type for n in classifier] == ["MatMul"]
    assert 0 < json.loads(meta["test_accuracy"]) <= 1


def test_accuracy_on_fresh_clips(model: onnx.ModelProto, meta: dict[str, str]) -> None:
    sess = _session(model)
    spec = json.loads(meta["preprocess"])
    frames, labels, _ = make_dataset(64, 2024)
    preds = [sess.run(["probs"], {"frames": _preprocess(clip, spec)})[0][-1, 0].argmax() for clip in frames]
    accuracy = float(np.mean(np.array(preds) == labels))
    assert accuracy >= json.loads(meta["test_accuracy"]) - 0.10


def test_lrcn_model_classifies_long_clips_at_every_step() -> None:
    """The LRCN-style model keeps its accuracy over 128 frames (``ebr_onnx.per_step_accuracy``, measured by its
    training script on 400 clips per length): here 24 fresh clips, at the last step and over steps 16–127."""
    model = onnx.load(MODELS / "action_lrcn.onnx")
    meta = {p.key.removeprefix("ebr_onnx."): p.value for p in model.metadata_props}
    stored = json.loads(meta["per_step_accuracy"])["128"]
    sess = _session(model)
    frames, labels, _ = make_dataset(24, 2025, frames=128)
    hits = np.array([sess.run(["probs"], {"frames": _preprocess(clip, json.loads(meta["preprocess"]))})[0][:, 0]
                     .argmax(1) == label for clip, label in zip(frames, labels)])
    assert hits[:, -1].mean() >= stored["last"] - 0.15
    assert hits[:, 16:].mean() >= stored["mean_from_16"] - 0.10


def _relu_lstm(x: np.ndarray, w: np.ndarray, r: np.ndarray, b: np.ndarray) -> np.ndarray:
    """ONNX LSTM forward, one direction, batch 1, zero state, activations (Sigmoid, Relu, Relu), float64.

    Gate blocks of W, R and each half of B are in ONNX order i, o, f, c; B = [Wb; Rb].
    """
    hidden = r.shape[1]
    h, c, out = np.zeros(hidden), np.zeros(hidden), []
    bias = b[: 4 * hidden] + b[4 * hidden :]
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    for xt in x:
        z = w @ xt + r @ h + bias
        i, o, f, g = np.split(z, 4)
        c = sigmoid(f) * c + sigmoid(i) * np.maximum(g, 0)
        h = sigmoid(o) * np.maximum(c, 0)
        out.append(h)
    return np.array(out)


@pytest.mark.parametrize("frames", [16, 24])
def test_lstm_matches_numpy_relu_lstm(model: onnx.ModelProto, meta: dict[str, str], frames: int) -> None:
    weights = {t.name: numpy_helper.to_array(t).astype(np.float64) for t in model.graph.initializer}
    (lstm,) = [n for n in model.graph.node if n.op_type == "LSTM"]
    (matmul,) = [n for n in model.graph.node if n.name == meta["classifier"]]
    (add,) = [n for n in model.graph.node if n.op_type == "Add" and matmul.output[0] in n.input]
    bias_name = next(name for name in add.input if name != matmul.output[0])

    clip = make_clip(77, frames=frames).frames
    probs, features = _session(model, meta["boundary"]).run(
        ["probs", meta["boundary"]], {"frames": _preprocess(clip, json.loads(meta["preprocess"]))}
    )
    assert features.shape == (frames, 64) and features.min() >= 0
    h = _relu_lstm(features.astype(np.float64), *(weights[name][0] for name in lstm.input[1:4]))
    logits = h @ weights[matmul.input[1]] + weights[bias_name]
    expected = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(probs[:, 0], expected, rtol=0, atol=1e-5)
