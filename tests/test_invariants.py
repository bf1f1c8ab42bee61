"""Invariants of the methods (spec §8): EB is non-negative and conserves mass layer to layer on ReLU nets (losing
exactly the share of units with Z = 0), a contrastive map sums to 0, gradient × input is the gradient times the
input, and models outside EB's assumptions (smooth activations, gates, negative inputs) give finite maps with a
warning naming the node."""
from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from ebr_onnx import Explainer

RNG = np.random.default_rng(7)


def _u(*shape: int, low: float = -0.3, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


LAYERS = ["x", "c1", "r1", "m1", "r2", "a2", "f", "r3"]


@pytest.fixture(scope="module")
def relu_net(make_model):
    """Conv–ReLU–MaxPool–Conv–ReLU–AveragePool–Flatten–Gemm–ReLU–Gemm with mostly positive weights, so that no unit
    is dead on a positive input (every Z > 0)."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["m1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("AveragePool", ["r2"], ["a2"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["a2"], ["f"]),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["g3"], transB=1),
        helper.make_node("Relu", ["g3"], ["r3"]),
        helper.make_node("Gemm", ["r3", "w4", "b4"], ["logits"], transB=1),
    ]
    weights = {"w1": _u(4, 3, 3, 3), "b1": _u(4, low=0, high=0.1), "w2": _u(6, 4, 3, 3),
               "b2": _u(6, low=0, high=0.1), "w3": _u(10, 36), "b3": _u(10, low=0, high=0.1),
               "w4": _u(5, 10, low=-1), "b4": _u(5, low=-0.1, high=0.1)}
    return make_model(nodes, {"x": ["N", 3, 8, 12]}, ["logits"], weights)


@pytest.mark.parametrize("layer", LAYERS)
def test_eb_is_non_negative_and_conserves_mass(relu_net, layer):
    x = RNG.uniform(0.1, 1.0, (2, 3, 8, 12)).astype(np.float32)
    r = Explainer(relu_net).explain(x, target=[1, 3], method="eb", layer=None if layer == "x" else layer)
    assert (r.signal >= 0).all()
    np.testing.assert_allclose(r.mass.layer, r.mass.top, rtol=1e-5)
    np.testing.assert_allclose(r.mass.top, 1.0)


def test_eb_loses_exactly_the_dead_units_share(make_model):
    """Hidden unit 2 has only negative input weights (Z = 0 there) but a positive value from its bias: the signal the
    top layer gives it is lost below, and nothing else is."""
    w1 = RNG.uniform(0.2, 1.0, (4, 3)).astype(np.float32)
    w1[:, 2] = -RNG.uniform(0.2, 1.0, 4)
    b1 = np.array([0.0, 0.0, 5.0], np.float32)
    w2 = RNG.uniform(0.2, 1.0, (3, 2)).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["y"])]
    model = make_model(nodes, {"x": [1, 4]}, ["y"], {"w1": w1, "b1": b1, "w2": w2})
    x = RNG.uniform(0.1, 0.5, (1, 4)).astype(np.float32)
    r = Explainer(model, dtype=np.float64).explain(x, target=1, method="eb")
    h = np.maximum(x.astype(np.float64) @ w1 + b1, 0)[0]
    assert h[2] > 0
    dead_share = h[2] * w2[2, 1] / (h @ w2[:, 1])
    np.testing.assert_allclose(r.mass.layer, 1 - dead_share, rtol=1e-7)
    np.testing.assert_allclose(r.mass.top, 1.0)


@pytest.mark.parametrize("layer", ["x", "r2", "r3"])
def test_contrastive_map_of_a_normalised_prior_sums_to_zero(relu_net, layer):
    x = RNG.uniform(0.1, 1.0, (2, 3, 8, 12)).astype(np.float32)
    ex = Explainer(relu_net, dtype=np.float64)
    for kwargs in ({"target": 2}, {"prior": np.array([0.1, 0.2, 0.4, 0.2, 0.1])}):
        r = ex.explain(x, method="ceb", layer=None if layer == "x" else layer, **kwargs)
        assert np.abs(r.signal).sum() > 1e-3
        np.testing.assert_allclose(r.signal.reshape(2, -1).sum(axis=1), 0.0, atol=1e-9)


@pytest.mark.parametrize("layer", ["x", "r1", "a2"])
def test_grad_x_input_is_grad_times_input(relu_net, layer):
    x = RNG.uniform(-1.0, 1.0, (2, 3, 8, 12)).astype(np.float32)
    ex = Explainer(relu_net, dtype=np.float64)
    name = None if layer == "x" else layer
    grad = ex.explain(x, target=4, method="grad", layer=name).signal
    gxi = ex.explain(x, target=4, method="grad_x_input", layer=name).signal
    activation = x if layer == "x" else ex.engine.runner.run({"x": x}, [layer])[layer]
    np.testing.assert_allclose(gxi, grad * activation, rtol=1e-12, atol=0)
    assert np.abs(gxi).sum() > 0


@pytest.fixture(scope="module")
def smooth_net(make_model):
    """Conv–Tanh–Conv–SiLU (Sigmoid-gated, as exporters write it)–Conv–Gelu–GlobalAveragePool–Flatten–Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Tanh", ["c1"], ["t1"], name="tanh1"),
        helper.make_node("Conv", ["t1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s2"], name="silu_sigmoid"),
        helper.make_node("Mul", ["c2", "s2"], ["g2"], name="silu_gate"),
        helper.make_node("Conv", ["g2", "w3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Gelu", ["c3"], ["e3"], name="gelu3"),
        helper.make_node("GlobalAveragePool", ["e3"], ["p"], name="gap"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4"], ["logits"], transB=1, name="classifier"),
    ]
    weights = {"w1": _u(4, 3, 3, 3, low=-1), "w2": _u(4, 4, 3, 3, low=-1), "w3": _u(5, 4, 3, 3, low=-1),
               "w4": _u(3, 5, low=-1)}
    return make_model(nodes, {"x": [1, 3, 6, 6]}, ["logits"], weights, opset=20)


@pytest.mark.parametrize("method", ["eb", "ceb"])
def test_smooth_activations_give_finite_maps_and_name_the_node(smooth_net, method):
    x = RNG.uniform(-1.0, 1.0, (1, 3, 6, 6)).astype(np.float32)
    r = Explainer(smooth_net).explain(x, target=0, method=method)
    assert np.isfinite(r.signal).all() and np.abs(r.signal).sum() > 0
    text = "\n".join(r.warnings)
    # One warning per kind, naming the first offending node in forward order (the walk meets Gelu first).
    assert "'tanh1' (Tanh)" in text and "'gelu3'" not in text and "A1" in text
    assert "'silu_gate'" not in text  # a Sigmoid gate: the gated operand takes the whole signal, unwarned
    assert "'conv1' (Conv) receives negative activations" in text
