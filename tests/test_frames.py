"""``frame_layout``: per-frame CNN copies (tf2onnx TimeDistributed, Gather, Split) and frames stacked on the batch;
the maps of a layout, the input's time axis and the time axis of a recurrent layer's outputs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx import EbrError
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.passes.unroll import unroll_loops
from ebr_onnx.recurrent.frames import UNTRACED, FrameLayout, frame_layout, input_time_axis, trace_time_axis

ort = pytest.importorskip("onnxruntime")
KERAS = Path(__file__).parent / "fixtures" / "keras"
N, T, C, S, K = 2, 4, 3, 6, 5  # batch, frames, channels, frame size, conv filters
RNG = np.random.default_rng(0)
WEIGHT = RNG.standard_normal((K, C, 3, 3)).astype(np.float32)


def capture(model: onnx.ModelProto, feeds: dict, names: list[str]) -> list[np.ndarray]:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(names, feeds)


def conv(src: str, out: str) -> list[onnx.NodeProto]:
    return [helper.make_node("Conv", [src, "w"], [f"{out}_pre"], pads=[1, 1, 1, 1], name=f"conv_{out}"),
            helper.make_node("Relu", [f"{out}_pre"], [out], name=out)]


def const(name: str, value) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value), name))


def video_model(nodes, shape, out_shape) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "video", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("seq", TensorProto.FLOAT, out_shape)],
                              [numpy_helper.from_array(WEIGHT, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def stacked_channels_last() -> onnx.ModelProto:
    """(N, T, H, W, C) → Reshape (N·T, H, W, C) → Transpose to NCHW → Conv → Relu → Reshape (N, T, -1)."""
    return video_model([
        const("merged", np.array([-1, S, S, C], np.int64)),
        helper.make_node("Reshape", ["x", "merged"], ["frames"]),
        helper.make_node("Transpose", ["frames"], ["nchw"], perm=[0, 3, 1, 2]),
        *conv("nchw", "relu"),
        const("split", np.array([N, T, -1], np.int64)),
        helper.make_node("Reshape", ["relu", "split"], ["seq"]),
    ], ["N", T, S, S, C], ["N", T, K * S * S])


def copies_by(op: str) -> onnx.ModelProto:
    """One CNN copy per frame of (N, T, C, H, W), frames picked by ``op``, nodes listed in a scrambled order."""
    pick = {
        "Gather": [n for t in range(T) for n in (const(f"i{t}", np.int64(t)),
                                                 helper.make_node("Gather", ["x", f"i{t}"], [f"f{t}"], axis=1))],
        "Split": [helper.make_node("Split", ["x"], [f"s{t}" for t in range(T)], axis=1)]
        + [n for t in range(T) for n in (const(f"a{t}", np.array([1], np.int64)),
                                         helper.make_node("Squeeze", [f"s{t}", f"a{t}"], [f"f{t}"]))],
    }[op]
    per_frame = [conv(f"f{t}", f"relu{t}") for t in (2, 0, 3, 1)]
    stack = [n for t in range(T) for n in (const(f"u{t}", np.array([1], np.int64)),
                                           helper.make_node("Unsqueeze", [f"relu{t}", f"u{t}"], [f"r{t}"]))]
    nodes = pick + [n for block in per_frame for n in block] + stack + [
        helper.make_node("Concat", [f"r{t}" for t in range(T)], ["seq"], axis=1)]
    return video_model(nodes, ["N", T, C, S, S], ["N", T, K, S, S])


@pytest.mark.parametrize("path", sorted(KERAS.glob("*.onnx")), ids=lambda p: p.stem)
def test_timedistributed_copies_in_time_order(path):
    model = unroll_loops(onnx.load(str(path)))
    graph = ModelGraph(model)
    data = np.load(path.with_suffix(".npz"))
    assert frame_layout(graph, "clip") == frame_layout(graph, "clip", "clip")
    layout = frame_layout(graph, "clip")
    assert (layout.tensors, layout.frame_axis, layout.channel_axis, layout.batch_axis) == (["clip"], 1, 4, 0)
    some_copy = [n for n in graph.nodes if n.op_type == "Relu"][3].outputs[0]
    layout = frame_layout(graph, "clip", some_copy)
    assert layout.frame_axis is None and layout.channel_axis == 1 and len(layout.tensors) == data["clip"].shape[1]
    assert layout.batch_axis == 0
    restacked = graph.consumers[graph.consumers[some_copy][0].outputs[0]][0].outputs[0]  # Unsqueeze → Concat
    stack = frame_layout(graph, "clip", restacked)
    assert (stack.tensors, stack.frame_axis, stack.batch_axis) == ([restacked], 0, 1)
    assert some_copy in layout.tensors
    values = capture(model, {"clip": data["clip"]}, layout.tensors)
    for t, value in enumerate(values):  # Keras's conv output of frame t, channels-last → NCHW
        np.testing.assert_allclose(value, data["conv"][:, t].transpose(0, 3, 1, 2), atol=1e-5)


def test_layers_past_the_recurrence_are_refused():
    graph = ModelGraph(str(KERAS / "lstm_seq.onnx"))
    with pytest.raises(EbrError, match="mixes frames"):
        frame_layout(graph, "clip", graph.outputs[0])


def test_stacked_channels_last_frames():
    graph = ModelGraph(stacked_channels_last())
    assert frame_layout(graph, "x") == frame_layout(graph, "x", None)
    layout = frame_layout(graph, "x")
    assert (layout.frame_axis, layout.channel_axis, layout.stacked) == (1, 4, False)
    for name, channel in (("frames", 3), ("nchw", 1), ("relu", 1)):
        layout = frame_layout(graph, "x", name)
        assert (layout.tensors, layout.frame_axis, layout.channel_axis, layout.stacked) == ([name], 0, channel, True)
        assert layout.batch_axis is None, "the batch is merged with the frames"
    assert [input_time_axis(graph, "x", t, (1, T, S, S, C)) for t in ("x", "frames", "nchw")] == [0, 1, 1]


@pytest.mark.parametrize("op", ["Gather", "Split"])
def test_copies_picked_by_gather_or_split(op):
    model = copies_by(op)
    graph = ModelGraph(model)
    layout = frame_layout(graph, "x", "relu2")
    assert layout.tensors == [f"relu{t}" for t in range(T)] and layout.channel_axis == 1
    assert frame_layout(graph, "x", "conv_relu1").tensors == [f"relu{t}_pre" for t in range(T)]
    assert frame_layout(graph, "x", "f3").channel_axis == 1
    assert frame_layout(graph, "x").channel_axis == 2
    seq = frame_layout(graph, "x", "seq")
    assert (seq.tensors, seq.frame_axis) == (["seq"], 1), "copies stacked again hold the time axis"
    x = RNG.standard_normal((N, T, C, S, S)).astype(np.float32)
    values = capture(model, {"x": x}, layout.tensors)
    for t, value in enumerate(values):
        np.testing.assert_allclose(value, capture(model, {"x": x}, ["seq"])[0][:, t], atol=1e-6)


def test_unknown_names_and_inputs():
    graph = ModelGraph(stacked_channels_last())
    with pytest.raises(EbrError, match="not a model input"):
        frame_layout(graph, "clip")
    with pytest.raises(EbrError, match="neither a tensor nor a node"):
        frame_layout(graph, "x", "nope")
    with pytest.raises(EbrError, match="does not depend on the input"):
        frame_layout(graph, "x", "merged")
    with pytest.raises(EbrError, match="no batch axis 1 besides its time axis 1"):
        frame_layout(graph, "x", batch_axis=1)


def test_maps_of_each_layout():
    """Frames first, the channel axis summed and the clip's batch axis (one clip) dropped."""
    copies = RNG.standard_normal((T, 1, K, S, S))  # one (N, C, h, w) signal per frame, stacked
    np.testing.assert_array_equal(FrameLayout(["a", "b"], None, 1, batch_axis=0).maps(copies), copies[:, 0].sum(1))
    clip = RNG.standard_normal((1, T, S, S, C))
    np.testing.assert_array_equal(FrameLayout(["x"], 1, 4, batch_axis=0).maps(clip), clip[0].sum(-1))
    restacked = RNG.standard_normal((T, 1, K, S, S))
    np.testing.assert_array_equal(FrameLayout(["r"], 0, 2, batch_axis=1).maps(restacked), restacked[:, 0].sum(1))
    stacked = RNG.standard_normal((T, S, S, K))
    np.testing.assert_array_equal(FrameLayout(["s"], 0, 3, stacked=True).maps(stacked), stacked.sum(-1))
    features = RNG.standard_normal((T, K))
    np.testing.assert_array_equal(FrameLayout(["f"], 0, None).maps(features), features)


def test_time_axis_through_per_step_classifier_copies():
    """tf2onnx's TimeDistributed(Dense) slices each step of the LSTM's Y, classifies it and stacks the steps again
    with Unsqueeze + Concat; a Dense on the last step only sees one step."""
    for stem, logits, want in (("lstm_seq", "fc_steps", 1), ("lstm_last", "fc", None)):
        graph = ModelGraph(str(KERAS / f"{stem}.onnx"))
        shapes = graph.concrete_shapes({"clip": (1, 6, 16, 16, 3)})
        y = next(n for n in graph.nodes if n.op_type == "LSTM").outputs[0]
        assert trace_time_axis(graph, shapes, y, 0, logits) == want
        assert trace_time_axis(graph, shapes, y, 0, "clip") is UNTRACED


def test_time_axis_through_linear_layers():
    """MatMul keeps its first operand's leading axes, Gemm its rows; a step picked by Gather has no time axis."""
    w = numpy_helper.from_array(np.ones((K, 3), np.float32), "wl")
    nodes = [helper.make_node("MatMul", ["y", "wl"], ["m"]), helper.make_node("Squeeze", ["m"], ["q"]),
             helper.make_node("Gemm", ["q", "wg"], ["g"]), const("last", np.int64(-1)),
             helper.make_node("Gather", ["g", "last"], ["pick"], axis=0)]
    graph = ModelGraph(helper.make_model(helper.make_graph(
        nodes, "linear", [helper.make_tensor_value_info("y", TensorProto.FLOAT, [T, 1, K])],
        [helper.make_tensor_value_info("pick", TensorProto.FLOAT, [3])],
        [w, numpy_helper.from_array(np.ones((3, 3), np.float32), "wg")]), opset_imports=[helper.make_opsetid("", 17)]))
    shapes = graph.concrete_shapes({"y": (T, 1, K)})
    assert [trace_time_axis(graph, shapes, "y", 0, t) for t in ("m", "q", "g", "pick")] == [0, 0, 0, None]
