"""Each supported Caffe layer, converted and run in onnxruntime, against a NumPy transcription of Caffe's code."""

from __future__ import annotations

import json
import math

import numpy as np
import onnx
import pytest
from caffe_nets import caffe_conv, caffe_lstm, caffe_pool, input_layer, layer, run, write_net

from converters.caffe import CaffeConversionError, CaffeConversionWarning, convert_caffe

RNG = np.random.default_rng(0)


def rand(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def convert_run(tmp_path, text, weights, feeds, tensors=(), **options):
    proto, model = write_net(tmp_path, text, weights)
    return run(convert_caffe(proto, model, **options), feeds, tensors)


# --- NumPy transcriptions of Caffe's forward code ------------------------------------------------------------------


def caffe_lrn_across(x, size, alpha, beta, k):
    """lrn_layer.cpp CrossChannelForward_cpu: scale = k + alpha/size * sum of squares over the channel window."""
    channels = x.shape[1]
    pre = (size - 1) // 2
    scale = np.full(x.shape, k, np.float64)
    for c in range(channels):
        lo, hi = max(c - pre, 0), min(c - pre + size, channels)
        scale[:, c] += alpha / size * (x[:, lo:hi] ** 2).sum(axis=1)
    return x * scale**-beta


def caffe_deconv(x, w, b, stride, pad, dilation, group):
    """deconv_layer.cpp: col2im of Wᵀx (the convolution's backward data pass), weight (C, num_output / group, kh, kw).

    Every input pixel (i, j) adds x[c, i, j] · w[c, o] at output (i·s − p + ki·d, j·s − p + kj·d); what lands in
    the padding is dropped. Output size s·(n − 1) + d·(k − 1) + 1 − 2p.
    """
    n, channels, height, width = x.shape
    _, og, kh, kw = w.shape
    cg = channels // group
    out = [stride[a] * (size - 1) + dilation[a] * (k - 1) + 1 - 2 * pad[a]
           for a, (size, k) in enumerate(((height, kh), (width, kw)))]
    full = np.zeros((n, og * group, out[0] + 2 * pad[0], out[1] + 2 * pad[1]), np.float64)
    for g in range(group):
        xs, ws = x[:, g * cg : (g + 1) * cg], w[g * cg : (g + 1) * cg]
        for i in range(height):
            for j in range(width):
                for ki in range(kh):
                    for kj in range(kw):
                        r, c = i * stride[0] + ki * dilation[0], j * stride[1] + kj * dilation[1]
                        full[:, g * og : (g + 1) * og, r, c] += xs[:, :, i, j] @ ws[:, :, ki, kj]
    y = full[:, :, pad[0] : pad[0] + out[0], pad[1] : pad[1] + out[1]]
    return y + (0 if b is None else b[None, :, None, None])


def caffe_prelu(x, slope, channel_shared):
    """prelu_layer.cpp: top = max(x, 0) + slope[c] · min(x, 0), c = (i / dim) % channels (dim = count from axis 2)."""
    flat, out = x.ravel(), np.empty(x.size, np.float64)
    channels, dim = x.shape[1], math.prod(x.shape[2:])
    for i, value in enumerate(flat):
        a = slope.reshape(-1)[0 if channel_shared else (i // dim) % channels]
        out[i] = max(value, 0) + a * min(value, 0)
    return out.reshape(x.shape)


def caffe_power(x, power, scale, shift):
    """power_layer.cpp: constant when power · scale == 0, else copy, scal, add_scalar, powx."""
    if power * scale == 0:
        return np.full(x.shape, 1.0 if power == 0 else shift**power)
    y = x.astype(np.float64)
    y = y * scale if scale != 1 else y
    y = y + shift if shift != 0 else y
    return y**power if power != 1 else y


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


@pytest.mark.parametrize("global_stats", ["true", "false"])
@pytest.mark.parametrize("factor", [4.0, 0.0])
def test_batch_norm(tmp_path, factor, global_stats):
    """Caffe divides the stored mean/variance by blobs[2][0] (uses 0 when that factor is 0); use_global_stats: false
    (batch statistics in Caffe) is converted as inference with the stored ones, and says so."""
    x, mean, var = rand(2, 3, 4), rand(3), np.abs(rand(3)) + 0.5
    params = f"batch_norm_param {{ use_global_stats: {global_stats} eps: 0.001 }}"
    text = input_layer("data", x.shape) + layer("bn", "BatchNorm", ["data"], params=params)
    proto, weights = write_net(tmp_path, text, {"bn": [mean, var, np.array([factor])]})
    if global_stats == "false":
        with pytest.warns(CaffeConversionWarning, match=r"layer 'bn' \(BatchNorm\): use_global_stats: false"):
            model = convert_caffe(proto, weights)
        notes = json.loads({p.key: p.value for p in model.metadata_props}["ebr_onnx.conversion_notes"])
        assert len(notes) == 1 and notes[0].startswith("layer 'bn' (BatchNorm): use_global_stats: false")
    else:
        model = convert_caffe(proto, weights)
    got = run(model, {"data": x})["bn"]
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


@pytest.mark.parametrize(
    ("conv_param", "stride", "pad", "dilation", "group", "kernel", "bias"),
    [
        ("num_output: 3 kernel_size: 4 stride: 2 pad: 1", (2, 2), (1, 1), (1, 1), 1, (4, 4), True),  # 2× upsampling
        ("num_output: 5 kernel_size: 3", (1, 1), (0, 0), (1, 1), 1, (3, 3), True),
        ("num_output: 4 kernel_h: 3 kernel_w: 2 stride_h: 3 stride_w: 1 pad_h: 1 pad_w: 0",
         (3, 1), (1, 0), (1, 1), 1, (3, 2), True),
        ("num_output: 6 kernel_size: 3 dilation: 2 group: 2 stride: 2 pad: 2 bias_term: false",
         (2, 2), (2, 2), (2, 2), 2, (3, 3), False),
    ],
)
def test_deconvolution(tmp_path, conv_param, stride, pad, dilation, group, kernel, bias):
    """Weight blob (C_in, num_output / group, kh, kw), as Caffe stores it; output size s·(n − 1) + ext − 2p."""
    x = rand(2, 4, 5, 6)
    out_c = 6 if group == 2 else int(conv_param.split()[1])
    w, b = rand(4, out_c // group, *kernel), rand(out_c)
    deconv = layer("up", "Deconvolution", ["data"], params=f"convolution_param {{ {conv_param} }}")
    proto, weights = write_net(tmp_path, input_layer("data", x.shape) + deconv, {"up": [w, b] if bias else [w]})
    model = convert_caffe(proto, weights)
    assert [n.op_type for n in model.graph.node] == ["ConvTranspose"]
    got = run(model, {"data": x})["up"]
    want = caffe_deconv(x, w, b if bias else None, stride, pad, dilation, group)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_deconvolution_weight_layout_and_bilinear_filler(tmp_path):
    """A Convolution-layout blob (num_output, C_in, …) is refused; random weights follow Caffe's bilinear filler."""
    params = ('convolution_param { num_output: 2 kernel_size: 4 stride: 2 pad: 1 group: 2 bias_term: false '
              'weight_filler { type: "bilinear" } }')
    text = input_layer("data", (1, 2, 3, 3)) + layer("up", "Deconvolution", ["data"], params=params)
    proto, weights = write_net(tmp_path, text, {"up": [np.zeros((2, 2, 4, 4))]})
    with pytest.raises(CaffeConversionError, match=r"layer 'up' \(Deconvolution\) weight blob 0 has shape "
                                                   r"\(2, 2, 4, 4\).*needs \(2, 1, 4, 4\)"):
        convert_caffe(proto, weights)
    model = convert_caffe(proto, random_weights=0)
    kernel = onnx.numpy_helper.to_array({t.name: t for t in model.graph.initializer}["up/weight"])
    ramp = np.array([0.25, 0.75, 0.75, 0.25])
    np.testing.assert_allclose(kernel, np.broadcast_to(np.outer(ramp, ramp), (2, 1, 4, 4)))
    x = rand(1, 2, 3, 3)
    np.testing.assert_allclose(run(model, {"data": x})["up"], caffe_deconv(x, kernel, None, (2, 2), (1, 1), (1, 1), 2),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ("convolution_param { num_output: 2 kernel_size: 5 pad: 3 }", r"output size \(-1, -1\)"),
        ("convolution_param { num_output: 3 kernel_size: 2 group: 2 }", "group 2 does not divide 4 inputs and 3"),
        ("convolution_param { num_output: 2 kernel_size: 2 axis: 2 }", "only channel axis 1"),
    ],
)
def test_deconvolution_errors(tmp_path, params, message):
    text = input_layer("data", (1, 4, 1, 1)) + layer("up", "Deconvolution", ["data"], params=params)
    with pytest.raises(CaffeConversionError, match=r"^layer 'up' \(Deconvolution\): " + message):
        convert_caffe(write_net(tmp_path, text)[0], random_weights=0)


@pytest.mark.parametrize(
    ("shape", "params", "blob"),
    [
        ((2, 3, 4, 5), "", (3,)),
        ((4, 6), "", (6,)),
        ((2, 3, 4), "prelu_param { channel_shared: true }", ()),
    ],
)
def test_prelu(tmp_path, shape, params, blob):
    x = rand(*shape)
    slope = RNG.uniform(-0.5, 0.5, blob).astype(np.float32)
    text = input_layer("data", shape) + layer("prelu", "PReLU", ["data"], params=params)
    got = convert_run(tmp_path, text, {"prelu": [slope]}, {"data": x})["prelu"]
    np.testing.assert_allclose(got, caffe_prelu(x, slope, bool(params)), rtol=1e-6, atol=1e-7)


def test_prelu_default_filler_and_errors(tmp_path):
    """Caffe's default slope is 0.25; a per-channel layer needs an axis 1; a shared slope is a 0-axis blob."""
    text = input_layer("data", (2, 3)) + layer("prelu", "PReLU", ["data"])
    model = convert_caffe(write_net(tmp_path, text)[0], random_weights=0)
    np.testing.assert_allclose(run(model, {"data": -np.ones((2, 3))})["prelu"], -0.25)
    text = input_layer("data", (5,)) + layer("prelu", "PReLU", ["data"])
    with pytest.raises(CaffeConversionError, match=r"^layer 'prelu' \(PReLU\): needs channels on axis 1"):
        convert_caffe(write_net(tmp_path, text)[0], random_weights=0)
    shared = layer("prelu", "PReLU", ["data"], params="prelu_param { channel_shared: true }")
    text = input_layer("data", (2, 3)) + shared
    proto, weights = write_net(tmp_path, text, {"prelu": [np.zeros(3)]})
    with pytest.raises(CaffeConversionError, match=r"layer 'prelu' \(PReLU\) weight blob 0 has shape \(3\).*\(\)"):
        convert_caffe(proto, weights)


@pytest.mark.parametrize(
    ("params", "ops"),
    [
        ("power: 2 scale: 0.5 shift: 1", ["Mul", "Add", "Pow"]),
        ("power: 1 scale: -2 shift: 0.5", ["Mul", "Add"]),
        ("power: 3", ["Pow"]),
        ("power: 0.5 shift: 4 scale: 0.25", ["Mul", "Add", "Pow"]),  # 4 + x/4 > 0 here
        ("power: 2 scale: 0 shift: 3", ["Expand"]),  # Caffe ignores x: 3^2
        ("power: 0 scale: 5", ["Expand"]),  # 1
        ("", ["Identity"]),
    ],
)
def test_power(tmp_path, params, ops):
    x = rand(2, 3, 4)
    fields = dict(zip(params.split()[::2], map(float, params.split()[1::2])))
    text = input_layer("data", x.shape) + layer("pw", "Power", ["data"], params=f"power_param {{ {params} }}")
    proto, _ = write_net(tmp_path, text)
    model = convert_caffe(proto)
    assert [n.op_type for n in model.graph.node] == ops and model.graph.node[-1].name == "pw"
    want = caffe_power(x, fields.get("power:", 1.0), fields.get("scale:", 1.0), fields.get("shift:", 0.0))
    np.testing.assert_allclose(run(model, {"data": x})["pw"], want, rtol=1e-5, atol=1e-6)


def test_argmax_at_the_output_is_dropped(tmp_path):
    """The explanation needs the scores: the ArgMax goes, its bottom is the output, and the model says so."""
    x = rand(2, 5)
    text = (
        input_layer("data", x.shape)
        + layer("prob", "Softmax", ["data"])
        + layer("argmax", "ArgMax", ["prob"], params="argmax_param { top_k: 2 out_max_val: true axis: 1 }")
        + layer("silence", "Silence", ["argmax"], tops=[])
    )
    proto, _ = write_net(tmp_path, text)
    with pytest.warns(CaffeConversionWarning, match=r"layer 'argmax' \(ArgMax\): dropped; the model outputs "
                                                    r"the scores 'prob'"):
        model = convert_caffe(proto)
    assert [n.name for n in model.graph.node] == ["prob"] and [o.name for o in model.graph.output] == ["prob"]
    notes = json.loads({p.key: p.value for p in model.metadata_props}["ebr_onnx.conversion_notes"])
    assert notes == ["layer 'argmax' (ArgMax): dropped; the model outputs the scores 'prob' instead "
                     "(explanations start from the scores)"]
    np.testing.assert_allclose(run(model, {"data": x})["prob"].sum(axis=1), 1, rtol=1e-6)


def test_argmax_inside_the_net_is_refused(tmp_path):
    text = (
        input_layer("data", (2, 5))
        + layer("argmax", "ArgMax", ["data"], tops=["label"])
        + layer("r", "ReLU", ["label"])
    )
    with pytest.raises(CaffeConversionError, match=r"^layer 'argmax' \(ArgMax\): only supported at the output .*"
                                                   r"layer 'r' \(ReLU\) reads its top 'label'$"):
        convert_caffe(write_net(tmp_path, text)[0])
