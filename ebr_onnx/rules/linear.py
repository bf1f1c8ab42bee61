"""Rules of the linear ops: Conv, Gemm, MatMul with a constant operand.

Every linear op ``y = f(x, W) + b`` uses one identity (paper Eq. 8, ``shared/spec/caffe-reference.md`` §2.1)::

    Z  = f(x, W⁺)            W⁺ = max(W, 0), bias excluded
    p' = x ⊙ fᵀ(p ⊘₀ Z, W⁺)  Z == 0 → 0

and the gradient rule is ``p' = fᵀ(p, W)``. Each op supplies only its ``f`` (forward without bias) and its ``fᵀ``
(transpose). Both rules are linear in ``p``, so signed (contrastive) signals propagate linearly.

EB assumes non-negative activations (assumption A1). Where ``x`` has negative entries (mean-subtracted images, tanh
outputs), the *positive-contribution* rule is used: ``Z = f(x⁺, W⁺) + f(x⁻, W⁻)`` and
``p' = x⁺ ⊙ fᵀ(q, W⁺) + x⁻ ⊙ fᵀ(q, W⁻)`` — every child receives its share of the parent's positive pre-activation
(LRP's z⁺ rule), which equals EB exactly when ``x ≥ 0``; a warning names the first such node.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

from ..graph import Node
from .registry import needs_inputs, rule
from .stabilize import safe_divide

Linear = Callable[[Any, Any], Any]


def excitation(ctx, node: Node, x: Any, p: Any, w: Any, forward: Linear, transpose: Linear) -> Any:
    """The EB identity above for one linear op: ``x ⊙ fᵀ(p ⊘₀ f(x, W⁺), W⁺)`` (Eq. 8)."""
    xp = ctx.xp
    w_pos = xp.maximum(w, 0)
    if bool((x < 0).any()):
        ctx.warn_once(
            "negative-activations",
            f"node {node.name!r} ({node.op_type}) receives negative activations, which EB does not assume (A1); "
            "the positive-contribution rule x⁺W⁺ + x⁻W⁻ is used there and below",
        )
        w_neg = xp.minimum(w, 0)
        x_pos, x_neg = xp.maximum(x, 0), xp.minimum(x, 0)
        q = safe_divide(xp, p, forward(x_pos, w_pos) + forward(x_neg, w_neg))
        return x_pos * transpose(q, w_pos) + x_neg * transpose(q, w_neg)
    return x * transpose(safe_divide(xp, p, forward(x, w_pos)), w_pos)


def linear_rule(ctx, node: Node, x: Any, p: Any, w: Any, forward: Linear, transpose: Linear) -> Any:
    """EB or gradient of one linear op, by the walk's mode."""
    if ctx.mode == "grad":
        return transpose(p, w)
    return excitation(ctx, node, x, p, w, forward, transpose)


# -- Conv -------------------------------------------------------------------------------------------------------------
class ConvGeometry:
    """Strides, pads, dilations and groups of an ONNX Conv on NCHW (1-D convs get a unit height)."""

    def __init__(self, node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
        spatial = len(x_shape) - 2
        if spatial not in (1, 2):
            raise_unsupported_conv(node, spatial)
        kernel = list(w_shape[2:])
        strides = list(node.attr("strides", [1] * spatial))
        dilations = list(node.attr("dilations", [1] * spatial))
        pads = list(node.attr("pads", [0] * (2 * spatial)))
        auto_pad = node.attr("auto_pad", "NOTSET")
        size = list(x_shape[2:])
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * spatial)
            for a in range(spatial):
                out = -(-size[a] // strides[a])
                total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size[a])
                small, big = total // 2, total - total // 2
                pads[a], pads[a + spatial] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        elif auto_pad == "VALID":
            pads = [0] * (2 * spatial)
        if spatial == 1:
            kernel, strides, dilations, size = [1] + kernel, [1] + strides, [1] + dilations, [1] + size
            pads = [0, pads[0], 0, pads[1]]
        self.spatial = spatial
        self.kernel, self.strides, self.dilations, self.size = kernel, strides, dilations, size
        self.pads = pads  # top, left, bottom, right
        self.group = int(node.attr("group", 1))
        self.out = [
            (size[a] + pads[a] + pads[a + 2] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(2)
        ]

    def window(self, i: int, j: int) -> tuple[slice, slice]:
        """The slice of the padded input that kernel offset (i, j) reads for all output positions."""
        (sh, sw), (dh, dw), (oh, ow) = self.strides, self.dilations, self.out
        return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def raise_unsupported_conv(node: Node, spatial: int) -> None:
    from ..errors import EbrError

    raise EbrError(f"Conv node {node.name!r} is {spatial}-D; ebr_onnx supports 1-D and 2-D convolutions")


def conv_forward(xp, geo: ConvGeometry, x: Any, w: Any) -> Any:
    """``f(x, W)``: the convolution without bias, as one batched GEMM per kernel offset (shift-and-GEMM)."""
    n, c = x.shape[:2]
    m, g = w.shape[0], geo.group
    top, left, bottom, right = geo.pads
    xp_ = xp.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right))) if any(geo.pads) else x
    oh, ow = geo.out
    wg = w.reshape(g, m // g, c // g, geo.kernel[0], geo.kernel[1])
    y = xp.zeros((n, g, m // g, oh * ow), dtype=x.dtype)
    for i in range(geo.kernel[0]):
        for j in range(geo.kernel[1]):
            rows, cols = geo.window(i, j)
            patch = xp.ascontiguousarray(xp_[:, :, rows, cols]).reshape(n, g, c // g, oh * ow)
            y += xp.matmul(wg[:, :, :, i, j], patch)
    return y.reshape(n, m, oh, ow)


def conv_transpose(xp, geo: ConvGeometry, q: Any, w: Any, c: int) -> Any:
    """``fᵀ(q, W)``: the transposed convolution (col2im by kernel offsets), cropped to the unpadded input."""
    n, m = q.shape[:2]
    g = geo.group
    top, left, bottom, right = geo.pads
    h, wd = geo.size
    out = xp.zeros((n, c, h + top + bottom, wd + left + right), dtype=q.dtype)
    oh, ow = geo.out
    wg = w.reshape(g, m // g, c // g, geo.kernel[0], geo.kernel[1])
    qg = q.reshape(n, g, m // g, oh * ow)
    for i in range(geo.kernel[0]):
        for j in range(geo.kernel[1]):
            rows, cols = geo.window(i, j)
            contrib = xp.matmul(xp.swapaxes(wg[:, :, :, i, j], 1, 2), qg)
            out[:, :, rows, cols] += contrib.reshape(n, c, oh, ow)
    return out[:, :, top:top + h, left:left + wd]


@rule("Conv", needs=needs_inputs)
def conv(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """Conv: Eq. 8 with ``f`` = convolution by W⁺ (strides, pads, dilations, groups; no bias)."""
    xp, p = ctx.xp, signals[0]
    w = ctx.weight(node, 1)
    x_shape = ctx.shape(node.inputs[0])
    geo = ConvGeometry(node, x_shape, tuple(w.shape))
    one_d = geo.spatial == 1
    w2 = w[:, :, None, :] if one_d else w
    p2 = p[:, :, None, :] if one_d else p
    x = ctx.value(node.inputs[0]) if ctx.mode == "eb" else None
    x2 = x[:, :, None, :] if (one_d and x is not None) else x
    c = x_shape[1]
    result = linear_rule(
        ctx, node, x2, p2, w2,
        lambda a, k: conv_forward(xp, geo, a, k),
        lambda q, k: conv_transpose(xp, geo, q, k, c),
    )
    return [result[:, :, 0, :] if one_d else result, None, None]


def _conv_needs(node: Node) -> list[str]:
    return [node.inputs[1]]


rule("Conv", modes=("grad",), needs=_conv_needs)(conv)


# -- Gemm / MatMul ----------------------------------------------------------------------------------------------------
def _matmul_operand_rule(ctx, node: Node, p: Any, a_name: str, b_name: str, scale: float) -> tuple[Any, Any]:
    """EB/gradient of ``y = scale · a @ b`` where exactly one of ``a`` and ``b`` carries signal.

    Returns the signals of (a, b). With ``a`` the signal: ``f(a, W) = a @ W``, ``fᵀ(q, W) = q @ Wᵀ``;
    with ``b`` the signal: ``f(b, W) = W @ b``, ``fᵀ(q, W) = Wᵀ @ q`` (both with W = scale · the constant operand).
    """
    xp = ctx.xp
    a_sig, b_sig = ctx.is_signal(a_name), ctx.is_signal(b_name)
    if a_sig and b_sig:
        if ctx.mode == "grad":
            a, b = ctx.value(a_name), ctx.value(b_name)
            return (scale * xp.matmul(p, xp.swapaxes(b, -1, -2)), scale * xp.matmul(xp.swapaxes(a, -1, -2), p))
        from ..errors import EbrError

        raise EbrError(
            f"node {node.name!r} ({node.op_type}) multiplies two signal tensors; EB supports products with a constant "
            "operand only (use method='grad' for this model)"
        )
    if a_sig:
        w = scale * ctx.weight(node, list(node.inputs).index(b_name))
        x = ctx.value(a_name) if ctx.mode == "eb" else None
        da = linear_rule(ctx, node, x, p, w,
                         lambda v, k: xp.matmul(v, k), lambda q, k: xp.matmul(q, xp.swapaxes(k, -1, -2)))
        return _unbroadcast(xp, da, ctx.shape(a_name)), None
    w = scale * ctx.weight(node, list(node.inputs).index(a_name))
    x = ctx.value(b_name) if ctx.mode == "eb" else None
    db = linear_rule(ctx, node, x, p, w,
                     lambda v, k: xp.matmul(k, v), lambda q, k: xp.matmul(xp.swapaxes(k, -1, -2), q))
    return None, _unbroadcast(xp, db, ctx.shape(b_name))


def _unbroadcast(xp, grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


@rule("MatMul", needs=needs_inputs)
def matmul(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """MatMul ``y = a @ b`` with one constant (or non-signal) operand: Eq. 8 with W⁺ of that operand."""
    a, b = node.inputs[:2]
    return list(_matmul_operand_rule(ctx, node, signals[0], a, b, 1.0))


@rule("Gemm", needs=needs_inputs)
def gemm(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """Gemm ``y = alpha · A' B' + beta · C``: Eq. 8 on ``alpha · A' B'`` (C is a bias: excluded from Z)."""
    xp = ctx.xp
    p = signals[0]
    a, b = node.inputs[:2]
    trans_a, trans_b = int(node.attr("transA", 0)), int(node.attr("transB", 0))
    alpha = float(node.attr("alpha", 1.0))
    view = _TransposedGemm(ctx, node, trans_a, trans_b)
    da, db = _matmul_operand_rule(view, node, p, a, b, alpha)
    c_signal = None
    if len(node.inputs) > 2 and ctx.is_signal(node.inputs[2]):
        c_signal = _unbroadcast(xp, float(node.attr("beta", 1.0)) * p, ctx.shape(node.inputs[2])) \
            if ctx.mode == "grad" else None
        if ctx.mode == "eb":
            ctx.warn_once("gemm-signal-bias", f"Gemm {node.name!r} adds a signal tensor as C; EB treats C as a bias")
    return [None if da is None else (da.T if trans_a else da), None if db is None else (db.T if trans_b else db),
            c_signal]


class _TransposedGemm:
    """A view of the rule context in which Gemm's transposed operands read as plain matrices."""

    def __init__(self, ctx, node: Node, trans_a: int, trans_b: int) -> None:
        self._ctx = ctx
        self._flip = {node.inputs[0]: trans_a, node.inputs[1]: trans_b}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ctx, name)

    def value(self, name: str) -> Any:
        v = self._ctx.value(name)
        return v.T if self._flip.get(name) else v

    def weight(self, node: Node, index: int) -> Any:
        w = self._ctx.weight(node, index)
        return w.T if self._flip.get(node.inputs[index]) else w

    def shape(self, name: str) -> tuple[int, ...]:
        s = self._ctx.shape(name)
        return tuple(reversed(s)) if self._flip.get(name) else s
