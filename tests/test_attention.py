"""EB through attention: a MatMul of two signal tensors, against the Eq. 8 loop reference.

``softmax(Q Kᵀ) @ V``: the attention weights act as constant weights (as the gates inside LSTM cells), so V takes
the whole signal by Eq. 8 with them as W and the weights take none. ``Q @ Kᵀ`` (no operand a Softmax's output): each
operand takes half, by Eq. 8 with the other operand as W. The gradient is the product rule (finite differences).
"""
from __future__ import annotations

import numpy as np
from onnx import helper
from test_rules_reference import eq8, f32

SHAPES = {"q": [1, 3, 4], "k": [1, 4, 5], "v": [1, 5, 2]}


def edges(a_name: str, a: np.ndarray, w: np.ndarray, left: bool) -> list[tuple[int, str, int, float]]:
    """The edges of ``y = a @ w`` (``left``) or ``y = w @ a`` to the operand ``a``, batch 1."""
    out = []
    if left:                      # y[i, j] = Σ_k a[i, k] w[k, j]
        rows, inner, cols = a.shape[1], a.shape[2], w.shape[2]
        for i in range(rows):
            for j in range(cols):
                for k in range(inner):
                    out.append((i * cols + j, a_name, i * inner + k, float(w[0, k, j])))
    else:                         # y[i, j] = Σ_k w[i, k] a[k, j]
        rows, inner, cols = w.shape[1], a.shape[1], a.shape[2]
        for i in range(rows):
            for j in range(cols):
                for k in range(inner):
                    out.append((i * cols + j, a_name, k * cols + j, float(w[0, i, k])))
    return out


def test_attention_weights_act_as_constant_weights(make_model, backprop):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]),
             helper.make_node("Softmax", ["s"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["y"], name="attend")]
    model = make_model(nodes, SHAPES, ["y"])
    feeds = {"q": f32(1, 3, 4), "k": f32(1, 4, 5), "v": f32(1, 5, 2)}
    p = f32(1, 3, 2)
    got, ctx = backprop(model, feeds, p)
    s = feeds["q"][0] @ feeds["k"][0]
    a = (np.exp(s) / np.exp(s).sum(axis=-1, keepdims=True))[None]
    want = eq8({"v": feeds["v"]}, edges("v", feeds["v"], a, left=False), p)["v"]
    np.testing.assert_allclose(got["v"], want, rtol=1e-5)
    assert np.abs(got["q"]).max() == 0 and np.abs(got["k"]).max() == 0
    assert abs(got["v"].sum() - p.sum()) < 1e-5                                # Eq. 8 conserves the mass
    assert not any("signal-product" in w for w in ctx.warnings)


def test_scores_split_half_to_each_operand(make_model, backprop):
    model = make_model([helper.make_node("MatMul", ["q", "k"], ["s"], name="scores")],
                       {"q": SHAPES["q"], "k": SHAPES["k"]}, ["s"])
    feeds = {"q": f32(1, 3, 4), "k": f32(1, 4, 5)}
    p = f32(1, 3, 5)
    got, ctx = backprop(model, feeds, p)
    want_q = eq8({"q": feeds["q"]}, edges("q", feeds["q"], feeds["k"], left=True), p / 2)["q"]
    want_k = eq8({"k": feeds["k"]}, edges("k", feeds["k"], feeds["q"], left=False), p / 2)["k"]
    np.testing.assert_allclose(got["q"], want_q, rtol=1e-5)
    np.testing.assert_allclose(got["k"], want_k, rtol=1e-5)
    assert abs(got["q"].sum() + got["k"].sum() - p.sum()) < 1e-5
    assert any("half the signal" in w for w in ctx.warnings)


def test_gradient_is_the_product_rule(make_model, backprop):
    nodes = [helper.make_node("MatMul", ["q", "k"], ["s"]),
             helper.make_node("Softmax", ["s"], ["a"], axis=-1),
             helper.make_node("MatMul", ["a", "v"], ["y"])]
    model = make_model(nodes, SHAPES, ["y"])
    feeds = {k: f32(*v, low=-1.0) for k, v in SHAPES.items()}
    p = f32(1, 3, 2, low=-1.0)
    got, _ = backprop(model, feeds, p, mode="grad")

    def f(x: dict[str, np.ndarray]) -> float:
        s = x["q"][0].astype(np.float64) @ x["k"][0]
        a = np.exp(s - s.max(axis=-1, keepdims=True))
        a /= a.sum(axis=-1, keepdims=True)
        return float(((a @ x["v"][0]) * p[0]).sum())

    eps = 1e-4
    for name in SHAPES:
        numeric = np.zeros(feeds[name].shape)
        for index in np.ndindex(*feeds[name].shape):
            up = {k: v.astype(np.float64) for k, v in feeds.items()}
            down = {k: v.astype(np.float64) for k, v in feeds.items()}
            up[name][index] += eps
            down[name][index] -= eps
            numeric[index] = (f(up) - f(down)) / (2 * eps)
        np.testing.assert_allclose(got[name], numeric, rtol=1e-4, atol=1e-6)
