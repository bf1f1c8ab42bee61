"""The backward walk: visit the nodes between a layer and the target in reverse topological order and apply one rule
per node, summing signals where a tensor feeds several consumers (paper Eq. 3 / Eq. 9: a child's probability is the
sum over its parents)."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from .errors import UnsupportedOpError
from .graph import ModelGraph, Node
from .lowering import LoweringFailed, run_lowered, split_lowered
from .rules import registry


@dataclass
class RuleContext:
    """What a rule may read: captured values, constants, shapes, and the walk's configuration.

    ``negated`` names the nodes whose weights are negated (the contrastive dual unit, paper Eq. 2): rules read weights
    through :meth:`weight`, so the model itself is never modified. ``overrides`` maps node names to rule functions
    chosen by a composite (the recurrent rule sets); ``options`` carries rule options such as ``add_rule``;
    ``kernels`` is the explainer's :class:`~ebr_onnx.kernels.KernelCache` (compiled operators of constant weights).
    ``owns_values``: the walk may drop entries of ``values`` once no remaining rule reads them.
    """

    graph: ModelGraph
    xp: Any
    mode: str
    values: Mapping[str, Any]
    shapes: Mapping[str, tuple[int, ...]]
    signal: set[str]
    dtype: Any = np.float32
    negated: frozenset[str] = frozenset()
    overrides: Mapping[str, registry.RuleFn] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: The topological index of the node whose rule runs now (set by :func:`walk`), and per warning kind the index
    #: of the node it names, so that each kind names the first offending node in forward order.
    node_index: int | None = None
    _warned_at: dict[str, int] = field(default_factory=dict)
    kernels: Any = None
    owns_values: bool = False
    _device_cache: dict[str, Any] = field(default_factory=dict)

    def _host(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return self.graph.constant(name)

    def value(self, name: str) -> Any:
        """A captured activation or a constant, as an array of the walk's module (float tensors in ``dtype``)."""
        if name in self._device_cache:
            return self._device_cache[name]
        array = np.asarray(self._host(name))
        if array.dtype.kind == "f":
            array = array.astype(self.dtype, copy=False)
        out = self.xp.asarray(array)
        self._device_cache[name] = out
        return out

    def weight(self, node: Node, index: int) -> Any:
        """Input ``index`` of ``node`` as a weight, negated when ``node`` is the contrastive dual's classifier."""
        w = self.value(node.inputs[index])
        return -w if node.name in self.negated else w

    def release(self, name: str) -> None:
        """Forget a value no remaining rule reads (and its captured copy, where the context owns the captures)."""
        self._device_cache.pop(name, None)
        if self.owns_values:
            self.values.pop(name, None)  # type: ignore[attr-defined]

    def is_signal(self, name: str) -> bool:
        return bool(name) and name in self.signal

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.values:
            return tuple(np.shape(self.values[name]))
        if self.graph.is_constant(name):
            return tuple(self.graph.constant(name).shape)
        return self.shapes[name]

    def warn_once(self, key: str, message: str) -> None:
        """Record a warning about the model, one per kind: the backward walk meets offending nodes from the output
        down, so a later call from a node earlier in forward order replaces the kind's message (the warning names the
        first offending node)."""
        text = f"[{key}] {message}"
        position = next((i for i, w in enumerate(self.warnings) if w.startswith(f"[{key}]")), None)
        if position is None:
            self.warnings.append(text)
        elif self.node_index is not None and self.node_index < self._warned_at.get(key, self.node_index):
            self.warnings[position] = text
        else:
            return
        if self.node_index is not None:
            self._warned_at[key] = self.node_index


def choose_rule(node: Node, ctx: RuleContext) -> registry.RuleFn:
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
    override rules keep everything).
    """
    keep = set(keep)
    below, upper = split_lowered(ctx, nodes)
    last = _last_readers(nodes) if release and not ctx.overrides else {}
    signals = _propagate(ctx, upper, dict(seeds), keep, reach, last)
    if below:
        boundary = {o for n in below for o in n.outputs if o}
        try:
            lowered = run_lowered(ctx, below, {k: v for k, v in signals.items() if k in boundary}, keep, reach)
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
