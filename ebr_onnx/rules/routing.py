"""Rules of the ops that only move values around: the signal is routed back to where each value came from,
identically in the EB and gradient modes (the release uses the gradient for these, ``shared/spec/caffe-reference.md``
§2.6: Concat/Slice split or assemble by position, Split sums, Reshape/Flatten share the signal). Index, shape and axis
inputs take no signal.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.numeric import unbroadcast
from ..core.ops import NON_FLOAT_OPS
from ..core.registry import rule
from ..core.slicing import slice_index


def _none_after_first(node: Node, signal: Any) -> list[Any]:
    return [signal] + [None] * (len(node.inputs) - 1)


def _inputs_after_first(node: Node) -> list[str]:
    return [t for t in node.inputs[1:] if t]


def _second_input(node: Node) -> list[str]:
    return [node.inputs[1]]


@rule(["Identity", "Dropout"])
def identity(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p`` (Dropout is the identity at inference; its mask output takes no signal)."""
    return _none_after_first(node, signals[0])


@rule(["Cast", "CastLike"])
def cast(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = p``: a float → float cast (the walk runs in one float dtype; a cast to an integer or boolean type ends
    the signal path, so no signal reaches it)."""
    if not ctx.graph.is_float(node.outputs[0]):
        raise EbrError(f"{node.op_type} node {node.name!r} casts a signal to a non-float type; ebr_onnx propagates "
                       "signal through float → float casts only")
    return _none_after_first(node, signals[0])


@rule(sorted(NON_FLOAT_OPS))
def non_float(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Comparisons, logic and arg-max ops output booleans or indices, which carry no signal: their inputs take none
    (registered so that a signal path may feed them, e.g. the computed condition of a ``Where``)."""
    return [None] * len(node.inputs)


@rule(["Reshape", "Flatten", "Squeeze", "Unsqueeze"])
def reshape_like(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Reshapes keep the element order: ``p'`` is ``p`` in the input's shape."""
    return _none_after_first(node, signals[0].reshape(ctx.shape(node.inputs[0])))


@rule("Transpose")
def transpose(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p' = transpose(p, perm⁻¹)`` (``perm`` defaults to reversing the axes)."""
    p = signals[0]
    perm = node.attr("perm") or list(range(p.ndim))[::-1]
    return [p.transpose(tuple(int(a) for a in np.argsort(perm)))]


@rule("Expand")
def expand(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'`` sums ``p`` over the axes that ``Expand`` added or stretched."""
    return [unbroadcast(ctx.xp, signals[0], ctx.shape(node.inputs[0])), None]


@rule("Concat")
def concat(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """Each input receives the part of ``p`` at its position along ``axis``."""
    p = signals[0]
    axis = int(node.attr("axis")) % p.ndim
    out, start = [], 0
    for name in node.inputs:
        size = ctx.shape(name)[axis]
        index = (slice(None),) * axis + (slice(start, start + size),)
        out.append(p[index] if ctx.is_signal(name) else None)
        start += size
    return out


@rule("Split")
def split(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'`` is the outputs' signals concatenated along ``axis`` (zeros for outputs that received none); the sizes
    are those of the outputs, so the ``split`` input or attribute and ``num_outputs`` need no reading."""
    xp = ctx.xp
    dtype = next(s.dtype for s in signals if s is not None)
    parts = [s if s is not None else xp.zeros(ctx.shape(o), dtype=dtype) for s, o in zip(signals, node.outputs)]
    axis = int(node.attr("axis", 0)) % parts[0].ndim
    return _none_after_first(node, xp.concatenate(parts, axis=axis))


def slices(ctx: RuleContext, node: Node, shape: tuple[int, ...]) -> tuple[slice, ...]:
    """A ``Slice`` node's parameters (inputs from opset 10, attributes before) as Python slices of ``shape``."""
    return slice_index(shape, ctx.ints(node, 1, "starts"), ctx.ints(node, 2, "ends"), ctx.ints(node, 3, "axes"),
                       ctx.ints(node, 4, "steps"))


@rule("Slice", needs=_inputs_after_first)
def slice_(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'`` is ``p`` scattered into zeros at the sliced positions."""
    shape = ctx.shape(node.inputs[0])
    out = ctx.xp.zeros(shape, dtype=signals[0].dtype)
    out[slices(ctx, node, shape)] = signals[0]
    return _none_after_first(node, out)


def checked_indices(ctx: RuleContext, node: Node, name: str, size: int) -> np.ndarray:
    """The indices of a Gather (or a take) on an axis of ``size``, on the host, checked to lie in ``[-size, size)``
    as ONNX requires (CuPy's ``take`` and integer indexing would wrap an index outside, where NumPy raises) and made
    non-negative (int64). A constant is read from the model; computed indices are copied from the device (a host
    sync: the check is a Python decision)."""
    indices = ctx.host(name).astype(np.int64)
    outside = (indices < -size) | (indices >= size)
    if outside.any():
        raise EbrError(f"{node.op_type} node {node.name!r} has indices outside [-{size}, {size}) on an axis of "
                       f"{size} (e.g. {int(indices[outside].ravel()[0])})")
    return np.where(indices < 0, indices + size, indices)


def repeat_passes(indices: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The positions of ``indices`` (flat) grouped so that no group repeats an index: group ``r`` holds the
    ``r``-th occurrence of every index that occurs more than ``r`` times, as (positions, their indices), positions
    ascending. Scattering the groups one after the other adds repeated indices in the order they occur, with no two
    writes to one place in a group: the same sums as NumPy's sequential ``add.at``, bit for bit, on any device."""
    flat = indices.ravel()
    order = np.argsort(flat, kind="stable")
    ranked = flat[order]
    starts = np.flatnonzero(np.r_[True, ranked[1:] != ranked[:-1]])
    rank = np.empty(flat.size, np.int64)
    rank[order] = np.arange(flat.size) - np.repeat(starts, np.diff(np.r_[starts, flat.size]))
    return [(positions, flat[positions]) for positions in
            (np.flatnonzero(rank == r) for r in range(int(rank.max(initial=-1)) + 1))]


@rule("Gather", needs=_second_input)
def gather(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'`` adds ``p`` back to the gathered positions of the data input; repeated indices add up, in the order
    they occur (one scatter per repetition, :func:`repeat_passes`: deterministic, identical on NumPy and CuPy, where
    a scatter-add of repeated indices adds in no fixed order)."""
    xp = ctx.xp
    p = signals[0]
    shape = ctx.shape(node.inputs[0])
    axis = int(node.attr("axis", 0)) % len(shape)
    indices = checked_indices(ctx, node, node.inputs[1], shape[axis]).ravel()
    k = p.ndim - len(shape) + 1  # the axes of ``p`` that the indices span
    moved = xp.moveaxis(p, list(range(axis, axis + k)), list(range(k))).reshape(
        (indices.size,) + shape[:axis] + shape[axis + 1:])
    out = xp.zeros((shape[axis],) + shape[:axis] + shape[axis + 1:], dtype=p.dtype)
    for positions, targets in repeat_passes(indices):
        whole = positions.size == indices.size
        out[xp.asarray(targets)] += moved if whole else moved[xp.asarray(positions)]
    return [xp.moveaxis(out, 0, axis), None]


@rule("ReverseSequence", needs=_second_input)
def reverse_sequence(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'`` is ``p`` reversed back: with the same ``sequence_lens`` the op is its own inverse."""
    p = signals[0]
    time, batch = int(node.attr("time_axis", 0)), int(node.attr("batch_axis", 1))
    out = p.copy()
    for b, length in enumerate(ctx.host(node.inputs[1]).ravel()):
        index = [slice(None)] * p.ndim
        index[batch] = b
        read, write = list(index), list(index)
        read[time], write[time] = slice(int(length) - 1, None, -1) if length else slice(0, 0), slice(0, int(length))
        out[tuple(write)] = p[tuple(read)]
    return [out, None]
