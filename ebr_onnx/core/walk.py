"""The backward walk: visit the nodes between a layer and the target in reverse topological order and apply one rule
per node, summing signals where a tensor feeds several consumers (paper Eq. 3 / Eq. 9: a child's probability is the
sum over its parents)."""
from __future__ import annotations

import operator
from typing import Any, Callable, Iterable, Mapping

from . import registry
from .context import RuleContext, RuleFn
from .errors import LoweringFailed, UnsupportedOpError
from .graph import Node
from .propagate import propagate


def choose_rule(node: Node, ctx: RuleContext) -> RuleFn:
    """The composite: a per-node override (recurrent rule sets) first, then the registry's rule for the mode."""
    if node.name in ctx.overrides:
        return ctx.overrides[node.name]
    spec = registry.find_rule(node.op_type, ctx.mode)
    if spec is None:
        raise UnsupportedOpError(node.name, node.op_type, registry.supported_ops(ctx.mode), ctx.mode)
    return spec.fn


def required_values(nodes: Iterable[Node], mode: str, overrides_needs: Callable[[Node], list[str] | None] | None = None
                    ) -> set[str]:
    """The tensors whose values the rules of these nodes read (checked for missing rules on the way)."""
    names: set[str] = set()
    for node in nodes:
        extra = overrides_needs(node) if overrides_needs else None
        if extra is not None:
            names.update(extra)
            continue
        spec = registry.find_rule(node.op_type, mode)
        if spec is None:
            raise UnsupportedOpError(node.name, node.op_type, registry.supported_ops(mode), mode)
        names.update(spec.needs(node))
    return names


def walk(ctx: RuleContext, nodes: list[Node], seeds: Mapping[str, Any], keep: Iterable[str] = (),
         reach: set[str] | None = None, release: bool = False) -> dict[str, Any]:
    """Propagate ``seeds`` (signals at tensors) backward through ``nodes`` (given in topological order).

    Returns the signals that reached each tensor in ``keep``; other intermediate signals are freed as soon as their
    producer has consumed them. With ``reach`` given, signal sent to tensors outside it (branches that start below the
    requested layer) is dropped. With ``release``, each value is also released (:meth:`RuleContext.release`) after
    the last node that may read it (registry rules read only their node's inputs and outputs; composites that
    override rules keep everything). The bottom run of ``nodes`` that the context's lowerer takes
    (:class:`~ebr_onnx.core.context.Lowerer`) runs as one compiled graph; where that graph cannot run
    (:class:`~ebr_onnx.core.errors.LoweringFailed`) its nodes run rule by rule.
    """
    keep = set(keep)
    below, upper = ctx.lowerer.split(ctx, nodes) if ctx.lowerer is not None else ([], nodes)
    last = _last_readers(nodes) if release and not ctx.overrides else {}
    signals = _propagate(ctx, upper, dict(seeds), keep, reach, last)
    if below:
        boundary = {o for n in below for o in n.outputs if o}
        try:
            lowered = ctx.lowerer.run(ctx, below, {k: v for k, v in signals.items() if k in boundary}, keep, reach)
        except LoweringFailed:  # onnxruntime refused the graph: the rules give the same signals, one by one
            signals = _propagate(ctx, below, signals, keep, reach, last)
        else:
            signals = _merge(signals, lowered, boundary)
            if release:
                for name in {t for n in below for t in (*n.inputs, *n.outputs) if t and t not in keep}:
                    ctx.release(name)
    return {k: v for k, v in signals.items() if k in keep}


def _propagate(ctx: RuleContext, nodes: list[Node], signals: dict[str, Any], keep: set[str], reach: set[str] | None,
               last: Mapping[str, list[str]]) -> dict[str, Any]:
    """The rules of ``nodes`` in reverse order, from ``signals`` (updated in place and returned), releasing each
    value after its last reader (``last``)."""

    def apply(node: Node, outs: list[Any]) -> list[Any]:
        ctx.node_index = node.index
        return choose_rule(node, ctx)(node, ctx, outs)

    def after(node: Node) -> None:
        for name in last.get(node.name, ()):
            if name not in keep:
                ctx.release(name)

    return propagate(nodes, signals, keep, reach, ctx.is_signal, apply, operator.add, after)


def _merge(upper: dict[str, Any], lower: dict[str, Any], boundary: set[str]) -> dict[str, Any]:
    """The signals after a lowered run: its results (which include its seeds, the upper signals at the boundary),
    plus the upper walk's signals elsewhere."""
    out = {k: v for k, v in upper.items() if k not in boundary}
    for k, v in lower.items():
        out[k] = out[k] + v if k in out else v
    return out


def _last_readers(nodes: list[Node]) -> dict[str, list[str]]:
    """Node name → the tensors (inputs and outputs) that no node after it in the backward order touches."""
    last: dict[str, str] = {}
    for node in reversed(nodes):
        for name in (*node.inputs, *node.outputs):
            if name:
                last[name] = node.name
    by_node: dict[str, list[str]] = {}
    for name, node_name in last.items():
        by_node.setdefault(node_name, []).append(name)
    return by_node
