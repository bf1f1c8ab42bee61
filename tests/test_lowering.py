"""The lowered walk (:mod:`ebr_onnx.lowering`) against the rule-by-rule walk, where the independent references of
``test_rules_reference.py`` / ``test_torch_reference.py`` do not reach: negative activations and their warning, a
ReLU whose signal is not scaled by its output, a kept intermediate tensor, the recurrent methods' CNN part."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from ebr_onnx import Explainer
from ebr_onnx.app.demo import bundled_model
from ebr_onnx.app.preprocess import model_preprocess, preprocess
from ebr_onnx.app.synthetic import make_clip

RNG = np.random.default_rng(7)


def close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))


def conv_stack(make_model):
    """Conv → Relu → MaxPool → Conv → Relu ``r2`` → Flatten → MatMul (classes 5), on (N, 2, 6, 6)."""
    inits = {"w1": RNG.standard_normal((4, 2, 3, 3)).astype(np.float32),
             "w2": RNG.standard_normal((3, 4, 3, 3)).astype(np.float32),
             "fw": RNG.standard_normal((27, 5)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("MaxPool", ["r1"], ["m1"], kernel_shape=[2, 2], strides=[2, 2], name="pool1"),
             helper.make_node("Conv", ["m1", "w2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fw"], ["y"], name="fc")]
    return make_model(nodes, {"x": ["N", 2, 6, 6]}, ["y"], inits)


@pytest.mark.parametrize("layer", [None, "r1", "m1"])
@pytest.mark.parametrize("method", ["eb", "ceb", "grad"])
def test_explainer_lowered_equals_rules_with_negative_input(method, layer, make_model):
    """A mean-subtracted input: the positive-contribution rule, and the same warning naming ``conv1``."""
    model = conv_stack(make_model)
    x = RNG.uniform(-1, 1, (3, 2, 6, 6)).astype(np.float32)
    lowered = Explainer(model, threads=1)
    rules = Explainer(model, threads=1, lowering=False)
    got = lowered.explain(x, target=[0, 2, 4], method=method, layer=layer)
    ref = rules.explain(x, target=[0, 2, 4], method=method, layer=layer)
    close(got.signal, ref.signal)
    assert got.warnings == ref.warnings
    assert lowered.engine.kernels.holds("lowered") and not rules.engine.kernels.holds("lowered")
    if method == "eb" and layer is None:
        assert any("'conv1'" in w for w in got.warnings)


def lowered_graphs(monkeypatch) -> list:
    """The lowered walks' graphs, as their sessions are built."""
    from ebr_onnx.core.kernels import KernelCache

    built, session = [], KernelCache.session

    def record(self, model, weights=None, whole=False, **options):
        if whole:
            built.append(model.graph)
        return session(self, model, weights, whole, **options)

    monkeypatch.setattr(KernelCache, "session", record)
    return built


@pytest.mark.parametrize("low", [0.0, -1.0], ids=["input >= 0", "signed input"])
def test_first_conv_branch_follows_the_inputs_sign(low, make_model, monkeypatch):
    """The input is not non-negative by construction; the lowered conv1 reads its sign as the graph is built, as
    the rule does: an input ≥ 0 gets Eq. 8 itself (one Z and one transpose per conv: 4 convolutions in the graph),
    a signed one the positive-contribution form (2 more at conv1) and its warning; the signals equal the rules'."""
    model = conv_stack(make_model)
    x = RNG.uniform(low, 1, (2, 2, 6, 6)).astype(np.float32)
    ex, rules = Explainer(model, threads=1), Explainer(model, threads=1, lowering=False)
    built = lowered_graphs(monkeypatch)
    got, ref = ex.explain(x, target=1, method="eb"), rules.explain(x, target=1, method="eb")
    close(got.signal, ref.signal)
    assert got.warnings == ref.warnings and any("'conv1'" in w for w in got.warnings) == (low < 0)
    (graph,) = built
    assert sum(n.op_type in ("Conv", "ConvTranspose") for n in graph.node) == (4 if low == 0 else 6)


def test_relu_mask_applies_to_a_seed_that_is_not_scaled(make_model, backprop):
    """A seed straight at a ReLU output, non-zero where the ReLU is off: the lowered ReLU keeps its mask."""
    model = conv_stack(make_model)
    x = RNG.uniform(0, 1, (2, 2, 6, 6)).astype(np.float32)
    seed = {"r1": RNG.uniform(0.5, 1, (2, 4, 6, 6))}
    for mode in ("eb", "grad"):
        got, ctx = backprop(model, {"x": x}, seed, mode, lowered=True)
        ref, _ = backprop(model, {"x": x}, seed, mode)
        assert ctx.kernels.holds("lowered")
        close(got["x"], ref["x"])


@pytest.fixture(scope="module")
def clip_input() -> tuple[Path, np.ndarray]:
    model = bundled_model()
    x, _ = preprocess(make_clip(3).frames, model_preprocess(Explainer(model).graph))
    return model, x


@pytest.mark.parametrize("layer", [None, "conv2"])
@pytest.mark.parametrize("method", ["cebr", "ebr", "gradr"])
def test_recurrent_methods_cnn_part(method, layer, clip_input):
    """The bundled CNN-LSTM: the CNN part below the boundary lowered, the same maps and temporal curve."""
    model, x = clip_input
    lowered = Explainer(model)
    layer = layer and next(n.outputs[0] for n in lowered.graph.nodes if n.op_type == "Relu")
    got = lowered.explain(x, method=method, layer=layer)
    ref = Explainer(model, lowering=False).explain(x, method=method, layer=layer)
    close(got.signal, ref.signal, rtol=1e-4)
    close(got.temporal, ref.temporal, rtol=1e-4)
    assert lowered.engine.kernels.holds("lowered")


def test_one_session_serves_every_chunk_size(make_model, monkeypatch):
    """Chunks of 2 and 1 examples, then other inputs: the lowered graph is built once (it holds no batch size)."""
    model = conv_stack(make_model)
    ex, rules = Explainer(model, batch_size=2, threads=1), Explainer(model, lowering=False)
    built = lowered_graphs(monkeypatch)
    for seed in range(2):
        x = np.random.default_rng(seed).uniform(0, 1, (3, 2, 6, 6)).astype(np.float32)
        ref = rules.explain(x, target=1, method="eb")
        close(ex.explain(x, target=1, method="eb").signal, ref.signal)
    assert len(built) == 1


def test_a_graph_onnxruntime_refuses_falls_back_to_the_rules(make_model):
    """Where onnxruntime cannot build the lowered graph, the rules walk those nodes: the same signal, no error."""
    model = conv_stack(make_model)
    x = RNG.uniform(0, 1, (2, 2, 6, 6)).astype(np.float32)
    ex = Explainer(model, threads=1)
    session = ex.engine.kernels.session

    def refuse(model, weights=None, whole=False, **options):
        if whole:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : refused")
        return session(model, weights, whole, **options)

    ex.engine.kernels.session = refuse
    got = ex.explain(x, target=3, method="ceb")
    close(got.signal, Explainer(model, lowering=False).explain(x, target=3, method="ceb").signal)
    assert not ex.engine.kernels.holds("lowered")


@pytest.mark.parametrize("method", ["eb", "ceb", "grad"])
def test_examples_run_in_slices(method, make_model, monkeypatch):
    """One example per run of the lowered graph: the signals of the whole batch, the same warnings."""
    import ebr_onnx.lowering.run as lowering

    monkeypatch.setattr(lowering, "SLICE_BYTES", 1)
    model = conv_stack(make_model)
    x = RNG.uniform(-1, 1, (3, 2, 6, 6)).astype(np.float32)
    x[1] = np.abs(x[1])  # the minimum is negative in some slices only
    ex = Explainer(model, threads=1)
    runs = []
    session = ex.engine.kernels.session

    def counted(model, weights=None, whole=False, **options):
        built = session(model, weights, whole, **options)
        if whole:
            run = built.run
            built.run = lambda *a, **k: runs.append(1) or run(*a, **k)
        return built

    ex.engine.kernels.session = counted
    got = ex.explain(x, target=[0, 2, 4], method=method)
    ref = Explainer(model, lowering=False).explain(x, target=[0, 2, 4], method=method)
    close(got.signal, ref.signal)
    assert got.warnings == ref.warnings and len(runs) == 3


def biased_stack(make_model):
    """Conv (bias 0.5) → Relu ``r1`` → Conv (bias 0.2) → Relu → Flatten → MatMul (classes 3), on (N, 1, 6, 6): where
    an input patch is all zeros, ``Z = f(x, W⁺)`` of conv1 is 0 while its ReLU is on (the bias), so a signal arrives
    where ``⊘₀`` must guard."""
    rng = np.random.default_rng(3)
    inits = {"w1": rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "b1": np.full(3, 0.5, np.float32),
             "w2": rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "b2": np.full(2, 0.2, np.float32),
             "fw": rng.standard_normal((72, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fw"], ["y"], name="fc")]
    x = rng.uniform(0.1, 1, (2, 1, 6, 6)).astype(np.float32)
    x[..., :3] = 0  # conv1's patches at columns 0 and 1 read only zeros
    return make_model(nodes, {"x": ["N", 1, 6, 6]}, ["y"], inits), x


@pytest.mark.parametrize("method", ["eb", "ceb"])
def test_the_bias_guard_equals_the_exact_one_where_z_is_zero(method, make_model, monkeypatch, backprop):
    """conv1's ``Z`` is 0 under a signal (the premise is asserted): the lowered walk, whose convolutions guard ``⊘₀``
    by a bias of 2⁻¹⁰⁰ (no ``Z == 0`` test in its graph), gives the rules' signal (float64, exact guard)."""
    model, x = biased_stack(make_model)
    w_pos = np.maximum(np.asarray(Explainer(model).graph.constant("w1")), 0)
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    z = np.einsum("nchwij,mcij->nmhw", np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3)), w_pos)
    upper, _ = backprop(model, {"x": x}, np.ones((2, 3)), sources=["r1"])
    assert ((z == 0) & (upper["r1"] != 0)).any()
    built = lowered_graphs(monkeypatch)
    got = Explainer(model, threads=1).explain(x, target=1, method=method)
    ref = Explainer(model, threads=1, lowering=False).explain(x, target=1, method=method)
    close(got.signal, ref.signal)
    assert built and not any(n.op_type == "Equal" for graph in built for n in graph.node)


def test_a_signal_that_overflows_the_bias_guard_is_walked_again_exactly(make_model, monkeypatch, backprop):
    """A seed of 10³⁰: ``p / 2⁻¹⁰⁰`` overflows where ``Z = 0`` and the bias-guarded walk gives NaN; the walk runs
    again with the ``Z == 0`` tests and matches the rules (float64), with no NaN."""
    model, x = biased_stack(make_model)
    seed = np.full((2, 3), 1e30)
    built = lowered_graphs(monkeypatch)
    got, _ = backprop(model, {"x": x}, seed, lowered=True)
    ref, _ = backprop(model, {"x": x}, seed)
    assert np.isfinite(got["x"]).all()
    close(got["x"], ref["x"])
    assert [any(n.op_type == "Equal" for n in graph.node) for graph in built] == [False, True]


def test_a_walk_that_overflowed_the_bias_guard_keeps_the_exact_one(make_model, monkeypatch):
    """An explainer whose prior overflows the bias guard: the first call builds both graphs, later calls only the
    exact one; every call matches the rules."""
    model, x = biased_stack(make_model)
    prior = np.asarray([1e30, -1e30, 2e30])
    built = lowered_graphs(monkeypatch)
    ex, rules = Explainer(model, threads=1), Explainer(model, threads=1, lowering=False)
    ref = rules.explain(x, method="ceb", prior=prior).signal
    for _ in range(2):
        got = ex.explain(x, method="ceb", prior=prior).signal
        assert np.isfinite(got).all()
        close(got, ref)
    assert [any(n.op_type == "Equal" for n in graph.node) for graph in built] == [False, True]
