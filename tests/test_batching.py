"""Inputs split into ``batch_size`` chunks give the same results as one batch, with one target or prior per example."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ebr_onnx import Explainer

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def cnn() -> onnx.ModelProto:
    inits = [onnx.numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(RNG.standard_normal((64, 5)).astype(np.float32), "fw")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fw"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["eb", "ceb", "grad"])
def test_batches_equal_one_batch_with_per_example_targets(cnn, method):
    x = RNG.uniform(0, 1, (5, 3, 4, 4)).astype(np.float32)
    targets = [0, 3, 1, 4, 2]
    whole = Explainer(cnn, batch_size=16).explain(x, target=targets, method=method, layer="r")
    split = Explainer(cnn, batch_size=2).explain(x, target=targets, method=method, layer="r")
    assert split.target == targets == whole.target
    np.testing.assert_allclose(split.signal, whole.signal, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(split.output, whole.output)


def test_batches_with_a_prior_per_example(cnn):
    x = RNG.uniform(0, 1, (5, 3, 4, 4)).astype(np.float32)
    prior = RNG.uniform(0, 1, (5, 5)).astype(np.float32)
    whole = Explainer(cnn, batch_size=16).explain(x, prior=prior, layer="r")
    split = Explainer(cnn, batch_size=2).explain(x, prior=prior, layer="r")
    np.testing.assert_allclose(split.signal, whole.signal, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(split.mass["top"], prior.sum(axis=1), rtol=1e-6)
