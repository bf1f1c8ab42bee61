"""The rules of the ops real exported vision/audio/video models put on the signal path beyond the classic CNN set,
each against an independent reference on a tiny graph (one named case per variant):

* linear ops (Resize, Upsample, ConvTranspose, Einsum): their edges (j, i, w_ji) are read from onnxruntime's forward
  of every basis vector, then EB is paper Eq. 8 by loops over the edges (``eq8``; the positive-contribution form by
  loops where the input is signed) and the gradient is the transposed edges;
* routing ops (Pad, Tile, Cast): index codes pushed through onnx's reference evaluator;
* everything else: central finite differences of onnx's float64 reference evaluator for the gradient, and the
  documented EB equation written out in NumPy.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from test_rules_reference import close, eq8, finite_difference, forward, routed, transposed

from ebr_onnx.core.errors import EbrError

RNG = np.random.default_rng(2024)


def uniform(*shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


def i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


def f32(*values: float) -> np.ndarray:
    return np.array(values, np.float32)


def ort_edges(model, x_shape: tuple[int, ...]) -> list[tuple[int, str, int, float]]:
    """The edges (j, "x", i, w_ji) of a model affine in its input ``x``, from onnxruntime's forward of each basis
    vector (its value at 0, the bias, subtracted)."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    size = int(np.prod(x_shape))

    def run(v: np.ndarray) -> np.ndarray:
        return session.run(None, {"x": v.reshape(x_shape).astype(np.float32)})[0].astype(np.float64).ravel()

    base = run(np.zeros(size))
    edges = []
    for i in range(size):
        column = run(np.eye(size)[i]) - base
        edges += [(j, "x", i, float(w)) for j, w in enumerate(column) if w != 0]
    return edges


def typed(model, shape: tuple[int, ...]):
    """The model with its output declared as float of ``shape`` where onnx's inference left it untyped (function ops
    such as GroupNormalization)."""
    out = model.graph.output[0]
    if not out.type.tensor_type.elem_type:
        out.CopyFrom(helper.make_tensor_value_info(out.name, TensorProto.FLOAT, list(shape)))
    return model


def positive_contribution(x: np.ndarray, edges, p: np.ndarray) -> np.ndarray:
    """The positive-contribution form of Eq. 8 by loops (signed inputs): every edge contributes ``x_i w_ij`` where
    that product is positive; ``p_i = Σ_j p_j [x_i w_ij > 0] x_i w_ij / Σ_i' [x_i' w_i'j > 0] x_i' w_i'j``."""
    flat = x.astype(np.float64).ravel()
    z = np.zeros(p.size)
    for j, _, i, w in edges:
        z[j] += max(flat[i] * w, 0.0)
    out = np.zeros(flat.size)
    for j, _, i, w in edges:
        if z[j]:
            out[i] += max(flat[i] * w, 0.0) / z[j] * p.ravel()[j]
    return out.reshape(x.shape)


def check_linear(model, x: np.ndarray, backprop, signed: bool = False) -> None:
    """EB = Eq. 8 of onnxruntime's edges (positive-contribution form when ``signed``), grad = the transposed edges,
    and EB conserves the mass of a non-negative signal on the outputs with ``Z > 0`` (all of them for Resize)."""
    edges = ort_edges(model, x.shape)
    y = forward(model, {"x": x})[0]
    p = RNG.uniform(-1, 1, y.shape)
    got, _ = backprop(model, {"x": x}, p, "eb")
    close(got["x"], positive_contribution(x, edges, p) if signed else eq8({"x": x}, edges, p)["x"])
    close(backprop(model, {"x": x}, p, "grad")[0]["x"], transposed({"x": x}, edges, p)["x"])
    if not signed:
        positive, weight = uniform(*x.shape, low=0.1), np.abs(p)
        z = np.zeros(p.size)
        for j, _, i, w in edges:
            z[j] += positive.ravel()[i] * max(w, 0.0)
        got, _ = backprop(model, {"x": positive}, weight, "eb")
        np.testing.assert_allclose(got["x"].sum(), weight.ravel()[z > 0].sum(), rtol=1e-9)


def grad_by_differences(model, feeds: dict[str, np.ndarray], backprop, fn=None) -> None:
    """grad = central differences of onnx's float64 reference evaluator (or of ``fn``, a NumPy forward of the one
    input) for every input."""
    y = forward(model, feeds)[0]
    p = RNG.uniform(-1, 1, y.shape)
    got, _ = backprop(model, feeds, p, "grad")
    for name in feeds:
        close(got[name], finite_difference(model, feeds, name, p, fn=fn))


# -- SiLU / Swish / gates ---------------------------------------------------------------------------------------
GATE_CASES = {
    "silu": ([helper.make_node("Sigmoid", ["x"], ["s"]), helper.make_node("Mul", ["x", "s"], ["y"], name="gate")],
             {}),
    "silu_gate_first": ([helper.make_node("Sigmoid", ["x"], ["s"]),
                         helper.make_node("Mul", ["s", "x"], ["y"], name="gate")], {}),
    "swish_beta": ([helper.make_node("Mul", ["x", "beta"], ["bx"]), helper.make_node("Sigmoid", ["bx"], ["s"]),
                    helper.make_node("Mul", ["x", "s"], ["y"], name="gate")], {"beta": f32(1.7)}),
    "hardswish_written_out": ([helper.make_node("HardSigmoid", ["x"], ["s"], alpha=1 / 6, beta=0.5),
                               helper.make_node("Mul", ["x", "s"], ["y"], name="gate")], {}),
    "hardswish_keras": ([helper.make_node("Add", ["x", "three"], ["x3"]),
                         helper.make_node("Clip", ["x3", "zero", "six"], ["relu6"]),
                         helper.make_node("Mul", ["relu6", "sixth"], ["s"]),
                         helper.make_node("Mul", ["x", "s"], ["y"], name="gate")],
                        {"three": f32(3.0), "zero": np.float32(0.0), "six": np.float32(6.0), "sixth": f32(1 / 6)}),
    "squeeze_excitation": ([
        helper.make_node("GlobalAveragePool", ["x"], ["pool"]), helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w"], ["fc"], transB=1), helper.make_node("Sigmoid", ["fc"], ["s"]),
        helper.make_node("Reshape", ["s", "shape"], ["s4"]), helper.make_node("Mul", ["x", "s4"], ["y"], name="gate"),
    ], {"w": uniform(3, 3, low=-1), "shape": i64(1, 3, 1, 1)}),
}


@pytest.mark.parametrize("case", list(GATE_CASES))
def test_gated_operand_takes_the_whole_signal(case, make_model, backprop):
    """EB: ``p_x = p``, ``p_gate = 0`` (the gate's branch gets nothing, no warning); grad: the exact derivative."""
    nodes, inits = GATE_CASES[case]
    x = uniform(1, 3, 2, 2, low=-2, high=2)
    model = make_model(nodes, {"x": list(x.shape)}, ["y"], inits)
    p = RNG.uniform(-1, 1, x.shape)
    got, ctx = backprop(model, {"x": x}, p, "eb")
    close(got["x"], p)
    assert not any("signal-product" in w or "'gate'" in w for w in ctx.warnings)
    grad_by_differences(model, {"x": x}, backprop)


def test_a_clip_not_from_zero_is_no_gate(make_model, backprop):
    """``x · clip(x, −1, 1)``: not a gate (its range is not [0, b]): each operand gets p/2, warned."""
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["c"]), helper.make_node("Mul", ["x", "c"], ["y"], name="m")]
    model = make_model(nodes, {"x": [2, 3]}, ["y"], {"lo": np.float32(-1.0), "hi": np.float32(1.0)})
    x, p = uniform(2, 3, low=-2, high=2), RNG.uniform(-1, 1, (2, 3))
    got, ctx = backprop(model, {"x": x}, p, "eb")
    close(got["x"], p / 2 + p / 2 * (np.abs(x) <= 1))
    assert any("signal-product" in w and "'m'" in w for w in ctx.warnings)


def test_product_of_two_gates_is_split(make_model, backprop):
    """σ(a) ⊙ σ(b): neither operand is the gated value; each gets p/2 (through the Sigmoids unchanged), warned."""
    nodes = [helper.make_node("Sigmoid", ["a"], ["sa"]), helper.make_node("Sigmoid", ["b"], ["sb"]),
             helper.make_node("Mul", ["sa", "sb"], ["y"], name="two_gates")]
    model = make_model(nodes, {"a": [2, 3], "b": [2, 3]}, ["y"])
    feeds = {"a": uniform(2, 3, low=-1), "b": uniform(2, 3, low=-1)}
    p = RNG.uniform(-1, 1, (2, 3))
    got, ctx = backprop(model, feeds, p, "eb")
    close(got["a"], p / 2)
    close(got["b"], p / 2)
    assert any("signal-product" in w and "'two_gates'" in w for w in ctx.warnings)


# -- Max / Min / Where / Cast -----------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Max", "Min"])
def test_max_min_route_to_the_winner_with_broadcasting_and_ties(op, make_model, backprop):
    """Both modes: the winner takes the signal, a two-way tie splits it (= the central difference there); the
    operands' signals sum to p."""
    a, b, c = uniform(2, 3), uniform(3), uniform(2, 1)
    extreme = 2.0 if op == "Max" else -1.0
    a[0, 1] = b[1] = extreme  # a tie at the extreme, with c elsewhere
    model = make_model([helper.make_node(op, ["a", "b", "c"], ["y"])], {"a": [2, 3], "b": [3], "c": [2, 1]}, ["y"])
    feeds = {"a": a, "b": b, "c": c}
    p = RNG.uniform(-1, 1, (2, 3))
    eb, _ = backprop(model, feeds, p, "eb")
    grad, _ = backprop(model, feeds, p, "grad")
    for name in feeds:
        close(eb[name], grad[name])
        close(grad[name], finite_difference(model, feeds, name, p))
    np.testing.assert_allclose(sum(v.sum() for v in eb.values()), p.sum())
    assert np.isclose(eb["a"][0, 1], p[0, 1] / 2)


def test_max_with_a_constant_is_a_relu(make_model, backprop):
    x = uniform(2, 3, 4, low=-1)
    model = make_model([helper.make_node("Max", ["x", "zero"], ["y"])], {"x": list(x.shape)}, ["y"],
                       {"zero": f32(0.0)})
    p = RNG.uniform(-1, 1, x.shape)
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], p * (x > 0))


@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_where_with_a_constant_condition_routes(mode, make_model, backprop):
    condition = np.array([True, False, True])
    model = make_model([helper.make_node("Where", ["c", "a", "b"], ["y"])], {"a": [2, 3], "b": [2, 1]}, ["y"],
                       {"c": condition})
    feeds = {"a": uniform(2, 3, low=-1), "b": uniform(2, 1, low=-1)}
    p = RNG.uniform(-1, 1, (2, 3))
    got, _ = backprop(model, feeds, p, mode)
    close(got["a"], p * condition)
    close(got["b"], (p * ~condition).sum(axis=1, keepdims=True))
    if mode == "grad":
        grad_by_differences(model, feeds, backprop)


def test_where_with_a_computed_condition(make_model, backprop):
    """A leaky ReLU written out, ``Where(x > 0, x, 0.1·x)``: the boolean condition takes no signal."""
    nodes = [helper.make_node("Greater", ["x", "zero"], ["positive"]),
             helper.make_node("Mul", ["x", "slope"], ["leak"]),
             helper.make_node("Where", ["positive", "x", "leak"], ["y"])]
    model = make_model(nodes, {"x": [2, 5]}, ["y"], {"zero": f32(0.0), "slope": f32(0.1)})
    x = uniform(2, 5, low=-1)
    grad_by_differences(model, {"x": x}, backprop)
    p = RNG.uniform(-1, 1, x.shape)
    # EB: the X branch routes p where x > 0; the leak branch is Eq. 8 of 0.1·x, which passes nothing where x < 0
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], p * (x > 0))


@pytest.mark.parametrize("case", ["Cast_double_and_back", "CastLike"])
def test_cast_is_the_identity(case, make_model, backprop):
    if case == "CastLike":
        nodes, inits, opset = [helper.make_node("CastLike", ["x", "like"], ["y"])], {"like": f32(0.0)}, 15
    else:
        nodes = [helper.make_node("Cast", ["x"], ["d"], to=TensorProto.DOUBLE),
                 helper.make_node("Cast", ["d"], ["y"], to=TensorProto.FLOAT)]
        inits, opset = {}, 17
    model = make_model(nodes, {"x": [2, 3]}, ["y"], inits, opset=opset)
    x, p = uniform(2, 3, low=-1), RNG.uniform(-1, 1, (2, 3))
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], p)


# -- unary math -------------------------------------------------------------------------------------------------
UNARY_CASES = {
    "Sqrt": ([helper.make_node("Sqrt", ["x"], ["y"])], {}, (0.1, 2.0), 17),
    "Exp": ([helper.make_node("Exp", ["x"], ["y"])], {}, (-2.0, 2.0), 17),
    "Log": ([helper.make_node("Log", ["x"], ["y"])], {}, (0.1, 2.0), 17),
    "Reciprocal": ([helper.make_node("Reciprocal", ["x"], ["y"])], {}, (0.5, 2.0), 17),
    "Pow_square": ([helper.make_node("Pow", ["x", "e"], ["y"])], {"e": f32(2.0)}, (-2.0, 2.0), 17),
    "Pow_root": ([helper.make_node("Pow", ["x", "e"], ["y"])], {"e": f32(0.5)}, (0.1, 2.0), 17),
    "Pow_broadcast_exponent": ([helper.make_node("Pow", ["x", "e"], ["y"])], {"e": f32(1.0, 2.0, 3.0, 0.5)},
                               (0.1, 2.0), 17),
    "Mish": ([helper.make_node("Mish", ["x"], ["y"])], {}, (-3.0, 3.0), 18),
}


@pytest.mark.parametrize("case", list(UNARY_CASES))
def test_smooth_unary_ops(case, make_model, backprop):
    """grad: the exact derivative (finite differences); EB: the identity, with a warning naming the node."""
    nodes, inits, (low, high), opset = UNARY_CASES[case]
    nodes[-1].name = f"op_{case}"
    x = uniform(2, 3, 4, low=low, high=high)
    model = make_model(nodes, {"x": list(x.shape)}, ["y"], inits, opset=opset)
    grad_by_differences(model, {"x": x}, backprop)
    p = RNG.uniform(-1, 1, x.shape)
    got, ctx = backprop(model, {"x": x}, p, "eb")
    close(got["x"], p)
    assert any(f"'op_{case}'" in w and "non-relu-activation" in w for w in ctx.warnings)


@pytest.mark.parametrize("op", ["Neg", "Abs"])
def test_neg_and_abs(op, make_model, backprop):
    """EB: Eq. 8 of ``y = s ⊙ x`` (s = −1, sign(x)) in its positive-contribution form: Neg passes ``p ⊙ [x < 0]``,
    Abs ``p ⊙ [x ≠ 0]``; grad: ``−p``, ``p ⊙ sign(x)``."""
    x = uniform(3, 4, low=-1)
    x[0, 0] = 0.0
    model = make_model([helper.make_node(op, ["x"], ["y"])], {"x": [3, 4]}, ["y"])
    p = RNG.uniform(-1, 1, x.shape)
    weights = -np.ones(x.size) if op == "Neg" else np.sign(x).ravel()
    edges = [(i, "x", i, float(w)) for i, w in enumerate(weights)]
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], positive_contribution(x, edges, p))
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], p * ((x < 0) if op == "Neg" else (x != 0)))
    grad_by_differences(model, {"x": x}, backprop)


def test_add_of_a_negation_is_sub(make_model, backprop):
    """EB of ``Add(a, Neg(b))`` equals EB of ``Sub(a, b)`` (the reason for Neg's positive-contribution rule)."""
    feeds = {"a": uniform(3, 4, low=-1), "b": uniform(3, 4, low=-1)}
    p = RNG.uniform(-1, 1, (3, 4))
    written = make_model([helper.make_node("Neg", ["b"], ["nb"]), helper.make_node("Add", ["a", "nb"], ["y"])],
                         {"a": [3, 4], "b": [3, 4]}, ["y"])
    sub = make_model([helper.make_node("Sub", ["a", "b"], ["y"])], {"a": [3, 4], "b": [3, 4]}, ["y"])
    got, ref = backprop(written, feeds, p)[0], backprop(sub, feeds, p)[0]
    for name in feeds:
        close(got[name], ref[name])


def test_pow_with_a_signal_exponent(make_model, backprop):
    """grad: both operands (finite differences); EB refuses, naming the node."""
    model = make_model([helper.make_node("Pow", ["a", "b"], ["y"], name="power")], {"a": [2, 3], "b": [3]}, ["y"])
    feeds = {"a": uniform(2, 3, low=0.5, high=2), "b": uniform(3, low=-1, high=2)}
    grad_by_differences(model, feeds, backprop)
    with pytest.raises(EbrError, match="'power'.*constant exponent"):
        backprop(model, feeds, np.ones((2, 3)), "eb")


# -- reductions -------------------------------------------------------------------------------------------------
REDUCE_CASES = {
    "axis1_keepdims": (dict(axes=[1]), {}, 13, (2, 3, 4)),
    "axes02_dropped": (dict(axes=[0, 2], keepdims=0), {}, 13, (2, 3, 4)),
    "axes_input_opset18": ({}, {"ax": i64(-1)}, 18, (2, 3, 4)),
    "all_axes": (dict(keepdims=0), {}, 13, (2, 3, 4)),
}


def _reduce_node(op: str, case: str):
    attrs, inits, opset, shape = REDUCE_CASES[case]
    return helper.make_node(op, ["x", *inits], ["y"], **attrs), inits, opset, shape


def _reduced_groups(shape: tuple[int, ...], attrs: dict, inits: dict) -> tuple[list[int], list[list[int]]]:
    """The reduced axes, and for each output (row-major) the flat input indices it reduces, in row-major order."""
    rank = len(shape)
    axes = attrs.get("axes", [int(a) for a in inits["ax"]] if inits else list(range(rank)))
    axes = sorted(a % rank for a in axes)
    kept = [a for a in range(rank) if a not in axes]
    codes = np.arange(int(np.prod(shape))).reshape(shape).transpose(kept + axes)
    return axes, [list(row) for row in codes.reshape(int(np.prod([shape[a] for a in kept])), -1)]


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce_max_min_route_to_the_first_extreme(case, op, make_model, backprop):
    node, inits, opset, shape = _reduce_node(op, case)
    model = make_model([node], {"x": list(shape)}, ["y"], inits, opset=opset)
    x = np.round(uniform(*shape), 1)  # many ties: the first extreme in row-major order wins
    y = forward(model, {"x": x})[0]
    p = RNG.uniform(-1, 1, y.shape)
    _, groups = _reduced_groups(shape, REDUCE_CASES[case][0], inits)
    ref = np.zeros(x.size)
    pick = np.argmax if op == "ReduceMax" else np.argmin
    for j, members in enumerate(groups):
        ref[members[int(pick(x.ravel()[members]))]] += p.ravel()[j]
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], ref.reshape(shape))
    distinct = RNG.permutation(x.size).reshape(shape).astype(np.float32)
    grad_by_differences(model, {"x": distinct}, backprop)


@pytest.mark.parametrize("case", list(REDUCE_CASES))
def test_reduce_l2(case, make_model, backprop):
    """EB: ``p'_i = p x_i² / Σ x²`` (Eq. 8 with contributions x_i²/y ≥ 0; mass conserved); grad: finite
    differences."""
    node, inits, opset, shape = _reduce_node("ReduceL2", case)
    model = make_model([node], {"x": list(shape)}, ["y"], inits, opset=opset)
    x = uniform(*shape, low=-1)
    y = forward(model, {"x": x})[0]
    p = RNG.uniform(-1, 1, y.shape)
    _, groups = _reduced_groups(shape, REDUCE_CASES[case][0], inits)
    ref = np.zeros(x.size)
    square = x.astype(np.float64).ravel() ** 2
    for j, members in enumerate(groups):
        ref[members] += p.ravel()[j] * square[members] / square[members].sum()
    got, _ = backprop(model, {"x": x}, p, "eb")
    close(got["x"], ref.reshape(shape))
    np.testing.assert_allclose(got["x"].sum(), p.sum())
    grad_by_differences(model, {"x": x}, backprop)


# -- Pad / Tile -------------------------------------------------------------------------------------------------
PAD_CASES = {
    "constant_attr_opset2": (helper.make_node("Pad", ["x"], ["y"], pads=[0, 1, 2, 0, 2, 1], value=0.5), {}, 2),
    "constant_inputs_opset13": (helper.make_node("Pad", ["x", "pads", "value"], ["y"]),
                                {"pads": i64(0, 2, 1, 0, 1, 2), "value": f32(-3.0)}, 13),
    "reflect": (helper.make_node("Pad", ["x", "pads"], ["y"], mode="reflect"), {"pads": i64(0, 2, 3, 0, 1, 3)}, 13),
    "edge": (helper.make_node("Pad", ["x", "pads"], ["y"], mode="edge"), {"pads": i64(0, 3, 1, 0, 1, 4)}, 13),
    "wrap_opset19": (helper.make_node("Pad", ["x", "pads"], ["y"], mode="wrap"), {"pads": i64(0, 2, 5, 0, 1, 3)}, 19),
    "axes_opset18": (helper.make_node("Pad", ["x", "pads", "", "axes"], ["y"], mode="reflect"),
                     {"pads": i64(2, 1, 0, 2), "axes": i64(-1, 1)}, 18),
    "negative_pads_crop": (helper.make_node("Pad", ["x", "pads"], ["y"]), {"pads": i64(0, -1, 2, 0, 2, -1)}, 13),
}


@pytest.mark.parametrize("case", list(PAD_CASES))
def test_pad_routes_back(case, make_model, backprop):
    """Both modes: p goes back to where each value came from, summed where reflect/edge/wrap read a value several
    times; constant pads take none (index codes through onnx's reference evaluator)."""
    node, inits, opset = PAD_CASES[case]
    model = make_model([node], {"x": [2, 3, 4]}, ["y"], inits, opset=opset)
    x = uniform(2, 3, 4, low=-1)
    p = RNG.uniform(-1, 1, forward(model, {"x": x})[0].shape)
    if case == "negative_pads_crop":  # onnx's reference evaluator refuses negative pads: onnxruntime's edges
        ref = transposed({"x": x}, ort_edges(model, x.shape), p)["x"]
    else:
        ref = routed(model, {"x": x}, "x", {"y": p})
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], ref)


@pytest.mark.parametrize("repeats", [(1, 2, 3), (3, 1, 1), (2, 2, 2)])
def test_tile_sums_over_the_tiles(repeats, make_model, backprop):
    model = make_model([helper.make_node("Tile", ["x", "r"], ["y"])], {"x": [2, 3, 2]}, ["y"], {"r": i64(*repeats)})
    x = uniform(2, 3, 2)
    p = RNG.uniform(-1, 1, forward(model, {"x": x})[0].shape)
    ref = routed(model, {"x": x}, "x", {"y": p})
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], ref)


# -- Resize / Upsample ------------------------------------------------------------------------------------------
def _resize(attrs: dict, scales=None, sizes=None, opset: int = 13):
    inputs = ["x", "", "s" if scales is not None else "", "z" if sizes is not None else ""]
    while not inputs[-1]:
        inputs.pop()
    inits = {k: v for k, v in (("s", scales), ("z", sizes)) if v is not None}
    return helper.make_node("Resize", inputs, ["y"], **attrs), inits, opset


RESIZE_CASES = {
    "nearest_x2": _resize(dict(mode="nearest"), f32(1, 1, 2, 2)),
    "nearest_floor_asymmetric_down": _resize(dict(mode="nearest", nearest_mode="floor",
                                                  coordinate_transformation_mode="asymmetric"), f32(1, 1, 0.7, 0.5)),
    "nearest_ceil_align_corners_sizes": _resize(dict(mode="nearest", nearest_mode="ceil",
                                                     coordinate_transformation_mode="align_corners"),
                                                sizes=i64(1, 2, 5, 7)),
    "nearest_prefer_ceil_x1.5": _resize(dict(mode="nearest", nearest_mode="round_prefer_ceil"), f32(1, 1, 1.5, 1.5)),
    "nearest_tf_half_pixel_for_nn": _resize(dict(mode="nearest", coordinate_transformation_mode="tf_half_pixel_for_nn"),
                                            f32(1, 1, 2, 1.5)),
    "linear_x2": _resize(dict(mode="linear"), f32(1, 1, 2, 2)),
    "linear_align_corners_sizes": _resize(dict(mode="linear", coordinate_transformation_mode="align_corners"),
                                          sizes=i64(1, 2, 6, 5)),
    "linear_asymmetric": _resize(dict(mode="linear", coordinate_transformation_mode="asymmetric"), f32(1, 1, 1.5, 2)),
    "linear_pytorch_half_pixel_down": _resize(dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
                                              f32(1, 1, 0.4, 0.5)),
    "linear_half_pixel_symmetric": _resize(dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"),
                                           f32(1, 1, 1.7, 2.5), opset=19),
    "cubic_x2": _resize(dict(mode="cubic"), f32(1, 1, 2, 2)),
    "cubic_a-0.5_exclude_outside": _resize(dict(mode="cubic", cubic_coeff_a=-0.5, exclude_outside=1),
                                           f32(1, 1, 2, 1.5)),
    "cubic_align_corners_down": _resize(dict(mode="cubic", coordinate_transformation_mode="align_corners"),
                                        sizes=i64(1, 2, 2, 3)),
    "axes_opset18": _resize(dict(mode="linear", axes=[3, 2]), f32(2, 1.5), opset=18),
    "keep_aspect_not_larger": _resize(dict(mode="nearest", axes=[2, 3], keep_aspect_ratio_policy="not_larger"),
                                      sizes=i64(7, 7), opset=18),
    "opset10_nearest": (helper.make_node("Resize", ["x", "s"], ["y"], mode="nearest"), {"s": f32(1, 1, 2, 1.5)}, 10),
    "opset10_linear": (helper.make_node("Resize", ["x", "s"], ["y"], mode="linear"), {"s": f32(1, 1, 1.5, 2)}, 10),
    "Upsample7_nearest_attr": (helper.make_node("Upsample", ["x"], ["y"], scales=[1.0, 1.0, 2.0, 3.0]), {}, 7),
    "Upsample9_linear": (helper.make_node("Upsample", ["x", "s"], ["y"], mode="linear"), {"s": f32(1, 1, 2, 1.5)}, 9),
}


@pytest.mark.parametrize("case", list(RESIZE_CASES))
def test_resize(case, make_model, backprop):
    """EB: Eq. 8 with the positive part of onnxruntime's interpolation weights; grad: their transpose."""
    node, inits, opset = RESIZE_CASES[case]
    model = make_model([node], {"x": [1, 2, 3, 4]}, ["y"], inits, opset=opset)
    x = uniform(1, 2, 3, 4)
    x.ravel()[::5] = 0.0
    check_linear(model, x, backprop)


@pytest.mark.parametrize("case", ["cubic_x2", "cubic_align_corners_down", "linear_x2"])
def test_resize_signed_input(case, make_model, backprop):
    """Signed inputs: the positive-contribution form, ``W⁻`` of the 2-D cubic weights included (products of one
    negative tap and one positive)."""
    node, inits, opset = RESIZE_CASES[case]
    model = make_model([node], {"x": [1, 2, 3, 4]}, ["y"], inits, opset=opset)
    check_linear(model, uniform(1, 2, 3, 4, low=-1), backprop, signed=True)


@pytest.mark.parametrize("case", ["tf_crop_and_resize", "antialias"])
def test_resize_unsupported_variants_name_the_node(case, make_model, backprop):
    if case == "antialias":
        node = helper.make_node("Resize", ["x", "", "s"], ["y"], mode="linear", antialias=1, name="resize_node")
        inits = {"s": f32(1, 1, 0.5, 0.5)}
    else:
        node = helper.make_node("Resize", ["x", "roi", "s"], ["y"], mode="linear", name="resize_node",
                                coordinate_transformation_mode="tf_crop_and_resize")
        inits = {"roi": f32(0, 0, 0.1, 0.2, 1, 1, 0.9, 0.8), "s": f32(1, 1, 2, 2)}
    model = make_model([node], {"x": [1, 2, 4, 4]}, ["y"], inits, opset=18)
    x = uniform(1, 2, 4, 4)
    p = np.ones(forward(model, {"x": x})[0].shape)
    for mode in ("eb", "grad"):
        with pytest.raises(EbrError, match=f"Resize node 'resize_node'.*{case}.*supported"):
            backprop(model, {"x": x}, p, mode)


# -- ConvTranspose ----------------------------------------------------------------------------------------------
CONV_TRANSPOSE_CASES = {
    "plain": ((1, 2, 3, 3), (2, 3, 3, 3), {}),
    "stride2_pads_output_padding": ((1, 2, 3, 3), (2, 3, 3, 2), dict(strides=[2, 2], pads=[1, 0, 1, 1],
                                                                     output_padding=[1, 0])),
    "groups2_dilation2": ((2, 4, 3, 3), (4, 1, 2, 2), dict(group=2, dilations=[2, 2], pads=[1, 1, 0, 0])),
    "same_upper": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_UPPER")),
    "same_lower": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], auto_pad="SAME_LOWER")),
    "output_shape": ((1, 2, 3, 3), (2, 2, 3, 3), dict(strides=[2, 2], output_shape=[6, 7])),
    "1d_stride_pads": ((1, 2, 5), (2, 3, 3), dict(strides=[2], pads=[1, 2], output_padding=[1])),
    "3d_stride_pads": ((1, 2, 2, 3, 3), (2, 2, 2, 3, 2), dict(strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 0],
                                                               output_padding=[1, 0, 0])),
}


@pytest.mark.parametrize("case", list(CONV_TRANSPOSE_CASES))
def test_conv_transpose(case, make_model, backprop):
    x_shape, w_shape, attrs = CONV_TRANSPOSE_CASES[case]
    w = uniform(*w_shape, low=-1)
    b = uniform(w_shape[1] * attrs.get("group", 1), low=-1)
    model = make_model([helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], {"x": list(x_shape)},
                       ["y"], {"w": w, "b": b})
    x = uniform(*x_shape)
    x.ravel()[::4] = 0.0
    check_linear(model, x, backprop)


def test_conv_transpose_signed_input(make_model, backprop):
    x_shape, w_shape, attrs = CONV_TRANSPOSE_CASES["stride2_pads_output_padding"]
    model = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], **attrs)], {"x": list(x_shape)}, ["y"],
                       {"w": uniform(*w_shape, low=-1)})
    check_linear(model, uniform(*x_shape, low=-1), backprop, signed=True)


def test_conv_transpose_4d_is_refused():
    from ebr_onnx.core.graph import Node
    from ebr_onnx.rules.linear import conv_transpose_geometry

    node = Node("up4d", "ConvTranspose", "", ("x", "w"), ("y",), {})
    with pytest.raises(EbrError, match="ConvTranspose node 'up4d' is 4-D.*supports 1-D, 2-D and 3-D"):
        conv_transpose_geometry(node, (1, 1, 2, 2, 2, 2), (1, 1, 2, 2, 2, 2), (1, 1, 3, 3, 3, 3))


# -- Einsum -----------------------------------------------------------------------------------------------------
EINSUM_CASES = {
    "bij,jk->bik": ((2, 3, 4), {"w": (4, 5)}, ["x", "w"]),
    "nchw,oc->nohw": ((1, 3, 2, 2), {"w": (4, 3)}, ["x", "w"]),
    "oc,nchw->nohw": ((1, 3, 2, 2), {"w": (4, 3)}, ["w", "x"]),
    "ij,jk": ((3, 4), {"w": (4, 2)}, ["x", "w"]),
    "...ij,jk->...ik": ((2, 2, 3, 4), {"w": (4, 3)}, ["x", "w"]),
    "bij,k->bk": ((2, 3, 2), {"w": (4,)}, ["x", "w"]),
    "bi,ij,jk->bk": ((2, 3), {"u": (3, 4), "v": (4, 2)}, ["x", "u", "v"]),
    "ij->ji": ((3, 4), {}, ["x"]),
    "ij,k->ij": ((3, 4), {"w": (3,)}, ["x", "w"]),
}


@pytest.mark.parametrize("equation", list(EINSUM_CASES))
def test_einsum_with_one_signal_operand(equation, make_model, backprop):
    """EB: Eq. 8 with the constant operands contracted into one weight, positive part of the product (two constants
    included); grad: the transpose."""
    x_shape, constants, inputs = EINSUM_CASES[equation]
    inits = {k: uniform(*s, low=-1) for k, s in constants.items()}
    model = make_model([helper.make_node("Einsum", inputs, ["y"], equation=equation)], {"x": list(x_shape)}, ["y"],
                       inits, opset=13)
    x = uniform(*x_shape)
    x.ravel()[::3] = 0.0
    check_linear(model, x, backprop)
    check_linear(model, uniform(*x_shape, low=-1), backprop, signed=True)


def test_einsum_with_two_signal_operands(make_model, backprop):
    """grad: both operands (finite differences); EB refuses, naming the node and the equation."""
    model = make_model([helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik", name="attention")],
                       {"a": [2, 2, 3], "b": [2, 3, 2]}, ["y"], opset=13)
    feeds = {"a": uniform(2, 2, 3, low=-1), "b": uniform(2, 3, 2, low=-1)}
    grad_by_differences(model, feeds, backprop)
    with pytest.raises(EbrError, match="'attention'.*bij,bjk->bik.*exactly one signal operand"):
        backprop(model, feeds, np.ones((2, 2, 2)), "eb")


def test_einsum_diagonal_of_a_signal_is_refused(make_model, backprop):
    model = make_model([helper.make_node("Einsum", ["x"], ["y"], equation="ii->i", name="diag")], {"x": [3, 3]},
                       ["y"], opset=13)
    with pytest.raises(EbrError, match="'diag'.*repeats a subscript"):
        backprop(model, {"x": uniform(3, 3)}, np.ones(3), "grad")


# -- normalisations ---------------------------------------------------------------------------------------------
NORM_CASES = {
    "InstanceNormalization": (helper.make_node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=1e-3),
                              {"g": (3,), "b": (3,)}, 17),
    "LayerNormalization_last": (helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"]),
                                {"g": (4,), "b": (4,)}, 17),
    "LayerNormalization_axis1": (helper.make_node("LayerNormalization", ["x", "g"], ["y"], axis=1, epsilon=1e-3),
                                 {"g": (3, 2, 4)}, 17),
    "GroupNormalization": (helper.make_node("GroupNormalization", ["x", "g", "b"], ["y"], num_groups=3,
                                            epsilon=1e-3), {"g": (6,), "b": (6,)}, 21),
}


def _group_norm(x: np.ndarray, g: np.ndarray, b: np.ndarray, groups: int = 3, eps: float = 1e-3) -> np.ndarray:
    """GroupNormalization (opset 21) in float64: onnx's evaluator computes it in float32 (stash_type)."""
    grouped = x.reshape(x.shape[0], groups, -1)
    normal = (grouped - grouped.mean(axis=2, keepdims=True)) / np.sqrt(grouped.var(axis=2, keepdims=True) + eps)
    return normal.reshape(x.shape) * g.reshape(1, -1, 1, 1) + b.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("case", list(NORM_CASES))
def test_normalisations(case, make_model, backprop):
    """grad: the exact derivative through the statistics (finite differences); EB: the signal copied through."""
    node, params, opset = NORM_CASES[case]
    shape = (2, 6, 2, 2) if "Group" in case else (2, 3, 2, 4)
    inits = {k: uniform(*s, low=-2, high=2) for k, s in params.items()}
    model = typed(make_model([node], {"x": list(shape)}, ["y"], inits, opset=opset), shape)
    x = uniform(*shape, low=-1)
    fn = (lambda v: _group_norm(v, inits["g"], inits["b"])) if "Group" in case else None
    if fn is not None:
        close(fn(x.astype(np.float64)), forward(model, {"x": x})[0].astype(np.float64))
    grad_by_differences(model, {"x": x}, backprop, fn=fn)
    p = RNG.uniform(-1, 1, shape)
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], p)


def test_layer_norm_statistics_outputs_take_no_signal(make_model, backprop):
    """A signal at LayerNormalization's Mean output is refused in grad (only Y's derivative is implemented)."""
    node = helper.make_node("LayerNormalization", ["x", "g"], ["y", "mean"], name="ln")
    model = make_model([node], {"x": [2, 3]}, ["y", "mean"], {"g": uniform(3)})
    with pytest.raises(EbrError, match="LayerNormalization node 'ln'.*Mean or InvStdDev.*Y only"):
        backprop(model, {"x": uniform(2, 3)}, {"mean": np.ones((2, 1))}, "grad")


# -- the device path --------------------------------------------------------------------------------------------
DEVICE_CASES = {
    "Pad_reflect": ([PAD_CASES["reflect"][0]], PAD_CASES["reflect"][1], 13, (2, 3, 4)),
    "Tile": ([helper.make_node("Tile", ["x", "r"], ["y"])], {"r": i64(1, 2, 2)}, 13, (2, 3, 4)),
    "Resize_cubic": ([RESIZE_CASES["cubic_x2"][0]], RESIZE_CASES["cubic_x2"][1], 13, (1, 2, 3, 4)),
    "ConvTranspose": ([helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2], output_padding=[1, 1])],
                      {"w": uniform(2, 3, 3, 3, low=-1)}, 13, (1, 2, 3, 3)),
    "Einsum": ([helper.make_node("Einsum", ["x", "w"], ["y"], equation="nchw,oc->nohw")], {"w": uniform(4, 2, low=-1)},
               13, (1, 2, 3, 3)),
    "Max_Where": ([helper.make_node("Max", ["x", "c"], ["m"]), helper.make_node("Where", ["mask", "m", "x"], ["y"])],
                  {"c": f32(0.2), "mask": np.array([True, False, True, True])}, 13, (2, 3, 4)),
    "ReduceMax_ReduceL2": ([helper.make_node("ReduceMax", ["x"], ["m"], axes=[2]),
                            helper.make_node("ReduceL2", ["m"], ["y"], axes=[1])], {}, 13, (2, 3, 4)),
    "LayerNorm_Neg_Abs": ([helper.make_node("LayerNormalization", ["x", "g"], ["n"]),
                           helper.make_node("Neg", ["n"], ["m"]), helper.make_node("Abs", ["m"], ["y"])],
                          {"g": uniform(4, low=-1)}, 17, (2, 3, 4)),
    "Pow_SiLU_GroupNorm": ([helper.make_node("Pow", ["x", "e"], ["q"]), helper.make_node("Sigmoid", ["q"], ["s"]),
                            helper.make_node("Mul", ["q", "s"], ["n"]),
                            helper.make_node("GroupNormalization", ["n", "g", "b"], ["y"], num_groups=1)],
                           {"e": f32(2.0), "g": uniform(3, low=-1), "b": uniform(3)}, 21, (2, 3, 4)),
}


@pytest.fixture
def device_module():
    """The strict host stand-in of CuPy (``tests/device_shim.py``)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from device_shim import make_module

    return make_module()


@pytest.mark.parametrize("case", list(DEVICE_CASES))
def test_rules_run_on_the_device_path(case, device_module, make_model, backprop):
    """Every new rule's array code runs on the CuPy stand-in (no NumPy on device arrays) and gives NumPy's result."""
    nodes, inits, opset, shape = DEVICE_CASES[case]
    model = typed(make_model(nodes, {"x": list(shape)}, ["y"], inits, opset=opset), shape)
    x = uniform(*shape, low=-1)
    p = RNG.uniform(-1, 1, forward(model, {"x": x})[0].shape)
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode, xp=device_module)[0]["x"], backprop(model, {"x": x}, p, mode)[0]["x"])


# -- a PyTorch export ------------------------------------------------------------------------------------------
def _modern_net(torch):
    """Reflect-padded Conv–SiLU–ConvTranspose (groups)–GroupNorm–bilinear downsampling–LayerNorm–Max–squeeze-excitation
    gate–Einsum–amax–Linear, as PyTorch writes them."""
    nn, functional = torch.nn, torch.nn.functional

    class Modern(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
            self.up = nn.ConvTranspose2d(4, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
            self.norm = nn.GroupNorm(2, 4)
            self.layer_norm = nn.LayerNorm(8)
            self.excite = nn.Linear(4, 4)
            self.mix = nn.Parameter(torch.randn(6, 4))
            self.fc = nn.Linear(6, 5)

        def forward(self, x):
            h = functional.silu(self.conv(x))
            h = self.norm(self.up(h))
            h = functional.interpolate(h, scale_factor=0.5, mode="bilinear", align_corners=False)
            h = torch.maximum(self.layer_norm(h), 0.1 * h)
            h = h * torch.sigmoid(self.excite(h.mean((2, 3))))[:, :, None, None]
            return self.fc(torch.einsum("nchw,oc->nohw", h, self.mix).amax((2, 3)))

    return Modern().eval()


def test_pytorch_export_grad_matches_autograd():
    """The gradient through a PyTorch export of these ops equals autograd's; EB gives a finite map, and the SiLU and
    squeeze-excitation products are recognised as gates (no signal-product warning)."""
    torch = pytest.importorskip("torch")
    from test_torch_reference import export

    from ebr_onnx import Explainer

    torch.manual_seed(3)
    model, x = _modern_net(torch), torch.rand(1, 3, 8, 8)
    proto = export(model, x, opset_version=17)
    ops = {n.op_type for n in proto.graph.node}
    assert {"Pad", "Sigmoid", "ConvTranspose", "InstanceNormalization", "Resize", "LayerNormalization", "Max",
            "Einsum", "ReduceMax"} <= ops
    xd = x.double().requires_grad_()
    (ref,) = torch.autograd.grad(model.double()(xd)[:, 2].sum(), xd)
    explainer = Explainer(proto, dtype=np.float64)
    close(explainer.explain(x.numpy(), target=2, method="grad").signal, ref.numpy())
    r = explainer.explain(x.numpy(), target=2, method="eb")
    assert np.isfinite(r.signal).all() and np.abs(r.signal).sum() > 0
    assert not any("signal-product" in w for w in r.warnings)
