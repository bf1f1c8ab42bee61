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
    them. ``constants``: on a GPU, the explainer's :class:`~ebr_onnx.core.device.DeviceArrays`, which hold the one
    device copy of each weight (``None``: constants are converted per walk, as on the CPU, where that is free).

    ``values`` may hold host arrays (converted to the walk's module once per walk) or arrays of the walk's module
    (the forward's device captures, read in place).
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
    constants: Any = None
    _device_cache: dict[str, Any] = field(default_factory=dict)
    #: The ids of the arrays :meth:`value` handed out (while cached) → their names, and the names' signs
    #: (:meth:`has_negative`, read for all captures at once on a device).
    _names: dict[int, str] = field(default_factory=dict)
    _negative: dict[str, bool] | None = None

    def _host(self, name: str) -> Any:
        if name in self.values:
            return self.values[name]
        return self.graph.constant(name)

    def value(self, name: str) -> Any:
        """A captured activation or a constant, as an array of the walk's module (float tensors in ``dtype``).

        On a device, captures that are already device arrays are read in place (cast there if needed), and
        constants come from the explainer's one device copy (:attr:`constants`); only host values are uploaded."""
        if name in self._device_cache:
            return self._device_cache[name]
        if self.constants is not None and name not in self.values and self.graph.is_constant(name):
            out = self.constants.constant(name, self.graph.constant(name), self.dtype)
        else:
            out = self._in_module(self._host(name))
        self._device_cache[name] = out
        self._names[id(out)] = name
        return out

    def _in_module(self, array: Any) -> Any:
        xp = self.xp
        if xp is not np and isinstance(array, xp.ndarray):
            return array.astype(self.dtype, copy=False) if array.dtype.kind == "f" else array
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(self.dtype, copy=False)
        return xp.asarray(array)

    def host(self, name: str) -> np.ndarray:
        """The value of ``name`` on the host, for parameters that shape a rule's Python (indices, pads, sizes): a
        constant is read from the model (no transfer), a computed tensor copied from the device (a host sync)."""
        if name not in self.values and self.graph.is_constant(name):
            return np.asarray(self.graph.constant(name))
        return np.asarray(to_numpy(self._host(name)))

    def has_negative(self, x: Any) -> bool:
        """Whether the array ``x`` has a negative entry (a Python branch: EB or its positive-contribution form).

        On the CPU one reduction. On a device a host read, so the first call of a walk reads the signs of all the
        float captures in ``values`` together, one transfer for the walk; an array that is not one of them as
        :meth:`value` handed it out (a view, a computed array) is read on its own."""
        xp = self.xp
        name = self._names.get(id(x))
        if xp is np or name is None or name not in self.values or self._device_cache.get(name) is not x:
            return bool((x < 0).any())
        if self._negative is None or name not in self._negative:
            names = [n for n, v in self.values.items() if isinstance(v, xp.ndarray) and v.dtype.kind == "f"
                     and (self._negative is None or n not in self._negative)]
            flags = to_numpy(xp.stack([(self.values[n] < 0).any() for n in names])) if names else []
            self._negative = {**(self._negative or {}), **dict(zip(names, (bool(f) for f in flags)))}
        return self._negative[name] if name in self._negative else bool((x < 0).any())

    def derived(self, key: str, make: Callable[[], Any]) -> Any:
        """An array derived from the captures (e.g. a projection's ``f(x, W⁺)``), made once per walk under ``key``."""
        if key not in self._device_cache:
            self._device_cache[key] = make()
        return self._device_cache[key]

    def ints(self, node: Node, index: int, attr: str) -> list[int] | None:
        """Integer parameters of ``node`` given as input ``index`` (newer opsets) or as attribute ``attr`` (older),
        else None."""
        if len(node.inputs) > index and node.inputs[index]:
            return [int(v) for v in self.host(node.inputs[index]).ravel()]
        value = node.attr(attr)
        return None if value is None else [int(v) for v in np.ravel(value)]

    def weight(self, node: Node, index: int) -> Any:
        """Input ``index`` of ``node`` as a weight, negated when ``node`` is the contrastive dual's classifier."""
        w = self.value(node.inputs[index])
        return -w if node.name in self.negated else w

    def release(self, name: str) -> None:
        """Forget a value no remaining rule reads (and its captured copy, where the context owns the captures)."""
        held = self._device_cache.pop(name, None)
        if held is not None:
            self._names.pop(id(held), None)
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
