"""The rule registry: one small function per ONNX op type and mode, registered with ``@rule``.

A rule receives the node (attributes parsed), the walk's :class:`~ebr_onnx.core.context.RuleContext` (captured tensors,
constants, the array module) and the signal at each of the node's outputs (``None`` where none arrived); it returns
one signal per node input (``None`` for weights, shapes and other inputs that take no signal). Modes:

* ``"eb"`` — excitation backprop (paper Eq. 8; the release's conventions, ``shared/spec/caffe-reference.md`` §2);
* ``"grad"`` — the plain gradient (the paper's BP / BP-R baselines).

``needs(node)`` lists the tensors whose *values* the rule reads, so that the forward pass captures only those.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from .context import RuleFn
from .graph import Node

NeedsFn = Callable[[Node], Iterable[str]]
MODES = ("eb", "grad")


def needs_nothing(node: Node) -> list[str]:
    return []


def needs_input(node: Node) -> list[str]:
    """The first input (the data operand of Conv, Gemm, pooling, activations)."""
    return [node.inputs[0]]


def needs_inputs(node: Node) -> list[str]:
    """All inputs (operands of Add, Mul, Concat …; constants are served without capture)."""
    return [t for t in node.inputs if t]


def needs_output(node: Node) -> list[str]:
    return [node.outputs[0]]


@dataclass(frozen=True)
class RuleSpec:
    op_type: str
    mode: str
    fn: RuleFn
    needs: NeedsFn


_RULES: dict[tuple[str, str], RuleSpec] = {}


def rule(op_types: str | Iterable[str], *, modes: Iterable[str] = MODES, needs: NeedsFn = needs_nothing):
    """Register ``fn`` as the rule of these op types in these modes."""
    types = [op_types] if isinstance(op_types, str) else list(op_types)

    def register(fn: RuleFn) -> RuleFn:
        for op in types:
            for mode in modes:
                if mode not in MODES:
                    raise ValueError(f"unknown rule mode {mode!r}")
                _RULES[(op, mode)] = RuleSpec(op, mode, fn, needs)
        return fn

    return register


def find_rule(op_type: str, mode: str) -> RuleSpec | None:
    return _RULES.get((op_type, mode))


def supported_ops(mode: str) -> list[str]:
    return sorted(op for op, m in _RULES if m == mode)
