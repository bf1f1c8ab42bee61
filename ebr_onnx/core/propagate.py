"""The backward propagation loop shared by the rule-by-rule walk and the building of lowered graphs (paper Eq. 3 /
Eq. 9: a child's signal is the sum over its parents)."""
from __future__ import annotations

from typing import Any, Callable

from .graph import Node


def propagate(nodes: list[Node], signals: dict[str, Any], keep: set[str], reach: set[str] | None,
              is_signal: Callable[[str], bool], apply: Callable[[Node, list[Any]], list[Any]],
              add: Callable[[Any, Any], Any], after: Callable[[Node], None] | None = None) -> dict[str, Any]:
    """Eq. 3 / Eq. 9 over ``nodes`` in reverse topological order: ``apply(node, outs)`` turns the signals at a node's
    outputs into those of its inputs, and a tensor read by several consumers receives their sum (``add``). Signals at
    outputs outside ``keep`` are dropped once consumed, signals sent outside ``reach`` (or to tensors that carry no
    signal) are dropped; ``after(node)`` runs after each node. ``signals`` is updated in place and returned."""
    for node in reversed(nodes):
        outs = [signals.get(o) for o in node.outputs]
        if any(s is not None for s in outs):
            ins = apply(node, outs)
            del outs
            for o in node.outputs:
                if o not in keep:
                    signals.pop(o, None)
            for name, s in zip(node.inputs, ins):
                if s is None or not is_signal(name) or (reach is not None and name not in reach):
                    continue
                signals[name] = add(signals[name], s) if name in signals else s
        if after is not None:
            after(node)
    return signals
