"""Receptive fields along the axes of an input: where each position of a layer sits over the input's frames and
pixels, traced forward through the graph.

Position ``i`` of a layer along a traced axis sees the input positions ``start + i·stride … start + i·stride + size
− 1`` (clipped to the input). The input's own axes start as ``stride = size = 1``, ``start = 0``; a window op (Conv,
MaxPool, AveragePool, LpPool) with kernel ``k``, stride ``s``, dilation ``d`` and begin pad ``b`` turns a field
``(S, start, R)`` into ``(S·s, start − b·S, R + (k − 1)·d·S)``; a global pool or a reduction over the axis covers it
whole; Slice (steps ≥ 1), Pad, Transpose, Squeeze/Unsqueeze and reshapes that keep the axis move it; elementwise ops
and Concat along another axis take the union of their operands' fields (operands broadcast along the axis, such as a
squeeze-excitation gate, are left out); any other op ends the trace.

The same arithmetic gives each layer's length along the axis, so a clip too short for the model is found before any
run (:attr:`FieldTrace.shortfall`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .geometry import window_pads
from .graph import ModelGraph, Node
from .ops import SAME_AXES_OPS

#: Ops whose windows slide along the spatial axes (axis 2 on): the fields grow by their kernels.
WINDOW_OPS = frozenset({"Conv", "MaxPool", "AveragePool", "LpPool"})
GLOBAL_OPS = frozenset({"GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool"})
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceProd",
                        "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"})
#: Same-axes ops that move values along an axis: the trace stops there.
_MOVING_OPS = frozenset({"Resize", "Upsample", "Tile", "ConvTranspose", "Softmax", "Split"})
_ELEMENTWISE = SAME_AXES_OPS - WINDOW_OPS - GLOBAL_OPS - _MOVING_OPS - {"Concat", "Slice", "Pad"}


@dataclass(frozen=True)
class AxisField:
    """The receptive field of a layer along one axis of the input (``input_axis``, ``input_length`` positions): the
    layer's position ``i`` (of ``length``) sees input positions ``start + i·stride`` to ``start + i·stride + size −
    1``."""

    input_axis: int
    stride: int
    start: int
    size: int
    length: int
    input_length: int

    def centre(self, i: int | np.ndarray) -> float | np.ndarray:
        return self.start + np.asarray(i) * self.stride + (self.size - 1) / 2

    def nearest(self) -> np.ndarray:
        """For each input position, the layer position whose field's centre is nearest (the earlier one on a tie):
        the position whose field covers it, wherever the fields leave no gaps."""
        offset = (np.arange(self.input_length) - self.centre(0)) / self.stride
        return np.clip(np.ceil(offset - 0.5), 0, self.length - 1).astype(np.int64)


@dataclass(frozen=True)
class Shortfall:
    """A window op that finds no room along a traced axis: ``node`` gets ``length`` positions of it (plus ``pads``)
    for a window spanning ``reach``; ``stride`` is the field stride of its input (the strides before it)."""

    node: str
    op_type: str
    input_axis: int
    length: int
    reach: int
    pads: int
    stride: int


@dataclass
class FieldTrace:
    """The fields of every traced tensor (tensor → its axis → field) and the first window op without room."""

    fields: dict[str, dict[int, AxisField]]
    shortfall: Shortfall | None = None


def trace_fields(graph: ModelGraph, input_name: str, input_shape: Sequence[int], axes: Sequence[int]) -> FieldTrace:
    """Trace the fields of ``axes`` of the input (of ``input_shape``) forward through the graph."""
    fields = {input_name: {a: AxisField(a, 1, 0, 1, int(input_shape[a]), int(input_shape[a])) for a in axes}}
    ranks = {input_name: len(input_shape)}
    trace = FieldTrace(fields)
    for node in graph.topological:
        traced = [t for t in node.inputs if t in fields]
        if not traced:
            continue
        out = _through(graph, node, fields, ranks, trace)
        for name, (rank, mapped) in out.items():
            if mapped:
                fields[name], ranks[name] = mapped, rank
        if trace.shortfall is not None:
            break
    return trace


def _rank(graph: ModelGraph, name: str, ranks: dict[str, int]) -> int | None:
    if name in ranks:
        return ranks[name]
    if graph.is_constant(name):
        return np.ndim(graph.constant(name))
    shape = graph.shapes.get(name)
    return None if shape is None else len(shape)


def _ints(graph: ModelGraph, node: Node, index: int, attr: str) -> list[int] | None:
    """Integer parameters given as input ``index`` (newer opsets, constants only) or attribute ``attr``."""
    if len(node.inputs) > index and node.inputs[index]:
        name = node.inputs[index]
        return [int(v) for v in np.ravel(graph.constant(name))] if graph.is_constant(name) else None
    value = node.attr(attr)
    return None if value is None else [int(v) for v in np.ravel(value)]


def _through(graph: ModelGraph, node: Node, fields: dict[str, dict[int, AxisField]], ranks: dict[str, int],
             trace: FieldTrace) -> dict[str, tuple[int, dict[int, AxisField]]]:
    """The fields of ``node``'s outputs (output → (rank, axis → field)); records a shortfall in ``trace``."""
    op, src = node.op_type, node.inputs[0]
    out = node.outputs[0] if node.outputs else ""
    here = fields.get(src, {})
    rank = _rank(graph, src, ranks)
    if not out or rank is None:
        return {}
    if op in WINDOW_OPS and here:
        return {out: (rank, _window(graph, node, here, rank, trace))}
    if op in GLOBAL_OPS:
        return {out: (rank, {a: _whole(f) if a >= 2 else f for a, f in here.items()})}
    if op in REDUCE_OPS:
        return _reduced(graph, node, here, rank)
    if op == "Transpose":
        perm = list(node.attr("perm") or range(rank)[::-1])
        return {out: (rank, {perm.index(a): f for a, f in here.items()})}
    if op in ("Squeeze", "Unsqueeze"):
        return _squeezed(graph, node, here, rank)
    if op in ("Reshape", "Flatten"):
        return _reshaped(graph, node, here, ranks)
    if op == "Slice":
        return {out: (rank, _sliced(graph, node, here, rank))}
    if op == "Pad":
        return {out: (rank, _padded(graph, node, here, rank))}
    if op == "Concat":
        axis = int(node.attr("axis", 0)) % rank
        merged = _union([fields[t] for t in node.inputs if t in fields], rank, {axis})
        return {out: (rank, merged)}
    if op in _ELEMENTWISE:
        operands = [(fields[t], _rank(graph, t, ranks)) for t in node.inputs if t in fields]
        out_rank = max(r or 0 for _, r in operands)
        aligned = [{a + out_rank - r: f for a, f in fs.items()} for fs, r in operands if r]
        return {o: (out_rank, _union(aligned, out_rank, set())) for o in node.outputs[:1] if o}
    return {}


def _window(graph: ModelGraph, node: Node, here: dict[int, AxisField], rank: int, trace: FieldTrace
            ) -> dict[int, AxisField]:
    spatial = rank - 2
    if node.op_type == "Conv":
        w = graph.shapes.get(node.inputs[1])
        if w is None or len(w) != rank or not all(isinstance(k, int) for k in w[2:]):
            return {}
        kernel = [int(k) for k in w[2:]]
    else:
        kernel = [int(k) for k in node.attr("kernel_shape", [])]
    if len(kernel) != spatial:
        return {}
    strides = [int(s) for s in node.attr("strides", [1] * spatial)]
    dilations = [int(d) for d in node.attr("dilations", [1] * spatial)]
    size = [here[a + 2].length if a + 2 in here else 1 for a in range(spatial)]
    pads = window_pads(node, size, kernel, strides, dilations)
    ceil = bool(node.attr("ceil_mode", 0))
    out: dict[int, AxisField] = {}
    for axis, f in here.items():
        if axis < 2:
            continue
        a = axis - 2
        k, s, d, begin, end = kernel[a], strides[a], dilations[a], pads[a], pads[a + spatial]
        reach = (k - 1) * d + 1
        room = f.length + begin + end - reach
        if room < 0:
            trace.shortfall = Shortfall(node.name, node.op_type, f.input_axis, f.length, reach, begin + end, f.stride)
            return {}
        length = (-(-room // s) if ceil else room // s) + 1
        if ceil and (length - 1) * s >= f.length + begin:
            length -= 1  # the last window may not start in the end padding
        out[axis] = AxisField(f.input_axis, f.stride * s, f.start - begin * f.stride, f.size + (reach - 1) * f.stride,
                              length, f.input_length)
    return out


def _whole(f: AxisField) -> AxisField:
    """A field that covers the whole of ``f``'s positions (a global pool or a reduction over the axis)."""
    return AxisField(f.input_axis, f.stride * f.length, f.start, f.size + (f.length - 1) * f.stride, 1,
                     f.input_length)


def _reduced(graph: ModelGraph, node: Node, here: dict[int, AxisField], rank: int
             ) -> dict[str, tuple[int, dict[int, AxisField]]]:
    axes = _ints(graph, node, 1, "axes")
    if axes is None:
        axes = [] if node.attr("noop_with_empty_axes", 0) else list(range(rank))
    reduced = {a % rank for a in axes}
    if node.attr("keepdims", 1):
        return {node.outputs[0]: (rank, {a: _whole(f) if a in reduced else f for a, f in here.items()})}
    kept = {a - sum(r < a for r in reduced): f for a, f in here.items() if a not in reduced}
    return {node.outputs[0]: (rank - len(reduced), kept)}


def _squeezed(graph: ModelGraph, node: Node, here: dict[int, AxisField], rank: int
              ) -> dict[str, tuple[int, dict[int, AxisField]]]:
    axes = _ints(graph, node, 1, "axes")
    if axes is None:
        return {}
    if node.op_type == "Squeeze":
        gone = {a % rank for a in axes}
        mapped = {a - sum(g < a for g in gone): f for a, f in here.items() if a not in gone}
        return {node.outputs[0]: (rank - len(gone), mapped)}
    out_rank = rank + len(axes)
    added = {a % out_rank for a in axes}
    kept = [i for i in range(out_rank) if i not in added]
    return {node.outputs[0]: (out_rank, {kept[a]: f for a, f in here.items()})}


def _reshaped(graph: ModelGraph, node: Node, here: dict[int, AxisField], ranks: dict[str, int]
              ) -> dict[str, tuple[int, dict[int, AxisField]]]:
    """An axis survives a reshape where the products of the sizes before and up to it are kept (Flatten, Reshape
    with known static shapes)."""
    before, after = graph.shapes.get(node.inputs[0]), graph.shapes.get(node.outputs[0])
    if not before or not after or not all(isinstance(d, int) for d in (*before, *after)):
        return {}
    prefix = [math.prod(after[:b]) for b in range(len(after) + 1)]
    mapped = {}
    for a, f in here.items():
        lo, hi = math.prod(before[:a]), math.prod(before[:a + 1])
        for b in range(len(after)):
            if (prefix[b], prefix[b + 1]) == (lo, hi):
                mapped[b] = f
    return {node.outputs[0]: (len(after), mapped)}


def _sliced(graph: ModelGraph, node: Node, here: dict[int, AxisField], rank: int) -> dict[int, AxisField]:
    if graph.opset < 10:
        starts, ends, axes, steps = (node.attr("starts"), node.attr("ends"), node.attr("axes"), None)
    else:
        starts, ends, axes, steps = (_ints(graph, node, i, "") for i in (1, 2, 3, 4))
    if starts is None or ends is None:
        return {}
    axes = list(range(len(starts))) if axes is None else [int(a) % rank for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    out = dict(here)
    for a, start, end, step in zip(axes, starts, ends, steps):
        if a not in here:
            continue
        f = here[a]
        if step < 1:
            out.pop(a)
            continue
        picked = range(*slice(int(start), int(end), int(step)).indices(f.length))
        out[a] = replace(f, start=f.start + picked.start * f.stride, stride=f.stride * step, length=len(picked))
    return out


def _padded(graph: ModelGraph, node: Node, here: dict[int, AxisField], rank: int) -> dict[int, AxisField]:
    pads = _ints(graph, node, 1, "pads")
    if pads is None or len(pads) != 2 * rank:
        return {}
    return {a: replace(f, start=f.start - pads[a] * f.stride, length=f.length + pads[a] + pads[a + rank])
            for a, f in here.items()}


def _union(operands: list[dict[int, AxisField]], rank: int, skip: set[int]) -> dict[int, AxisField]:
    """Per axis, the union of the operands' fields of the longest length (operands broadcast along it left out)."""
    out: dict[int, AxisField] = {}
    for a in range(rank):
        found = [fs[a] for fs in operands if a in fs]
        if a in skip or not found:
            continue
        length = max(f.length for f in found)
        found = [f for f in found if f.length == length]
        start = min(f.start for f in found)
        end = max(f.start + f.size for f in found)
        out[a] = replace(found[0], start=start, size=end - start)
    return out
