"""3-D CNNs (C3D, I3D, R(2+1)D, X3D, SlowFast …): the clip input's layout, the time axis of each layer, and checks of
a clip against the model.

A 3-D CNN takes a clip as one 5-D input: (N, C, T, H, W), channels-last (N, T, H, W, C), or (N, T, C, H, W)
transposed in the graph. Its **channel axis** is the one the graph feeds to a Conv as channels (traced through layout
ops, :func:`ebr_onnx.recurrent.frames.frame_layout`); its **time axis** is the first axis after the batch that is not
the channel axis, and the two after it are height and width. A model is a 3-D CNN when a Conv or pooling window
with three spatial axes reads its input's values.

Each layer's positions sit over the input's frames and pixels by their receptive fields
(:mod:`ebr_onnx.core.receptive`): a layer (N, C, T', H', W') keeps time, its maps are (N, T', h, w), and
:meth:`~ebr_onnx.core.result.ExplainResult.frame_maps` puts them back on the input's T frames.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from ..core.errors import EbrError
from ..core.graph import ModelGraph, Node
from ..core.receptive import AxisField, FieldTrace, trace_fields
from ..recurrent.frames import frame_layout

#: The size given to free dimensions of a declared input shape when its layout is traced.
_FREE = 16


@dataclass(frozen=True)
class VolumeLayout:
    """Where a 3-D CNN's clip input holds its axes (batch on axis 0)."""

    input_name: str
    channel_axis: int
    time_axis: int
    pixel_axes: tuple[int, int]
    declared: tuple[int | str | None, ...]

    def describe(self) -> str:
        """The layout as a shape pattern, e.g. ``(N, C, T, H, W)``."""
        letters = ["N"] * 5
        letters[self.channel_axis], letters[self.time_axis] = "C", "T"
        letters[self.pixel_axes[0]], letters[self.pixel_axes[1]] = "H", "W"
        return "(" + ", ".join(letters) + ")"

    def arrange(self, frames: np.ndarray) -> np.ndarray:
        """Preprocessed frames ``(T, C, H, W)`` as one clip in this layout (a batch of 1)."""
        if np.ndim(frames) != 4:
            raise EbrError(f"frames must be (T, C, H, W) to make a clip, got shape {np.shape(frames)}")
        order = [0] * 5
        order[self.time_axis], order[self.channel_axis] = 1, 2
        order[self.pixel_axes[0]], order[self.pixel_axes[1]] = 3, 4
        return np.ascontiguousarray(np.transpose(np.asarray(frames)[None], order))

    def frames(self) -> int | None:
        """The clip length the input declares (None where free)."""
        t = self.declared[self.time_axis]
        return t if isinstance(t, int) and t > 0 else None


def is_volume_window(graph: ModelGraph, node: Node) -> bool:
    """Whether ``node`` is a Conv or pooling window with three spatial axes."""
    if node.op_type == "Conv":
        w = graph.shapes.get(node.inputs[1]) if len(node.inputs) > 1 else None
        return w is not None and len(w) == 5
    if node.op_type in ("MaxPool", "AveragePool", "LpPool"):
        return len(node.attr("kernel_shape", [])) == 3
    return False


def volume_layout(graph: ModelGraph, input_name: str) -> VolumeLayout | None:
    """The clip layout of a 3-D CNN's input; None when the model is not a 3-D CNN."""
    declared = graph.shapes.get(input_name)
    if not declared or len(declared) != 5:
        return None
    signal = graph.signal_tensors([input_name])
    if not any(is_volume_window(graph, n) for n in graph.nodes if n.inputs and n.inputs[0] in signal):
        return None
    shape = tuple(d if isinstance(d, int) and d > 0 else (1 if i == 0 else _FREE) for i, d in enumerate(declared))
    try:
        channel = frame_layout(graph, input_name, time_axis=0, input_shape=shape, batch_axis=None).channel_axis
    except EbrError:
        channel = None
    if channel in (None, 0):
        channel = 4 if declared[4] in (1, 3) and declared[1] not in (1, 3) else 1
    time, height, width = (a for a in range(1, 5) if a != channel)
    return VolumeLayout(input_name, channel, time, (height, width), tuple(declared))


def model_input(layout: VolumeLayout | None, frames: np.ndarray) -> np.ndarray:
    """Preprocessed frames ``(T, C, H, W)`` as the model takes them: a 3-D CNN's one clip in its ``layout``, or
    unchanged for a model that takes frames (``layout`` None)."""
    return frames if layout is None else layout.arrange(frames)


def volume_fields(graph: ModelGraph, layout: VolumeLayout, shape: Sequence[int]) -> FieldTrace:
    """The receptive fields over the time and pixel axes of a clip of ``shape``."""
    return trace_fields(graph, layout.input_name, shape, (layout.time_axis, *layout.pixel_axes))


def check_clip(graph: ModelGraph, layout: VolumeLayout, shape: Sequence[int]) -> FieldTrace:
    """The fields of a clip of ``shape``; a clear one-line :class:`EbrError` where it cannot run: an input that is
    not 5-D, or a clip too short for the model (shorter than a temporal receptive field, or time strides that leave
    a layer no frames)."""
    shape = tuple(int(s) for s in shape)
    name = layout.input_name
    if len(shape) != 5:
        example = "frames.transpose(1, 0, 2, 3)[None]" if layout.describe() == "(N, C, T, H, W)" else \
            "ebr_onnx.methods.volume.volume_layout(graph, input).arrange(frames)"
        raise EbrError(f"the model is a 3-D CNN: its input {name!r} is a 5-D clip {layout.describe()}, got a "
                       f"{len(shape)}-D array of shape {shape}; make preprocessed frames (T, C, H, W) one clip, e.g. "
                       f"{example}")
    names = layout.describe()[1:-1].split(", ")
    for axis, (declared, given) in enumerate(zip(layout.declared, shape)):
        if isinstance(declared, int) and declared > 0 and declared != given:
            what = {"T": "frames", "C": "channels", "N": "clips"}.get(names[axis], "pixels")
            raise EbrError(f"the model's input {name!r} {layout.describe()} declares {names[axis]} = {declared} "
                           f"{what}, the clip has {given} (shape {shape})")
    trace = volume_fields(graph, layout, shape)
    short = trace.shortfall
    if short is not None:
        needed = shortest_clip(graph, layout, shape)
        at_least = f"clips need at least {needed} frames" if needed else "no clip length fits"
        if short.input_axis != layout.time_axis:
            raise EbrError(f"the frames of {shape} are too small for the model: {short.op_type} node {short.node!r} "
                           f"gets {short.length} positions along input axis {short.input_axis} for a window of "
                           f"{short.reach}")
        frames = shape[layout.time_axis]
        if short.stride == 1:
            raise EbrError(f"the clip has {frames} frames, fewer than the model's temporal receptive field: "
                           f"{short.op_type} node {short.node!r} spans {short.reach} frames in time and gets "
                           f"{short.length + short.pads} (padding included): {at_least}")
        raise EbrError(f"the time strides before {short.op_type} node {short.node!r} (x{short.stride} in all) leave it "
                       f"{short.length} of the clip's {frames} frames, fewer than its time window of {short.reach} "
                       f"(T' = 0): {at_least}")
    return trace


def shortest_clip(graph: ModelGraph, layout: VolumeLayout, shape: Sequence[int], limit: int = 1 << 14
                  ) -> int | None:
    """The fewest frames a clip of this ``shape`` (otherwise) needs so that every layer keeps at least one (lengths
    grow with the clip, so a bisection finds it); None if not even ``limit`` frames do."""

    def fits(frames: int) -> bool:
        size = list(shape)
        size[layout.time_axis] = frames
        return volume_fields(graph, layout, size).shortfall is None

    if not fits(limit):
        return None
    low, high = 1, limit
    while low < high:
        mid = (low + high) // 2
        if fits(mid):
            high = mid
        else:
            low = mid + 1
    return low


def map_fields(trace: FieldTrace, layout: VolumeLayout, layer: str, channel_axis: int, signal_shape: Sequence[int]
               ) -> tuple[list[int], tuple[AxisField, AxisField, AxisField]] | None:
    """Where a 5-D layer's maps (its signal summed over ``channel_axis``) hold the input's time, height and width:
    (the order that moves them to axes 1, 2, 3 after the batch, their fields with the layer's lengths); None where the
    layer does not keep all three."""
    fields = trace.fields.get(layer, {})
    if len(signal_shape) != 5:
        return None
    kept = [a for a in range(5) if a != channel_axis]
    found = []
    for axis in (layout.time_axis, *layout.pixel_axes):
        at = [a for a, f in fields.items() if f.input_axis == axis and a in kept[1:]]
        if len(at) != 1:
            return None
        found.append(at[0])
    order = [0] + [kept.index(a) for a in found]
    sized = tuple(replace(fields[a], length=int(signal_shape[a])) for a in found)
    return order, sized  # type: ignore[return-value]
