"""Rules of the ReLU family: Relu, LeakyRelu, PRelu, Clip.

The ReLU family uses its gradient in both modes, as the release does (``shared/spec/caffe-reference.md`` §2.3): the
mask ``[y > 0]`` is a no-op under EB, because the EB rule of the linear layer above has already multiplied the signal
by the activation ``y`` (zero where the mask is zero), and it equals the z⁺-LRP treatment of ReLU. The smooth
activations (Sigmoid, Tanh, Gelu, …) are in :mod:`ebr_onnx.rules.elementwise`.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..core.context import RuleContext
from ..core.graph import Node
from ..core.registry import needs_input, needs_inputs, needs_output, rule


@rule("Relu", needs=needs_output)
def relu(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ [x > 0]``, read as ``[y > 0]`` from the output ``y = max(x, 0)``: the linear rule below reads
    ``y`` too, so the forward hands over one tensor per ReLU instead of two."""
    return [signals[0] * (ctx.value(node.outputs[0]) > 0)]


@rule("LeakyRelu", needs=needs_input)
def leaky_relu(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ (1 if x > 0 else alpha)`` (the gradient; ``alpha`` defaults to 0.01)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    return [signals[0] * xp.where(x > 0, 1.0, float(node.attr("alpha", 0.01))).astype(x.dtype)]


@rule("PRelu", needs=needs_inputs)
def prelu(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ (1 if x > 0 else slope)`` (the gradient; the slope is a weight and takes no signal)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    return [signals[0] * xp.where(x > 0, xp.ones_like(x), ctx.value(node.inputs[1])), None]


@rule("Clip", needs=needs_inputs)
def clip(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ [min ≤ x ≤ max]`` (the gradient of ``clamp``; bounds from attributes before opset 11, from the
    optional inputs 1 and 2 after; a missing bound is unbounded)."""
    xp = ctx.xp
    x = ctx.value(node.inputs[0])
    inside = xp.ones(x.shape, dtype=bool)
    low = node.inputs[1] if len(node.inputs) > 1 and node.inputs[1] else None
    high = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None
    if low is not None or "min" in node.attrs:
        inside = inside & (x >= (ctx.value(low) if low else float(node.attr("min"))))
    if high is not None or "max" in node.attrs:
        inside = inside & (x <= (ctx.value(high) if high else float(node.attr("max"))))
    return [signals[0] * inside] + [None] * (len(node.inputs) - 1)
