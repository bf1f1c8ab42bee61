"""Rules of elementwise activations.

The ReLU family uses its gradient in both modes, as the release does (``shared/spec/caffe-reference.md`` §2.3): the
mask ``[y > 0]`` is a no-op under EB, because the EB rule of the linear layer below multiplies by the activation anyway,
and it equals the z⁺-LRP treatment of ReLU.
"""
from __future__ import annotations

from typing import Any, Sequence

from ..graph import Node
from .registry import needs_input, rule


@rule("Relu", needs=needs_input)
def relu(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """``p' = p ⊙ [x > 0]``."""
    return [signals[0] * (ctx.value(node.inputs[0]) > 0)]
