"""Rules of the elementwise ops outside recurrent cells: Add/Sum/Sub/Mul/Div, Max/Min, Where, BatchNormalization,
LRN, Softmax/LogSoftmax and the smooth activations (Sigmoid, Tanh, Elu, Selu, Softplus, Softsign, Gelu, HardSigmoid,
HardSwish, Erf, Mish). Inside a recognised recurrent cell the recurrent rule set overrides these through
``ctx.overrides``.

EB choices (gradient mode is always the exact derivative):

* Add/Sum of signal tensors: each operand receives its share of the positive contributions,
  ``p_k = p ⊙ x_k⁺ ⊘₀ Σ_j x_j⁺`` (Eq. 8 with unit weights; broadcast operands sum their shares).
  ``add_rule="caffe"`` reproduces the release's Eltwise SUM on the CPU (spec §2.5): input 1 gets all, the others 0.
  Sub of two signals is Add(a, −b): ``q = p ⊘₀ (a⁺ + (−b)⁺)``, a gets ``a⁺ q``, b gets ``(−b)⁺ q`` (nothing when b ≥ 0).
* Add/Sub/Sum with constant (non-signal) operands: a bias, excluded from Z — the whole signal goes to the signal
  operand; its sign is ignored in EB as the release's Scale layer ignores its factor's sign (spec §2.4).
* Mul/Div by a non-signal factor c: single-parent Eq. 8 through :func:`~ebr_onnx.rules.linear.excitation`,
  ``p' = x ⊙ c⁺ ⊘₀ (c⁺ x) ⊙ p`` (p where c > 0 and x ≠ 0; the positive-contribution rule for negative x).
  Div(a, b) with a signal numerator is Mul(a, 1/b); the denominator is a normaliser and takes none.
* Mul of two signal tensors where one is a gate's output (:func:`is_gate`: a Sigmoid or HardSigmoid,
  :data:`~ebr_onnx.core.ops.GATE_OPS`, or a hard sigmoid written out as a Clip to ``[0, b]``, possibly scaled by
  constants and through layout ops): the gate is a weight, ``y = g ⊙ x``, and the gated operand takes the whole
  signal, ``p_x = p``, ``p_g = 0`` (as the recurrent rules treat an LSTM's gates). This covers SiLU/Swish ``x·σ(βx)``,
  HardSwish written out (``x·hardσ(x)``, Keras' ``x·relu6(x + 3)/6``) and squeeze-excitation ``x ⊙ σ(fc(pool(x)))``.
  Where neither operand (or both) is a gate, each gets half of the signal, ``p_a = p_b = p/2``, which conserves mass
  when both lead back to the same unit; a warning names the first such node.
* Max/Min (variadic, broadcasting): the signal goes to the winning operand, identical in both modes (the gradient);
  operands tied for the extreme share it equally, ``p_k = p ⊙ [x_k = y] ⊘ #{j: x_j = y}`` (torch.maximum's gradient,
  and the central difference at a two-way tie). A constant operand that wins takes its share out of the walk, as
  ReLU's mask does (``Max(x, 0)`` is a ReLU).
* Where(c, a, b): routing by the boolean condition, ``p_a = p ⊙ c``, ``p_b = p ⊙ ¬c`` (summed over broadcast axes),
  identical in both modes; the condition takes none, whether constant or computed from the signal (``x > 0``).
* BatchNormalization and LRN: identity copies of the signal, as the release (spec §2.4).
* Softmax/LogSoftmax, the smooth activations and a signal-only denominator: identity (the activation is treated as a
  monotone relabelling of its input, so the EB rule of the linear layer below distributes by the activation it sees),
  with a warning naming the first such node, because their outputs may be negative, which EB does not assume (A1).
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..core.activations import ACTIVATIONS, OP_ACTIVATIONS
from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.numeric import safe_divide, unbroadcast
from ..core.ops import GATE_OPS, LAYOUT_OPS
from ..core.registry import needs_input, needs_inputs, needs_nothing, needs_output, rule
from .linear import excitation


def _to_inputs(ctx: RuleContext, node: Node, per_input: Sequence[Any]) -> list[Any]:
    """Output-shaped signals, one per input (``None`` for none), summed back to each input's shape."""
    return [None if s is None else unbroadcast(ctx.xp, s, ctx.shape(t)) for t, s in zip(node.inputs, per_input)]


def _signal_mask(ctx: RuleContext, node: Node) -> list[bool]:
    return [ctx.is_signal(t) for t in node.inputs]


def warn_pass_through(ctx: RuleContext, node: Node) -> None:
    """The warning of an op whose EB rule passes the signal through unchanged (smooth activations, unary math)."""
    ctx.warn_once(
        "non-relu-activation",
        f"node {node.name!r} ({node.op_type}) is not a ReLU-family activation; EB passes its signal through "
        "unchanged, and its output may be negative, which EB does not assume (A1)",
    )


# -- Add / Sum / Sub ----------------------------------------------------------------------------------------------
def _proportional(ctx: RuleContext, p: Any, parts: Sequence[Any]) -> list[Any]:
    """``p_k = p ⊙ c_k ⊘₀ Σ_j c_j`` for non-negative contributions ``c_k`` (``None``: no share)."""
    q = safe_divide(ctx.xp, p, sum(c for c in parts if c is not None))
    return [None if c is None else c * q for c in parts]


@rule(["Add", "Sum"], modes=("eb",), needs=needs_inputs)
def add_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_k = p ⊙ x_k⁺ ⊘₀ Σ_j x_j⁺`` over signal operands (Eq. 8, unit weights; non-signal operands are biases)."""
    p, mask = signals[0], _signal_mask(ctx, node)
    if sum(mask) < 2:
        return _to_inputs(ctx, node, [p if m else None for m in mask])
    if ctx.options.add_rule == "caffe":
        return _to_inputs(ctx, node, [p if k == 1 else None for k in range(len(mask))])
    parts = [ctx.xp.maximum(ctx.value(t), 0) if m else None for t, m in zip(node.inputs, mask)]
    return _to_inputs(ctx, node, _proportional(ctx, p, parts))


@rule(["Add", "Sum"], modes=("grad",))
def add_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_k = p`` for every signal operand (summed over broadcast axes)."""
    return _to_inputs(ctx, node, [signals[0] if m else None for m in _signal_mask(ctx, node)])


@rule("Sub", modes=("eb",), needs=needs_inputs)
def sub_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Sub(a, b) = Add(a, −b): ``q = p ⊘₀ (a⁺ + (−b)⁺)``, ``p_a = a⁺ q``, ``p_b = (−b)⁺ q``; with one signal operand
    the other is a bias and the signal operand gets ``p``."""
    xp, p, mask = ctx.xp, signals[0], _signal_mask(ctx, node)
    if not all(mask):
        return _to_inputs(ctx, node, [p if m else None for m in mask])
    a, b = (ctx.value(t) for t in node.inputs)
    return _to_inputs(ctx, node, _proportional(ctx, p, [xp.maximum(a, 0), xp.maximum(-b, 0)]))


@rule("Sub", modes=("grad",))
def sub_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_a = p``, ``p_b = −p``."""
    p, (ma, mb) = signals[0], _signal_mask(ctx, node)
    return _to_inputs(ctx, node, [p if ma else None, -p if mb else None])


# -- Mul / Div ----------------------------------------------------------------------------------------------------
def factor_excitation(ctx: RuleContext, node: Node, x: Any, p: Any, factor: Any) -> Any:
    """Single-parent Eq. 8 of ``y = c ⊙ x``: ``x ⊙ c⁺ ⊘₀ (c⁺ x) ⊙ p`` (the shared EB identity of linear.py; where
    ``x < 0`` its positive-contribution form, ``x⁻ ⊙ c⁻ ⊘₀ (c⁻ x⁻) ⊙ p``)."""
    return excitation(ctx, node, x, p, factor, lambda v, k: v * k, lambda q, k: q * k)


def is_gate(ctx: RuleContext, name: str) -> bool:
    """Whether ``name`` is a gate's output: a Sigmoid or HardSigmoid (:data:`~ebr_onnx.core.ops.GATE_OPS`) or a hard
    sigmoid written out (a Clip to ``[0, b]``, b finite), through layout ops and Mul/Div by constants."""
    while True:
        node = ctx.graph.producer.get(ctx.graph.trace_down(name, LAYOUT_OPS))
        if node is None:
            return False
        if node.op_type in GATE_OPS:
            return True
        if node.op_type == "Clip":
            return _clips_to_a_range_from_zero(ctx, node)
        if node.op_type not in ("Mul", "Div") or sum(_signal_mask(ctx, node)) != 1 or \
                (node.op_type == "Div" and not ctx.is_signal(node.inputs[0])):
            return False
        name = next(t for t in node.inputs if ctx.is_signal(t))


def _clips_to_a_range_from_zero(ctx: RuleContext, node: Node) -> bool:
    """Whether a Clip's bounds are constants ``0`` and a finite ``b`` (attributes before opset 11, inputs after)."""
    bounds = []
    for index, attr, unbounded in ((1, "min", -np.inf), (2, "max", np.inf)):
        name = node.inputs[index] if len(node.inputs) > index else ""
        if name and not ctx.graph.is_constant(name):
            return False
        value = np.ravel(ctx.graph.constant(name) if name else node.attr(attr, unbounded))
        if value.size != 1:
            return False
        bounds.append(float(value[0]))
    return bounds[0] == 0.0 and math.isfinite(bounds[1])


@rule("Mul", modes=("eb",), needs=needs_inputs)
def mul_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = c ⊙ x``: ``p' = x ⊙ c⁺ ⊘₀ (c⁺ x) ⊙ p`` (Eq. 8, one parent); two signal operands, one a gate ``g``:
    ``p_x = p``, ``p_g = 0``; two signal operands otherwise: ``p/2`` each."""
    p, mask = signals[0], _signal_mask(ctx, node)
    if all(mask):
        gates = [is_gate(ctx, t) for t in node.inputs]
        if sum(gates) == 1:
            return _to_inputs(ctx, node, [None if g else p for g in gates])
        ctx.warn_once(
            "signal-product",
            f"node {node.name!r} (Mul) multiplies two signal tensors, not one of them a gate (Sigmoid, HardSigmoid, "
            "a Clip to [0, b]); EB gives each operand half the signal",
        )
        return _to_inputs(ctx, node, [p / 2, p / 2])
    k = mask.index(True)
    x, c = ctx.value(node.inputs[k]), ctx.value(node.inputs[1 - k])
    return _to_inputs(ctx, node, [factor_excitation(ctx, node, x, p, c) if m else None for m in mask])


@rule("Mul", modes=("grad",), needs=needs_inputs)
def mul_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """The product rule: ``p_a = p ⊙ b``, ``p_b = p ⊙ a``."""
    p, (ma, mb) = signals[0], _signal_mask(ctx, node)
    a, b = (ctx.value(t) for t in node.inputs)
    return _to_inputs(ctx, node, [p * b if ma else None, p * a if mb else None])


@rule("Div", modes=("eb",), needs=needs_inputs)
def div_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = a / b`` as ``a ⊙ (1/b)``: Eq. 8 with factor ``1/b`` for the numerator; the denominator gets nothing,
    unless it is the only signal operand, which then gets ``p`` (identity, with a warning)."""
    p = signals[0]
    if not ctx.is_signal(node.inputs[0]):
        warn_pass_through(ctx, node)
        return _to_inputs(ctx, node, [None, p])
    a, b = (ctx.value(t) for t in node.inputs)
    return _to_inputs(ctx, node, [factor_excitation(ctx, node, a, p, 1 / b), None])


@rule("Div", modes=("grad",), needs=needs_inputs)
def div_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_a = p / b``, ``p_b = −p ⊙ a / b²``."""
    p, (ma, mb) = signals[0], _signal_mask(ctx, node)
    a, b = (ctx.value(t) for t in node.inputs)
    return _to_inputs(ctx, node, [p / b if ma else None, -p * a / (b * b) if mb else None])


# -- Max / Min / Where --------------------------------------------------------------------------------------------
@rule(["Max", "Min"], needs=needs_inputs)
def max_min(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_k = p ⊙ [x_k = y] ⊘ #{j: x_j = y}`` with ``y`` the elementwise max (min): the winner takes the signal,
    tied operands share it equally (both modes; summed over broadcast axes)."""
    xp, p = ctx.xp, signals[0]
    values = [ctx.value(t) for t in node.inputs]
    extreme = xp.maximum if node.op_type == "Max" else xp.minimum
    y = values[0]
    for v in values[1:]:
        y = extreme(y, v)
    wins = [xp.equal(v, y) for v in values]
    count = wins[0].astype(p.dtype)
    for w in wins[1:]:
        count = count + w
    share = p / count
    return _to_inputs(ctx, node, [xp.where(w, share, 0) if m else None
                                  for w, m in zip(wins, _signal_mask(ctx, node))])


def _condition(node: Node) -> list[str]:
    return [node.inputs[0]]


@rule("Where", needs=_condition)
def where(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p_a = p ⊙ c``, ``p_b = p ⊙ ¬c`` (both modes; summed over broadcast axes); the condition takes none."""
    xp, p = ctx.xp, signals[0]
    c = ctx.value(node.inputs[0])
    _, ma, mb = _signal_mask(ctx, node)
    return _to_inputs(ctx, node, [None, xp.where(c, p, 0) if ma else None, xp.where(c, 0, p) if mb else None])


# -- normalisations -----------------------------------------------------------------------------------------------
@rule(["BatchNormalization", "LRN"], modes=("eb",))
def normalisation_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p``: the release copies the signal through BatchNorm, Scale and LRN (spec §2.4)."""
    return [signals[0]] + [None] * (len(node.inputs) - 1)


def _bn_needs(node: Node) -> list[str]:
    return [node.inputs[1], node.inputs[4]]


@rule("BatchNormalization", modes=("grad",), needs=_bn_needs)
def batch_norm_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ γ / √(var + ε)`` per channel (inference mode: the statistics are constants)."""
    if int(node.attr("training_mode", 0)):
        raise EbrError(f"BatchNormalization node {node.name!r} is in training mode; export the model in eval mode")
    p = signals[0]
    scale = ctx.value(node.inputs[1]) / ctx.xp.sqrt(ctx.value(node.inputs[4]) + float(node.attr("epsilon", 1e-5)))
    return [p * scale.reshape((1, -1) + (1,) * (p.ndim - 2))] + [None] * (len(node.inputs) - 1)


def _channel_window_sum(xp, v: Any, before: int, after: int) -> Any:
    """``Σ_{c'=c−before}^{c+after} v_{c'}`` along axis 1 (channels outside the tensor count as 0)."""
    pad = [(0, 0)] * v.ndim
    pad[1] = (before, after)
    padded = xp.pad(v, pad)
    channels = v.shape[1]
    return sum(padded[:, k:k + channels] for k in range(before + after + 1))


@rule("LRN", modes=("grad",), needs=needs_input)
def lrn_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y_c = x_c d_c^{−β}``, ``d_c = bias + α/size Σ_{c'∈w(c)} x_{c'}²`` with ``w(c) = [c − ⌊(size−1)/2⌋,
    c + ⌈(size−1)/2⌉]``; ``p'_k = p_k d_k^{−β} − (2αβ/size) x_k Σ_{c: k∈w(c)} p_c x_c d_c^{−β−1}``."""
    xp = ctx.xp
    x, p = ctx.value(node.inputs[0]), signals[0]
    size = int(node.attr("size"))
    alpha, beta, bias = float(node.attr("alpha", 1e-4)), float(node.attr("beta", 0.75)), float(node.attr("bias", 1.0))
    lo, hi = (size - 1) // 2, size // 2
    d = bias + alpha / size * _channel_window_sum(xp, x * x, lo, hi)
    back = _channel_window_sum(xp, p * x * d ** (-beta - 1), hi, lo)
    return [p * d ** (-beta) - (2 * alpha * beta / size) * x * back]


# -- softmax and smooth activations -------------------------------------------------------------------------------
@rule(["Softmax", "LogSoftmax", "Sigmoid", "Tanh", "Elu", "Selu", "Softplus", "Softsign", "Gelu", "HardSigmoid",
       "HardSwish", "Erf", "Mish"], modes=("eb",), needs=needs_nothing)
def smooth_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p`` (identity; see the module docstring), with a warning naming the first such node."""
    warn_pass_through(ctx, node)
    return [signals[0]]


def _softmax_axes(node: Node, ctx: RuleContext, shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """The normalised axis and the 2-D view of opsets < 13 (``axis`` default 1, flattened), else the plain shape."""
    if ctx.graph.opset >= 13:
        return int(node.attr("axis", -1)) % len(shape), shape
    axis = int(node.attr("axis", 1)) % len(shape)
    outer = math.prod(shape[:axis])
    return 1, (outer, math.prod(shape) // outer)


@rule(["Softmax", "LogSoftmax"], modes=("grad",), needs=needs_output)
def softmax_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Softmax: ``p' = y ⊙ (p − Σ_axis p ⊙ y)``; LogSoftmax: ``p' = p − e^y Σ_axis p``."""
    xp = ctx.xp
    p = signals[0]
    axis, view = _softmax_axes(node, ctx, p.shape)
    y = ctx.value(node.outputs[0]).reshape(view)
    q = p.reshape(view)
    if node.op_type == "Softmax":
        out = y * (q - (q * y).sum(axis=axis, keepdims=True))
    else:
        out = q - xp.exp(y) * q.sum(axis=axis, keepdims=True)
    return [out.reshape(p.shape)]


def _d_gelu(xp, node: Node, x: Any, y: Any) -> Any:
    """``Φ(x) + x φ(x)`` with ``Φ = y / x`` read from the forward (``1/2 + x/√(2π)`` near 0), or the derivative of
    the tanh approximation when ``approximate="tanh"``."""
    density = xp.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    if node.attr("approximate", "none") == "tanh":
        k = math.sqrt(2 / math.pi)
        t = xp.tanh(k * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * 0.044715 * x * x)
    small = xp.abs(x) < 1e-3
    cdf = xp.where(small, 0.5 + x * density, y / xp.where(small, 1.0, x))
    return cdf + x * density


def _derivative(xp, node: Node, x: Any, y: Any) -> Any:
    """``f'(x)`` of a smooth activation op: from the activation table, with the node's alpha/beta (Gelu apart: it
    reads its output)."""
    if node.op_type == "Gelu":
        return _d_gelu(xp, node, x, y)
    name, params = OP_ACTIVATIONS[node.op_type]
    fn = ACTIVATIONS[name]
    values = [float(node.attr(attr, default)) for attr, default in zip(params, (fn.alpha, fn.beta))]
    alpha, beta = (values + [0.0, 0.0])[:2]
    return fn.derivative(xp, x, alpha, beta)


def _smooth_needs(node: Node) -> list[str]:
    return [node.inputs[0]] + ([node.outputs[0]] if node.op_type == "Gelu" else [])


@rule([*OP_ACTIVATIONS, "Gelu"], modes=("grad",), needs=_smooth_needs)
def smooth_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ f'(x)`` with the exact derivative of each activation."""
    x = ctx.value(node.inputs[0])
    y = ctx.value(node.outputs[0]) if node.op_type == "Gelu" else None
    return [signals[0] * _derivative(ctx.xp, node, x, y).astype(x.dtype)]
