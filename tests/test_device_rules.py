"""Every rule on the device path: each registered (op type, mode) runs on the strict host stand-in of CuPy
(``tests/device_shim.py``) on a tiny graph and gives the NumPy path's signals, for non-negative and for signed inputs
(EB's positive-contribution branch); the fused recurrent ops in every variant of direction, layout, peepholes,
``sequence_lens``, activations, clip and ``linear_before_reset`` under the three rule sets. The rules' own
correctness is tested elsewhere (``test_rules_reference.py``, ``test_op_rules.py``, ``test_recurrent_fused.py``);
here the device path must equal the CPU path, and :func:`test_every_rule_is_covered` keeps the table complete as
rules are added.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from test_op_rules import PAD_CASES, RESIZE_CASES
from test_rules_reference import ROUTING_CASES, forward

from ebr_onnx.core import registry
from ebr_onnx.core.context import RuleContext
from ebr_onnx.core.errors import EbrError
from ebr_onnx.core.graph import ModelGraph, Node
from ebr_onnx.core.ops import NON_FLOAT_OPS
from ebr_onnx.core.options import RuleOptions
from ebr_onnx.core.walk import walk
from ebr_onnx.rules.routing import repeat_passes

sys.path.insert(0, str(Path(__file__).parent))
from device_shim import make_module  # noqa: E402

RNG = np.random.default_rng(7)
node = helper.make_node


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def rand(*shape: int, low: float = -1.0) -> np.ndarray:
    return RNG.uniform(low, 1.0, shape).astype(np.float32)


#: case → (nodes, initializers, opset, input shapes, positive_only). Inputs named x (and y) carry signal.
CASES: dict[str, tuple[list, dict, int, dict[str, tuple[int, ...]], bool]] = {
    # linear ops
    "Conv_group_stride_pad": ([node("Conv", ["x", "w", "b"], ["y"], group=2, strides=[2, 1], pads=[1, 0, 1, 2])],
                              {"w": rand(4, 1, 3, 2), "b": rand(4)}, 13, {"x": (1, 2, 5, 4)}, False),
    "Conv_1d_dilated": ([node("Conv", ["x", "w"], ["y"], dilations=[2], pads=[1, 1])], {"w": rand(3, 2, 3)}, 13,
                        {"x": (2, 2, 7)}, False),
    "Conv_3d": ([node("Conv", ["x", "w"], ["y"], pads=[1, 0, 1, 0, 1, 1], strides=[1, 2, 1])],
                {"w": rand(2, 2, 2, 2, 3)}, 13, {"x": (1, 2, 3, 4, 4)}, False),
    "ConvTranspose": ([node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_padding=[1, 1])],
                      {"w": rand(2, 3, 3, 3)}, 13, {"x": (1, 2, 3, 3)}, False),
    "Gemm_transposed_bias": ([node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.7, beta=0.5)],
                             {"w": rand(5, 4), "c": rand(5)}, 13, {"x": (3, 4)}, False),
    "Gemm_signal_C_transA": ([node("Gemm", ["x", "w", "y"], ["z"], transA=1)], {"w": rand(3, 5)}, 13,
                             {"x": (3, 4), "y": (4, 5)}, False),
    "MatMul_constant_first_batched": ([node("MatMul", ["w", "x"], ["y"])], {"w": rand(2, 4, 3)}, 13,
                                      {"x": (2, 3, 5)}, False),
    "MatMul_attention": ([node("MatMul", ["x", "y"], ["s"]), node("Softmax", ["s"], ["a"], axis=-1),
                          node("Transpose", ["y"], ["v"], perm=[0, 2, 1]), node("MatMul", ["a", "v"], ["o"])],
                         {}, 13, {"x": (2, 3, 4), "y": (2, 4, 3)}, False),
    "Einsum": ([node("Einsum", ["x", "w"], ["y"], equation="nchw,oc->nohw")], {"w": rand(4, 2)}, 13,
               {"x": (1, 2, 3, 3)}, False),
    # pooling and reductions
    "MaxPool_ceil_dilated": ([node("MaxPool", ["x"], ["y"], kernel_shape=[2, 3], strides=[2, 2], pads=[1, 1, 0, 1],
                                   dilations=[1, 2], ceil_mode=1)], {}, 13, {"x": (1, 2, 5, 7)}, False),
    "MaxPool_1d_overlapping": ([node("MaxPool", ["x"], ["y"], kernel_shape=[3], strides=[1])], {}, 13,
                               {"x": (2, 2, 6)}, False),
    "AveragePool_include_pad": ([node("AveragePool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2],
                                      pads=[1, 1, 1, 1], count_include_pad=1)], {}, 13, {"x": (1, 2, 5, 5)}, False),
    "AveragePool_3d": ([node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2, 2])], {}, 13, {"x": (1, 2, 3, 4, 4)},
                       False),
    "GlobalPools": ([node("GlobalAveragePool", ["x"], ["a"]), node("GlobalMaxPool", ["x"], ["m"]),
                     node("Add", ["a", "m"], ["y"])], {}, 13, {"x": (2, 3, 4, 4)}, False),
    "ReduceMean_Sum_keepdims0": ([node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
                                  node("ReduceSum", ["m", "ax"], ["y"], keepdims=1)], {"ax": i64(-1)}, 13,
                                 {"x": (2, 3, 4)}, False),
    "ReduceMax_Min_L2": ([node("ReduceMax", ["x"], ["a"], axes=[2]), node("ReduceMin", ["x"], ["b"], axes=[2]),
                          node("Sub", ["a", "b"], ["d"]), node("ReduceL2", ["d"], ["y"], axes=[1])], {}, 13,
                         {"x": (2, 3, 4)}, False),
    # ReLU family
    "Relu_LeakyRelu_PRelu": ([node("Relu", ["x"], ["r"]), node("LeakyRelu", ["x"], ["l"], alpha=0.2),
                              node("PRelu", ["x", "s"], ["p"]), node("Sum", ["r", "l", "p"], ["y"])],
                             {"s": rand(3, 1)}, 13, {"x": (2, 3, 4)}, False),
    "Clip_attrs_opset6": ([node("Clip", ["x"], ["y"], min=-0.3, max=0.6)], {}, 6, {"x": (2, 5)}, False),
    "Clip_inputs": ([node("Clip", ["x", "lo", "hi"], ["y"])], {"lo": np.float32(-0.2), "hi": np.float32(0.5)}, 13,
                    {"x": (2, 5)}, False),
    # elementwise
    "Add_Sub_Mul_Div_two_signals": ([node("Add", ["x", "y"], ["a"]), node("Sub", ["a", "y"], ["s"]),
                                     node("Mul", ["s", "x"], ["m"]), node("Div", ["m", "c"], ["d"]),
                                     node("Sub", ["d", "c"], ["z"])], {"c": f32(1.5, -2.0, 0.5)}, 13,
                                    {"x": (2, 3), "y": (1, 3)}, False),
    "Div_signal_denominator": ([node("Div", ["c", "x"], ["y"])], {"c": f32(2.0)}, 13, {"x": (2, 3)}, True),
    "Mul_constant_Div_signal": ([node("Mul", ["x", "c"], ["m"]), node("Div", ["m", "x"], ["y"])],
                                {"c": f32(0.5, -1.0, 2.0)}, 13, {"x": (2, 3)}, True),
    "Max_Min_Where_Greater": ([node("Max", ["x", "y", "c"], ["m"]), node("Min", ["m", "x"], ["n"]),
                               node("Greater", ["x", "c"], ["g"]), node("Where", ["g", "n", "y"], ["z"])],
                              {"c": f32(0.2)}, 13, {"x": (2, 4), "y": (2, 4)}, False),
    "Expand_Tile": ([node("Expand", ["x", "s"], ["e"]), node("Tile", ["e", "r"], ["y"])],
                    {"s": i64(2, 3, 4), "r": i64(1, 2, 1)}, 13, {"x": (3, 1)}, False),
    # normalisations
    "BatchNorm_LRN": ([node("BatchNormalization", ["x", "g", "b", "m", "v"], ["n"]),
                       node("LRN", ["n"], ["y"], size=3, alpha=0.5, bias=1.5)],
                      {"g": rand(3), "b": rand(3), "m": rand(3), "v": rand(3, low=0.5)}, 13, {"x": (2, 3, 2, 2)},
                      False),
    "InstanceNorm_LayerNorm": ([node("InstanceNormalization", ["x", "g", "b"], ["n"]),
                                node("LayerNormalization", ["n", "h"], ["y"], axis=-2)],
                               {"g": rand(3), "b": rand(3), "h": rand(2, 2)}, 17, {"x": (2, 3, 2, 2)}, False),
    "GroupNorm": ([node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=2)], {"g": rand(4), "b": rand(4)},
                  21, {"x": (2, 4, 3)}, False),
    # smooth activations
    "Softmax_opset11_LogSoftmax": ([node("Softmax", ["x"], ["s"], axis=1), node("LogSoftmax", ["s"], ["y"])], {},
                                   11, {"x": (2, 3, 2)}, False),
    "Sigmoid_Tanh_Elu_Selu": ([node("Sigmoid", ["x"], ["a"]), node("Tanh", ["x"], ["b"]),
                               node("Elu", ["x"], ["c"], alpha=0.7), node("Selu", ["x"], ["d"]),
                               node("Sum", ["a", "b", "c", "d"], ["y"])], {}, 13, {"x": (2, 5)}, False),
    "Softplus_Softsign_HardSigmoid_HardSwish": ([node("Softplus", ["x"], ["a"]), node("Softsign", ["x"], ["b"]),
                                                 node("HardSigmoid", ["x"], ["c"], alpha=0.4),
                                                 node("HardSwish", ["x"], ["d"]), node("Sum", ["a", "b", "c", "d"],
                                                                                       ["y"])],
                                                {}, 14, {"x": (2, 5)}, False),
    "Gelu_Erf_Mish": ([node("Gelu", ["x"], ["a"]), node("Gelu", ["x"], ["b"], approximate="tanh"),
                       node("Erf", ["x"], ["c"]), node("Mish", ["x"], ["d"]), node("Sum", ["a", "b", "c", "d"],
                                                                                      ["y"])],
                      {}, 20, {"x": (2, 5)}, False),
    # unary math
    "Sqrt_Exp_Log_Reciprocal_Pow": ([node("Sqrt", ["x"], ["a"]), node("Exp", ["a"], ["b"]), node("Log", ["b"], ["c"]),
                                     node("Reciprocal", ["c"], ["d"]), node("Pow", ["d", "e"], ["y"])],
                                    {"e": f32(1.5)}, 13, {"x": (2, 5)}, True),
    "Neg_Abs": ([node("Neg", ["x"], ["n"]), node("Abs", ["n"], ["a"]), node("Add", ["a", "n"], ["y"])], {}, 13,
                {"x": (2, 5)}, False),
    # routing
    "Cast_CastLike_Dropout_Identity": ([node("Cast", ["x"], ["a"], to=TensorProto.DOUBLE),
                                        node("CastLike", ["a", "like"], ["b"]), node("Dropout", ["b"], ["c"]),
                                        node("Identity", ["c"], ["y"])], {"like": f32(0.0)}, 15, {"x": (2, 3)}, False),
    "Split_Concat": ([node("Split", ["x", "sp"], ["a", "b", "c"], axis=1), node("Concat", ["c", "a"], ["y"], axis=1)],
                     {"sp": i64(1, 2, 2)}, 13, {"x": (2, 5)}, False),
    "Gather_computed_indices": ([node("ArgMax", ["x"], ["i"], axis=1, keepdims=0),
                                 node("Gather", ["x", "i"], ["y"], axis=0)], {}, 13, {"x": (4, 3)}, False),
    "ReverseSequence": ([node("ReverseSequence", ["x", "lens"], ["y"], time_axis=0, batch_axis=1)],
                        {"lens": i64(3, 1, 2)}, 13, {"x": (4, 3, 2)}, False),
    "Upsample_opset9": ([node("Upsample", ["x", "s"], ["y"], mode="nearest")], {"s": f32(1, 1, 2, 1.5)}, 9,
                        {"x": (1, 2, 2, 3)}, False),
}
CASES.update({f"Pad_{k}": ([n], inits, opset, {"x": (2, 3, 4)}, False) for k, (n, inits, opset) in PAD_CASES.items()})
CASES.update({f"Resize_{k}": ([n], inits, opset, {"x": (1, 2, 3, 4)}, False)
              for k, (n, inits, opset) in RESIZE_CASES.items()})
CASES.update({f"routing_{k}": (nodes, inits, opset, {"x": shape}, False)
              for k, (nodes, shape, inits, opset) in ROUTING_CASES.items()})

#: Fused recurrent variants: (op, attributes and inputs). T, N, I, H = 4, 3, 5, 3.
RECURRENT = {
    "LSTM": ("LSTM", {}),
    "LSTM_reverse_peepholes": ("LSTM", dict(direction="reverse", peepholes=True)),
    "LSTM_bidirectional_lens": ("LSTM", dict(direction="bidirectional", lens=[4, 2, 3])),
    "LSTM_layout1_bidirectional": ("LSTM", dict(layout=1, direction="bidirectional", peepholes=True)),
    "LSTM_relu_no_c0": ("LSTM", dict(acts=["Sigmoid", "Relu", "Relu"], init_c=False)),
    "LSTM_clip_lens": ("LSTM", dict(clip=0.625, peepholes=True, lens=[1, 4, 3])),
    "LSTM_activation_params": ("LSTM", dict(acts=["HardSigmoid", "LeakyRelu", "ScaledTanh"],
                                            alphas=[0.25, 0.125, 0.75], betas=[0.375, 1.25])),
    "GRU": ("GRU", {}),
    "GRU_linear_before_reset_bidirectional": ("GRU", dict(lbr=1, direction="bidirectional")),
    "GRU_layout1_lens_clip": ("GRU", dict(layout=1, lens=[2, 4, 1], clip=0.5)),
    "GRU_relu": ("GRU", dict(acts=["Sigmoid", "Relu"])),
    "RNN_reverse": ("RNN", dict(direction="reverse")),
    "RNN_relu_bidirectional_layout1": ("RNN", dict(acts=["Relu", "Tanh"], direction="bidirectional", layout=1)),
}
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def recurrent_model(op: str, direction: str = "forward", layout: int = 0, acts=None, alphas=(), betas=(),
                    clip=None, lbr: int = 0, peepholes: bool = False, lens=None, init_c: bool = True):
    """A one-node ``op`` model: X, initial_h (and initial_c) fed, W, R, B (and P, sequence_lens) constant."""
    t, n, i, h = 4, 3, 5, 3
    dirs, g = (2 if direction == "bidirectional" else 1), _GATES[op]
    state = (n, dirs, h) if layout else (dirs, n, h)
    feeds = {"X": (n, t, i) if layout else (t, n, i), "initial_h": state}
    if op == "LSTM" and init_c:
        feeds["initial_c"] = state
    inits = {"W": rand(dirs, g * h, i), "R": rand(dirs, g * h, h), "B": rand(dirs, 2 * g * h)}
    if peepholes:
        inits["P"] = rand(dirs, 3 * h)
    if lens is not None:
        inits["sequence_lens"] = np.asarray(lens, np.int32)
    names = ["X", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    inputs = [k if k in feeds or k in inits else "" for k in names]
    while not inputs[-1]:
        inputs.pop()
    outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
    attrs = {"hidden_size": h, "direction": direction, "layout": layout}
    attrs.update({k: v for k, v in dict(activations=acts, activation_alpha=list(alphas), activation_beta=list(betas),
                                        clip=clip, linear_before_reset=lbr if op == "GRU" else None).items() if v})
    if acts and dirs == 2 and len(acts) == {"LSTM": 3, "GRU": 2, "RNN": 1}[op]:
        attrs["activations"] = acts * 2  # one list per direction
    nodes = [node(op, inputs, outputs, name="rec", **attrs)]
    return nodes, inits, 14, feeds, outputs


@pytest.fixture(scope="module")
def device():
    """The strict host stand-in of CuPy."""
    return make_module()


def _compare(model, feeds, seeds, mode, device, backprop, **options):
    want, want_ctx = backprop(model, feeds, seeds, mode, **options)
    got, got_ctx = backprop(model, feeds, seeds, mode, xp=device, **options)
    assert got_ctx.warnings == want_ctx.warnings
    for name in feeds:
        assert isinstance(got[name], np.ndarray)
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)


def _feeds(shapes: dict[str, tuple[int, ...]], signed: bool) -> dict[str, np.ndarray]:
    return {k: rand(*s, low=-1.0 if signed else 0.05) for k, s in shapes.items()}


@pytest.mark.parametrize("signed", [False, True], ids=["non-negative", "signed"])
@pytest.mark.parametrize("case", list(CASES))
def test_rule_on_the_device_equals_numpy(case, signed, device, make_model, backprop):
    nodes, inits, opset, shapes, positive_only = CASES[case]
    if signed and positive_only:
        pytest.skip("the op's domain is positive")
    outputs = [nodes[-1].output[0]]
    model = make_model(nodes, {k: list(s) for k, s in shapes.items()}, outputs, inits, opset=opset)
    if not model.graph.output[0].type.tensor_type.elem_type:  # a function op's output onnx left untyped (GroupNorm)
        model.graph.output[0].CopyFrom(helper.make_tensor_value_info(outputs[0], TensorProto.FLOAT, list(shapes["x"])))
    feeds = _feeds(shapes, signed)
    seed = RNG.uniform(-1, 1, forward(model, feeds)[0].shape)
    for mode in ("eb", "grad"):
        _compare(model, feeds, seed, mode, device, backprop)
    if case == "Add_Sub_Mul_Div_two_signals":
        _compare(model, feeds, seed, "eb", device, backprop, add_rule="caffe")


@pytest.mark.parametrize("rules", ["grad", "caffe", "excitation"])
@pytest.mark.parametrize("case", list(RECURRENT))
def test_fused_recurrent_rule_on_the_device_equals_numpy(case, rules, device, make_model, backprop):
    op, kw = RECURRENT[case]
    nodes, inits, opset, shapes, outputs = recurrent_model(op, **kw)
    model = make_model(nodes, {k: list(s) for k, s in shapes.items()}, outputs, inits, opset=opset)
    graph = ModelGraph(model)
    feeds = _feeds(shapes, signed=rules == "grad")
    seeds = {o.name: RNG.uniform(0 if rules != "grad" else -1, 1, [d.dim_value for d in o.type.tensor_type.shape.dim])
             for o in model.graph.output}
    mode, options = ("grad", RuleOptions()) if rules == "grad" else ("eb", RuleOptions(recurrent_rules=rules))

    def run(xp):  # the node's rule on the fed inputs (onnxruntime runs no layout=1: nothing is captured)
        ctx = RuleContext(graph, xp, mode, feeds, {}, set(feeds) | set(seeds), dtype=np.float64, options=options)
        got = walk(ctx, graph.nodes, {k: xp.asarray(v) for k, v in seeds.items()}, keep=set(feeds))
        return {k: np.asarray(v.get() if xp is device else v) for k, v in got.items()}, ctx.warnings

    (want, want_warnings), (got, got_warnings) = run(np), run(device)
    assert got_warnings == want_warnings and set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_every_rule_is_covered():
    """Every registered op type is in a case above (the non-float ops, whose outputs never carry signal, are run
    directly by :func:`test_non_float_rules_on_the_device`)."""
    covered = {n.op_type for nodes, *_ in CASES.values() for n in nodes}
    covered |= {op for op, _ in RECURRENT.values()} | set(NON_FLOAT_OPS)
    registered = set(registry.supported_ops("eb")) | set(registry.supported_ops("grad"))
    assert registered - covered == set()


def test_non_float_rules_on_the_device(device, make_model):
    """Comparisons, logic and arg-max ops take no signal in either mode."""
    model = make_model([node("Greater", ["x", "c"], ["y"])], {"x": [2, 3]}, ["y"], {"c": f32(0.0)})
    graph = ModelGraph(model)
    ctx = RuleContext(graph, device, "eb", {}, {"x": (2, 3)}, {"x"})
    for op in sorted(NON_FLOAT_OPS):
        for mode in ("eb", "grad"):
            probe = Node("probe", op, "", ("x", "c"), ("y",), {}, 0)
            assert registry.find_rule(op, mode).fn(probe, ctx, [device.zeros((2, 3), dtype=bool)]) == [None, None]


# -- Gather: a deterministic scatter and checked indices ------------------------------------------------------------
def test_repeat_passes_split_repeated_indices_into_distinct_groups():
    indices = i64(3, 0, 3, 1, 3, 0)
    groups = repeat_passes(indices)
    assert [list(p) for p, _ in groups] == [[0, 1, 3], [2, 5], [4]]
    assert all(len(set(t)) == len(t) for _, t in groups)
    assert sorted(int(i) for _, t in groups for i in t) == sorted(indices.tolist())


@pytest.mark.parametrize("xp", ["numpy", "device"])
def test_gather_scatter_is_bitwise_numpy_add_at(xp, device, make_model):
    """Repeated indices add in the order they occur, exactly as NumPy's sequential ``add.at`` (float32 sums whose
    rounding depends on the order), on NumPy and on the device path alike."""
    module = device if xp == "device" else np
    indices = np.array([2, 0, 2, 2, 1, 2, 0], np.int64)
    model = make_model([node("Gather", ["x", "i"], ["y"], axis=0, name="g")], {"x": [3, 2]}, ["y"], {"i": indices})
    graph = ModelGraph(model)
    ctx = RuleContext(graph, module, "grad", {"x": rand(3, 2)}, {"x": (3, 2), "y": (7, 2)}, {"x", "y"},
                      dtype=np.float32)
    p = (RNG.uniform(-1, 1, (len(indices), 2)) * 10.0 ** RNG.integers(-4, 4, (len(indices), 1))).astype(np.float32)
    got = registry.find_rule("Gather", "grad").fn(graph.nodes[0], ctx, [module.asarray(p)])[0]
    got = module.asnumpy(got) if xp == "device" else got
    want = np.zeros((3, 2), np.float32)
    np.add.at(want, indices, p)
    assert got.dtype == np.float32 and np.array_equal(got, want)


def test_gather_indices_out_of_range_are_an_error(device, make_model, backprop):
    """ONNX requires indices in [-n, n): one outside is an error before any ``take`` (CuPy would wrap it)."""
    model = make_model([node("Gather", ["x", "i"], ["y"], axis=1, name="pick")], {"x": [2, 3]}, ["y"],
                       {"i": i64(0, 2)})
    model.graph.initializer[0].CopyFrom(helper.make_tensor("i", TensorProto.INT64, [2], [0, 3]))
    graph = ModelGraph(model, check=False)
    ctx = RuleContext(graph, device, "grad", {"x": rand(2, 3)}, {"x": (2, 3), "y": (2, 2)}, {"x", "y"})
    with pytest.raises(EbrError, match=r"Gather node 'pick' has indices outside \[-3, 3\)"):
        registry.find_rule("Gather", "grad").fn(graph.nodes[0], ctx, [device.ones((2, 2), dtype=np.float32)])
