"""Every op rule against an independent reference, one tiny graph per variant.

References: EB is paper Eq. 8 applied literally by loops over (parent, child, weight) edges; the edges of each linear
op are first checked against onnxruntime's forward. Gradients are central finite differences of onnx's float64
reference evaluator, or the transposed edges. Routing ops are checked by pushing index codes through the op.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from ebr_onnx.core.forward import ForwardRunner
from ebr_onnx.core.graph import ModelGraph

RNG = np.random.default_rng(1234)


def close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1.0, float(np.abs(ref).max())))


def f32(*shape: int, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    return RNG.uniform(low, high, shape).astype(np.float32)


# -- independent references -------------------------------------------------------------------------------------
def eq8(x: dict[str, np.ndarray], edges: list[tuple[int, str, int, float]], p: np.ndarray) -> dict[str, np.ndarray]:
    """Paper Eq. 8 by loops: Z_j = Σ_i x_i w⁺_ij; P(i|j) = x_i w⁺_ij / Z_j (0 if Z_j = 0); p_i = Σ_j P(i|j) p_j."""
    flat = {k: v.astype(np.float64).ravel() for k, v in x.items()}
    z = np.zeros(p.size)
    for j, name, i, w in edges:
        z[j] += flat[name][i] * max(w, 0.0)
    out = {k: np.zeros(v.size) for k, v in flat.items()}
    for j, name, i, w in edges:
        if z[j] != 0:
            out[name][i] += flat[name][i] * max(w, 0.0) / z[j] * p.ravel()[j]
    return {k: out[k].reshape(x[k].shape) for k in x}


def transposed(x: dict[str, np.ndarray], edges: list[tuple[int, str, int, float]], p: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The gradient of a linear op from its edges: p_i = Σ_j w_ij p_j."""
    out = {k: np.zeros(v.size) for k, v in x.items()}
    for j, name, i, w in edges:
        out[name][i] += w * p.ravel()[j]
    return {k: out[k].reshape(x[k].shape) for k in x}


def edge_forward(x: dict[str, np.ndarray], edges, shape) -> np.ndarray:
    """y_j = Σ_i w_ij x_i, to check the edges against onnxruntime."""
    y = np.zeros(int(np.prod(shape)))
    for j, name, i, w in edges:
        y[j] += w * float(x[name].ravel()[i])
    return y.reshape(shape)


def forward(model, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = ModelGraph(model)
    values = ForwardRunner(graph).run(feeds, graph.outputs)
    return [values[o] for o in graph.outputs]


def float64_evaluator(model) -> ReferenceEvaluator:
    """onnx's reference evaluator on a float64 copy of the model (float initializers and types widened)."""
    wide = onnx.ModelProto()
    wide.CopyFrom(model)
    for init in wide.graph.initializer:
        if init.data_type == onnx.TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float64), init.name))
    for vi in list(wide.graph.input) + list(wide.graph.output):
        if vi.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            vi.type.tensor_type.elem_type = onnx.TensorProto.DOUBLE
    del wide.graph.value_info[:]
    return ReferenceEvaluator(wide)


def finite_difference(model, feeds: dict[str, np.ndarray], source: str, seed: np.ndarray, h: float = 1e-6,
                      fn=None) -> np.ndarray:
    """∂/∂x Σ seed ⊙ f(x) by central differences in float64, of ``fn`` (a NumPy forward of the source) or else of
    onnx's reference evaluator run on a float64 copy of the model."""
    base = {k: np.asarray(v, np.float64) for k, v in feeds.items()}
    if fn is None:
        ev = float64_evaluator(model)
        fn = lambda v: ev.run(None, {**base, source: v})[0]  # noqa: E731
    x = base[source]
    grad = np.zeros(x.size)
    for i in range(x.size):
        ys = []
        for step in (h, -h):
            moved = x.copy().ravel()
            moved[i] += step
            ys.append(fn(moved.reshape(x.shape)))
        grad[i] = float((seed * (ys[0] - ys[1])).sum()) / (2 * h)
    return grad.reshape(x.shape)


def routed(model, feeds: dict[str, np.ndarray], source: str, seeds: dict[str, np.ndarray]) -> np.ndarray:
    """The transpose of a routing op: push codes 1…n through it and send each output's seed back to its code."""
    codes = np.arange(1, feeds[source].size + 1, dtype=np.float64).reshape(feeds[source].shape)
    outs = float64_evaluator(model).run(None, {**feeds, source: codes})
    names = [o.name for o in model.graph.output]
    ref = np.zeros(codes.size)
    for name, seed in seeds.items():
        for code, s in zip(np.ravel(outs[names.index(name)]), np.ravel(seed)):
            if code >= 1:
                ref[int(code) - 1] += s
    return ref.reshape(codes.shape)


def unit_edges(shapes: dict[str, tuple[int, ...]], out_shape: tuple[int, ...], weights: dict[str, np.ndarray] | None
               = None) -> list[tuple[int, str, int, float]]:
    """The edges of a broadcasting elementwise op: output j has one parent in each operand."""
    edges = []
    for name, shape in shapes.items():
        index = np.broadcast_to(np.arange(int(np.prod(shape))).reshape(shape), out_shape).ravel()
        w = np.broadcast_to(weights[name], out_shape).ravel() if weights and name in weights else np.ones(index.size)
        edges += [(j, name, int(i), float(wj)) for j, (i, wj) in enumerate(zip(index, w))]
    return edges


# -- Conv -------------------------------------------------------------------------------------------------------
def conv_edges(x_shape, w, strides, pads, dilations, group):
    """Edges of a convolution on any number of spatial axes (1-D: as 2-D of unit height), skipping padded positions."""
    spatial = len(x_shape) - 2
    m_, cg = w.shape[:2]
    kernel = w.shape[2:]
    out = [(x_shape[2 + a] + pads[a] + pads[a + spatial] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1
           for a in range(spatial)]
    out_shape = (x_shape[0], m_, *out)
    edges = []
    for n, m, *o in itertools.product(*(range(v) for v in out_shape)):
        j = np.ravel_multi_index((n, m, *o), out_shape)
        for k, *kk in itertools.product(range(cg), *(range(v) for v in kernel)):
            pos = [o[a] * strides[a] - pads[a] + kk[a] * dilations[a] for a in range(spatial)]
            if all(0 <= p < x_shape[2 + a] for a, p in enumerate(pos)):
                c = (m // (m_ // group)) * cg + k
                edges.append((int(j), "x", int(np.ravel_multi_index((n, c, *pos), x_shape)), float(w[(m, k, *kk)])))
    return edges, out_shape


CONV_CASES = {
    "3x3_pad1": dict(x=(1, 2, 5, 5), w=(3, 2, 3, 3), attrs=dict(pads=[1, 1, 1, 1]), pads=(1, 1, 1, 1)),
    "stride2_asym_pads": dict(x=(2, 2, 6, 5), w=(3, 2, 3, 2), attrs=dict(strides=[2, 2], pads=[1, 0, 0, 1]),
                              strides=(2, 2), pads=(1, 0, 0, 1)),
    "dilation2": dict(x=(1, 2, 7, 7), w=(2, 2, 3, 3), attrs=dict(dilations=[2, 2], pads=[2, 2, 2, 2]),
                      dilations=(2, 2), pads=(2, 2, 2, 2)),
    "groups2": dict(x=(1, 4, 5, 5), w=(6, 2, 3, 3), attrs=dict(group=2, pads=[1, 1, 1, 1]), group=2,
                    pads=(1, 1, 1, 1)),
    "depthwise": dict(x=(1, 3, 4, 4), w=(3, 1, 2, 2), attrs=dict(group=3), group=3),
    "same_upper": dict(x=(1, 2, 5, 5), w=(2, 2, 4, 4), attrs=dict(auto_pad="SAME_UPPER"), pads=(1, 1, 2, 2)),
    "1d_stride_pad": dict(x=(1, 2, 9), w=(3, 2, 3), attrs=dict(strides=[2], pads=[1, 2]), strides=(1, 2),
                          pads=(0, 1, 0, 2)),
}


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("mode", ["eb", "grad"])
@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv(case, mode, lowered, make_model, backprop):
    c = CONV_CASES[case]
    x, w, b = f32(*c["x"]), f32(*c["w"], low=-1), f32(c["w"][0], low=-1)
    x.ravel()[::7] = 0  # some zero activations, so that some Z are 0
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **c["attrs"])], {"x": list(x.shape)}, ["y"],
                       {"w": w, "b": b})
    x4, w4 = (x[:, :, None], w[:, :, None]) if x.ndim == 3 else (x, w)
    edges, out_shape = conv_edges(x4.shape, w4, c.get("strides", (1, 1)), c.get("pads", (0, 0, 0, 0)),
                                  c.get("dilations", (1, 1)), c.get("group", 1))
    y = forward(model, {"x": x})[0]
    close(edge_forward({"x": x4}, edges, out_shape).reshape(y.shape) + b.reshape((1, -1) + (1,) * (y.ndim - 2)), y)
    p = RNG.uniform(-1, 1, y.shape)
    got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
    reference = eq8 if mode == "eb" else transposed
    close(got["x"], reference({"x": x4}, edges, p)["x"].reshape(x.shape))
    assert lowered == bool(ctx.kernels and ctx.kernels.holds("lowered")) or x.ndim == 3  # 1-D convs run rule by rule


# -- Gemm / MatMul ----------------------------------------------------------------------------------------------
def matmul_edges(a_shape, b: np.ndarray, scale: float = 1.0, trans_a: bool = False, trans_b: bool = False,
                 signal: str = "a"):
    """Edges of y = scale · A' B' where one operand (``signal``) is the child and the other holds the weights."""
    a_rows, a_cols = (a_shape[1], a_shape[0]) if trans_a else a_shape
    bb = b.T if trans_b else b
    out_shape = (a_rows, bb.shape[1])
    edges = []
    for n, j, k in itertools.product(range(a_rows), range(bb.shape[1]), range(a_cols)):
        parent = n * bb.shape[1] + j
        child = k * a_rows + n if trans_a else n * a_cols + k
        edges.append((parent, signal, child, scale * float(bb[k, j])))
    return edges, out_shape


GEMM_CASES = {
    "plain": dict(a=(3, 4), b=(4, 5), attrs={}),
    "transA": dict(a=(4, 3), b=(4, 5), attrs=dict(transA=1)),
    "transB_alpha_beta": dict(a=(3, 4), b=(5, 4), attrs=dict(transB=1, alpha=0.5, beta=2.0)),
    "transA_transB": dict(a=(4, 3), b=(5, 4), attrs=dict(transA=1, transB=1, alpha=1.5)),
}


@pytest.mark.parametrize("mode", ["eb", "grad"])
@pytest.mark.parametrize("case", list(GEMM_CASES))
def test_gemm_signal_a(case, mode, make_model, backprop):
    c = GEMM_CASES[case]
    a, b = f32(*c["a"]), f32(*c["b"], low=-1)
    bias = f32(5, low=-1)
    model = make_model([helper.make_node("Gemm", ["a", "b", "c"], ["y"], **c["attrs"])], {"a": list(a.shape)}, ["y"],
                       {"b": b, "c": bias})
    attrs = c["attrs"]
    edges, out_shape = matmul_edges(a.shape, b, attrs.get("alpha", 1.0), attrs.get("transA", 0),
                                    attrs.get("transB", 0))
    close(edge_forward({"a": a}, edges, out_shape) + attrs.get("beta", 1.0) * bias, forward(model, {"a": a})[0])
    p = RNG.uniform(-1, 1, out_shape)
    got, _ = backprop(model, {"a": a}, p, mode)
    close(got["a"], (eq8 if mode == "eb" else transposed)({"a": a}, edges, p)["a"])


@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_gemm_signal_b(mode, make_model, backprop):
    """Gemm with a constant A and the signal in B: y = A Bᵀ (transB), so each output (n, j) reads B[j, :]."""
    a, b = f32(3, 4, low=-1), f32(2, 4)
    model = make_model([helper.make_node("Gemm", ["a", "b"], ["y"], transB=1)], {"b": [2, 4]}, ["y"], {"a": a})
    edges = [(n * 2 + j, "b", j * 4 + k, float(a[n, k])) for n in range(3) for j in range(2) for k in range(4)]
    close(edge_forward({"b": b}, edges, (3, 2)), forward(model, {"b": b})[0])
    p = RNG.uniform(-1, 1, (3, 2))
    got, _ = backprop(model, {"b": b}, p, mode)
    close(got["b"], (eq8 if mode == "eb" else transposed)({"b": b}, edges, p)["b"])


@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_matmul_batched(mode, make_model, backprop):
    x, w = f32(2, 3, 4), f32(4, 5, low=-1)
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": [2, 3, 4]}, ["y"], {"w": w})
    edges, _ = matmul_edges((6, 4), w)
    edges = [(j, "x", i, wt) for j, _, i, wt in edges]
    close(edge_forward({"x": x}, edges, (2, 3, 5)), forward(model, {"x": x})[0])
    p = RNG.uniform(-1, 1, (2, 3, 5))
    got, _ = backprop(model, {"x": x}, p, mode)
    close(got["x"], (eq8 if mode == "eb" else transposed)({"x": x}, edges, p)["x"])


@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_matmul_constant_first(mode, make_model, backprop):
    w, x = f32(5, 3, low=-1), f32(3, 4)
    model = make_model([helper.make_node("MatMul", ["w", "x"], ["y"])], {"x": [3, 4]}, ["y"], {"w": w})
    edges = [(n * 4 + j, "x", k * 4 + j, float(w[n, k])) for n in range(5) for j in range(4) for k in range(3)]
    close(edge_forward({"x": x}, edges, (5, 4)), forward(model, {"x": x})[0])
    p = RNG.uniform(-1, 1, (5, 4))
    got, _ = backprop(model, {"x": x}, p, mode)
    close(got["x"], (eq8 if mode == "eb" else transposed)({"x": x}, edges, p)["x"])


# -- pooling ----------------------------------------------------------------------------------------------------
POOL_CASES = {
    "2x2_s2": dict(x=(1, 2, 6, 6), attrs=dict(kernel_shape=[2, 2], strides=[2, 2])),
    "2x2_s2_pads_ceil": dict(x=(2, 2, 5, 7), attrs=dict(kernel_shape=[2, 2], strides=[2, 2], pads=[1, 0, 0, 1],
                                                        ceil_mode=1)),
    "3x2_s3": dict(x=(1, 2, 7, 6), attrs=dict(kernel_shape=[3, 2], strides=[3, 2])),
    "3x3_s2_pad1": dict(x=(2, 2, 7, 7), attrs=dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    "3x3_s1_asym_pads": dict(x=(1, 1, 5, 6), attrs=dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1])),
    "ceil_mode": dict(x=(1, 2, 6, 6), attrs=dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    "ceil_mode_pads": dict(x=(1, 1, 7, 6), attrs=dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 1, 1, 1],
                                                        ceil_mode=1)),
    "dilation2": dict(x=(1, 2, 7, 7), attrs=dict(kernel_shape=[2, 2], dilations=[2, 2]), opset=19),
    "same_upper": dict(x=(1, 1, 5, 5), attrs=dict(kernel_shape=[2, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    "1d": dict(x=(1, 3, 9), attrs=dict(kernel_shape=[3], strides=[2], pads=[1, 1])),
}


def pool_windows_nd(x_shape, out_shape, attrs):
    """For each output position: its window's in-range input positions in row-major order, and the count of window
    positions inside the explicitly padded frame (any number of spatial axes)."""
    spatial = len(x_shape) - 2
    k = list(attrs["kernel_shape"])
    s = list(attrs.get("strides", [1] * spatial))
    d = list(attrs.get("dilations", [1] * spatial))
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    windows = {}
    for n, c, *o in itertools.product(*(range(v) for v in out_shape)):
        members, count = [], 0
        for kk in itertools.product(*(range(v) for v in k)):
            pos = [o[a] * s[a] - pads[a] + kk[a] * d[a] for a in range(spatial)]
            count += int(all(-pads[a] <= p < x_shape[2 + a] + pads[a + spatial] for a, p in enumerate(pos)))
            if all(0 <= p < x_shape[2 + a] for a, p in enumerate(pos)):
                members.append(int(np.ravel_multi_index((n, c, *pos), x_shape)))
        windows[int(np.ravel_multi_index((n, c, *o), out_shape))] = (members, count)
    return windows


def pool_windows(x_shape, out_shape, attrs):
    """For each output position (n, c, oh, ow): the in-range input positions of its window in row-major order, and
    the count of window positions inside the explicitly padded frame."""
    one_d = len(x_shape) == 3
    x4 = (x_shape[0], x_shape[1], 1, x_shape[2]) if one_d else x_shape
    o4 = (out_shape[0], out_shape[1], 1, out_shape[2]) if one_d else out_shape
    k = ([1] if one_d else []) + list(attrs["kernel_shape"])
    s = ([1] if one_d else []) + list(attrs.get("strides", [1] * (2 - one_d)))
    d = ([1] if one_d else []) + list(attrs.get("dilations", [1] * (2 - one_d)))
    pads = list(attrs.get("pads", [0] * (4 - 2 * one_d)))
    if attrs.get("auto_pad") == "SAME_UPPER":  # total = (out−1)·s + k − size, the smaller half first
        tot = [max(0, (o4[2 + a] - 1) * s[a] + (k[a] - 1) * d[a] + 1 - x4[2 + a]) for a in range(2)]
        pads = [tot[0] // 2, tot[1] // 2, tot[0] - tot[0] // 2, tot[1] - tot[1] // 2]
    pads = [0, pads[0], 0, pads[1]] if one_d else pads
    return pool_windows_nd(x4, o4, dict(kernel_shape=k, strides=s, dilations=d, pads=pads))


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool(case, lowered, make_model, backprop):
    check_max_pool(POOL_CASES[case], lowered, make_model, backprop)


def check_max_pool(c, lowered, make_model, backprop):
    """MaxPool (1, 2 or 3 spatial axes), rule by rule or lowered: EB and grad both route each output's signal to the
    first maximum of its window."""
    x = f32(*c["x"], low=-1)
    x.ravel()[1::5] = x.ravel()[::5][:x.ravel()[1::5].size]  # ties: the first maximum in row-major order wins
    model = make_model([helper.make_node("MaxPool", ["x"], ["y"], **c["attrs"])], {"x": list(x.shape)}, ["y"],
                       opset=c.get("opset", 17))
    y = forward(model, {"x": x})[0]
    p = RNG.uniform(-1, 1, y.shape)
    ref = np.zeros(x.size)
    for j, (members, _) in (pool_windows_nd if x.ndim == 5 else pool_windows)(x.shape, y.shape, c["attrs"]).items():
        best = members[0]
        for i in members[1:]:
            best = i if x.ravel()[i] > x.ravel()[best] else best
        assert x.ravel()[best] == y.ravel()[j]
        ref[best] += p.ravel()[j]
    for mode in ("eb", "grad"):
        got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
        close(got["x"], ref.reshape(x.shape))
        assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered


def test_max_pool_indices_output_takes_no_signal(make_model, backprop):
    x = f32(1, 2, 4, 4)
    node = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], strides=[2, 2])
    model = make_model([node], {"x": [1, 2, 4, 4]}, ["y", "idx"])
    p = RNG.uniform(size=(1, 2, 2, 2))
    got, _ = backprop(model, {"x": x}, {"y": p})
    assert np.isclose(got["x"].sum(), p.sum()) and np.count_nonzero(got["x"]) == p.size


@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_average_pool(case, include_pad, make_model, backprop):
    c = POOL_CASES[case]
    attrs = {**c["attrs"], "count_include_pad": include_pad}
    x = f32(*c["x"], low=0.05)
    model = make_model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], {"x": list(x.shape)}, ["y"],
                       opset=c.get("opset", 17))
    y = forward(model, {"x": x})[0]
    windows = pool_windows(x.shape, y.shape, attrs)
    mean = [(j, "x", i, 1.0 / (count if include_pad else len(members)))
            for j, (members, count) in windows.items() for i in members]
    close(edge_forward({"x": x}, mean, y.shape), y)
    p = RNG.uniform(-1, 1, y.shape)
    got, _ = backprop(model, {"x": x}, p, "eb")
    close(got["x"], eq8({"x": x}, mean, p)["x"])
    got, _ = backprop(model, {"x": x}, p, "grad")
    close(got["x"], transposed({"x": x}, mean, p)["x"])


def test_average_pool_eb_guard_non_positive_sum(make_model, backprop):
    """A window whose sum is ≤ 0 passes nothing (spec §2.2 guard Σ > 0); the others follow Eq. 8."""
    x = np.array([[[[1.0, 2.0, -1.0, -2.0], [3.0, 1.0, 1.0, 0.5]]]], np.float32)
    model = make_model([helper.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                       {"x": [1, 1, 2, 4]}, ["y"])
    got, _ = backprop(model, {"x": x}, np.array([[[[2.0, 5.0]]]]))
    close(got["x"], np.array([[[[2 / 7 * 1, 2 / 7 * 2, 0, 0], [2 / 7 * 3, 2 / 7 * 1, 0, 0]]]]))


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_global_pools(lowered, make_model, backprop):
    check_global_pools((2, 3, 4, 5), lowered, make_model, backprop)


def check_edges(model, x, edges, p, lowered, backprop):
    """A one-input model that is linear in ``x`` with the weights ``edges``: its forward is the edges' sums, EB with
    the top signal ``p`` is Eq. 8 over the edges and grad their transpose (rule by rule or ``lowered``)."""
    close(edge_forward({"x": x}, edges, p.shape), forward(model, {"x": x})[0])
    for mode, reference in (("eb", eq8), ("grad", transposed)):
        got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
        close(got["x"], reference({"x": x}, edges, p)["x"])
        assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered


def check_global_pools(shape, lowered, make_model, backprop):
    """GlobalAveragePool (Eq. 8 with unit weights; grad: the mean's transpose) and GlobalMaxPool (the first maximum
    takes the signal) over every spatial axis, rule by rule or lowered."""
    x = f32(*shape)
    x[0, 1] = 0  # a channel with zero sum passes nothing in EB
    p = RNG.uniform(-1, 1, shape[:2] + (1,) * (len(shape) - 2))
    avg = make_model([helper.make_node("GlobalAveragePool", ["x"], ["y"])], {"x": list(x.shape)}, ["y"])
    size = math.prod(shape[2:])
    windows = {j: list(range(j * size, j * size + size)) for j in range(shape[0] * shape[1])}
    edges = [(j, "x", i, 1 / size) for j, members in windows.items() for i in members]
    check_edges(avg, x, edges, p, lowered, backprop)
    x[1, 2].flat[:2] = 0.5  # a tie: the first maximum wins
    mx = make_model([helper.make_node("GlobalMaxPool", ["x"], ["y"])], {"x": list(x.shape)}, ["y"])
    ref = np.zeros(x.size)
    for j, members in windows.items():
        ref[members[int(np.argmax(x.ravel()[members]))]] = p.ravel()[j]
    for mode in ("eb", "grad"):
        got, ctx = backprop(mx, {"x": x}, p, mode, lowered=lowered)
        close(got["x"], ref.reshape(x.shape))
        assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered


# -- ReLU family ------------------------------------------------------------------------------------------------
RELU_CASES = {
    "Relu": (helper.make_node("Relu", ["x"], ["y"]), {}, 17),
    "LeakyRelu": (helper.make_node("LeakyRelu", ["x"], ["y"], alpha=0.2), {}, 17),
    "PRelu": (helper.make_node("PRelu", ["x", "slope"], ["y"]), {"slope": np.array([[[0.1]], [[-0.3]]], np.float32)},
              17),
    "Clip_attrs": (helper.make_node("Clip", ["x"], ["y"], min=-0.3, max=0.5), {}, 6),
    "Clip_inputs": (helper.make_node("Clip", ["x", "lo", "hi"], ["y"]),
                    {"lo": np.array(-0.3, np.float32), "hi": np.array(0.5, np.float32)}, 13),
    "Clip_min_only": (helper.make_node("Clip", ["x", "lo"], ["y"]), {"lo": np.array(0.2, np.float32)}, 13),
    "Clip_max_only": (helper.make_node("Clip", ["x", "", "hi"], ["y"]), {"hi": np.array(0.2, np.float32)}, 13),
}


@pytest.mark.parametrize("case", list(RELU_CASES))
def test_relu_family_is_the_gradient_in_both_modes(case, make_model, backprop):
    node, inits, opset = RELU_CASES[case]
    x = f32(1, 2, 3, 4, low=-1)
    model = make_model([node], {"x": list(x.shape)}, ["y"], inits, opset=opset)
    p = RNG.uniform(-1, 1, x.shape)
    ref = finite_difference(model, {"x": x}, "x", p)
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, p, mode)[0]["x"], ref)


# -- smooth activations, softmax, normalisations ------------------------------------------------------------------
_erf = np.vectorize(math.erf)


def _softmax_2d(x: np.ndarray) -> np.ndarray:
    """Softmax before opset 13: over the input flattened to 2-D at axis 1."""
    flat = x.reshape(x.shape[0], -1)
    e = np.exp(flat - flat.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).reshape(x.shape)


def _lrn(x: np.ndarray, size: int, alpha: float = 0.5, beta: float = 0.75, bias: float = 1.5) -> np.ndarray:
    """LRN as the ONNX operator defines it (channel window [c − ⌊(size−1)/2⌋, c + ⌈(size−1)/2⌉])."""
    square = np.zeros_like(x)
    for c in range(x.shape[1]):
        square[:, c] = (x[:, max(0, c - (size - 1) // 2):c + size // 2 + 1] ** 2).sum(axis=1)
    return x / (bias + alpha / size * square) ** beta


# onnx's reference evaluator computes Erf in float32 and implements LRN and opset-11 Softmax differently from the
# operator definition (checked against onnxruntime): those cases carry a NumPy float64 forward instead.
SMOOTH_CASES = {
    "Sigmoid": (helper.make_node("Sigmoid", ["x"], ["y"]), 17, None),
    "Tanh": (helper.make_node("Tanh", ["x"], ["y"]), 17, None),
    "Elu": (helper.make_node("Elu", ["x"], ["y"], alpha=0.7), 17, None),
    "Selu": (helper.make_node("Selu", ["x"], ["y"]), 17, None),
    "Softplus": (helper.make_node("Softplus", ["x"], ["y"]), 17, None),
    "Softsign": (helper.make_node("Softsign", ["x"], ["y"]), 17, None),
    "HardSigmoid": (helper.make_node("HardSigmoid", ["x"], ["y"], alpha=0.3, beta=0.4), 17, None),
    "HardSwish": (helper.make_node("HardSwish", ["x"], ["y"]), 17, None),
    "Erf": (helper.make_node("Erf", ["x"], ["y"]), 17, _erf),
    "Gelu": (helper.make_node("Gelu", ["x"], ["y"]), 20, lambda x: x * 0.5 * (1 + _erf(x / math.sqrt(2)))),
    "Gelu_tanh": (helper.make_node("Gelu", ["x"], ["y"], approximate="tanh"), 20, None),
    "Softmax_axis1": (helper.make_node("Softmax", ["x"], ["y"], axis=1), 13, None),
    "Softmax_default_axis": (helper.make_node("Softmax", ["x"], ["y"]), 13, None),
    "Softmax_opset11_flattened": (helper.make_node("Softmax", ["x"], ["y"], axis=1), 11, _softmax_2d),
    "LogSoftmax_axis2": (helper.make_node("LogSoftmax", ["x"], ["y"], axis=2), 13, None),
    "LogSoftmax_opset11": (helper.make_node("LogSoftmax", ["x"], ["y"]), 11, lambda x: np.log(_softmax_2d(x))),
}


@pytest.mark.parametrize("case", list(SMOOTH_CASES))
def test_smooth_activations(case, make_model, backprop):
    """grad: the exact derivative (finite differences); EB: the identity, with a warning naming the node."""
    node, opset, fn = SMOOTH_CASES[case]
    x = f32(2, 3, 4, low=-4, high=4)
    x.ravel()[0] = 1e-4  # Gelu's series branch near 0
    node.name = f"act_{case}"
    model = make_model([node], {"x": list(x.shape)}, ["y"], opset=opset)
    if fn is not None:
        close(fn(x.astype(np.float64)), forward(model, {"x": x})[0].astype(np.float64))
    p = RNG.uniform(-1, 1, x.shape)
    close(backprop(model, {"x": x}, p, "grad")[0]["x"], finite_difference(model, {"x": x}, "x", p, fn=fn))
    got, ctx = backprop(model, {"x": x}, p, "eb")
    close(got["x"], p)
    assert any(f"act_{case}" in w for w in ctx.warnings)


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_batch_normalization(mode, lowered, make_model, backprop):
    x = f32(2, 3, 4, 4, low=-1)
    stats = {"g": f32(3, low=-2, high=2), "be": f32(3), "mu": f32(3), "var": f32(3, low=0.5, high=2)}
    model = make_model([helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["y"], epsilon=1e-3)],
                       {"x": list(x.shape)}, ["y"], stats)
    p = RNG.uniform(-1, 1, x.shape)
    ref = p if mode == "eb" else finite_difference(model, {"x": x}, "x", p)
    close(backprop(model, {"x": x}, p, mode, lowered=lowered)[0]["x"], ref)


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("size", [3, 5])
@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_lrn(mode, size, lowered, make_model, backprop):
    x = f32(1, 6, 3, 3, low=-2, high=2)
    model = make_model([helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.5, beta=0.75, bias=1.5)],
                       {"x": list(x.shape)}, ["y"])
    close(_lrn(x.astype(np.float64), size), forward(model, {"x": x})[0].astype(np.float64))
    p = RNG.uniform(-1, 1, x.shape)
    ref = p if mode == "eb" else finite_difference(model, {"x": x}, "x", p, fn=lambda v: _lrn(v, size))
    close(backprop(model, {"x": x}, p, mode, lowered=lowered)[0]["x"], ref)


# -- Add / Sub / Mul / Div ----------------------------------------------------------------------------------------
def test_add_two_signals_eq8_with_broadcasting(make_model, backprop):
    """Non-negative operands: Add is Eq. 8 with unit weights; b (3, 1) is broadcast and sums its shares."""
    a, b = f32(2, 3, 4), f32(3, 1)
    a[0, 0, 0] = b[0, 0] = 0.0  # a unit with Z = 0 passes nothing
    a[0, 0, 1:] = 0.0
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])], {"a": [2, 3, 4], "b": [3, 1]}, ["y"])
    p = RNG.uniform(-1, 1, (2, 3, 4))
    got, _ = backprop(model, {"a": a, "b": b}, p)
    ref = eq8({"a": a, "b": b}, unit_edges({"a": a.shape, "b": b.shape}, p.shape), p)
    close(got["a"], ref["a"])
    close(got["b"], ref["b"])


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_add_two_signals_negative_parts(lowered, make_model, backprop):
    """Signed operands: each gets p · x_k⁺ / Σ_j x_j⁺ (loops over output units)."""
    a, b = f32(3, 4, low=-1), f32(3, 4, low=-1)
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])], {"a": [3, 4], "b": [3, 4]}, ["y"])
    p = RNG.uniform(-1, 1, (3, 4))
    got, _ = backprop(model, {"a": a, "b": b}, p, lowered=lowered)
    ref = {"a": np.zeros(12), "b": np.zeros(12)}
    for j in range(12):
        pos = {k: max(float(v.ravel()[j]), 0.0) for k, v in (("a", a), ("b", b))}
        total = sum(pos.values())
        for k in pos:
            ref[k][j] = p.ravel()[j] * pos[k] / total if total else 0.0
    close(got["a"], ref["a"].reshape(3, 4))
    close(got["b"], ref["b"].reshape(3, 4))


@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_sum_of_three_signals(mode, make_model, backprop):
    a, b, c = f32(2, 3), f32(3), f32(2, 1)
    model = make_model([helper.make_node("Sum", ["a", "b", "c"], ["y"])], {"a": [2, 3], "b": [3], "c": [2, 1]}, ["y"])
    feeds = {"a": a, "b": b, "c": c}
    p = RNG.uniform(-1, 1, (2, 3))
    got, _ = backprop(model, feeds, p, mode)
    if mode == "eb":
        ref = eq8(feeds, unit_edges({k: v.shape for k, v in feeds.items()}, p.shape), p)
    else:
        ref = {k: finite_difference(model, feeds, k, p) for k in feeds}
    for k in feeds:
        close(got[k], ref[k])


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("op", ["Add", "Mul"])
def test_operand_used_twice(op, lowered, make_model, backprop):
    """``x + x`` and ``x · x``: EB gives x the whole signal once (half through each operand); grad is 2p or 2xp."""
    x = f32(2, 3, low=0.1)
    model = make_model([helper.make_node(op, ["x", "x"], ["y"])], {"x": [2, 3]}, ["y"])
    p = RNG.uniform(-1, 1, (2, 3))
    close(backprop(model, {"x": x}, p, "eb", lowered=lowered)[0]["x"], p)
    close(backprop(model, {"x": x}, p, "grad", lowered=lowered)[0]["x"], finite_difference(model, {"x": x}, "x", p))


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_add_caffe_rule_gives_everything_to_input_1(lowered, make_model, backprop):
    a, b = f32(3, 4), f32(3, 4)
    model = make_model([helper.make_node("Add", ["a", "b"], ["y"])], {"a": [3, 4], "b": [3, 4]}, ["y"])
    p = RNG.uniform(-1, 1, (3, 4))
    got, _ = backprop(model, {"a": a, "b": b}, p, add_rule="caffe", lowered=lowered)
    close(got["a"], np.zeros((3, 4)))
    close(got["b"], p)


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("op", ["Add", "Sub"])
@pytest.mark.parametrize("constant_first", [False, True])
def test_bias_operand(op, constant_first, lowered, make_model, backprop):
    """A constant operand is a bias: EB sends the whole signal to the signal operand; grad is the derivative."""
    x, c = f32(2, 3, low=-1), f32(3, low=-1)
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    model = make_model([helper.make_node(op, inputs, ["y"])], {"x": [2, 3]}, ["y"], {"c": c})
    p = RNG.uniform(-1, 1, (2, 3))
    close(backprop(model, {"x": x}, p, "eb", lowered=lowered)[0]["x"], p)
    close(backprop(model, {"x": x}, p, "grad", lowered=lowered)[0]["x"], finite_difference(model, {"x": x}, "x", p))


def test_sub_two_signals_eq8(make_model, backprop):
    """Sub(a, b) = a·(+1) + b·(−1): with non-negative operands, Eq. 8 gives a everything (where a > 0), b nothing."""
    a, b = f32(3, 4), f32(3, 4)
    a[0, 0] = 0.0
    model = make_model([helper.make_node("Sub", ["a", "b"], ["y"])], {"a": [3, 4], "b": [3, 4]}, ["y"])
    p = RNG.uniform(-1, 1, (3, 4))
    got, _ = backprop(model, {"a": a, "b": b}, p)
    ref = eq8({"a": a, "b": b}, unit_edges({"a": a.shape, "b": b.shape}, p.shape, {"b": -np.ones((3, 4))}), p)
    close(got["a"], ref["a"])
    close(got["b"], ref["b"])
    for name, value in {"a": a, "b": b}.items():
        ref = finite_difference(model, {"a": a, "b": b}, name, p)
        close(backprop(model, {"a": a, "b": b}, p, "grad")[0][name], ref)


def test_sub_two_signals_negative_subtrahend(make_model, backprop):
    """Signed: Add(a, −b) — shares a⁺ and (−b)⁺ of their sum."""
    a, b = f32(3, 4, low=-1), f32(3, 4, low=-1)
    model = make_model([helper.make_node("Sub", ["a", "b"], ["y"])], {"a": [3, 4], "b": [3, 4]}, ["y"])
    p = RNG.uniform(-1, 1, (3, 4))
    got, _ = backprop(model, {"a": a, "b": b}, p)
    pa, pb = np.maximum(a, 0).astype(np.float64), np.maximum(-b, 0).astype(np.float64)
    total = pa + pb
    share = np.divide(p, total, out=np.zeros_like(p), where=total != 0)
    close(got["a"], pa * share)
    close(got["b"], pb * share)


MUL_CASES = {
    "Mul_channel_factor": ("Mul", (1, 3, 2, 2), (1, 3, 1, 1)),
    "Mul_scalar": ("Mul", (2, 3), ()),
    "Mul_signal_broadcast": ("Mul", (1, 3), (2, 3)),
    "Div_channel_factor": ("Div", (1, 3, 2, 2), (1, 3, 1, 1)),
}


@pytest.mark.parametrize("case", list(MUL_CASES))
def test_mul_div_by_constant(case, make_model, backprop):
    op, x_shape, c_shape = MUL_CASES[case]
    x = f32(*x_shape)
    x.ravel()[0] = 0.0
    c = np.asarray(RNG.choice([-1.5, -0.5, 0.0, 0.7, 2.0], size=c_shape), np.float32)
    if op == "Div":
        c[c == 0] = 0.25
    model = make_model([helper.make_node(op, ["x", "c"], ["y"])], {"x": list(x_shape)}, ["y"], {"c": c})
    out_shape = np.broadcast_shapes(x_shape, c_shape)
    w = np.broadcast_to(1 / c.astype(np.float64) if op == "Div" else c, out_shape)
    edges = [(j, "x", i, wt) for j, _, i, wt in unit_edges({"x": x_shape}, out_shape, {"x": w})]
    close(edge_forward({"x": x}, edges, out_shape), forward(model, {"x": x})[0])
    p = RNG.uniform(-1, 1, out_shape)
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], eq8({"x": x}, edges, p)["x"])
    close(backprop(model, {"x": x}, p, "grad")[0]["x"], transposed({"x": x}, edges, p)["x"])


@pytest.mark.parametrize("op", ["Mul", "Div"])
def test_product_of_two_signals(op, make_model, backprop):
    """grad: the product/quotient rule (finite differences); EB: Mul halves the signal, Div sends it all to the
    numerator."""
    a, b = f32(2, 3, low=0.5), f32(3, low=0.5)
    model = make_model([helper.make_node(op, ["a", "b"], ["y"], name="gate")], {"a": [2, 3], "b": [3]}, ["y"])
    p = RNG.uniform(-1, 1, (2, 3))
    feeds = {"a": a, "b": b}
    got, _ = backprop(model, feeds, p, "grad")
    for name in feeds:
        close(got[name], finite_difference(model, feeds, name, p))
    got, ctx = backprop(model, feeds, p, "eb")
    if op == "Mul":
        close(got["a"], p / 2)
        close(got["b"], (p / 2).sum(axis=0))
        assert any("'gate'" in w for w in ctx.warnings)
    else:
        close(got["a"], p)
        close(got["b"], np.zeros(3))


def test_constant_over_signal_is_identity_in_eb(make_model, backprop):
    x = f32(2, 3, low=0.5)
    model = make_model([helper.make_node("Div", ["c", "x"], ["y"], name="recip")], {"x": [2, 3]}, ["y"],
                       {"c": np.float32(2.0)})
    p = RNG.uniform(-1, 1, (2, 3))
    got, ctx = backprop(model, {"x": x}, p)
    close(got["x"], p)
    assert any("'recip'" in w for w in ctx.warnings)


# -- routing ----------------------------------------------------------------------------------------------------
def _i64(*values: int) -> np.ndarray:
    return np.array(values, np.int64)


ROUTING_CASES = {
    "Identity": ([helper.make_node("Identity", ["x"], ["y"])], (2, 3, 4), {}, 17),
    "Dropout": ([helper.make_node("Dropout", ["x"], ["y"])], (2, 3, 4), {}, 17),
    "Flatten_axis2": ([helper.make_node("Flatten", ["x"], ["y"], axis=2)], (2, 3, 4), {}, 17),
    "Reshape": ([helper.make_node("Reshape", ["x", "s"], ["y"])], (2, 3, 4), {"s": _i64(4, -1)}, 17),
    "Transpose_perm": ([helper.make_node("Transpose", ["x"], ["y"], perm=[1, 2, 0])], (2, 3, 4), {}, 17),
    "Transpose_default": ([helper.make_node("Transpose", ["x"], ["y"])], (2, 3, 4), {}, 17),
    "Squeeze": ([helper.make_node("Squeeze", ["x", "ax"], ["y"])], (2, 1, 4), {"ax": _i64(1)}, 17),
    "Unsqueeze": ([helper.make_node("Unsqueeze", ["x", "ax"], ["y"])], (2, 4), {"ax": _i64(0, 2)}, 17),
    "Expand": ([helper.make_node("Expand", ["x", "s"], ["y"])], (3, 1), {"s": _i64(2, 3, 4)}, 17),
    "Concat_axis1": ([helper.make_node("Concat", ["c", "x", "c"], ["y"], axis=1)], (2, 3, 2),
                     {"c": np.zeros((2, 1, 2), np.float32)}, 17),
    "Concat_negative_axis": ([helper.make_node("Concat", ["x", "c"], ["y"], axis=-1)], (2, 3),
                             {"c": np.zeros((2, 2), np.float32)}, 17),
    "Slice_opset9_attrs": ([helper.make_node("Slice", ["x"], ["y"], starts=[1, 0], ends=[3, -1], axes=[0, 2])],
                           (4, 3, 5), {}, 9),
    "Slice_steps": ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], (4, 3, 7),
                    {"st": _i64(0, 1), "en": _i64(2**62, 7), "ax": _i64(0, -1), "sp": _i64(2, 3)}, 13),
    "Slice_negative_steps": ([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], (4, 3, 7),
                             {"st": _i64(-1, 5), "en": _i64(-2**62, 0), "ax": _i64(0, 2), "sp": _i64(-1, -2)}, 13),
    "Slice_no_axes": ([helper.make_node("Slice", ["x", "st", "en"], ["y"])], (4, 3),
                      {"st": _i64(-3, 1), "en": _i64(10, 2)}, 13),
    "Gather_duplicates": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=1)], (2, 4, 3),
                          {"i": _i64(3, 0, 3, -1)}, 13),
    "Gather_2d_indices": ([helper.make_node("Gather", ["x", "i"], ["y"])], (5, 2),
                          {"i": np.array([[0, 4], [4, 2]], np.int64)}, 13),
    "Gather_scalar": ([helper.make_node("Gather", ["x", "i"], ["y"], axis=2)], (2, 3, 4), {"i": np.array(2, np.int64)},
                      13),
}


LOWERED_ROUTING = ("Identity", "Dropout", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Concat")


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("case", list(ROUTING_CASES))
def test_routing(case, lowered, make_model, backprop):
    nodes, shape, inits, opset = ROUTING_CASES[case]
    model = make_model(nodes, {"x": list(shape)}, ["y"], inits, opset=opset)
    x = f32(*shape, low=-1)
    check_routed(model, x, lowered, lowered and nodes[0].op_type in LOWERED_ROUTING, backprop)


def check_routed(model, x, lowered, expect_lowered, backprop):
    """A routing model of ``x``: EB and grad both give ``x`` the top signal routed back (``routed``); whether the
    walk ran lowered is ``expect_lowered``."""
    y = forward(model, {"x": x})[0]
    p = RNG.uniform(-1, 1, y.shape)
    ref = routed(model, {"x": x}, "x", {"y": p})
    for mode in ("eb", "grad"):
        got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
        close(got["x"], ref)
        assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == expect_lowered


SPLIT_CASES = {
    "attr_split_opset11": (helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=1, split=[1, 3, 2]), {}, 11),
    "input_split_opset13": (helper.make_node("Split", ["x", "s"], ["y0", "y1", "y2"], axis=1), {"s": _i64(2, 2, 2)},
                            13),
    "num_outputs_opset18": (helper.make_node("Split", ["x"], ["y0", "y1", "y2"], axis=-1, num_outputs=3), {}, 18),
}


@pytest.mark.parametrize("case", list(SPLIT_CASES))
def test_split(case, make_model, backprop):
    node, inits, opset = SPLIT_CASES[case]
    model = make_model([node], {"x": [2, 6, 6]}, ["y0", "y1", "y2"], inits, opset=opset)
    x = f32(2, 6, 6)
    outs = forward(model, {"x": x})
    seeds = {"y0": RNG.uniform(-1, 1, outs[0].shape), "y2": RNG.uniform(-1, 1, outs[2].shape)}  # y1 gets none
    ref = routed(model, {"x": x}, "x", seeds)
    for mode in ("eb", "grad"):
        close(backprop(model, {"x": x}, seeds, mode)[0]["x"], ref)


def test_fan_out_sums_over_consumers(make_model, backprop):
    """A tensor read by two consumers receives the sum of their signals (paper Eq. 3)."""
    x = f32(2, 3)
    nodes = [helper.make_node("Identity", ["x"], ["u"]), helper.make_node("Transpose", ["x"], ["v"]),
             helper.make_node("Transpose", ["v"], ["w"]), helper.make_node("Add", ["u", "w"], ["y"])]
    model = make_model(nodes, {"x": [2, 3]}, ["y"])
    p = RNG.uniform(-1, 1, (2, 3))
    close(backprop(model, {"x": x}, p, "grad")[0]["x"], 2 * p)
    close(backprop(model, {"x": x}, p, "eb")[0]["x"], p)


# -- 3-D (video) ops: Conv, pooling, global pools and reductions over (T, H, W), BatchNorm, gates ---------------
CONV3D_CASES = {
    "3x3x3_pad1": dict(x=(1, 2, 4, 5, 5), w=(3, 2, 3, 3, 3), attrs=dict(pads=[1] * 6)),
    "stride_t2_asym_pads": dict(x=(2, 2, 5, 6, 5), w=(3, 2, 3, 2, 3), attrs=dict(strides=[2, 1, 2],
                                                                                  pads=[1, 0, 1, 0, 1, 1])),
    "dilation": dict(x=(1, 2, 5, 5, 5), w=(2, 2, 2, 2, 2), attrs=dict(dilations=[2, 1, 2], pads=[1, 0, 1, 1, 0, 1])),
    "groups_spatial_1x3x3": dict(x=(1, 4, 3, 4, 4), w=(6, 2, 1, 3, 3), attrs=dict(group=2, pads=[0, 1, 1, 0, 1, 1])),
    "depthwise_3x3x3": dict(x=(1, 3, 4, 4, 4), w=(3, 1, 3, 3, 3), attrs=dict(group=3, pads=[1] * 6)),
    "temporal_3x1x1_stride2": dict(x=(1, 2, 7, 3, 3), w=(4, 2, 3, 1, 1), attrs=dict(strides=[2, 1, 1],
                                                                                     pads=[1, 0, 0, 1, 0, 0])),
    "lateral_5x1x1_stride4": dict(x=(1, 2, 8, 2, 2), w=(3, 2, 5, 1, 1), attrs=dict(strides=[4, 1, 1],
                                                                                    pads=[2, 0, 0, 2, 0, 0])),
    "same_upper": dict(x=(1, 2, 4, 5, 5), w=(2, 2, 2, 3, 4), attrs=dict(auto_pad="SAME_UPPER")),
}


def _resolved_pads(c):
    """The pads of a case, SAME_UPPER resolved (the smaller half first), and its strides and dilations."""
    spatial = len(c["x"]) - 2
    attrs = c["attrs"]
    strides, dilations = attrs.get("strides", [1] * spatial), attrs.get("dilations", [1] * spatial)
    pads = list(attrs.get("pads", [0] * (2 * spatial)))
    if attrs.get("auto_pad") == "SAME_UPPER":
        kernel = c["w"][2:]
        for a in range(spatial):
            out = -(-c["x"][2 + a] // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - c["x"][2 + a])
            pads[a], pads[a + spatial] = total // 2, total - total // 2
    return strides, pads, dilations


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("mode", ["eb", "grad"])
@pytest.mark.parametrize("case", list(CONV3D_CASES))
def test_conv3d(case, mode, lowered, make_model, backprop):
    c = CONV3D_CASES[case]
    x, w, b = f32(*c["x"]), f32(*c["w"], low=-1), f32(c["w"][0], low=-1)
    x.ravel()[::7] = 0
    model = make_model([helper.make_node("Conv", ["x", "w", "b"], ["y"], **c["attrs"])], {"x": list(x.shape)}, ["y"],
                       {"w": w, "b": b})
    strides, pads, dilations = _resolved_pads(c)
    edges, out_shape = conv_edges(x.shape, w, strides, pads, dilations, c["attrs"].get("group", 1))
    y = forward(model, {"x": x})[0]
    close(edge_forward({"x": x}, edges, out_shape) + b.reshape(1, -1, 1, 1, 1), y)
    p = RNG.uniform(-1, 1, y.shape)
    got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
    close(got["x"], (eq8 if mode == "eb" else transposed)({"x": x}, edges, p)["x"])
    assert lowered == bool(ctx.kernels and ctx.kernels.holds("lowered"))


def test_conv3d_rule_on_onnxruntime_kernels(make_model):
    """The float32 rule path (not lowered) runs a 3-D Conv's two convolutions as onnxruntime kernels; with negative
    inputs it uses the positive-contribution rule (a warning names the node)."""
    from ebr_onnx import Explainer

    w = f32(3, 2, 3, 3, 3, low=-1)
    fw = f32(3 * 2 * 3 * 3, 4, low=-1)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], strides=[2, 1, 1], name="conv3d"),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "fw"], ["y"])]
    model = make_model(nodes, {"x": [2, 2, 6, 5, 5]}, ["y"], {"w": w, "fw": fw})
    x = f32(2, 2, 6, 5, 5, low=-1)
    got = Explainer(model, lowering=False).explain(x, target=1, method="eb")
    ref = Explainer(model, dtype=np.float64).explain(x, target=1, method="eb")
    close(got.signal, ref.signal.astype(np.float32), rtol=1e-4)
    assert any("'conv3d'" in w for w in got.warnings)


POOL3D_CASES = {
    "3d_2x2x2_s2": dict(x=(1, 2, 4, 6, 6), attrs=dict(kernel_shape=[2, 2, 2], strides=[2, 2, 2])),
    "3d_1x2x2_spatial_only": dict(x=(2, 2, 3, 4, 4), attrs=dict(kernel_shape=[1, 2, 2], strides=[1, 2, 2])),
    "3d_3x3x3_s2_pad1_overlapping": dict(x=(1, 2, 5, 5, 5), attrs=dict(kernel_shape=[3, 3, 3], strides=[2, 2, 2],
                                                                        pads=[1] * 6)),
    "3d_ceil_mode_pads": dict(x=(1, 2, 5, 6, 7), attrs=dict(kernel_shape=[2, 3, 3], strides=[2, 2, 2],
                                                             pads=[0, 1, 1, 0, 1, 1], ceil_mode=1)),
    "3d_ceil_mode_disjoint": dict(x=(1, 1, 5, 5, 3), attrs=dict(kernel_shape=[2, 2, 1], strides=[2, 2, 1],
                                                                 ceil_mode=1)),
    "3d_dilation": dict(x=(1, 1, 5, 4, 5), attrs=dict(kernel_shape=[2, 2, 2], dilations=[2, 1, 2]), opset=19),
}


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("case", list(POOL3D_CASES))
def test_max_pool3d(case, lowered, make_model, backprop):
    check_max_pool(POOL3D_CASES[case], lowered, make_model, backprop)


AVERAGE_LOWERED_CASES = {**{k: v for k, v in POOL_CASES.items() if len(v["x"]) == 4}, **POOL3D_CASES}


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("include_pad", [0, 1])
@pytest.mark.parametrize("case", list(AVERAGE_LOWERED_CASES))
def test_average_pool_nd(case, include_pad, lowered, make_model, backprop):
    """AveragePool on 2 and 3 spatial axes, rule by rule and lowered (a depthwise convolution by ones and its
    transpose, the end pads grown over the ceil_mode overhang)."""
    c = AVERAGE_LOWERED_CASES[case]
    attrs = {**c["attrs"], "count_include_pad": include_pad}
    x = f32(*c["x"], low=0.05)
    x.ravel()[::9] = 0
    model = make_model([helper.make_node("AveragePool", ["x"], ["y"], **attrs)], {"x": list(x.shape)}, ["y"],
                       opset=c.get("opset", 17))
    y = forward(model, {"x": x})[0]
    windows = pool_windows_nd(x.shape, y.shape, attrs) if x.ndim == 5 else pool_windows(x.shape, y.shape, attrs)
    mean = [(j, "x", i, 1.0 / (count if include_pad else len(members)))
            for j, (members, count) in windows.items() for i in members]
    check_edges(model, x, mean, RNG.uniform(-1, 1, y.shape), lowered, backprop)


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_global_pools_5d(lowered, make_model, backprop):
    check_global_pools((2, 3, 2, 3, 4), lowered, make_model, backprop)


REDUCE_THW_CASES = {
    "ReduceMean_thw_keepdims_opset13": ("ReduceMean", dict(axes=[2, 3, 4], keepdims=1), None, 13),
    "ReduceMean_thw_opset18_input": ("ReduceMean", dict(keepdims=0), np.array([-3, -2, -1], np.int64), 18),
    "ReduceSum_hw_opset13": ("ReduceSum", dict(keepdims=1), np.array([3, 4], np.int64), 13),
}


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("case", list(REDUCE_THW_CASES))
def test_reduce_over_time_and_space(case, lowered, make_model, backprop):
    op, attrs, axes, opset = REDUCE_THW_CASES[case]
    x = f32(2, 3, 2, 3, 2)
    x[1, 0] = 0
    inputs, inits = (["x", "axes"], {"axes": axes}) if axes is not None else (["x"], {})
    model = make_model([helper.make_node(op, inputs, ["y"], **attrs)], {"x": list(x.shape)}, ["y"], inits,
                       opset=opset)
    y = forward(model, {"x": x})[0]
    reduced = [a % 5 for a in (attrs.get("axes") if axes is None else axes)]
    weight = 1.0 / math.prod(x.shape[a] for a in reduced) if op == "ReduceMean" else 1.0
    kept_shape = tuple(1 if a in reduced else s for a, s in enumerate(x.shape))
    edges = [(int(np.ravel_multi_index(tuple(0 if a in reduced else v for a, v in enumerate(i)), kept_shape)), "x",
              int(np.ravel_multi_index(i, x.shape)), weight) for i in itertools.product(*(range(s) for s in x.shape))]
    check_edges(model, x, edges, RNG.uniform(-1, 1, y.shape), lowered, backprop)


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("mode", ["eb", "grad"])
def test_batch_normalization_5d(mode, lowered, make_model, backprop):
    x = f32(2, 3, 2, 3, 3, low=-1)
    stats = {"g": f32(3, low=-2, high=2), "be": f32(3), "mu": f32(3), "var": f32(3, low=0.5, high=2)}
    model = make_model([helper.make_node("BatchNormalization", ["x", "g", "be", "mu", "var"], ["y"], epsilon=1e-3)],
                       {"x": list(x.shape)}, ["y"], stats)
    p = RNG.uniform(-1, 1, x.shape)
    scale = (stats["g"] / np.sqrt(stats["var"].astype(np.float64) + 1e-3)).reshape(1, 3, 1, 1, 1)
    got, ctx = backprop(model, {"x": x}, p, mode, lowered=lowered)
    close(got["x"], p if mode == "eb" else p * scale)
    assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_squeeze_excitation_gate(lowered, make_model, backprop):
    """``y = x ⊙ σ(s)`` with ``s`` (N, C, 1, 1, 1) broadcast over (T, H, W): EB gives x the whole signal and the gate
    none; grad is the product rule (finite differences), the gate's part summed over (T, H, W)."""
    x, s = f32(2, 3, 2, 3, 3, low=-1), f32(2, 3, 1, 1, 1, low=-2, high=2)
    nodes = [helper.make_node("Sigmoid", ["s"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"])]
    model = make_model(nodes, {"x": list(x.shape), "s": list(s.shape)}, ["y"])
    feeds = {"x": x, "s": s}
    p = RNG.uniform(-1, 1, x.shape)
    got, ctx = backprop(model, feeds, p, "eb", lowered=lowered)
    close(got["x"], p)
    close(got["s"], np.zeros(s.shape))
    assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered
    got, ctx = backprop(model, feeds, p, "grad", lowered=lowered)
    for name in feeds:
        close(got[name], finite_difference(model, feeds, name, p))
    assert bool(ctx.kernels and ctx.kernels.holds("lowered")) == lowered


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
def test_swish(lowered, make_model, backprop):
    """SiLU/Swish ``x ⊙ σ(x)``: EB gives x the whole signal (the gate is a weight); grad: the derivative."""
    x = f32(1, 2, 2, 3, 3, low=-3, high=3)
    model = make_model([helper.make_node("Sigmoid", ["x"], ["g"]), helper.make_node("Mul", ["x", "g"], ["y"])],
                       {"x": list(x.shape)}, ["y"])
    p = RNG.uniform(-1, 1, x.shape)
    got, ctx = backprop(model, {"x": x}, p, "eb", lowered=lowered)
    close(got["x"], p)
    assert not ctx.warnings
    got, _ = backprop(model, {"x": x}, p, "grad", lowered=lowered)
    close(got["x"], finite_difference(model, {"x": x}, "x", p))


SLICE_TIME_CASES = {
    "time_step4": ({"st": _i64(0), "en": _i64(2**62), "ax": _i64(2), "sp": _i64(4)}, (2, 3, 9, 2, 2)),
    "time_step3_offset_and_width": ({"st": _i64(1, 1), "en": _i64(8, -1), "ax": _i64(2, 4), "sp": _i64(3, 1)},
                                    (1, 2, 8, 2, 5)),
    "negative_start": ({"st": _i64(-5), "en": _i64(2**62), "ax": _i64(-3), "sp": _i64(2)}, (1, 2, 7, 3, 3)),
}


@pytest.mark.parametrize("lowered", [False, True], ids=["rules", "lowered"])
@pytest.mark.parametrize("case", list(SLICE_TIME_CASES))
def test_slice_along_time(case, lowered, make_model, backprop):
    """A slow pathway's frames picked every k-th (SlowFast): the lowered Slice spreads the signal back."""
    inits, shape = SLICE_TIME_CASES[case]
    model = make_model([helper.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["y"])], {"x": list(shape)}, ["y"],
                       inits, opset=13)
    x = f32(*shape, low=-1)
    check_routed(model, x, lowered, lowered, backprop)
