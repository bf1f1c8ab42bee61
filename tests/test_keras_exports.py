"""Keras models exported by tf2onnx (``tests/fixtures/keras``, made by ``tools/make_keras_fixtures.py``) and a
hand-built ``Scan`` RNN: the forward matches Keras, gradients match TensorFlow's ``GradientTape`` (or finite
differences), and the recurrent methods run on them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx import Explainer
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.core.targets import dual_nodes
from ebr_onnx.passes.unroll import has_loops, unroll_loops
from ebr_onnx.recurrent.frames import frame_layout

ort = pytest.importorskip("onnxruntime")
KERAS = Path(__file__).parent / "fixtures" / "keras"
FIXTURES = sorted(KERAS.glob("*.onnx"))
TARGET = 1  # the class whose last-step logit the fixtures' gradients differentiate


def load(path: Path) -> tuple[Explainer, dict[str, np.ndarray]]:
    return Explainer(path), dict(np.load(path.with_suffix(".npz")))


def last_step_logits(graph: ModelGraph) -> str:
    """The last step's logits: tf2onnx's TimeDistributed(Dense) computes each step apart and stacks them with
    Unsqueeze + Concat; a classifier on the last step only is the model output itself."""
    tensor = graph.outputs[0]
    node = graph.producer[tensor]
    while node.op_type in ("Transpose", "Identity"):
        node = graph.producer[node.inputs[0]]
    return graph.producer[node.inputs[-1]].inputs[0] if node.op_type == "Concat" else tensor


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_onnxruntime_reproduces_keras(path):
    data = np.load(path.with_suffix(".npz"))
    model = onnx.load(str(path))
    for m in [model] + ([unroll_loops(model)] if has_loops(model) else []):
        out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"clip": data["clip"]})[0]
        np.testing.assert_allclose(out, data["output"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_gradient_at_the_input_matches_tensorflow(path):
    ex, data = load(path)
    res = ex.explain(data["clip"], target=TARGET, method="grad", output=last_step_logits(ex.graph))
    np.testing.assert_allclose(res.output, data["output"][:, -1] if data["output"].ndim == 3 else data["output"],
                               atol=1e-5)
    np.testing.assert_allclose(res.signal, data["grad_input"], atol=1e-4 * np.abs(data["grad_input"]).max(), rtol=0)


@pytest.mark.parametrize("path", [KERAS / "lstm_last.onnx", KERAS / "bigru_seq.onnx"], ids=lambda p: p.stem)
def test_gradient_at_each_conv_copy_matches_tensorflow(path):
    ex, data = load(path)
    relu = next(n for n in ex.graph.nodes if n.op_type == "Relu").outputs[0]
    layout = frame_layout(ex.graph, "clip", relu)
    logits = last_step_logits(ex.graph)
    for t, copy in enumerate(layout.tensors):
        res = ex.explain(data["clip"], target=TARGET, method="grad", layer=copy, output=logits)
        expected = np.moveaxis(data["grad_conv"][:, t], -1, layout.channel_axis)
        np.testing.assert_allclose(res.signal, expected, atol=1e-4 * np.abs(data["grad_conv"]).max(), rtol=0)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_recurrent_methods(path):
    """No hints: the time axis is traced through the per-step classifier copies (Unsqueeze + Concat), the boundary
    is the per-frame features restacked for the recurrence, cebr negates every classifier copy, and the maps of the
    channels-last clip sum its channel axis."""
    ex, data = load(path)
    steps = data["clip"].shape[1]
    gradr = ex.explain(data["clip"], target=TARGET, method="gradr", time_step=-1)
    scale = np.abs(data["grad_input"]).max()
    np.testing.assert_allclose(gradr.signal, data["grad_input"], atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(gradr.maps, data["grad_input"][0].sum(axis=-1), atol=1e-4 * scale, rtol=0)
    assert gradr.info.time_axis == (1 if data["output"].ndim == 3 else None)
    per_step = len(dual_nodes(ex.graph, ex.engine.signal, ex.logits_tensor(), None))
    assert per_step == (steps if data["output"].ndim == 3 else 1)
    for method, total in (("ebr", 1.0), ("cebr", 0.0)):
        res = ex.explain(data["clip"], target=TARGET, method=method, time_step=-1)
        assert res.maps.shape == data["clip"].shape[1:4] and res.temporal.shape == (steps,)
        assert np.isfinite(res.maps).all()
        assert res.info.boundary_signal.sum() == pytest.approx(total, abs=1e-5)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_recurrent_methods_at_any_copy_of_a_layer(path):
    """A layer named by one of its per-frame copies (the first, whose name is the base name, or any other) maps
    all copies, stacked in time order: gradr there is TensorFlow's gradient at each frame's conv output."""
    ex, data = load(path)
    steps = data["clip"].shape[1]
    relus = [n for n in ex.graph.nodes if n.op_type == "Relu"]
    want = np.moveaxis(data["grad_conv"][0], -1, 1)[:, None]  # (T, 1, C, h, w): each copy is NCHW
    scale = np.abs(want).max()
    for layer in (relus[0].name, relus[3].outputs[0]):
        res = ex.explain(data["clip"], target=TARGET, method="gradr", layer=layer)
        assert len(res.info.layer_tensors) == steps
        np.testing.assert_allclose(res.signal, want, atol=1e-4 * scale, rtol=0)
        np.testing.assert_allclose(res.maps, data["grad_conv"][0].sum(axis=-1), atol=1e-4 * scale, rtol=0)
    ebr = ex.explain(data["clip"], target=TARGET, method="ebr", layer=relus[0].name)
    assert ebr.maps.shape == (steps, 16, 16) and np.isfinite(ebr.maps).all()


def test_copies_run_whole_with_small_batches():
    """Per-frame copies read fixed frames, so the CNN part runs on the whole clip whatever ``batch_size``."""
    path = KERAS / "lstm_seq.onnx"
    data = np.load(path.with_suffix(".npz"))
    relu = next(n for n in ModelGraph(str(path)).nodes if n.op_type == "Relu").name
    for layer in (None, relu):
        small, large = (Explainer(path, batch_size=b).explain(data["clip"], target=TARGET, method="cebr", layer=layer)
                        for b in (2, 16))
        np.testing.assert_allclose(small.maps, large.maps, rtol=1e-5, atol=1e-7)


# -- a Scan RNN over per-frame features, written by hand ------------------------------------------------------------
T, D, H, K = 6, 5, 4, 3


def scan_classifier() -> onnx.ModelProto:
    """Per-frame features f (T, 1, D) → a tanh RNN written as ``Scan`` → a linear classifier at every step."""
    rng = np.random.default_rng(0)
    weights = {name: (0.7 * rng.standard_normal(shape)).astype(np.float32)
               for name, shape in (("Wx", (D, H)), ("Wh", (H, H)), ("b", (H,)), ("Wc", (H, K)), ("bc", (K,)))}
    body = helper.make_graph(
        [helper.make_node("MatMul", ["x_t", "Wx"], ["xw"]), helper.make_node("MatMul", ["h_in", "Wh"], ["hw"]),
         helper.make_node("Add", ["xw", "hw"], ["s"]), helper.make_node("Add", ["s", "b"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h_out"]), helper.make_node("Identity", ["h_out"], ["y_t"])], "cell",
        [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, [1, H]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, [1, D])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, [1, H]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, [1, H])])
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["h0"], value=numpy_helper.from_array(np.zeros((1, H), np.float32))),
         helper.make_node("Scan", ["h0", "f"], ["h_last", "ys"], name="rnn", body=body, num_scan_inputs=1),
         helper.make_node("MatMul", ["ys", "Wc"], ["z"], name="classifier"),
         helper.make_node("Add", ["z", "bc"], ["logits"])],
        "scan_rnn", [helper.make_tensor_value_info("f", TensorProto.FLOAT, [T, 1, D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [T, 1, K])],
        [numpy_helper.from_array(v, k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def finite_differences(model: onnx.ModelProto, x: np.ndarray, eps: float = 1e-2) -> np.ndarray:
    """d logits[-1, 0, TARGET] / dx by central differences on onnxruntime's run of the original Scan graph."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = np.zeros(x.shape)
    for i in np.ndindex(x.shape):
        values = []
        for sign in (1, -1):
            shifted = x.astype(np.float64)
            shifted[i] += sign * eps
            values.append(float(session.run(None, {"f": shifted.astype(np.float32)})[0][-1, 0, TARGET]))
        grad[i] = (values[0] - values[1]) / (2 * eps)
    return grad


def test_scan_rnn_recurrent_methods():
    model = scan_classifier()
    x = np.random.default_rng(1).standard_normal((T, 1, D)).astype(np.float32)
    ex = Explainer(model)
    assert not has_loops(ex.graph.model), "the Explainer unrolls Scan"
    gradr = ex.explain(x, target=TARGET, method="gradr", time_step=-1, boundary="f")
    np.testing.assert_allclose(gradr.signal, finite_differences(model, x), atol=1e-3)
    for method, total in (("ebr", 1.0), ("cebr", 0.0)):
        res = ex.explain(x, target=TARGET, method=method, time_step=-1, boundary="f")
        assert np.isfinite(res.maps).all() and res.temporal.shape == (T,)
        assert res.info.boundary_signal.sum() == pytest.approx(total, abs=1e-5)
