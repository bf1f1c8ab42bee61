"""The capturing forward (:class:`ebr_onnx.core.forward.ForwardRunner`) against onnx's reference evaluator: float
captures are written into arrays allocated by the runner, other outputs come from onnxruntime, and a shape that
inference got wrong falls back to onnxruntime's own outputs."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ebr_onnx.core.forward import ForwardRunner
from ebr_onnx.core.graph import ModelGraph

RNG = np.random.default_rng(7)


def _model() -> onnx.ModelProto:
    """x (N, 3, 8, 8) → Conv 3×3 (4 channels) → Relu → GlobalAveragePool → Flatten → Gemm (5) → ArgMax."""
    w = numpy_helper.from_array(RNG.normal(size=(4, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(RNG.normal(size=(5, 4)).astype(np.float32), "fc")
    nodes = [helper.make_node("Conv", ["x", "w"], ["conv"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["conv"], ["relu"]),
             helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
             helper.make_node("Flatten", ["pool"], ["flat"]),
             helper.make_node("Gemm", ["flat", "fc"], ["logits"], transB=1),
             helper.make_node("ArgMax", ["logits"], ["best"], axis=1, keepdims=0)]
    graph = helper.make_graph(nodes, "capture", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5]),
                               helper.make_tensor_value_info("best", TensorProto.INT64, ["N"])], [w, fc])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _reference(model: onnx.ModelProto, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    declared = {o.name for o in exposed.graph.output}
    exposed.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.UNDEFINED, None) for n in names
                                if n not in declared)
    return dict(zip(names, ReferenceEvaluator(exposed).run(names, {"x": x})))


NAMES = ["conv", "relu", "logits", "best"]


def test_captures_equal_the_reference_and_own_their_memory():
    model = _model()
    x = RNG.random((2, 3, 8, 8), dtype=np.float32)
    got = ForwardRunner(ModelGraph(model)).run({"x": x}, NAMES)
    ref = _reference(model, x, NAMES)
    for name in NAMES:
        assert got[name].shape == ref[name].shape and got[name].dtype == ref[name].dtype, name
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
    for name in ("conv", "relu", "logits"):  # float captures: arrays the runner allocated, writable
        assert got[name].flags.owndata and got[name].flags.writeable, name


def test_a_wrong_inferred_shape_falls_back_to_onnxruntime_outputs(monkeypatch):
    model = _model()
    graph = ModelGraph(model)
    x = RNG.random((3, 3, 8, 8), dtype=np.float32)
    wrong = {name: (1, *shape[1:]) for name, shape in graph.concrete_shapes({"x": x.shape}).items()}
    monkeypatch.setattr(graph, "concrete_shapes", lambda shapes: wrong)
    got = ForwardRunner(graph).run({"x": x}, NAMES)
    ref = _reference(model, x, NAMES)
    for name in NAMES:
        np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
