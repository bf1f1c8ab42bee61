"""Rules of the pooling ops: MaxPool, GlobalMaxPool, AveragePool, GlobalAveragePool, and of the reductions
(``shared/spec/caffe-reference.md`` §2.2, the release's ``PoolingLayer::Backward_eb_cpu``).

* MAX: the whole signal of an output goes to the maximum of its window, identical to the gradient; ties go to the
  first maximum in row-major window order (the release's strict ``>``), padded positions never win.
* AVE, EB: ``p'_i = Σ_w x_i · p_w / Σ_{i'∈w} x_{i'}`` with the guard ``Σ > 0`` (else 0) — Eq. 8 with unit weights;
  gradient: ``p'_i = Σ_w p_w / count_w`` with the forward's ``count_include_pad``.

* Reductions: ReduceMean/ReduceSum as AVE (Eq. 8 with equal weights); ReduceMax/ReduceMin as MAX (the first
  extreme in row-major order over the reduced axes takes the signal); ReduceL2 ``y = Σ_i x_i (x_i / y)``, EB: Eq. 8
  with the contributions ``x_i² / y ≥ 0``, ``p'_i = p x_i² ⊘₀ Σ x²``; gradient ``p x_i ⊘₀ y``.

Windows are visited by kernel offset on strided views of the padded input (as the convolution in
:mod:`ebr_onnx.rules.linear`), so no loop runs over pixels, on 1, 2 or 3 spatial axes (1-D pooling is 2-D pooling
with a unit height; 3-D pooling windows span time, height and width).
"""
from __future__ import annotations

from typing import Any, Iterator, Sequence

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.geometry import SPATIAL_AXES, ConvGeometry
from ..core.graph import Node
from ..core.numeric import safe_divide
from ..core.registry import needs_input, needs_nothing, rule


def _geometry(node: Node, ctx: RuleContext, p: Any) -> ConvGeometry:
    """Strides, pads and dilations of a pooling node; the output size is the forward's (it includes ``ceil_mode``)."""
    x_shape = ctx.shape(node.inputs[0])
    spatial = len(x_shape) - 2
    if spatial not in SPATIAL_AXES:
        raise EbrError(f"{node.op_type} node {node.name!r} is {spatial}-D; ebr_onnx supports 1-D, 2-D and 3-D "
                       "pooling")
    geo = ConvGeometry(node, x_shape, (1, 1, *node.attr("kernel_shape")))
    geo.out = list(p.shape[2:]) if spatial > 1 else [1, p.shape[2]]
    return geo


def _four_d(a: Any) -> Any:
    """A 1-D pooling's array with a unit height (2-D and 3-D arrays as they are)."""
    return a[:, :, None, :] if a.ndim == 3 else a


_ALL = (slice(None), slice(None))


def _offsets(geo: ConvGeometry) -> Iterator[tuple[slice, ...]]:
    """The strided windows of each kernel offset, in row-major window order."""
    for offset in geo.offsets():
        yield _ALL + geo.window(*offset)


def _padded(xp, geo: ConvGeometry, a: Any, fill: float, pad_fill: float | None = None) -> Any:
    """``a`` placed in the frame the windows read: explicit pads hold ``pad_fill`` (default ``fill``), the
    ``ceil_mode`` overhang beyond them holds ``fill``."""
    padded = [b + s + e for b, s, e in zip(geo.begins, geo.size, geo.ends)]
    frame = tuple(max(r, p) for r, p in zip(geo.reach(), padded))
    out = xp.full(a.shape[:2] + frame, fill, dtype=a.dtype)
    if pad_fill is not None:
        out[_ALL + tuple(slice(0, p) for p in padded)] = pad_fill
    out[_inside(geo)] = a
    return out


def _inside(geo: ConvGeometry) -> tuple[slice, ...]:
    """The input's place in the padded frame."""
    return _ALL + tuple(slice(b, b + s) for b, s in zip(geo.begins, geo.size))


def _crop(geo: ConvGeometry, a: Any, one_d: bool) -> Any:
    out = a[_inside(geo)]
    return out[:, :, 0, :] if one_d else out


def _window_sum(xp, geo: ConvGeometry, a_pad: Any) -> Any:
    """``Σ_{i∈w} a_i`` for every window ``w`` (sum pooling of the padded frame)."""
    out = xp.zeros(a_pad.shape[:2] + tuple(geo.out), dtype=a_pad.dtype)
    for window in _offsets(geo):
        out += a_pad[window]
    return out


def _spread(xp, geo: ConvGeometry, q: Any, frame: tuple[int, ...]) -> Any:
    """The transpose of :func:`_window_sum`: every input position receives the sum of ``q`` over its windows."""
    out = xp.zeros(frame, dtype=q.dtype)
    for window in _offsets(geo):
        out[window] += q
    return out


@rule("MaxPool", needs=needs_input)
def max_pool(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = Σ_w p_w [i = first argmax of w]`` (identical in EB and grad; the Indices output takes no signal).

    The window maximum is formed first; then each offset, in row-major window order, takes the windows where it
    equals the maximum and no earlier offset did.
    """
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    geo = _geometry(node, ctx, signals[0])
    p = _four_d(signals[0])
    x_pad = _padded(xp, geo, _four_d(x), -xp.inf) if _needs_frame(geo) else _four_d(x)
    views = [x_pad[window] for window in _offsets(geo)]
    top = views[0].copy()
    for v in views[1:]:
        xp.maximum(top, v, out=top)
    disjoint = all(s >= (k - 1) * d + 1 for s, k, d in zip(geo.strides, geo.kernel, geo.dilations))
    out = xp.zeros(x_pad.shape, dtype=p.dtype)
    taken = None
    for k, window in enumerate(_offsets(geo)):
        hit = views[k] == top
        if taken is not None:
            hit &= ~taken
        if k < len(views) - 1:
            taken = hit.copy() if taken is None else taken | hit
        if disjoint:  # every position is in one window at most: write, no accumulation
            xp.multiply(p, hit, out=out[window])
        else:
            out[window] += xp.where(hit, p, 0)
    return [_crop(geo, out, x.ndim == 3)]


def _needs_frame(geo: ConvGeometry) -> bool:
    """Whether the windows read beyond the input (pads or a ``ceil_mode`` overhang)."""
    return any(geo.pads) or any(r > n for r, n in zip(geo.reach(), geo.size))


@rule("GlobalMaxPool", needs=needs_input)
def global_max_pool(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """The whole signal of each channel goes to its first spatial maximum (row-major)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    hit = xp.arange(flat.shape[2]) == flat.argmax(axis=2)[..., None]
    return [(hit * signals[0].reshape(x.shape[0], x.shape[1], 1)).reshape(x.shape)]


@rule("AveragePool", modes=("eb",), needs=needs_input)
def average_pool_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = x_i Σ_w p_w ⊘ S_w`` with ``S_w = Σ_{i'∈w} x_{i'}`` and ``S_w ≤ 0 → 0`` (spec §2.2; pads add 0)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    geo = _geometry(node, ctx, signals[0])
    x_pad = _padded(xp, geo, _four_d(x), 0.0)
    total = _window_sum(xp, geo, x_pad)
    q = safe_divide(xp, _four_d(signals[0]), xp.where(total > 0, total, 0))
    return [x * _crop(geo, _spread(xp, geo, q, x_pad.shape), x.ndim == 3)]


@rule("AveragePool", modes=("grad",), needs=needs_nothing)
def average_pool_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = Σ_w p_w / count_w``; ``count_w`` counts the explicit pads when ``count_include_pad`` (never the
    ``ceil_mode`` overhang)."""
    xp = ctx.xp
    shape = ctx.shape(node.inputs[0])
    geo = _geometry(node, ctx, signals[0])
    count = window_counts(xp, geo, bool(node.attr("count_include_pad", 0)), signals[0].dtype)
    frame = (1, 1) + tuple(max(r, b + s + e) for r, b, s, e in zip(geo.reach(), geo.begins, geo.size, geo.ends))
    spread = _spread(xp, geo, _four_d(signals[0]) / count, signals[0].shape[:2] + frame[2:])
    return [_crop(geo, spread, len(shape) == 3)]


def window_counts(xp, geo: ConvGeometry, include_pad: bool, dtype) -> Any:
    """``count_w`` of every window ``w`` of an average pooling, shaped ``(1, 1, *out)``: its positions inside the
    input, plus its explicit pads where ``count_include_pad`` (never the ``ceil_mode`` overhang)."""
    frame = _padded(xp, geo, xp.ones((1, 1, *geo.size), dtype=dtype), 0.0, pad_fill=1.0 if include_pad else 0.0)
    return _window_sum(xp, geo, frame)


@rule("GlobalAveragePool", modes=("eb",), needs=needs_input)
def global_average_pool_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = x_i p_c ⊘ S_c`` over each channel's spatial positions, ``S_c ≤ 0 → 0`` (spec §2.2)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    axes = tuple(range(2, x.ndim))
    total = x.sum(axis=axes, keepdims=True)
    return [x * safe_divide(xp, signals[0], xp.where(total > 0, total, 0))]


@rule("GlobalAveragePool", modes=("grad",), needs=needs_nothing)
def global_average_pool_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = p_c / (h·w)``."""
    xp = ctx.xp
    shape = ctx.shape(node.inputs[0])
    count = 1
    for size in shape[2:]:
        count *= size
    return [xp.broadcast_to(signals[0] / count, shape).copy()]


def reduced_axes(node: Node, ctx: RuleContext) -> tuple[tuple[int, ...], bool]:
    """The axes a ReduceMean/ReduceSum reduces (attribute before opset 18, input after) and its ``keepdims``."""
    rank = len(ctx.shape(node.inputs[0]))
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        axes = [int(a) for a in ctx.graph.constant(node.inputs[1]).reshape(-1)] \
            if ctx.graph.is_constant(node.inputs[1]) else None
        if axes is None:
            raise EbrError(f"{node.op_type} node {node.name!r} takes its axes from a computed tensor; "
                           "ebr_onnx supports constant axes")
    if not axes:
        axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    return tuple(sorted(a % rank for a in axes)), bool(node.attr("keepdims", 1))


def _kept(xp, p: Any, axes: tuple[int, ...], keepdims: bool) -> Any:
    return p if keepdims else xp.expand_dims(p, axes)


@rule(["ReduceMean", "ReduceSum"], modes=("eb",), needs=needs_input)
def reduce_mean_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Eq. 8 with equal positive weights: ``p'_i = x_i p ⊘ Σ_{reduced} x``, ``Σ ≤ 0 → 0`` (as average pooling)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    axes, keepdims = reduced_axes(node, ctx)
    if not axes:
        return [signals[0], None]
    total = x.sum(axis=axes, keepdims=True)
    return [x * safe_divide(xp, _kept(xp, signals[0], axes, keepdims), xp.where(total > 0, total, 0)), None]


@rule(["ReduceMean", "ReduceSum"], modes=("grad",), needs=needs_nothing)
def reduce_mean_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = p / n`` (ReduceMean over n elements) or ``p`` (ReduceSum), broadcast back."""
    xp = ctx.xp
    shape = ctx.shape(node.inputs[0])
    axes, keepdims = reduced_axes(node, ctx)
    p = _kept(xp, signals[0], axes, keepdims)
    if node.op_type == "ReduceMean":
        count = 1
        for a in axes:
            count *= shape[a]
        p = p / count
    return [xp.broadcast_to(p, shape).copy(), None]


@rule(["ReduceMax", "ReduceMin"], needs=needs_input)
def reduce_max(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = p [i = first arg max (ReduceMin: arg min) over the reduced axes, row-major]``, as GlobalMaxPool
    (identical in EB and grad)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    axes, keepdims = reduced_axes(node, ctx)
    if not axes:
        return [signals[0], None]
    rest = [a for a in range(x.ndim) if a not in axes]
    order = rest + list(axes)
    outer = tuple(x.shape[a] for a in rest)
    flat = x.transpose(order).reshape(outer + (-1,))
    pick = flat.argmax(axis=-1) if node.op_type == "ReduceMax" else flat.argmin(axis=-1)
    p = _kept(xp, signals[0], axes, keepdims).transpose(order).reshape(outer + (1,))
    routed = (xp.arange(flat.shape[-1]) == pick[..., None]) * p
    inverse = [order.index(a) for a in range(x.ndim)]
    return [routed.reshape(tuple(x.shape[a] for a in order)).transpose(inverse), None]


@rule("ReduceL2", modes=("eb",), needs=needs_input)
def reduce_l2_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = √(Σ x²) = Σ_i x_i (x_i / y)``: Eq. 8 with the weights ``x_i / y``, whose contributions ``x_i² / y`` are
    never negative: ``p'_i = p ⊙ x_i² ⊘₀ Σ x²``."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    axes, keepdims = reduced_axes(node, ctx)
    square = x * x
    return [square * safe_divide(xp, _kept(xp, signals[0], axes, keepdims),
                                 square.sum(axis=axes, keepdims=True)), None]


@rule("ReduceL2", modes=("grad",), needs=needs_input)
def reduce_l2_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = p ⊙ x_i ⊘₀ y`` with ``y = √(Σ x²)`` (0 where ``y = 0``)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    axes, keepdims = reduced_axes(node, ctx)
    norm = xp.sqrt((x * x).sum(axis=axes, keepdims=True))
    return [x * safe_divide(xp, _kept(xp, signals[0], axes, keepdims), norm), None]
