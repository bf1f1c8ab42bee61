"""Parsing of Caffe layer parameters into plain values (no graph building here)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import CaffeConversionError


def axis_index(axis: int, ndim: int, layer: str) -> int:
    """Caffe's ``Blob::CanonicalAxisIndex``: a negative axis counts from the end."""
    if not -ndim <= axis < ndim:
        raise CaffeConversionError(f"layer '{layer}': axis {axis} is out of range for a {ndim}-D blob")
    return axis % ndim


@dataclass(frozen=True)
class Window:
    """Kernel geometry per spatial axis."""

    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]


def _per_axis(values, n: int, default: int, what: str, layer: str) -> tuple[int, ...]:
    values = list(values) or [default]
    if len(values) == 1:
        return tuple(values * n)
    if len(values) != n:
        raise CaffeConversionError(f"layer '{layer}': {len(values)} {what} values for {n} spatial axes")
    return tuple(values)


def _hw_or(param, prefix: str, fallback: tuple[int, ...], n: int, layer: str) -> tuple[int, ...]:
    """``<prefix>_h``/``<prefix>_w`` when either is given (2-D only), else ``fallback``."""
    if not (param.HasField(f"{prefix}_h") or param.HasField(f"{prefix}_w")):
        return fallback
    if n != 2:
        raise CaffeConversionError(f"layer '{layer}': {prefix}_h/{prefix}_w need 2 spatial axes, not {n}")
    return getattr(param, f"{prefix}_h"), getattr(param, f"{prefix}_w")


def conv_window(param, n: int, layer: str) -> Window:
    """ConvolutionParameter → Window (``kernel_size``/``pad``/``stride`` repeated per axis, or ``*_h``/``*_w``)."""
    if not param.kernel_size and not param.HasField("kernel_h"):
        raise CaffeConversionError(f"layer '{layer}': convolution without kernel_size")
    return Window(
        kernel=_hw_or(param, "kernel", _per_axis(param.kernel_size, n, 0, "kernel_size", layer), n, layer),
        stride=_hw_or(param, "stride", _per_axis(param.stride, n, 1, "stride", layer), n, layer),
        pad=_hw_or(param, "pad", _per_axis(param.pad, n, 0, "pad", layer), n, layer),
        dilation=_per_axis(param.dilation, n, 1, "dilation", layer),
    )


def deconvolved_size(size: tuple[int, ...], window: Window) -> tuple[int, ...]:
    """Caffe's ``DeconvolutionLayer::compute_output_shape``: stride·(n − 1) + dilation·(kernel − 1) + 1 − 2·pad."""
    return tuple(
        s * (n - 1) + d * (k - 1) + 1 - 2 * q
        for n, k, s, q, d in zip(size, window.kernel, window.stride, window.pad, window.dilation)
    )


def pool_window(param, layer: str) -> Window:
    """PoolingParameter → Window (2-D; single values or ``*_h``/``*_w``)."""
    if not (param.HasField("kernel_size") or param.HasField("kernel_h")):
        raise CaffeConversionError(f"layer '{layer}': pooling without kernel_size (and not global_pooling)")
    return Window(
        kernel=_hw_or(param, "kernel", (param.kernel_size,) * 2, 2, layer),
        stride=_hw_or(param, "stride", (param.stride,) * 2, 2, layer),
        pad=_hw_or(param, "pad", (param.pad,) * 2, 2, layer),
        dilation=(1, 1),
    )


def pooled_size(size: int, kernel: int, stride: int, pad: int) -> int:
    """Caffe's pooled extent: ceil rounding, minus the last window if it would start inside the end padding."""
    out = -(-(size + 2 * pad - kernel) // stride) + 1
    if pad and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def pool_end_pad(size: int, kernel: int, stride: int, pad: int) -> int:
    """The end padding that makes floor-rounded pooling give Caffe's ``pooled_size`` (begin padding = ``pad``)."""
    out = pooled_size(size, kernel, stride, pad)
    return max((out - 1) * stride + kernel - size - pad, 0)


def reshape_target(shape: tuple[int, ...], dims: list[int], axis: int, num_axes: int, layer: str) -> tuple[int, ...]:
    """Caffe's ``ReshapeLayer``: replace axes [axis, axis+num_axes) by ``dims`` (0 copies, -1 infers)."""
    ndim = len(shape)
    start = axis if axis >= 0 else ndim + axis + 1
    end = ndim if num_axes == -1 else start + num_axes
    if not 0 <= start <= end <= ndim:
        raise CaffeConversionError(f"layer '{layer}': reshape axis {axis}/num_axes {num_axes} out of range")
    middle = [shape[start + i] if d == 0 else d for i, d in enumerate(dims)]
    if middle.count(-1) > 1:
        raise CaffeConversionError(f"layer '{layer}': more than one -1 in the reshape dims")
    if -1 in middle:
        known = math.prod(d for d in middle if d != -1)
        middle[middle.index(-1)] = math.prod(shape[start:end]) // known
    target = (*shape[:start], *middle, *shape[end:])
    if math.prod(target) != math.prod(shape):
        raise CaffeConversionError(f"layer '{layer}': cannot reshape {shape} to {target}")
    return target
