"""Each supported Caffe layer, converted and run in onnxruntime, against a NumPy transcription of Caffe's code."""

from __future__ import annotations

import math

import numpy as np
import pytest
from caffe_nets import input_layer, layer, run, write_net

from converters.caffe import convert_caffe

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def convert_run(tmp_path, text, weights, feeds, tensors=(), **options):
    proto, model = write_net(tmp_path, text, weights)
    return run(convert_caffe(proto, model, **options), feeds, tensors)


# --- NumPy transcriptions of Caffe's forward code ------------------------------------------------------------------


def caffe_conv(x, w, b, stride, pad, dilation, group):
    """conv_layer.cpp via im2col: zero padding, dilated kernel, groups; output floor((H + 2p - ext) / s) + 1."""
    n, _, height, width = x.shape
    out_c, cg, kh, kw = w.shape
    ext = [dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (height + 2 * pad[0] - ext[0]) // stride[0] + 1
    wo = (width + 2 * pad[1] - ext[1]) // stride[1] + 1
    og = out_c // group
    y = np.zeros((n, out_c, ho, wo), np.float64)
    for g in range(group):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for i in range(ho):
            for j in range(wo):
                r, c = i * stride[0], j * stride[1]
                patch = xs[:, :, r : r + ext[0] : dilation[0], c : c + ext[1] : dilation[1]]
                y[:, g * og : (g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, ws)
    return y + (0 if b is None else b[None, :, None, None])


def caffe_pool(x, method, kernel, stride, pad):
    """pooling_layer.cpp Forward_cpu, line by line (ceil rounding, the end-padding rule, AVE's pool_size)."""
    height, width = x.shape[2:]
    pooled = []
    for size, k, s, p in zip((height, width), kernel, stride, pad):
        out = int(math.ceil(float(size + 2 * p - k) / s)) + 1
        if p and (out - 1) * s >= size + p:
            out -= 1
        pooled.append(out)
    y = np.zeros(x.shape[:2] + tuple(pooled), np.float64)
    for ph in range(pooled[0]):
        for pw in range(pooled[1]):
            hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            if method == "MAX":
                hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend, wend = min(hstart + kernel[0], height + pad[0]), min(wstart + kernel[1], width + pad[1])
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / pool_size
    return y


def caffe_lrn_across(x, size, alpha, beta, k):
    """lrn_layer.cpp CrossChannelForward_cpu: scale = k + alpha/size * sum of squares over the channel window."""
    channels = x.shape[1]
    pre = (size - 1) // 2
    scale = np.full(x.shape, k, np.float64)
    for c in range(channels):
        lo, hi = max(c - pre, 0), min(c - pre + size, channels)
        scale[:, c] += alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    return x * scale**-beta


def caffe_lstm(x, cont, w_xc, b_c, w_hc, act):
    """lstm_unit_layer.cpp (the release's ReLU variant or upstream tanh) over Caffe's unrolled LSTM net."""
    steps, batch, _ = x.shape
    hidden = w_hc.shape[1]
    h, c = np.zeros((batch, hidden)), np.zeros((batch, hidden))
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(steps):
        gates = (h * cont[t][:, None]) @ w_hc.T + (x[t] @ w_xc.T + b_c)
        a_i, a_f, a_o, a_g = np.split(gates, 4, axis=1)
        i, f, o, g = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o), act(a_g)
        c = cont[t][:, None] * f * c + i * g
        h = o * act(c)
        out.append(h)
    return np.stack(out)


def relu(v):
    return np.maximum(v, 0)


# --- layers --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("conv_param", "stride", "pad", "dilation", "group", "kernel", "bias"),
    [
        ("num_output: 4 kernel_size: 3 pad: 1", (1, 1), (1, 1), (1, 1), 1, (3, 3), True),
        ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 1 pad_h: 1 pad_w: 0",
         (2, 1), (1, 0), (1, 1), 1, (3, 2), True),
        ("num_output: 6 kernel_size: 3 dilation: 2 group: 2 stride: 2 pad: 2 bias_term: false",
         (2, 2), (2, 2), (2, 2), 2, (3, 3), False),
        ("num_output: 4 kernel_size: 3 kernel_size: 1 pad: 0 pad: 1", (1, 1), (0, 1), (1, 1), 1, (3, 1), True),
    ],
)
def test_convolution(tmp_path, conv_param, stride, pad, dilation, group, kernel, bias):
    x = rand(2, 4, 9, 8)
    out_c = 6 if group == 2 else 4
    w, b = rand(out_c, 4 // group, *kernel), rand(out_c)
    conv = layer("conv", "Convolution", ["data"], params=f"convolution_param {{ {conv_param} }}")
    text = input_layer("data", x.shape) + conv
    got = convert_run(tmp_path, text, {"conv": [w, b] if bias else [w]}, {"data": x})["conv"]
    want = caffe_conv(x, w, b if bias else None, stride, pad, dilation, group)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad"),
    [
        ((8, 8), 2, 2, 0),  # exact fit
        ((7, 9), 3, 2, 0),  # ceil adds a clipped last window
        ((5, 5), 2, 2, 1),  # the last window would start in the end padding: Caffe drops it
        ((6, 7), 3, 2, 1),  # ceil window runs past the padding: AVE needs Pad + AveragePool
        ((7, 7), 3, 1, 1),  # Inception's pool projection: AVE divisor includes the padding everywhere
        ((7, 7), 7, 1, 0),  # GoogleNet's pool5/7x7_s1
        ((6, 5), 3, 3, 2),  # large pad relative to stride
    ],
)
def test_pooling(tmp_path, method, size, kernel, stride, pad):
    x = rand(2, 3, *size)
    params = f"pooling_param {{ pool: {method} kernel_size: {kernel} stride: {stride} pad: {pad} }}"
    text = input_layer("data", x.shape) + layer("pool", "Pooling", ["data"], params=params)
    got = convert_run(tmp_path, text, None, {"data": x})["pool"]
    want = caffe_pool(x, method, (kernel, kernel), (stride, stride), (pad, pad))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_pooling_rectangular_window(tmp_path):
    x = rand(1, 2, 9, 7)
    params = "pooling_param { pool: AVE kernel_h: 3 kernel_w: 2 stride_h: 2 stride_w: 3 pad_h: 1 pad_w: 1 }"
    text = input_layer("data", x.shape) + layer("pool", "Pooling", ["data"], params=params)
    got = convert_run(tmp_path, text, None, {"data": x})["pool"]
    np.testing.assert_allclose(got, caffe_pool(x, "AVE", (3, 2), (2, 3), (1, 1)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("method", "reduce"), [("MAX", np.max), ("AVE", np.mean)])
def test_global_pooling(tmp_path, method, reduce):
    x = rand(2, 3, 5, 4)
    text = input_layer("data", x.shape) + layer(
        "pool", "Pooling", ["data"], params=f"pooling_param {{ pool: {method} global_pooling: true }}"
    )
    got = convert_run(tmp_path, text, None, {"data": x})["pool"]
    np.testing.assert_allclose(got, reduce(x, axis=(2, 3), keepdims=True), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "params", "transpose"),
    [
        ((3, 2, 4, 4), "num_output: 5", False),
        ((4, 2, 6), "num_output: 5 axis: 2", False),
        ((4, 2, 6), "num_output: 5 axis: -1 transpose: true", True),
        ((3, 7), "num_output: 5 bias_term: false", False),
    ],
)
def test_inner_product(tmp_path, shape, params, transpose):
    x = rand(*shape)
    axis = 2 if "axis" in params else 1
    depth = math.prod(shape[axis:])
    w, b = (rand(depth, 5) if transpose else rand(5, depth)), rand(5)
    blobs = [w] if "bias_term: false" in params else [w, b]
    ip = layer("ip", "InnerProduct", ["data"], params=f"inner_product_param {{ {params} }}")
    text = input_layer("data", shape) + ip
    got = convert_run(tmp_path, text, {"ip": blobs}, {"data": x})["ip"]
    flat = x.reshape(math.prod(shape[:axis]), depth).astype(np.float64)
    want = flat @ (w if transpose else w.T) + (b if len(blobs) == 2 else 0)
    assert got.shape == (*shape[:axis], 5)
    np.testing.assert_allclose(got, want.reshape(got.shape), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("kind", "params", "reference"),
    [
        ("ReLU", "", relu),
        ("ReLU", "relu_param { negative_slope: 0.1 }", lambda v: np.maximum(v, 0) + 0.1 * np.minimum(v, 0)),
        ("Sigmoid", "", lambda v: 1 / (1 + np.exp(-v))),
        ("TanH", "", np.tanh),
        ("Dropout", "dropout_param { dropout_ratio: 0.5 }", lambda v: v),
        ("Softmax", "softmax_param { axis: 2 }", lambda v: np.exp(v) / np.exp(v).sum(axis=2, keepdims=True)),
    ],
)
def test_elementwise_layers(tmp_path, kind, params, reference):
    x = rand(3, 2, 5)
    text = input_layer("data", x.shape) + layer("f", kind, ["data"], params=params)
    np.testing.assert_allclose(convert_run(tmp_path, text, None, {"data": x})["f"], reference(x), rtol=1e-5, atol=1e-6)


def test_lrn_across_channels(tmp_path):
    x = rand(2, 7, 4, 3) * 3
    params = "lrn_param { local_size: 5 alpha: 0.01 beta: 0.75 k: 2 }"
    text = input_layer("data", x.shape) + layer("norm", "LRN", ["data"], params=params)
    got = convert_run(tmp_path, text, None, {"data": x})["norm"]
    np.testing.assert_allclose(got, caffe_lrn_across(x, 5, 0.01, 0.75, 2.0), rtol=1e-5, atol=1e-6)


def test_lrn_within_channel(tmp_path):
    """Caffe's WITHIN_CHANNEL LRN: Power(x^2) → AVE Pooling (pad (n-1)/2) → Power(1 + alpha·, -beta) → x ·."""
    x = rand(2, 3, 6, 5) * 3
    params = "lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 norm_region: WITHIN_CHANNEL k: 7 }"
    text = input_layer("data", x.shape) + layer("norm", "LRN", ["data"], params=params)
    got = convert_run(tmp_path, text, None, {"data": x})["norm"]
    pooled = caffe_pool(x.astype(np.float64) ** 2, "AVE", (3, 3), (1, 1), (1, 1))
    np.testing.assert_allclose(got, x * (1 + 0.5 * pooled) ** -0.75, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("shape", "params", "want"),
    [
        ((4, 1, 1, 1), "shape { dim: 4 dim: 1 }", (4, 1)),
        ((2, 3, 4), "shape { dim: 0 dim: -1 }", (2, 12)),
        ((2, 3, 4), "shape { dim: 2 dim: 2 } axis: 1 num_axes: 1", None),  # 3 → 2 × 2 is not a reshape: error
        ((2, 6, 4), "shape { dim: 2 dim: 3 } axis: 1 num_axes: 1", (2, 2, 3, 4)),
        ((2, 8), "shape { dim: 1 } axis: 1 num_axes: 0", (2, 1, 8)),
        ((2, 3, 4), "shape { dim: -1 } axis: -4", (24,)),  # Caffe: axis -1 is after the last axis
        ((2, 3, 4), "shape { dim: -1 } axis: -3", (2, 12)),
    ],
)
def test_reshape(tmp_path, shape, params, want):
    x = rand(*shape)
    text = input_layer("data", shape) + layer("r", "Reshape", ["data"], params=f"reshape_param {{ {params} }}")
    if want is None:
        with pytest.raises(ValueError, match="cannot reshape"):
            convert_run(tmp_path, text, None, {"data": x})
        return
    np.testing.assert_array_equal(convert_run(tmp_path, text, None, {"data": x})["r"], x.reshape(want))


@pytest.mark.parametrize(
    ("params", "want"),
    [("", (2, 60)), ("flatten_param { axis: 2 end_axis: -1 }", (2, 3, 20)),
     ("flatten_param { axis: 1 end_axis: 2 }", (2, 12, 5))],
)
def test_flatten(tmp_path, params, want):
    x = rand(2, 3, 4, 5)
    text = input_layer("data", x.shape) + layer("f", "Flatten", ["data"], params=params)
    np.testing.assert_array_equal(convert_run(tmp_path, text, None, {"data": x})["f"], x.reshape(want))


def test_concat_slice_split(tmp_path):
    a, b = rand(2, 3, 4), rand(2, 5, 4)
    text = (
        input_layer("a", a.shape)
        + input_layer("b", b.shape)
        + layer("cat", "Concat", ["a", "b"])
        + layer("cat2", "Concat", ["a", "a"], params="concat_param { axis: -1 }")
        + layer("sl", "Slice", ["cat"], ["s0", "s1", "s2"],
                params="slice_param { axis: 1 slice_point: 1 slice_point: 6 }")
        + layer("eq", "Slice", ["b"], ["e0", "e1"], params="slice_param { axis: 2 }")
        + layer("sp", "Split", ["s2"], ["c0", "c1"])
    )
    got = convert_run(tmp_path, text, None, {"a": a, "b": b}, ["cat", "cat2"])
    cat = np.concatenate([a, b], axis=1)
    np.testing.assert_array_equal(got["cat"], cat)
    np.testing.assert_array_equal(got["cat2"], np.concatenate([a, a], axis=2))
    for name, want in zip(["s0", "s1", "c0", "c1", "e0", "e1"], [cat[:, :1], cat[:, 1:6], cat[:, 6:], cat[:, 6:],
                                                                  b[:, :, :2], b[:, :, 2:]]):
        np.testing.assert_array_equal(got[name], want)


def test_implicit_fan_out(tmp_path):
    """A blob read by two layers (Caffe inserts a Split) is one tensor read twice."""
    x = rand(2, 3)
    text = input_layer("data", x.shape) + layer("r", "ReLU", ["data"]) + layer("s", "Sigmoid", ["data"])
    got = convert_run(tmp_path, text, None, {"data": x})
    np.testing.assert_allclose(got["r"], relu(x))
    np.testing.assert_allclose(got["s"], 1 / (1 + np.exp(-x)), rtol=1e-6)


@pytest.mark.parametrize(
    ("params", "reference"),
    [
        ("eltwise_param { operation: SUM }", lambda a, b, c: a + b + c),
        ("eltwise_param { operation: SUM coeff: 1 coeff: -1 coeff: 0.5 }", lambda a, b, c: a - b + 0.5 * c),
        ("eltwise_param { operation: PROD }", lambda a, b, c: a * b * c),
        ("eltwise_param { operation: MAX }", lambda a, b, c: np.maximum(np.maximum(a, b), c)),
    ],
)
def test_eltwise(tmp_path, params, reference):
    xs = [rand(2, 3, 4) for _ in range(3)]
    text = "".join(input_layer(n, (2, 3, 4)) for n in "abc") + layer("e", "Eltwise", list("abc"), params=params)
    got = convert_run(tmp_path, text, None, dict(zip("abc", xs)))["e"]
    np.testing.assert_allclose(got, reference(*xs), rtol=1e-5, atol=1e-6)


def test_scale_and_bias(tmp_path):
    x, s = rand(2, 3, 4, 5), rand(3, 4)
    gamma, beta, gamma2, bias2 = rand(3), rand(3), rand(4, 5), rand(3, 4)
    text = (
        input_layer("data", x.shape)
        + input_layer("s", s.shape)
        + layer("sc", "Scale", ["data"], params="scale_param { bias_term: true }")
        + layer("sc2", "Scale", ["data"], params="scale_param { axis: 2 num_axes: -1 }")
        + layer("sc3", "Scale", ["data", "s"], params="scale_param { bias_term: true }")
        + layer("bi", "Bias", ["data"], params="bias_param { axis: 1 num_axes: 2 }")
        + layer("bi2", "Bias", ["data", "s"])
    )
    weights = {"sc": [gamma, beta], "sc2": [gamma2], "sc3": [bias2], "bi": [bias2]}
    got = convert_run(tmp_path, text, weights, {"data": x, "s": s})
    np.testing.assert_allclose(got["sc"], x * gamma[:, None, None] + beta[:, None, None], rtol=1e-6)
    np.testing.assert_allclose(got["sc2"], x * gamma2, rtol=1e-6)
    np.testing.assert_allclose(got["sc3"], x * s[:, :, None] + bias2[:, :, None], rtol=1e-6)
    np.testing.assert_allclose(got["bi"], x + bias2[:, :, None], rtol=1e-6)
    np.testing.assert_allclose(got["bi2"], x + s[:, :, None], rtol=1e-6)


@pytest.mark.parametrize("factor", [4.0, 0.0])
def test_batch_norm(tmp_path, factor):
    """Caffe divides the stored mean/variance by blobs[2][0] (uses 0 when that factor is 0)."""
    x, mean, var = rand(2, 3, 4), rand(3), np.abs(rand(3)) + 0.5
    params = "batch_norm_param { use_global_stats: true eps: 0.001 }"
    text = input_layer("data", x.shape) + layer("bn", "BatchNorm", ["data"], params=params)
    got = convert_run(tmp_path, text, {"bn": [mean, var, np.array([factor])]}, {"data": x})["bn"]
    s = 0.0 if factor == 0 else 1 / factor
    want = (x - s * mean[:, None]) / np.sqrt(s * var[:, None] + 0.001)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("activation", "act"), [("relu", relu), ("tanh", np.tanh)])
def test_lstm(tmp_path, activation, act):
    steps, batch, depth, hidden = 5, 2, 3, 4
    x = rand(steps, batch, depth)
    cont = np.array([[0, 0], [1, 1], [1, 0], [1, 1], [0, 1]], np.float32)  # includes a mid-sequence restart
    w_xc, b_c, w_hc = rand(4 * hidden, depth), rand(4 * hidden), rand(4 * hidden, hidden)
    text = (
        input_layer("x", x.shape)
        + input_layer("cont", cont.shape)
        + layer("lstm1", "LSTM", ["x", "cont"], params=f"recurrent_param {{ num_output: {hidden} }}")
    )
    got = convert_run(tmp_path, text, {"lstm1": [w_xc, b_c, w_hc]}, {"x": x, "cont": cont},
                      lstm_activation=activation)["lstm1"]
    np.testing.assert_allclose(got, caffe_lstm(x, cont, w_xc, b_c, w_hc, act), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("size", "kernel", "stride", "pad", "ops", "count_include_pad"),
    [
        (7, 3, 1, 1, ["AveragePool"], 1),  # every window inside [-pad, H+pad): one node, padding counted
        (8, 3, 2, 0, ["AveragePool"], 0),  # no padding, ceil window clipped at H: padding not counted
        (6, 3, 2, 1, ["Pad", "AveragePool"], 0),  # ceil window past the padding: explicit Pad, then clip
    ],
)
def test_average_pool_forms(tmp_path, size, kernel, stride, pad, ops, count_include_pad):
    """Which ONNX form Caffe's AVE pooling takes (values are checked in test_pooling)."""
    params = f"pooling_param {{ pool: AVE kernel_size: {kernel} stride: {stride} pad: {pad} }}"
    text = input_layer("data", (1, 1, size, size)) + layer("pool", "Pooling", ["data"], params=params)
    proto, _ = write_net(tmp_path, text)
    model = convert_caffe(proto)
    assert [n.op_type for n in model.graph.node] == ops
    assert [n.name for n in model.graph.node][-1] == "pool"
    pool = model.graph.node[-1]
    assert {a.name: a for a in pool.attribute}["count_include_pad"].i == count_include_pad
