"""Encoders that pool the frames before the recurrence (the mean-pool video captioner of Venugopalan et al. 2015,
paper §4.2): where the RNN→CNN boundary is when the recurrent part reads one vector for the whole clip.

The per-frame CNN's output keeps the frames on an axis; a *pooling* node reduces that axis — a ``Reduce*`` whose axes
include it (mean, max, sum pooling), or a ``MatMul``/``Gemm`` that contracts it (attention pooling whose weights are
constants, or computed apart from the frames). The frames axis is traced forward from the frames tensor
(:func:`.frames.time_axes`) to the first such node on the way to the recurrence; its per-frame input (traced down
through layout ops, frames leading) is the boundary where Eqs. 5–7 normalise over time and space. The signal reaches
it through the pooling's own rule: Eq. 8 through ``ReduceMean``/``ReduceSum`` distributes it among the frames in
proportion to their contributions ``x_t / Σ_t x_t``, ``ReduceMax`` routes it to the winning frame, a constant
weighting is Eq. 8 with the weights as W.
"""
from __future__ import annotations

import numpy as np

from ..core.graph import ModelGraph, Node
from ..core.ops import LAYOUT_OPS, MATRIX_OPS
from .frames import time_axes

#: Reductions: a pooling over the frames when their axes include the frames axis.
REDUCE_OPS = frozenset({"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2",
                        "ReduceLogSumExp", "ReduceSumSquare", "ReduceProd"})
#: Free input dimensions are set to this for the tracing (any size > 1 serves: only axes are followed).
_FREE_DIM = 3


def pooled_boundary(graph: ModelGraph, frames: str, bound: str) -> str:
    """The per-frame tensor a pooling over the frames reads, where one lies between the ``frames`` tensor (frames on
    its leading axis) and the candidate boundary ``bound`` (the recurrence's input traced down); else ``bound``."""
    if frames == bound:
        return bound
    shapes = graph.concrete_shapes({name: tuple(d if isinstance(d, int) and d > 0 else _FREE_DIM
                                                for d in (graph.shapes.get(name) or ()))
                                    for name in graph.inputs})
    if frames not in shapes:
        return bound
    axes = time_axes(graph, shapes, frames, 0)
    for node in graph.nodes_between([frames], [bound]):
        src = next((t for t in node.inputs if t in axes), None)
        if src is None or any(o in axes for o in node.outputs if o) or not _pools(graph, node, src, axes[src],
                                                                                  shapes):
            continue
        features = graph.trace_down(src, LAYOUT_OPS)
        if axes.get(features) == 0:
            return features
    return bound


def _pools(graph: ModelGraph, node: Node, src: str, axis: int, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether ``node`` reduces or contracts axis ``axis`` of its input ``src``."""
    if node.op_type in MATRIX_OPS:
        return True  # the tracing keeps a MatMul's/Gemm's rows: an axis it loses is contracted
    if node.op_type not in REDUCE_OPS or src != node.inputs[0]:
        return False
    rank = len(shapes.get(src, ()))
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        if not graph.is_constant(node.inputs[1]):
            return False
        axes = np.ravel(graph.constant(node.inputs[1])).tolist()
    if not axes:
        return not node.attr("noop_with_empty_axes", 0)
    return rank > 0 and axis in {int(a) % rank for a in axes}
