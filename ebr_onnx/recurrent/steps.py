"""Time in a recurrent model's output: its time axis (traced from the recurrence, ``time_axis=`` overriding), the
explained steps (``time_step``), and the prior placed at them (Alg. 1)."""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from ..core.errors import EbrError
from ..core.graph import ModelGraph, Node
from ..core.ops import LAYOUT_OPS
from ..core.request import TimeStep
from ..core.targets import Target, target_classes
from .frames import UNTRACED, trace_time_axis
from .plan import Plan


def recurrence_length(p: Plan, shapes: Mapping[str, tuple]) -> int | None:
    """The number of steps of the last recurrence, from its run-time shapes: a fused op's Y (or, when Y is not
    used, its input X) — for fused ops of one step each chained through their states (a decoding loop unrolled, one
    op per step), the chain's length — else the longest chain of unrolled cells."""
    if p.recurrent:
        last = p.recurrent[-1]
        axis = 1 if last.attr("layout", 0) else 0
        for name in (last.outputs[0] if last.outputs else "", last.inputs[0]):
            if name and len(shapes.get(name, ())) > axis:
                steps = int(shapes[name][axis])
                return _chained_steps(p, last, shapes) if steps == 1 else steps
        return None
    chains: dict[int, int] = {}
    for cell in p.cells:
        chains[cell.chain] = chains.get(cell.chain, 0) + 1
    return max(chains.values()) if chains else None


def _chained_steps(p: Plan, last: Node, shapes: Mapping[str, tuple]) -> int:
    """How many one-step fused ops of ``last``'s kind and size end in ``last``, each starting from the states the one
    before it ended with (``initial_h``/``initial_c`` traced down through layout ops)."""
    producers = {o: n for n in p.rnn_nodes for o in n.outputs if o}
    count, node = 1, last
    while True:
        before = None
        for state in node.inputs[5:7]:
            while state in producers and producers[state].op_type in LAYOUT_OPS:
                state = producers[state].inputs[0]
            found = producers.get(state)
            if found is not None and found.op_type == node.op_type and \
                    found.attr("hidden_size") == node.attr("hidden_size"):
                before = found
                break
        axis = 1 if before is not None and before.attr("layout", 0) else 0
        if before is None or shapes.get(before.inputs[0], (0, 0))[axis] != 1:
            return count
        count, node = count + 1, before


def time_axis(graph: ModelGraph, shapes: Mapping[str, tuple], p: Plan, out: np.ndarray, steps: int,
              given: int | None) -> int | None:
    """The logits' time axis: ``given``, else traced from the last recurrent op's Y on the run-time ``shapes``
    (:func:`frames.trace_time_axis`: through layout ops, per-step classifier copies and CTC-style transposes) and
    checked to hold the recurrence's ``steps``, else the only non-class axis of ``steps`` entries; None when the
    classifier sees one step."""
    if given is not None:
        if not -out.ndim <= given < out.ndim or given % out.ndim == out.ndim - 1:
            raise EbrError(f"time_axis {given} is not a non-class axis of the output of shape {out.shape}")
        return given % out.ndim
    shapes = {**shapes, p.logits: out.shape}
    if p.recurrent:
        last = p.recurrent[-1]
        traced = trace_time_axis(graph, shapes, last.outputs[0], int(last.attr("layout", 0)), p.logits)
        if traced is None or (traced is not UNTRACED and out.shape[traced] == steps):
            return traced
    candidates = [a for a in range(out.ndim - 1) if out.shape[a] == steps]
    if len(candidates) > 1 and steps > 1:   # (one step: any axis of size 1 is as good as another)
        raise EbrError(f"cannot tell the time axis of the output of shape {out.shape} (the recurrence has {steps} "
                       "steps); pass time_axis=…")
    return candidates[0] if candidates else None


def time_steps(time_step: TimeStep, length: int | None, axis: int | None = None,
               shape: Sequence[int] | None = None) -> list[int]:
    """The explained steps of an output with ``length`` steps (None: no time axis) on its ``axis`` (of ``shape``, for
    the messages), sorted, negatives resolved."""
    if length is None:
        if time_step in ("all", -1) or (isinstance(time_step, Sequence) and list(time_step) == [-1]):
            return [0]
        raise EbrError(f"the output has no time axis (the classifier sees one step), so time_step={time_step!r} "
                       "cannot be chosen; use -1")
    if time_step == "all":
        return list(range(length))
    if isinstance(time_step, str):
        raise EbrError(f"time_step must be an int, a list of ints or 'all', not {time_step!r}")
    steps = [time_step] if isinstance(time_step, (int, np.integer)) else list(time_step)
    for s in steps:
        if not -length <= int(s) < length:
            raise EbrError(f"time_step {s} is out of range: the output has {length} time steps (traced on its axis "
                           f"{axis}{'' if shape is None else f' of shape {tuple(shape)}'}; time_axis=… overrides)")
    return sorted({int(s) % length for s in steps})


def top_signal(labels: Sequence[str] | None, out: np.ndarray, axis: int | None, target: Target,
               prior: np.ndarray | None, time_step: TimeStep, logits: str, dtype: np.dtype
               ) -> tuple[np.ndarray, int, list[int]]:
    """The prior (Alg. 1) of one sequence's output: a one-hot 1.0 (or the user's ``prior`` vector) on the class axis
    at each chosen step."""
    steps = time_steps(time_step, None if axis is None else out.shape[axis], axis, out.shape)
    moved = out[None] if axis is None else np.moveaxis(out, axis, 0)  # (steps, 1…, classes)
    per_step = moved.reshape(moved.shape[0], -1)
    classes = per_step.shape[1]
    if prior is not None and np.shape(prior)[-1] != classes:
        raise EbrError(f"prior has {np.shape(prior)[-1]} entries, the output has {classes} classes")
    if isinstance(target, (list, tuple)) and len(target) != 1:
        raise EbrError(f"{len(target)} targets given for the one sequence of the output {logits!r} {out.shape}")
    (k,) = target_classes(labels, target, per_step[-1:])
    top = np.zeros(per_step.shape, dtype)
    top[steps] = np.asarray(prior, dtype) if prior is not None else np.eye(classes, dtype=dtype)[k]
    top = top.reshape(moved.shape)
    return (top[0] if axis is None else np.moveaxis(top, 0, axis)), k, steps
