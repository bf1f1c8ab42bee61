"""What a rule may read during a walk: :class:`RuleContext`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Protocol, Sequence

import numpy as np

from .backend import to_numpy
from .graph import ModelGraph, Node
from .kernels import KernelCache
from .options import RuleOptions

#: The signal at a tensor (an array of the walk's module), or None where none arrived.
Signal = Optional[Any]
#: A rule: (node, context, the signals at the node's outputs) → one signal per node input (None: none).
RuleFn = Callable[[Node, "RuleContext", Sequence[Signal]], list[Signal]]


class Lowerer(Protocol):
    """Runs the bottom of a walk as one compiled graph (:class:`ebr_onnx.lowering.Lowering`)."""

    def split(self, ctx: "RuleContext", nodes: list[Node]) -> tuple[list[Node], list[Node]]:
        """(the bottom run of ``nodes`` it runs, the rest), in topological order."""

    def run(self, ctx: "RuleContext", nodes: list[Node], seeds: Mapping[str, Any], keep: set[str],
            reach: set[str] | None) -> dict[str, Any]:
        """The signals at the ``keep`` tensors after walking ``nodes`` from ``seeds``; raises
        :class:`~ebr_onnx.core.errors.LoweringFailed` where the graph cannot run."""


@dataclass
class RuleContext:
    """What a rule may read: captured values, constants, shapes, and the walk's configuration.

    ``negated`` names the nodes whose weights are negated (the contrastive dual unit, paper Eq. 2): rules read weights
    through :meth:`weight`, so the model itself is never modified. ``overrides`` maps node names to rule functions
    chosen by a composite (the recurrent rule sets); ``options`` are the rule options (:class:`RuleOptions`);
    ``kernels`` is the explainer's :class:`~ebr_onnx.core.kernels.KernelCache` (compiled operators of constant
    weights; ``None`` off the CPU). ``lowerer`` runs the bottom of a walk as one graph (:mod:`ebr_onnx.lowering`;
    ``None``: rule by rule). ``owns_values``: the walk may drop entries of ``values`` once no remaining rule reads
    them.
    """

    graph: ModelGraph
    xp: Any
    mode: str
    values: Mapping[str, Any]
    shapes: Mapping[str, tuple[int, ...]]
    signal: set[str]
    dtype: Any = np.float32
    negated: frozenset[str] = frozenset()
    overrides: Mapping[str, RuleFn] = field(default_factory=dict)
    options: RuleOptions = RuleOptions()
    warnings: list[str] = field(default_factory=list)
    #: The topological index of the node whose rule runs now (set by the walk), and per warning kind the index of the
    #: node it names, so that each kind names the first offending node in forward order.
    node_index: int | None = None
    _warned_at: dict[str, int] = field(default_factory=dict)
    kernels: KernelCache | None = None
    lowerer: Lowerer | None = None
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

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """An array derived from the captures (e.g. a projection's ``f(x, W⁺)``), made once per walk under ``key``."""
        if key not in self._device_cache:
            self._device_cache[key] = make()
        return self._device_cache[key]

    def ints(self, node: Node, index: int, attr: str) -> list[int] | None:
        """Integer parameters of ``node`` given as input ``index`` (newer opsets) or as attribute ``attr`` (older),
        else None."""
        if len(node.inputs) > index and node.inputs[index]:
            return [int(v) for v in np.asarray(to_numpy(self.value(node.inputs[index]))).ravel()]
        value = node.attr(attr)
        return None if value is None else [int(v) for v in np.ravel(value)]

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
