"""Rules of the ops that only move values around: the signal is routed back to where each value came from,
identically in the EB and gradient modes (the release uses the gradient for these, spec §2.6)."""
from __future__ import annotations

from typing import Any, Sequence

from ..graph import Node
from .registry import rule


@rule(["Identity", "Dropout"])
def identity(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """``p' = p`` (Dropout is the identity at inference; its mask output takes no signal)."""
    return [signals[0]] + [None] * (len(node.inputs) - 1)


@rule(["Reshape", "Flatten", "Squeeze", "Unsqueeze"])
def reshape_like(node: Node, ctx, signals: Sequence[Any]) -> list[Any]:
    """Reshapes keep the element order: ``p'`` is ``p`` in the input's shape."""
    return [signals[0].reshape(ctx.shape(node.inputs[0]))] + [None] * (len(node.inputs) - 1)
