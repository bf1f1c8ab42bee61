"""``unroll_loops``: the unrolled graph computes what onnxruntime computes on the original Loop/Scan graph."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx import EbrError
from ebr_onnx.passes.unroll import has_loops, unroll_loops

ort = pytest.importorskip("onnxruntime")
KERAS = Path(__file__).parent / "fixtures" / "keras"
N, T, D, HID = 2, 5, 3, 4
RNG = np.random.default_rng(0)
WX = RNG.standard_normal((D, HID)).astype(np.float32)
WH = RNG.standard_normal((HID, HID)).astype(np.float32) * 0.5
B = RNG.standard_normal(HID).astype(np.float32)


def run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def cell(x_t: str, h: str, out: str) -> list[onnx.NodeProto]:
    """``out = tanh(x_t·Wx + h·Wh + b)`` with Wx read from the outer scope, Wh and b body-local."""
    return [
        helper.make_node("MatMul", [x_t, "Wx"], ["xw"]),
        helper.make_node("MatMul", [h, "Wh"], ["hw"]),
        helper.make_node("Add", ["xw", "hw"], ["s"]),
        helper.make_node("Add", ["s", "b"], ["pre"]),
        helper.make_node("Tanh", ["pre"], [out]),
    ]


def model(nodes, inputs, outputs, inits=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(WX, "Wx"), *inits])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(m)
    return m


def loop_rnn(trip: str = "shape", cond: str = "pass", t_dim=T) -> onnx.ModelProto:
    """A hand-built Loop running an RNN cell over the time axis of ``x`` (N, T, D).

    ``trip``: "shape" (Shape(x)[1]), "range" (the size of a Range up to it), "const", or "data" (from x's values);
    ``cond``: "pass" (cond_in passed on), "count" (iteration + 1 < 3), or "data" (sum of the state > 0).
    """
    body_nodes = [
        helper.make_node("Gather", ["x", "i"], ["x_t"], axis=1),
        *cell("x_t", "h_in", "h_out"),
        helper.make_node("Identity", ["h_out"], ["y_t"]),
    ]
    if cond == "pass":
        body_nodes.append(helper.make_node("Identity", ["c_in"], ["c_out"]))
    elif cond == "count":
        body_nodes += [const("one", np.int64(1)), const("three", np.int64(3)),
                       helper.make_node("Add", ["i", "one"], ["next"]),
                       helper.make_node("Less", ["next", "three"], ["c_out"])]
    else:
        body_nodes += [const("zero", np.float32(0)), helper.make_node("ReduceSum", ["h_out"], ["total"], keepdims=0),
                       helper.make_node("Greater", ["total", "zero"], ["c_out"])]
    body = helper.make_graph(
        body_nodes, "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("c_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", HID])],
        [helper.make_tensor_value_info("c_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", HID]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["N", HID])],
        [numpy_helper.from_array(WH, "Wh"), numpy_helper.from_array(B, "b")],
    )
    nodes = [helper.make_node("Shape", ["x"], ["shape"]), const("axis1", np.int64(1)),
             helper.make_node("Gather", ["shape", "axis1"], ["steps_shape"]),
             const("start", np.int64(0)), const("delta", np.int64(1)),
             helper.make_node("Range", ["start", "steps_shape", "delta"], ["range"]),
             helper.make_node("Size", ["range"], ["steps_range"]),
             const("steps_const", np.int64(T)), const("true", np.bool_(True)),
             helper.make_node("ReduceSum", ["x"], ["xs"], keepdims=0),
             helper.make_node("Cast", ["xs"], ["steps_data"], to=TensorProto.INT64),
             helper.make_node("Shape", ["x"], ["x_shape"], end=1), const("hid", np.array([HID], np.int64)),
             helper.make_node("Concat", ["x_shape", "hid"], ["h_shape"], axis=0),
             helper.make_node("ConstantOfShape", ["h_shape"], ["h0"],
                              value=numpy_helper.from_array(np.zeros(1, np.float32))),
             helper.make_node("Loop", [f"steps_{trip}", "true", "h0"], ["h_last", "ys"], name="rnn", body=body)]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", t_dim, D])],
                 [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, ["N", HID]),
                  helper.make_tensor_value_info("ys", TensorProto.FLOAT, [T, "N", HID])])


def scan_rnn(in_dir: int = 0, out_dir: int = 0, axis: int = 1, t_dim=T) -> onnx.ModelProto:
    """A Scan RNN over axis ``axis`` of ``x`` (N, T, D): outputs the final state and the states stacked on ``axis``."""
    body = helper.make_graph(
        [*cell("x_t", "h_in", "h_out"), helper.make_node("Identity", ["h_out"], ["y_t"])], "body",
        [helper.make_tensor_value_info("h_in", TensorProto.FLOAT, ["N", HID]),
         helper.make_tensor_value_info("x_t", TensorProto.FLOAT, ["N", D])],
        [helper.make_tensor_value_info("h_out", TensorProto.FLOAT, ["N", HID]),
         helper.make_tensor_value_info("y_t", TensorProto.FLOAT, ["N", HID])],
        [numpy_helper.from_array(WH, "Wh"), numpy_helper.from_array(B, "b")],
    )
    nodes = [const("h0", np.zeros((N, HID), np.float32)),
             helper.make_node("Scan", ["h0", "x"], ["h_last", "ys"], name="scan", body=body, num_scan_inputs=1,
                              scan_input_axes=[axis], scan_input_directions=[in_dir],
                              scan_output_axes=[axis], scan_output_directions=[out_dir])]
    return model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [N, t_dim, D])],
                 [helper.make_tensor_value_info("h_last", TensorProto.FLOAT, ["N", HID]),
                  helper.make_tensor_value_info("ys", TensorProto.FLOAT, [T, "N", HID])])


def numpy_rnn(x: np.ndarray, steps: int | None = None, reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The independent reference: the same cell in NumPy, over the time axis 1."""
    h = np.zeros((x.shape[0], HID), np.float32)
    ys = []
    order = range(x.shape[1] - 1, -1, -1) if reverse else range(x.shape[1])
    for t in list(order)[:steps]:
        h = np.tanh(x[:, t] @ WX + h @ WH + B)
        ys.append(h)
    return h, np.stack(ys)


def assert_unrolled_matches(original: onnx.ModelProto, feeds: dict, **kw) -> onnx.ModelProto:
    flat = unroll_loops(original, **kw)
    onnx.checker.check_model(flat)
    assert not has_loops(flat)
    for a, b in zip(run(original, feeds), run(flat, feeds)):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0)
    return flat


X = RNG.standard_normal((N, T, D)).astype(np.float32)


@pytest.mark.parametrize("trip", ["shape", "range", "const"])
def test_loop_rnn_unrolls_to_the_same_outputs(trip):
    flat = assert_unrolled_matches(loop_rnn(trip), {"x": X})
    h, ys = run(flat, {"x": X})
    ref_h, ref_ys = numpy_rnn(X)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    counts = Counter(n.op_type for n in flat.graph.node)
    assert counts["Tanh"] == T and counts["MatMul"] == 2 * T
    names = {o for n in flat.graph.node for o in n.output}
    assert {f"rnn/t{t}/h_out" for t in range(T)} <= names
    inits = {i.name for i in flat.graph.initializer}
    assert {"rnn/Wh", "rnn/b"} <= inits, "body weights are lifted once, shared by all steps"
    assert sum(i.startswith("rnn/") for i in inits) == 2


def test_loop_condition_computed_from_the_iteration_count():
    flat = assert_unrolled_matches(loop_rnn("const", cond="count"), {"x": X})
    assert Counter(n.op_type for n in flat.graph.node)["Tanh"] == 3
    np.testing.assert_allclose(run(flat, {"x": X})[1], numpy_rnn(X, steps=3)[1], atol=1e-5)


def test_free_time_axis_needs_input_shapes():
    m = loop_rnn("shape", t_dim="T")
    with pytest.raises(EbrError, match="'rnn'.*free input dimension.*input_shapes"):
        unroll_loops(m)
    flat = assert_unrolled_matches(m, {"x": X}, input_shapes={"x": (N, T, D)})
    dims = [d.dim_value for d in flat.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [N, T, D], "the shapes the graph was unrolled for are pinned"


def test_free_batch_axis_stays_free():
    flat = unroll_loops(loop_rnn("shape"))
    x = RNG.standard_normal((3, T, D)).astype(np.float32)
    np.testing.assert_allclose(run(flat, {"x": x})[0], numpy_rnn(x)[0], atol=1e-5)


@pytest.mark.parametrize("trip, cond, what", [("data", "pass", "trip count"), ("const", "data", "condition")])
def test_loops_that_depend_on_data_are_refused(trip, cond, what):
    with pytest.raises(EbrError, match=f"Loop node 'rnn' cannot be unrolled: its {what}.*depends on the values"):
        unroll_loops(loop_rnn(trip, cond))


@pytest.mark.parametrize("in_dir, out_dir", [(0, 0), (1, 0), (1, 1), (0, 1)])
def test_scan_rnn_forward_and_reverse(in_dir, out_dir):
    flat = assert_unrolled_matches(scan_rnn(in_dir, out_dir), {"x": X})
    h, ys = run(flat, {"x": X})
    ref_h, ref_ys = numpy_rnn(X, reverse=bool(in_dir))
    ref_ys = np.moveaxis(ref_ys[::-1] if out_dir else ref_ys, 0, 1)
    np.testing.assert_allclose(h, ref_h, atol=1e-5)
    np.testing.assert_allclose(ys, ref_ys, atol=1e-5)
    assert Counter(n.op_type for n in flat.graph.node)["Gather"] == T


def test_scan_over_a_free_time_axis_needs_input_shapes():
    with pytest.raises(EbrError, match="'scan'.*free input dimension.*input_shapes"):
        unroll_loops(scan_rnn(t_dim="T"))
    assert_unrolled_matches(scan_rnn(t_dim="T"), {"x": X}, input_shapes={"x": X.shape})


def test_scan_over_a_negative_axis():
    assert_unrolled_matches(scan_rnn(axis=-2), {"x": X})


def test_if_with_a_known_condition_is_inlined_and_others_refused():
    m = scan_rnn()
    body = m.graph.node[-1].attribute[0].g

    def branch(op: str) -> onnx.GraphProto:
        out = helper.make_tensor_value_info("act", TensorProto.FLOAT, ["N", HID])
        return helper.make_graph([helper.make_node(op, ["pre"], ["act"])], op, [], [out])

    nodes = [n for n in body.node if n.op_type != "Tanh"]

    def with_if(flag_nodes: list[onnx.NodeProto], flag: str) -> None:
        act = helper.make_node("If", [flag], ["h_out"], then_branch=branch("Relu"), else_branch=branch("Tanh"))
        del body.node[:]
        body.node.extend(nodes[:-1] + flag_nodes + [act, nodes[-1]])

    with_if([const("flag", np.bool_(False))], "flag")
    flat = assert_unrolled_matches(m, {"x": X})
    assert Counter(n.op_type for n in flat.graph.node)["Tanh"] == T
    with_if([helper.make_node("ReduceSum", ["pre"], ["sum"], keepdims=0),
             helper.make_node("Cast", ["sum"], ["data_flag"], to=TensorProto.BOOL)], "data_flag")
    with pytest.raises(EbrError, match="'scan'.*If.*condition.*depends on the values"):
        unroll_loops(m)


@pytest.mark.parametrize("path", sorted(KERAS.glob("*.onnx")), ids=lambda p: p.stem)
def test_tf2onnx_exports_unroll_to_the_same_outputs(path):
    m = onnx.load(str(path))
    clip = np.load(path.with_suffix(".npz"))["clip"]
    flat = assert_unrolled_matches(m, {"clip": clip})
    if has_loops(m):
        assert any("/t5/" in n.name for n in flat.graph.node)
