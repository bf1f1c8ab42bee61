"""ReduceMean / ReduceSum rules: EB against Eq. 8 applied literally, grad against PyTorch autograd."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ebr_onnx import Explainer


def _model(op: str, keepdims: int, opset: int) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"])]
    inits = [onnx.numpy_helper.from_array(w, "w")]
    if opset >= 18:
        inits.append(onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes"))
        nodes.append(helper.make_node(op, ["r", "axes"], ["m"], keepdims=keepdims))
    else:
        nodes.append(helper.make_node(op, ["r"], ["m"], axes=[2, 3], keepdims=keepdims))
    if keepdims:
        nodes.append(helper.make_node("Flatten", ["m"], ["f"]))
        nodes.append(helper.make_node("MatMul", ["f", "w"], ["y"]))
    else:
        nodes.append(helper.make_node("MatMul", ["m", "w"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4, 3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("opset", [11, 18])
def test_reduce_eb_matches_literal_eq8(op, keepdims, opset):
    x = np.random.default_rng(1).standard_normal((2, 4, 3, 5)).astype(np.float32)
    model = _model(op, keepdims, opset)
    res = Explainer(model, dtype=np.float64).explain(x, target=1, method="eb", layer="r")
    r = np.maximum(x, 0).astype(np.float64)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    scale = 1.0 / 15 if op == "ReduceMean" else 1.0
    expected = np.zeros_like(r)
    for n in range(2):
        m = r[n].reshape(4, -1).sum(axis=1) * scale          # the pooled features
        wpos = np.maximum(w[:, 1], 0)
        share = m * wpos / (m * wpos).sum()                   # Eq. 8 at the classifier (unit 1)
        for c in range(4):                                    # Eq. 8 at the reduction (weights `scale` > 0)
            expected[n, c] = r[n, c] * scale * share[c] / (r[n, c].sum() * scale)
    np.testing.assert_allclose(res.signal, expected, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(res.mass.layer, 1.0, rtol=1e-6)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum"])
def test_reduce_grad_matches_autograd(op):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(2).standard_normal((2, 4, 3, 5)).astype(np.float32)
    model = _model(op, 0, 18)
    res = Explainer(model).explain(x, target=2, method="grad")
    w = torch.from_numpy(onnx.numpy_helper.to_array(model.graph.initializer[0]).copy())
    xt = torch.from_numpy(x).requires_grad_(True)
    pooled = torch.relu(xt).mean((2, 3)) if op == "ReduceMean" else torch.relu(xt).sum((2, 3))
    (pooled @ w)[:, 2].sum().backward()
    np.testing.assert_allclose(res.signal, xt.grad.numpy(), rtol=1e-5, atol=1e-7)
