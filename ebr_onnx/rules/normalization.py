"""Rules of the normalisations that compute their statistics from the input: InstanceNormalization,
LayerNormalization, GroupNormalization (BatchNormalization and LRN are in :mod:`ebr_onnx.rules.elementwise`).

* EB: ``p' = p``, a copy of the signal, as the release does for BatchNorm, Scale and LRN
  (``shared/spec/caffe-reference.md`` §2.4; :func:`~ebr_onnx.rules.elementwise.normalisation_eb`). The op is read as
  a per-unit affine relabelling; the linear rule below distributes the signal by the activations it sees.
* grad: the exact derivative, through the statistics. With ``x̂ = (x − μ)/σ``, ``μ`` and ``σ² `` the mean and the
  biased variance over the normalised set of ``n`` elements, ``σ = √(σ² + ε)``, and ``y = γ x̂ + β``::

      d = p ⊙ γ,    p' = (d − mean(d) − x̂ ⊙ mean(d ⊙ x̂)) / σ

  (means over the normalised set). Only ``Y`` takes signal; scale and bias take none.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.registry import needs_inputs, rule
from .elementwise import normalisation_eb

rule(["InstanceNormalization", "LayerNormalization", "GroupNormalization"], modes=("eb",))(normalisation_eb)


def normalized_grad(xp, x: Any, d: Any, axes: tuple[int, ...], eps: float) -> Any:
    """``∂x̂/∂x`` transposed, applied to ``d = ∂L/∂x̂``: ``(d − mean(d) − x̂ ⊙ mean(d ⊙ x̂)) / σ`` over ``axes``."""
    centred = x - x.mean(axis=axes, keepdims=True)
    sigma = xp.sqrt((centred * centred).mean(axis=axes, keepdims=True) + eps)
    x_hat = centred / sigma
    return (d - d.mean(axis=axes, keepdims=True) - x_hat * (d * x_hat).mean(axis=axes, keepdims=True)) / sigma


def _channel_view(v: Any, rank: int) -> Any:
    """A per-channel vector shaped to broadcast over (N, C, …)."""
    return v.reshape((1, -1) + (1,) * (rank - 2))


@rule("InstanceNormalization", modes=("grad",), needs=needs_inputs)
def instance_norm_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Statistics per (example, channel) over the spatial axes: ``d = p ⊙ γ_c``, ``p'`` as above."""
    x, p = ctx.value(node.inputs[0]), signals[0]
    d = p * _channel_view(ctx.value(node.inputs[1]), x.ndim)
    axes = tuple(range(2, x.ndim))
    return [normalized_grad(ctx.xp, x, d, axes, float(node.attr("epsilon", 1e-5))), None, None]


@rule("LayerNormalization", modes=("grad",), needs=needs_inputs)
def layer_norm_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Statistics over the axes from ``axis`` (default −1) to the last: ``d = p ⊙ γ`` (γ broadcast over them)."""
    x, p = ctx.value(node.inputs[0]), signals[0]
    if any(s is not None for s in signals[1:]):
        raise EbrError(f"LayerNormalization node {node.name!r}: a signal reaches its Mean or InvStdDev output; "
                       "ebr_onnx propagates the signal of Y only")
    axes = tuple(range(int(node.attr("axis", -1)) % x.ndim, x.ndim))
    d = p * ctx.value(node.inputs[1])
    return [normalized_grad(ctx.xp, x, d, axes, float(node.attr("epsilon", 1e-5)))] + [None] * (len(node.inputs) - 1)


@rule("GroupNormalization", modes=("grad",), needs=needs_inputs)
def group_norm_grad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Statistics per (example, group of C/G channels): ``d = p ⊙ γ_c`` (opset 21; the checker refuses opset 18's
    per-group scale, deprecated), ``p'`` as above over each group."""
    x, p = ctx.value(node.inputs[0]), signals[0]
    d = p * _channel_view(ctx.value(node.inputs[1]), x.ndim)
    grouped = (x.shape[0], int(node.attr("num_groups")), -1)
    dx = normalized_grad(ctx.xp, x.reshape(grouped), d.reshape(grouped), (2,), float(node.attr("epsilon", 1e-5)))
    return [dx.reshape(x.shape), None, None]
