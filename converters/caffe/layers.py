"""One converter per Caffe layer type (except LSTM, in ``lstm.py``). Each docstring says what Caffe computes."""

from __future__ import annotations

import math

import numpy as np

from .attrs import axis_index, conv_window, deconvolved_size, pool_end_pad, pool_window, reshape_target
from .fillers import constant
from .registry import LayerContext, converter
from .schema import EltwiseParameter, FillerParameter, LRNParameter, PoolingParameter
from .weights import BlobSpec, prototxt_filler

_ONE, _ZERO = constant(1.0), constant(0.0)


def _int64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64)


def _per_top(ctx: LayerContext, shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
    """Caffe's "one shape for all tops, or one per top" rule."""
    if len(shapes) not in (1, len(ctx.outputs)):
        raise ctx.error(f"{len(shapes)} shapes for {len(ctx.outputs)} tops")
    return shapes * len(ctx.outputs) if len(shapes) == 1 else shapes


def _add_inputs(ctx: LayerContext, shapes: list[tuple[int, ...]]) -> None:
    for name, shape in zip(ctx.outputs, _per_top(ctx, shapes)):
        ctx.graph.add_input(name, shape)


@converter("Input")
def input_layer(ctx: LayerContext) -> None:
    """Input: tops are filled by the user; each becomes a graph input."""
    _add_inputs(ctx, [tuple(s.dim) for s in ctx.layer.input_param.shape])


@converter("DummyData")
def dummy_data(ctx: LayerContext) -> None:
    """DummyData: tops the user overwrites before ``forward()`` (as the release's demo does); graph inputs here."""
    p = ctx.layer.dummy_data_param
    shapes = [tuple(s.dim) for s in p.shape] or [tuple(d) for d in zip(p.num, p.channels, p.height, p.width)]
    _add_inputs(ctx, shapes)


def _convolution(ctx: LayerContext, op: str) -> None:
    """Conv or ConvTranspose from a ``convolution_param``, with Caffe's blobs (weight, optional bias).

    Caffe's weight is (conv_out_channels, conv_in_channels / group, *kernel): (num_output, C / group, …) for a
    Convolution; a Deconvolution swaps the roles, (C, num_output / group, …), which is ONNX ConvTranspose's layout.
    """
    p = ctx.layer.convolution_param
    shape = ctx.shape()
    if axis_index(p.axis, len(shape), ctx.name) != 1:
        raise ctx.error("only channel axis 1 is supported")
    if not p.num_output:
        raise ctx.error("convolution_param.num_output must be positive")
    window = conv_window(p, len(shape) - 2, ctx.name)
    if shape[1] % p.group or p.num_output % p.group:
        raise ctx.error(f"group {p.group} does not divide {shape[1]} inputs and {p.num_output} outputs")
    rows, columns = (p.num_output, shape[1]) if op == "Conv" else (shape[1], p.num_output)
    specs = [BlobSpec((rows, columns // p.group, *window.kernel), prototxt_filler(p, "weight_filler"))]
    if p.bias_term:
        specs.append(BlobSpec((p.num_output,), prototxt_filler(p, "bias_filler", _ZERO)))
    arrays = ctx.params(*specs)
    names = [ctx.const(suffix, a) for suffix, a in zip(("weight", "bias"), arrays)]
    ctx.node(
        op,
        [ctx.inputs[0], *names],
        kernel_shape=window.kernel,
        strides=window.stride,
        pads=window.pad * 2,
        dilations=window.dilation,
        group=p.group,
    )


@converter("Convolution")
def convolution(ctx: LayerContext) -> None:
    """Convolution: cross-correlation with symmetric zero padding, stride, dilation and groups, plus bias."""
    _convolution(ctx, "Conv")


@converter("Deconvolution")
def deconvolution(ctx: LayerContext) -> None:
    """Deconvolution (``deconv_layer.cpp``): the convolution's backward data pass (col2im of Wᵀx), plus bias.

    Output size per axis: stride·(in − 1) + dilation·(kernel − 1) + 1 − 2·pad; contributions that fall into the
    padding are dropped. Emitted as ConvTranspose with the same attributes (no output_padding).
    """
    size = ctx.shape()[2:]
    out = deconvolved_size(size, conv_window(ctx.layer.convolution_param, len(size), ctx.name))
    if min(out, default=1) < 1:
        raise ctx.error(f"output size {out} for input {tuple(size)} is not positive")
    _convolution(ctx, "ConvTranspose")


@converter("Pooling")
def pooling(ctx: LayerContext) -> None:
    """Pooling: MAX ignores padding; AVE divides by the window clipped to the padded extent.

    Caffe rounds the output size up (ceil) and drops a last window that would start in the end padding.
    Emitted as floor-rounded ONNX pooling with extra end padding; for AVE, where the padded region and the
    extra region differ, an explicit zero Pad is emitted first so that only Caffe's ``pad`` counts.
    """
    p = ctx.layer.pooling_param
    method = PoolingParameter.PoolMethod.Name(p.pool)
    if method == "STOCHASTIC":
        raise ctx.error("STOCHASTIC pooling has no inference form")
    x = ctx.inputs[0]
    if p.global_pooling:
        ctx.node("GlobalMaxPool" if method == "MAX" else "GlobalAveragePool", [x])
        return
    w = pool_window(p, ctx.name)
    size = ctx.shape()[2:]
    end = tuple(pool_end_pad(n, k, s, q) for n, k, s, q in zip(size, w.kernel, w.stride, w.pad))
    geometry = {"kernel_shape": w.kernel, "strides": w.stride}
    if method == "MAX":
        ctx.node("MaxPool", [x], pads=(*w.pad, *end), **geometry)
    elif end == w.pad:
        ctx.node("AveragePool", [x], pads=w.pad * 2, count_include_pad=1, **geometry)
    else:
        if any(w.pad):
            x = ctx.node("Pad", [x, ctx.const("pads", _int64((0, 0, *w.pad) * 2))], suffix="pad", mode="constant")
            end = tuple(max(e - q, 0) for e, q in zip(end, w.pad))
        ctx.node("AveragePool", [x], pads=(0, 0, *end), count_include_pad=0, **geometry)


@converter("InnerProduct")
def inner_product(ctx: LayerContext) -> None:
    """InnerProduct: flatten axes [axis, end) of x, y = x W^T + b, output shape x.shape[:axis] + (num_output,)."""
    p = ctx.layer.inner_product_param
    shape = ctx.shape()
    axis = axis_index(p.axis, len(shape), ctx.name)
    depth, k = math.prod(shape[axis:]), p.num_output
    specs = [BlobSpec((depth, k) if p.transpose else (k, depth), prototxt_filler(p, "weight_filler"))]
    if p.bias_term:
        specs.append(BlobSpec((k,), prototxt_filler(p, "bias_filler", _ZERO)))
    names = [ctx.const(suffix, a) for suffix, a in zip(("weight", "bias"), ctx.params(*specs))]
    x = ctx.inputs[0]
    if len(shape) != 2 or axis != 1:
        x = ctx.node("Flatten", [x], suffix="flatten", axis=axis)
    if axis == 1:
        ctx.node("Gemm", [x, *names], transB=int(not p.transpose))
        return
    y = ctx.node("Gemm", [x, *names], out=ctx.tensor("gemm"), transB=int(not p.transpose))
    ctx.node("Reshape", [y, ctx.const("shape", _int64((*shape[:axis], k)))], suffix="reshape", out=ctx.outputs[0])


@converter("ReLU")
def relu(ctx: LayerContext) -> None:
    """ReLU: max(x, 0) + negative_slope * min(x, 0)."""
    slope = ctx.layer.relu_param.negative_slope
    if slope:
        ctx.node("LeakyRelu", ctx.inputs[:1], alpha=slope)
    else:
        ctx.node("Relu", ctx.inputs[:1])


@converter("Sigmoid")
def sigmoid(ctx: LayerContext) -> None:
    """Sigmoid: 1 / (1 + exp(-x))."""
    ctx.node("Sigmoid", ctx.inputs[:1])


@converter("TanH")
def tanh(ctx: LayerContext) -> None:
    """TanH: tanh(x)."""
    ctx.node("Tanh", ctx.inputs[:1])


@converter("Dropout")
def dropout(ctx: LayerContext) -> None:
    """Dropout: the identity in the TEST phase."""
    ctx.node("Identity", ctx.inputs[:1])


@converter("Softmax")
def softmax(ctx: LayerContext) -> None:
    """Softmax along ``axis``; every other axis indexes an independent softmax."""
    ctx.node("Softmax", ctx.inputs[:1], axis=axis_index(ctx.layer.softmax_param.axis, len(ctx.shape()), ctx.name))


@converter("LRN")
def lrn(ctx: LayerContext) -> None:
    """LRN. ACROSS_CHANNELS: x / (k + alpha/n * sum over n channels of x^2)^beta (ONNX LRN).

    WITHIN_CHANNEL: x * (1 + alpha * avg_{n x n, pad (n-1)/2} x^2)^(-beta); Caffe builds it from
    Power/Pooling/Eltwise layers with shift 1, so ``k`` is not used there.
    """
    p = ctx.layer.lrn_param
    x = ctx.inputs[0]
    if p.norm_region == LRNParameter.ACROSS_CHANNELS:
        ctx.node("LRN", [x], size=p.local_size, alpha=p.alpha, beta=p.beta, bias=p.k)
        return
    pad = (p.local_size - 1) // 2
    square = ctx.node("Mul", [x, x], suffix="square")
    mean = ctx.node(
        "AveragePool", [square], suffix="pool", kernel_shape=(p.local_size,) * 2, pads=(pad,) * 4, count_include_pad=1
    )
    scaled = ctx.node("Mul", [mean, ctx.const("alpha", np.float32(p.alpha))], suffix="scale")
    shifted = ctx.node("Add", [scaled, ctx.const("one", np.float32(1.0))], suffix="shift")
    factor = ctx.node("Pow", [shifted, ctx.const("neg_beta", np.float32(-p.beta))], suffix="power")
    ctx.node("Mul", [x, factor])


@converter("Reshape")
def reshape(ctx: LayerContext) -> None:
    """Reshape: axes [axis, axis+num_axes) become ``shape`` (0 copies the input dim, -1 is inferred)."""
    p = ctx.layer.reshape_param
    target = reshape_target(ctx.shape(), list(p.shape.dim), p.axis, p.num_axes, ctx.name)
    ctx.node("Reshape", [ctx.inputs[0], ctx.const("shape", _int64(target))])


@converter("Flatten")
def flatten(ctx: LayerContext) -> None:
    """Flatten: merge axes [axis, end_axis] into one."""
    p = ctx.layer.flatten_param
    shape = ctx.shape()
    start, end = axis_index(p.axis, len(shape), ctx.name), axis_index(p.end_axis, len(shape), ctx.name)
    target = (*shape[:start], math.prod(shape[start : end + 1]), *shape[end + 1 :])
    ctx.node("Reshape", [ctx.inputs[0], ctx.const("shape", _int64(target))])


@converter("Concat")
def concat(ctx: LayerContext) -> None:
    """Concat along ``axis`` (or the legacy ``concat_dim``)."""
    p = ctx.layer.concat_param
    axis = p.concat_dim if p.HasField("concat_dim") else p.axis
    ctx.node("Concat", ctx.inputs, axis=axis_index(axis, len(ctx.shape()), ctx.name))


@converter("Slice")
def slice_layer(ctx: LayerContext) -> None:
    """Slice along ``axis`` at ``slice_point``s, or into equal parts (one per top)."""
    p = ctx.layer.slice_param
    shape = ctx.shape()
    axis = axis_index(p.slice_dim if p.HasField("slice_dim") else p.axis, len(shape), ctx.name)
    tops, extent = len(ctx.outputs), shape[axis]
    if p.slice_point:
        bounds = [0, *p.slice_point, extent]
        if len(bounds) != tops + 1 or bounds != sorted(bounds):
            raise ctx.error(f"slice points {list(p.slice_point)} do not give {tops} slices of {extent}")
        sizes = np.diff(bounds)
    elif extent % tops:
        raise ctx.error(f"cannot slice {extent} into {tops} equal parts")
    else:
        sizes = [extent // tops] * tops
    ctx.emit("Split", [ctx.inputs[0], ctx.const("split", _int64(sizes))], ctx.outputs, axis=axis)


@converter("Split")
def split(ctx: LayerContext) -> None:
    """Split: every top is a copy of the bottom."""
    for index, top in enumerate(ctx.outputs):
        ctx.emit("Identity", ctx.inputs[:1], [top], suffix=str(index))


def _chain(ctx: LayerContext, op: str, terms: list[str]) -> None:
    """Fold binary ``op`` over ``terms``; the last node carries the layer name and top."""
    acc = terms[0]
    for index, term in enumerate(terms[1:], start=1):
        last = index == len(terms) - 1
        acc = ctx.node(op, [acc, term], suffix=None if last else f"{op.lower()}{index}")


@converter("Eltwise")
def eltwise(ctx: LayerContext) -> None:
    """Eltwise: SUM (sum of coeff_i * x_i), PROD (product) or MAX (maximum) of the bottoms."""
    p = ctx.layer.eltwise_param
    operation = EltwiseParameter.EltwiseOp.Name(p.operation)
    terms = list(ctx.inputs)
    if p.coeff:
        if operation != "SUM" or len(p.coeff) != len(terms):
            raise ctx.error(f"{len(p.coeff)} coefficients for {operation} of {len(terms)} bottoms")
        terms = [
            t if c == 1 else ctx.node("Mul", [t, ctx.const(f"coeff{i}", np.float32(c))], suffix=f"coeff{i}")
            for i, (t, c) in enumerate(zip(terms, p.coeff))
        ]
    _chain(ctx, {"SUM": "Add", "PROD": "Mul", "MAX": "Max"}[operation], terms)


def _broadcastable(ctx: LayerContext, axis: int, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The parameter shape padded with trailing 1s so that it broadcasts against x from ``axis`` on."""
    shape = ctx.shape()
    if tuple(shape[axis : axis + len(param_shape)]) != tuple(param_shape):
        raise ctx.error(f"parameter shape {tuple(param_shape)} does not match input {shape} at axis {axis}")
    return (*param_shape, *(1,) * (len(shape) - axis - len(param_shape)))


def _affine_operands(ctx: LayerContext, axis: int, num_axes: int, blobs: dict[str, FillerParameter]) -> list[str]:
    """Scale/Bias operands broadcastable against x: one per entry of ``blobs`` (suffix → filler), in order.

    A second bottom takes the place of the first blob (Caffe's blob order); the rest are learned blobs.
    """
    fillers = list(blobs.items())
    shape = ctx.shape()
    operands = []
    if len(ctx.inputs) > 1:
        param_shape = ctx.shape(1)
        target = _broadcastable(ctx, axis, param_shape)
        other = ctx.inputs[1]
        if target != param_shape:
            other = ctx.node("Reshape", [other, ctx.const("operand_shape", _int64(target))], suffix="operand")
        operands.append(other)
        fillers = fillers[1:]
    else:
        param_shape = tuple(shape[axis:] if num_axes == -1 else shape[axis : axis + num_axes])
        target = _broadcastable(ctx, axis, param_shape)
    arrays = ctx.params(*(BlobSpec(param_shape, f) for _, f in fillers))
    operands += [ctx.const(suffix, a.reshape(target)) for (suffix, _), a in zip(fillers, arrays)]
    return operands


@converter("Scale")
def scale(ctx: LayerContext) -> None:
    """Scale: y = x * gamma (+ beta), gamma a blob or the second bottom, broadcast from ``axis``."""
    p = ctx.layer.scale_param
    axis = axis_index(p.axis, len(ctx.shape()), ctx.name)
    blobs = {"scale": prototxt_filler(p, "filler", _ONE)}
    if p.bias_term:
        blobs["bias"] = prototxt_filler(p, "bias_filler", _ZERO)
    gamma, *beta = _affine_operands(ctx, axis, p.num_axes, blobs)
    if not beta:
        ctx.node("Mul", [ctx.inputs[0], gamma])
        return
    scaled = ctx.node("Mul", [ctx.inputs[0], gamma], out=ctx.tensor("scaled"))
    ctx.node("Add", [scaled, beta[0]], suffix="bias", out=ctx.outputs[0])


@converter("Bias")
def bias(ctx: LayerContext) -> None:
    """Bias: y = x + beta, beta a blob or the second bottom, broadcast from ``axis``."""
    p = ctx.layer.bias_param
    axis = axis_index(p.axis, len(ctx.shape()), ctx.name)
    (beta,) = _affine_operands(ctx, axis, p.num_axes, {"bias": prototxt_filler(p, "filler", _ZERO)})
    ctx.node("Add", [ctx.inputs[0], beta])


@converter("BatchNorm")
def batch_norm(ctx: LayerContext) -> None:
    """BatchNorm with stored statistics: (x - mean/s) / sqrt(var/s + eps), s = blobs[2][0] (0 when s == 0).

    ``use_global_stats: false`` (Caffe normalises each batch by its own statistics) is converted the same way,
    as inference, with a note.
    """
    p = ctx.layer.batch_norm_param
    if p.HasField("use_global_stats") and not p.use_global_stats:
        ctx.note(
            "use_global_stats: false normalises each batch by its own statistics in Caffe; converted as inference "
            "with the stored mean and variance (divided by the stored moving-average factor)"
        )
    channels = ctx.shape()[1]
    mean, var, factor = ctx.params(BlobSpec((channels,)), BlobSpec((channels,), _ONE), BlobSpec((1,), _ONE))
    inv = np.float32(0.0 if factor[0] == 0 else 1.0 / factor[0])
    ctx.node(
        "BatchNormalization",
        [
            ctx.inputs[0],
            ctx.const("scale", np.ones(channels, np.float32)),
            ctx.const("bias", np.zeros(channels, np.float32)),
            ctx.const("mean", mean * inv),
            ctx.const("variance", var * inv),
        ],
        epsilon=p.eps,
    )


@converter("PReLU")
def prelu(ctx: LayerContext) -> None:
    """PReLU: max(x, 0) + a_c · min(x, 0), a slope per channel (axis 1; blob (C,)) or one shared (blob ())."""
    p = ctx.layer.prelu_param
    shape = ctx.shape()
    if len(shape) < 2:
        raise ctx.error(f"needs channels on axis 1, but the input has shape {shape}")
    blob = () if p.channel_shared else (shape[1],)
    (slope,) = ctx.params(BlobSpec(blob, prototxt_filler(p, "filler", constant(0.25))))
    target = (1,) if p.channel_shared else (shape[1], *(1,) * (len(shape) - 2))
    ctx.node("PRelu", [ctx.inputs[0], ctx.const("slope", slope.reshape(target))])


@converter("Power")
def power(ctx: LayerContext) -> None:
    """Power: y = (shift + scale · x)^power; the constant shift^power (1 when power is 0) when power · scale = 0.

    Only the steps that change x are emitted (Mul by scale, Add shift, Pow), as Caffe skips them too.
    """
    p = ctx.layer.power_param
    x = ctx.inputs[0]
    if p.power * p.scale == 0:
        value = np.float32(1.0) if p.power == 0 else np.power(np.float32(p.shift), np.float32(p.power))
        ctx.node("Expand", [ctx.const("value", np.float32(value)), ctx.const("shape", _int64(ctx.shape()))])
        return
    steps = [(op, name, value) for op, name, value, neutral in
             (("Mul", "scale", p.scale, 1.0), ("Add", "shift", p.shift, 0.0), ("Pow", "power", p.power, 1.0))
             if value != neutral]
    if not steps:
        ctx.node("Identity", [x])
    for index, (op, name, value) in enumerate(steps):
        last = index == len(steps) - 1
        x = ctx.node(op, [x, ctx.const(name, np.float32(value))], suffix=None if last else name)
