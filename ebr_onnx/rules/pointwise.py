"""Rules of the unary math ops: Sqrt, Exp, Log, Reciprocal, Pow (constant exponent), Abs, Neg.

Gradient mode is always the exact derivative. EB:

* Sqrt, Exp, Log, Reciprocal, Pow: ``p' = p``, the convention of the smooth activations
  (:mod:`ebr_onnx.rules.elementwise`): the linear rule below distributes the signal by the activations it sees; a
  warning names the first such node, since the output may be negative or the op not monotone, outside EB's
  assumption A1. Pow's exponent must be constant (a signal exponent is refused).
* Neg, ``y = −x``, is linear with the weight −1: Eq. 8 proper (W⁺ = 0) would pass nothing; its positive-contribution
  form (:func:`~ebr_onnx.rules.linear.excite`, ``Z = x⁻ W⁻ = |x|`` where ``x < 0``) gives ``p' = p ⊙ [x < 0]``: the
  signal goes where ``x`` contributes positively to ``y``. That form is used, so that ``Add(a, Neg(b))`` gets exactly
  the rule of ``Sub(a, b)``.
* Abs, ``y = sign(x) ⊙ x``: the same positive-contribution Eq. 8 with the factor ``sign(x)``: ``Z = |x|``,
  ``p' = |x| ⊙ p ⊘₀ |x| = p ⊙ [x ≠ 0]``.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.numeric import safe_divide, unbroadcast
from ..core.registry import needs_input, needs_inputs, needs_nothing, needs_output, rule
from .elementwise import factor_excitation, warn_pass_through


@rule(["Sqrt", "Exp", "Log", "Reciprocal"], modes=("eb",), needs=needs_nothing)
def smooth_unary_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p`` (identity, as the smooth activations), with a warning naming the first such node."""
    warn_pass_through(ctx, node)
    return [signals[0]]


@rule("Sqrt", modes=("grad",), needs=needs_output)
def sqrt_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊘₀ 2y`` (``y = √x``; 0 where ``y = 0``, where the derivative is unbounded)."""
    return [safe_divide(ctx.xp, signals[0], 2 * ctx.value(node.outputs[0]))]


@rule("Exp", modes=("grad",), needs=needs_output)
def exp_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ y`` (``y = eˣ``)."""
    return [signals[0] * ctx.value(node.outputs[0])]


@rule("Log", modes=("grad",), needs=needs_input)
def log_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p / x``."""
    return [signals[0] / ctx.value(node.inputs[0])]


@rule("Reciprocal", modes=("grad",), needs=needs_output)
def reciprocal_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = −p ⊙ y²`` (``y = 1/x``)."""
    y = ctx.value(node.outputs[0])
    return [-signals[0] * y * y]


def _constant_exponent(node: Node, ctx: RuleContext) -> None:
    if ctx.is_signal(node.inputs[1]):
        raise EbrError(f"Pow node {node.name!r} raises to a signal exponent; EB supports Pow with a constant exponent "
                       "(use method='grad' for this model)")


@rule("Pow", modes=("eb",), needs=needs_nothing)
def pow_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = x^c`` with a constant ``c``: ``p' = p`` (identity, as the smooth activations; warned)."""
    _constant_exponent(node, ctx)
    warn_pass_through(ctx, node)
    return [signals[0], None]


@rule("Pow", modes=("grad",), needs=needs_inputs)
def pow_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = a^b``: ``p_a = p ⊙ b a^(b−1)``, ``p_b = p ⊙ y ln a`` (each summed over its broadcast axes)."""
    xp, p = ctx.xp, signals[0]
    a_name, b_name = node.inputs
    a, b = ctx.value(a_name), ctx.value(b_name).astype(p.dtype)
    out = [None, None]
    if ctx.is_signal(a_name):
        out[0] = unbroadcast(xp, p * xp.where(b == 0, 0, b * a ** (b - 1)), ctx.shape(a_name))
    if ctx.is_signal(b_name):
        out[1] = unbroadcast(xp, p * a ** b * xp.log(a), ctx.shape(b_name))
    return out


@rule("Neg", modes=("eb",), needs=needs_input)
def neg_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = −x``: Eq. 8 with the weight −1 in its positive-contribution form: ``p' = p ⊙ [x < 0]``."""
    x = ctx.value(node.inputs[0])
    return [factor_excitation(ctx, node, x, signals[0], ctx.xp.asarray(-1.0, dtype=x.dtype))]


@rule("Neg", modes=("grad",), needs=needs_nothing)
def neg_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = −p``."""
    return [-signals[0]]


@rule("Abs", modes=("eb",), needs=needs_input)
def abs_eb(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = sign(x) ⊙ x``: Eq. 8 with the factor ``sign(x)`` (positive-contribution form): ``p' = p ⊙ [x ≠ 0]``."""
    x = ctx.value(node.inputs[0])
    return [factor_excitation(ctx, node, x, signals[0], ctx.xp.sign(x))]


@rule("Abs", modes=("grad",), needs=needs_input)
def abs_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ sign(x)``."""
    return [signals[0] * ctx.xp.sign(ctx.value(node.inputs[0]))]
