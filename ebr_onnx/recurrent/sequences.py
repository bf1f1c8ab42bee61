"""Several sequences in one call: which output axis holds them, which frames belong to each, and their priors.

An output ``(T, N, C)``, ``(N, T, C)`` … holds ``N`` sequences on its axis that is neither time nor classes. The
frames of sequence ``n`` are found by pushing index codes through the layout ops between the RNN→CNN boundary and the
recurrence: frame ``f`` of the boundary is filled with the value ``f``, and the recurrence's input then reads, at
batch index ``n`` and each step, the frame of sequence ``n`` at that step. The recurrent ops keep the sequences apart,
so one backward pass with every sequence's prior gives each sequence's signal on its own frames; Eqs. 5–7 then
normalise each sequence over its own frames.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..core.engine import Engine
from ..core.errors import EbrError
from ..core.request import TimeStep
from ..core.targets import Target
from .plan import Plan, SubModel
from .steps import top_signal


def sequence_axis(out: np.ndarray, time_axis: int | None) -> tuple[int | None, int]:
    """The output's axis of sequences (None: one sequence) and their number."""
    others = [a for a in range(out.ndim - 1) if a != time_axis and out.shape[a] > 1]
    if len(others) > 1:
        raise EbrError(f"the output of shape {out.shape} (time axis {time_axis}) holds sequences on more than one "
                       "axis; explain them one call at a time")
    return (others[0], out.shape[others[0]]) if others else (None, 1)


def sequence_frames(engine: Engine, p: Plan, boundary: Any, count: int, feeds: Mapping[str, np.ndarray]
                    ) -> list[np.ndarray]:
    """The boundary frames (indices on its leading axis) of each of ``count`` sequences, in time order (``feeds``:
    the model inputs, whose shapes the layout ops may read; ``boundary``: only its shape is read). The codes come
    back to the host (a sync on a GPU: they assign frames in Python)."""
    targets = _recurrence_inputs(p)
    if p.codes is None:
        p.codes = SubModel(engine.graph, [p.boundary], targets, engine.device, engine.threads, engine.arrays)
    code = np.arange(boundary.shape[0], dtype=np.float32).reshape(-1, *([1] * (boundary.ndim - 1)))
    got = p.codes.run({**feeds, p.boundary: np.ascontiguousarray(np.broadcast_to(code, boundary.shape))}, targets)
    frames: list[list[int]] = [[] for _ in range(count)]
    for name in targets:
        per = _per_sequence(np.asarray(got[name]), count)
        if per is None:
            raise EbrError(f"cannot tell which frames of the boundary {p.boundary!r} belong to which of the {count} "
                           f"sequences at the recurrence's input {name!r} {np.shape(got[name])} (it reaches the "
                           "recurrence through more than layout ops); explain one sequence per call")
        for n in range(count):
            frames[n].extend(per[n])
    return [np.array(list(dict.fromkeys(f)), dtype=np.int64) for f in frames]   # a CRNN's steps share one image


def _per_sequence(codes: np.ndarray, count: int) -> list[list[int]] | None:
    """The frame codes at each index of the first axis of ``count`` entries that keeps the sequences apart (no
    code at two indices), in row-major order; None when the codes are not whole frame numbers or no axis does."""
    if not np.array_equal(codes, np.round(codes)):
        return None
    for axis in (a for a in range(codes.ndim) if codes.shape[a] == count):
        per = [list(dict.fromkeys(int(v) for v in np.take(codes, n, axis=axis).ravel())) for n in range(count)]
        if len({v for seq in per for v in seq}) == sum(len(seq) for seq in per):
            return per
    return None


def _recurrence_inputs(p: Plan) -> list[str]:
    """The tensors the recurrence reads its sequences from: a fused op's X, or each unrolled step's x input."""
    if p.recurrent:
        return [p.recurrent[0].inputs[0]]
    chain = min(c.chain for c in p.cells)
    cells = sorted((c for c in p.cells if c.chain == chain), key=lambda c: c.step)
    return list(dict.fromkeys(c.x_inputs[0] for c in cells))


def sequence_priors(labels: Sequence[str] | None, out: np.ndarray, time_axis: int | None, seq_axis: int | None,
                    target: Target, prior: np.ndarray | None, time_step: TimeStep, logits: str, dtype: np.dtype
                    ) -> tuple[np.ndarray, list[int], list[int]]:
    """The prior of every sequence (Alg. 1, one :func:`~.steps.top_signal` each): a one-hot on the class axis at the
    chosen steps of each; ``target`` one per sequence or one for all, ``prior`` ``(N, classes)`` or one vector."""
    if seq_axis is None:
        top, k, steps = top_signal(labels, out, time_axis, target, prior, time_step, logits, dtype)
        return top, [k], steps
    count = out.shape[seq_axis]
    targets = list(target) if isinstance(target, (list, tuple)) else [target] * count
    priors = list(prior) if prior is not None and np.ndim(prior) == 2 else [prior] * count
    if len(targets) != count or len(priors) != count:
        raise EbrError(f"{len(targets)} targets and {len(priors)} priors given for {count} sequences")
    top = np.zeros(out.shape, dtype)
    classes: list[int] = []
    steps: list[int] = []
    for n in range(count):
        one = np.take(out, [n], axis=seq_axis)
        part, k, steps = top_signal(labels, one, time_axis, targets[n], priors[n], time_step, logits, dtype)
        index = [slice(None)] * out.ndim
        index[seq_axis] = slice(n, n + 1)
        top[tuple(index)] = part
        classes.append(k)
    return top, classes, steps
