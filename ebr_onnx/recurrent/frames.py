"""Where the frames of a video input reach the per-frame CNN, and which axis of a layer holds its channels.

A clip enters a video model as (N, T, C, H, W) or channels-last (N, T, H, W, C), and the exporters feed its frames to
the CNN in one of two ways:

* **stacked**: frames on the batch axis, by a ``Reshape`` of (N, T, …) to (N·T, …) (PyTorch, Caffe) — a layer is
  one tensor whose axis ``frame_axis`` holds N·T entries, batch-major (entry ``n·T + t``);
* **copies**: one CNN copy per frame, each reading one frame through ``Slice``/``Gather``/``Split`` (+ ``Squeeze``),
  usually with a ``Transpose`` to NCHW (tf2onnx's ``TimeDistributed``) — a layer is one tensor per frame.

Tensors that still hold the whole time axis (the input itself, or copies stacked again by ``Unsqueeze`` + ``Concat``)
are a third case: one tensor with its time axis ``frame_axis``.

The channel axis of a tensor is the one that the graph feeds to a ``Conv`` as its channels (axis 1 of the Conv's
input), followed forward through layout ops to the nearest ``Conv`` (or, past the last one, from the nearest Conv's
output); for a channels-last input it is the last axis. The clip's batch axis is followed the same way (it is gone
where a ``Reshape`` merges it with time).

The same tracing finds the time axis of a recurrent layer's outputs (:func:`trace_time_axis`), through per-step
classifier copies stacked again by ``Unsqueeze`` + ``Concat`` (tf2onnx's ``TimeDistributed(Dense)``).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..core.errors import EbrError
from ..core.graph import ModelGraph, Node
from ..core.ops import SAME_AXES_OPS, VALUE_FREE_OPS
from ..core.slicing import slice_index

_ALL = None  # frames: a tensor that depends on more than one frame


class UntracedLayer(EbrError):
    """A layer whose frames cannot be told: it mixes them, or they reach it through ops that are not followed."""


@dataclass(frozen=True)
class FrameLayout:
    """How a layer's activations are laid out over frames.

    ``tensors``: one tensor per frame in time order (``frame_axis`` None), or one tensor whose ``frame_axis`` holds
    the frames (``stacked``: N·T entries, batch-major; else the time axis, T entries). ``channel_axis``: the axis of
    each tensor that holds channels (sum it for a spatial map), or None if none can be told. ``batch_axis``: the axis
    of each tensor that holds the clip's batch, None where it is merged with the frames (stacked) or absent.
    """

    tensors: list[str]
    frame_axis: int | None
    channel_axis: int | None
    stacked: bool = False
    batch_axis: int | None = None

    def maps(self, signal: np.ndarray, clips: int = 1) -> np.ndarray:
        """The per-frame maps of the ``signal`` at this layer (for copies: theirs stacked in time order on a new
        leading axis): frames first, the channel axis summed. The batch axis holds one clip (dropped) or ``clips``
        clips, whose frames are then laid out clip by clip (entry ``n·T + t``, as a reshape of (N, T) stacks them)."""
        new = int(self.frame_axis is None)  # the copies' axes move up by the stacking axis
        frame = 0 if self.frame_axis is None else self.frame_axis
        batch = None if self.batch_axis is None else self.batch_axis + new
        channel = None if self.channel_axis is None else self.channel_axis + new
        if frame in (batch, channel):
            raise EbrError(f"the frames axis {frame} of a layer is also its channel or batch axis")
        lead = [frame] if batch is None else [batch, frame]
        moved = np.moveaxis(signal, lead, list(range(len(lead))))
        if channel is not None:
            rest = [a for a in range(signal.ndim) if a not in lead]
            moved = moved.sum(axis=len(lead) + rest.index(channel))
        if batch is None:
            return moved
        return moved.reshape(-1, *moved.shape[2:]) if clips > 1 else moved.sum(axis=0)


def frame_layout(graph: ModelGraph, input_name: str, layer: str | None = None, *, time_axis: int = 1,
                 input_shape: Sequence[int] | None = None, batch_axis: int | None = 0) -> FrameLayout:
    """The frame layout of ``layer`` (a tensor or node name of any one copy; default: the input) of ``input_name``,
    whose axis ``time_axis`` is time and ``batch_axis`` (None: none) the clip's batch. ``input_shape`` fixes the
    input's free dims (default: 2 each)."""
    if input_name not in graph.inputs:
        raise EbrError(f"{input_name!r} is not a model input; inputs: {', '.join(graph.inputs)}")
    tensor = input_name if layer in (None, input_name) else graph.resolve_tensor(layer, "layer")
    declared = graph.shapes.get(input_name) or ()
    shape = tuple(input_shape) if input_shape is not None else tuple(
        d if isinstance(d, int) and d > 0 else 2 for d in declared)
    if len(shape) < 2 or not -len(shape) <= time_axis < len(shape):
        raise EbrError(f"input {input_name!r} of shape {shape} has no time axis {time_axis}")
    if batch_axis is not None and (not -len(shape) <= batch_axis < len(shape) or
                                   batch_axis % len(shape) == time_axis % len(shape)):
        raise EbrError(f"input {input_name!r} of shape {shape} has no batch axis {batch_axis} besides its time axis "
                       f"{time_axis}")
    tracer = _Tracer(graph, input_name, time_axis % len(shape), graph.concrete_shapes({input_name: shape}))
    if batch_axis is not None:
        tracer.batch_axis[input_name] = batch_axis % len(shape)
    tracer.run()
    if tensor not in tracer.frames:
        raise EbrError(f"layer {tensor!r} does not depend on the input {input_name!r}")
    channel, batch = tracer.channel_axis(tensor), tracer.batch_axis.get(tensor)
    if tensor in tracer.time_axis:
        return FrameLayout([tensor], tracer.time_axis[tensor], channel, batch_axis=batch)
    if tensor in tracer.stacked_axis:
        return FrameLayout([tensor], tracer.stacked_axis[tensor], channel, stacked=True)
    if _single(tracer.frames[tensor]) is None:
        raise UntracedLayer(
            f"layer {tensor!r} mixes frames of {input_name!r} (it is past the recurrence, or the frames reach it in a "
            "way ebr_onnx does not trace); supported: per-frame CNN layers, stacked on the batch axis or one copy "
            "per frame"
        )
    return FrameLayout(tracer.copies(tensor), None, channel, batch_axis=batch)


def input_time_axis(graph: ModelGraph, input_name: str, frames: str, input_shape: Sequence[int]) -> int | None:
    """The axis of the input that ``frames`` (the input, or its reshape whose leading axis is the frames, T or N·T)
    holds on its leading axis; None if the reshapes between them cannot be followed."""
    shapes = graph.concrete_shapes({input_name: tuple(input_shape)})
    tracer = _Tracer(graph, input_name, 0, shapes)
    chain = graph.nodes_between([input_name], [frames])
    for axis in range(len(input_shape)):
        src, mapped = input_name, axis
        for node in chain:
            if node.op_type in VALUE_FREE_OPS or node.inputs[0] != src:
                continue  # e.g. a Shape feeding a Reshape its target shape
            mapped, _ = tracer.map_axis(node, src, node.outputs[0], mapped)
            if mapped is None:
                break
            src = node.outputs[0]
        if src == frames and mapped == 0:
            return axis
    return None


def spatial_time_axis(graph: ModelGraph, shapes: dict[str, tuple[int, ...]], boundary_name: str,
                      recurrent: Sequence[Node], length: int | None, frames: int, input_name: str) -> int | None:
    """Where the recurrence runs along a spatial axis of one image (a CRNN: the columns of a text line), the index
    of that axis among the boundary's spatial axes (0: the first, e.g. height; 1: the next, e.g. width); None when
    it runs over the frames. The boundary's axis is traced forward to the first recurrence's time axis; its
    spatial axes are those that are neither the leading (image) axis nor the channel axis."""
    boundary = shapes.get(boundary_name, ())
    if length is None or length == frames or frames != 1 or len(boundary) < 3:
        return None
    channel = frame_layout(graph, input_name, boundary_name, time_axis=0, input_shape=shapes[input_name],
                           batch_axis=None).channel_axis
    spatial = [a for a in range(1, len(boundary)) if a != channel]
    if recurrent:
        first = recurrent[0]
        wanted = 1 if first.attr("layout", 0) else 0
        found = [a for a in spatial if trace_time_axis(graph, shapes, boundary_name, a, first.inputs[0]) == wanted]
    else:
        found = [a for a in spatial if boundary[a] == length]
    if len(found) != 1:
        raise EbrError(f"the recurrence has {length} steps over one input, but no single spatial axis of the boundary "
                       f"{boundary_name!r} {boundary} holds them; name the boundary with boundary=…")
    return spatial.index(found[0])


def band_sums(maps: np.ndarray, spatial: int, bands: int) -> np.ndarray:
    """The evidence per band of a map along its ``spatial`` axis: the axis cut into ``bands`` contiguous bands of
    (nearly) equal width, the map summed over each (how a CRNN's steps cover an image's columns)."""
    size = maps.shape[spatial]
    edges = np.linspace(0, size, bands + 1).round().astype(int)
    moved = np.moveaxis(maps, spatial, 0).reshape(size, -1).sum(axis=1)
    return np.array([moved[a:b].sum() for a, b in zip(edges[:-1], edges[1:])], dtype=maps.dtype)


def time_axes(graph: ModelGraph, shapes: dict[str, tuple[int, ...]], start: str, axis: int) -> dict[str, int]:
    """Where axis ``axis`` (time) of ``start`` is in every tensor that keeps it whole, followed forward through the
    ops :func:`trace_time_axis` follows (a tensor that reduces or contracts the axis is not in the table)."""
    tracer = _Tracer(graph, start, axis, shapes)
    tracer.run()
    return dict(tracer.time_axis)


#: What :func:`trace_time_axis` returns when the time axis cannot be followed to the end tensor.
UNTRACED = object()


def trace_time_axis(graph: ModelGraph, shapes: dict[str, tuple[int, ...]], start: str, axis: int, end: str
                    ) -> int | None | object:
    """The axis of ``end`` that axis ``axis`` (time) of ``start`` becomes, followed through layout ops, linear layers
    and single steps picked, computed apart and stacked again in order (``Unsqueeze`` + ``Concat``); None when
    ``end`` is computed from one step only (a classifier on the last step); :data:`UNTRACED` otherwise."""
    rank = len(shapes.get(start, ()))
    if not -rank <= axis < rank or not rank:
        return UNTRACED
    tracer = _Tracer(graph, start, axis % rank, shapes)
    tracer.run()
    if end in tracer.time_axis or end in tracer.stacked_axis:
        return tracer.time_axis.get(end, tracer.stacked_axis.get(end))
    return None if end in tracer.frames and _single(tracer.frames[end]) is not None else UNTRACED


class _Tracer:
    """Follows the input's time axis forward: which frames each tensor depends on, and where time is an axis."""

    def __init__(self, graph: ModelGraph, input_name: str, time_axis: int, shapes: dict[str, tuple[int, ...]]):
        self.graph = graph
        self.shapes = shapes
        self.steps = shapes[input_name][time_axis]
        self.frames: dict[str, frozenset[int] | None] = {input_name: _ALL}
        self.time_axis: dict[str, int] = {input_name: time_axis}
        self.stacked_axis: dict[str, int] = {}
        self.batch_axis: dict[str, int] = {}
        self.roots: set[str] = set()
        self._signatures: dict[str, tuple] = {}

    # -- forward pass ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.topological:
            signal = [t for t in node.inputs if t in self.frames]
            if not signal or node.op_type in VALUE_FREE_OPS:
                continue
            picked = self.picked_frames(node, signal[0])
            for i, out in enumerate(o for o in node.outputs if o):
                self.follow_batch(node, signal[0], out)
                if picked is not None:
                    self.frames[out] = frozenset({picked[i]})
                    self.roots.add(out)
                    continue
                deps = [self.frames[t] for t in signal]
                self.frames[out] = _ALL if any(d is _ALL for d in deps) else frozenset().union(*deps)
                self.follow_axes(node, signal, out)

    def picked_frames(self, node: Node, source: str) -> list[int] | None:
        """The frame each output of ``node`` selects, if it picks single frames off the time axis of ``source``."""
        axis = self.time_axis.get(source)
        if axis is None or source != node.inputs[0]:
            return None
        rank = self.rank(source)
        if not rank:
            return None
        op = node.op_type
        if op == "Gather" and node.attr("axis", 0) % rank == axis:
            index = self.const(node.inputs[1])
            return [int(index) % self.steps] if index is not None and index.ndim == 0 else None
        if op == "Slice":
            starts, ends, axes, steps = (self.const(t) if t else None for t in (list(node.inputs[1:5]) + [""] * 4)[:4])
            axes = np.arange(len(starts)) if axes is None and starts is not None else axes
            if starts is None or ends is None or axes is None or (steps is not None and np.any(steps != 1)):
                return None
            axes = [int(a) % rank for a in np.ravel(axes)]
            if axis not in axes:
                return None
            shape = [1] * rank
            shape[axis] = self.steps
            index = slice_index(shape, [int(v) for v in np.ravel(starts)], [int(v) for v in np.ravel(ends)], axes)
            picked = range(*index[axis].indices(self.steps))
            return list(picked) if len(picked) == 1 else None
        if op == "Split" and node.attr("axis", 0) % rank == axis:
            sizes = [self.shapes.get(o, (None,) * rank)[axis] for o in node.outputs]
            return list(range(self.steps)) if all(s == 1 for s in sizes) and len(sizes) == self.steps else None
        return None

    def follow_axes(self, node: Node, signal: list[str], out: str) -> None:
        """Carry the time axis (or the stacked N·T axis) of the first signal input to ``out``."""
        if node.op_type == "Concat":
            axis = self.restacked_axis(node, out)
            if axis is not None:
                self.time_axis[out] = axis
                return
        src = signal[0]
        for table in (self.time_axis, self.stacked_axis):
            if src in table:
                mapped, merged = self.map_axis(node, src, out, table[src])
                if mapped is not None and not merged:
                    table[out] = mapped
                elif mapped is not None and table is self.time_axis and merged == "previous":
                    self.stacked_axis[out] = mapped

    def follow_batch(self, node: Node, src: str, out: str) -> None:
        """Carry the clip's batch axis of ``src`` to ``out`` (unless a reshape merges it with another axis)."""
        if src in self.batch_axis:
            mapped, merged = self.map_axis(node, src, out, self.batch_axis[src])
            if mapped is not None and not merged:
                self.batch_axis[out] = mapped

    def restacked_axis(self, node: Node, out: str) -> int | None:
        """The axis of a ``Concat`` that stacks all frames in order (each input one frame, of size 1 on that axis)."""
        rank = len(self.shapes.get(out, ()))
        if not rank or len(node.inputs) != self.steps:
            return None
        axis = node.attr("axis", 0) % rank
        frames = [self.frames.get(t) for t in node.inputs]
        in_order = all(_single(f) == t for t, f in enumerate(frames))
        unit = all(self.shapes.get(t, (0,) * rank)[axis] == 1 for t in node.inputs)
        return axis if in_order and unit else None

    # -- one axis through one node --------------------------------------------------------------------------------
    def map_axis(self, node: Node, src: str, out: str, axis: int) -> tuple[int | None, str | None]:
        """Where ``axis`` of ``src`` is in ``out``: (axis, None) intact, (axis, "previous") merged with the axis
        before it (Reshape), (None, None) gone."""
        op = node.op_type
        in_rank, out_rank = self.rank(src), self.rank(out)
        if not in_rank or not out_rank:
            return None, None
        if op in SAME_AXES_OPS:
            if op == "Concat" and node.attr("axis", 0) % in_rank == axis:
                return None, None
            return (axis + out_rank - in_rank, None) if out_rank >= in_rank else (None, None)
        if op == "Transpose":
            perm = list(node.attr("perm") or range(in_rank)[::-1])
            return perm.index(axis), None
        if op in ("Squeeze", "Unsqueeze"):
            axes = self.axes(node)
            if axes is None:
                return None, None
            if op == "Squeeze":
                axes = [a % in_rank for a in axes]
                return (None, None) if axis in axes else (axis - sum(a < axis for a in axes), None)
            kept = [i for i in range(out_rank) if i not in {a % out_rank for a in axes}]
            return kept[axis], None
        if op == "Gather":
            g = node.attr("axis", 0) % in_rank
            k = self.rank(node.inputs[1])
            return (None, None) if axis == g else ((axis + k - 1, None) if axis > g else (axis, None))
        if op in ("MatMul", "Gemm"):
            return self.linear_axis(node, src, axis, in_rank, out_rank), None
        if op in ("Reshape", "Flatten"):
            return _reshape_axis(self.shapes.get(src), self.shapes.get(out), axis)
        return None, None

    @staticmethod
    def linear_axis(node: Node, src: str, axis: int, in_rank: int, out_rank: int) -> int | None:
        """Where ``axis`` of a MatMul's or Gemm's signal input ``src`` is in its output: the batch axes and the rows
        of the first operand stay; the contracted axis and the second operand's axes (but its batch ones) go."""
        first = src == node.inputs[0]
        if node.op_type == "Gemm":
            return 0 if first and axis == 0 and not node.attr("transA", 0) else None
        kept = in_rank - 1 if first else in_rank - 2  # MatMul: A's rows are kept, B's batch axes only
        return axis + out_rank - in_rank if axis < kept else None

    def axes(self, node: Node) -> list[int] | None:
        """A Squeeze's or Unsqueeze's axes (attribute or constant input; a Squeeze without: the input's 1s)."""
        if node.attr("axes") is not None:
            return list(node.attr("axes"))
        if len(node.inputs) > 1 and node.inputs[1]:
            value = self.const(node.inputs[1])
            return None if value is None else [int(a) for a in np.ravel(value)]
        shape = self.shapes.get(node.inputs[0])
        return [i for i, d in enumerate(shape) if d == 1] if node.op_type == "Squeeze" and shape else None

    def rank(self, name: str) -> int:
        value = self.const(name)
        return value.ndim if value is not None else len(self.shapes.get(name, ()))

    def const(self, name: str) -> np.ndarray | None:
        return np.asarray(self.graph.constant(name)) if self.graph.is_constant(name) else None

    # -- copies of a layer ----------------------------------------------------------------------------------------
    def signature(self, tensor: str) -> tuple:
        """What computes ``tensor`` from its frame: op types, attributes and constants, back to the frame's root."""
        if tensor in self._signatures:
            return self._signatures[tensor]
        if tensor in self.roots:
            sig: tuple = ("frame",)
        elif tensor not in self.frames or _single(self.frames[tensor]) is None:
            sig = ("tensor", tensor)
        elif self.graph.is_constant(tensor):
            value = self.const(tensor)
            sig = ("const", value.dtype.str, value.shape, value.tobytes())
        else:
            node = self.graph.producer[tensor]
            attrs = tuple(sorted((k, repr(v)) for k, v in node.attrs.items()))
            parts = tuple(self.signature(t) if t in self.frames else self.input_signature(t) for t in node.inputs)
            sig = (node.op_type, node.outputs.index(tensor), attrs, parts)
        self._signatures[tensor] = sig
        return sig

    def input_signature(self, name: str) -> tuple:
        value = self.const(name) if name else None
        return ("tensor", name) if value is None else ("const", value.dtype.str, value.shape, value.tobytes())

    def copies(self, tensor: str) -> list[str]:
        """The tensors computed like ``tensor`` from each frame, in time order."""
        sig = self.signature(tensor)
        found: dict[int, list[str]] = {}
        for name, frames in self.frames.items():
            frame = _single(frames)
            if frame is not None and self.signature(name) == sig:
                found.setdefault(frame, []).append(name)
        if sorted(found) != list(range(self.steps)) or any(len(v) != 1 for v in found.values()):
            counts = {t: len(found.get(t, [])) for t in range(self.steps)}
            raise EbrError(
                f"layer {tensor!r} is computed from one frame, but its copies for the other frames cannot be told "
                f"apart (copies found per frame: {counts}); name a layer of a CNN that runs once per frame"
            )
        return [found[t][0] for t in range(self.steps)]

    # -- channels -------------------------------------------------------------------------------------------------
    def channel_axis(self, tensor: str) -> int | None:
        """The axis of ``tensor`` that reaches the nearest Conv's channel axis (forward; else back from a Conv)."""
        path = self.path(tensor, forward=True)
        rank = len(self.shapes.get(tensor, ()))
        if path is not None:
            for axis in range(rank):
                if self.carry(path, axis) == 1:
                    return axis
            return None
        path = self.path(tensor, forward=False)
        return None if path is None else self.carry(path, 1)

    def path(self, tensor: str, forward: bool) -> list[tuple[str, Node, str]] | None:
        """The shortest chain of (input, node, output) from ``tensor`` to a Conv's data input (forward) or from a
        Conv's output to ``tensor`` (backward), over tensors that depend on the clip."""
        graph = self.graph
        seen = {tensor}
        queue = deque([(tensor, [])])
        while queue:
            name, chain = queue.popleft()
            if forward:
                for node in graph.consumers.get(name, []):
                    if node.op_type == "Conv" and node.inputs[0] == name:
                        return chain
                    for out in node.outputs:
                        if out and out not in seen and out in self.frames:
                            seen.add(out)
                            queue.append((out, chain + [(name, node, out)]))
            else:
                node = graph.producer.get(name)
                if node is None:
                    continue
                if node.op_type == "Conv":
                    return chain
                for src in node.inputs:
                    if src in self.frames and src not in seen:
                        seen.add(src)
                        queue.append((src, [(src, node, name)] + chain))
        return None

    def carry(self, path: list[tuple[str, Node, str]], axis: int) -> int | None:
        for src, node, out in path:
            axis, merged = self.map_axis(node, src, out, axis)
            if axis is None or merged:
                return None
        return axis


def _single(frames: frozenset[int] | None) -> int | None:
    """The frame a tensor is computed from, if it is computed from exactly one."""
    return next(iter(frames)) if frames is not _ALL and len(frames) == 1 else None


def _reshape_axis(before: tuple | None, after: tuple | None, axis: int) -> tuple[int | None, str | None]:
    """Where ``axis`` goes through a reshape: intact, merged with the axis before it, or lost."""
    if not before or not after:
        return None, None
    start, end = int(np.prod(before[:axis])), int(np.prod(before[:axis + 1]))
    for b in range(len(after)):
        lo, hi = int(np.prod(after[:b])), int(np.prod(after[:b + 1]))
        if (lo, hi) == (start, end):
            return b, None
        if axis > 0 and (lo, hi) == (int(np.prod(before[:axis - 1])), end):
            return b, "previous"
    return None, None
