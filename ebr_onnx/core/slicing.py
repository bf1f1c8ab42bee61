"""The one parser of ONNX ``Slice`` parameters (rules, the cell rule sets and the frame tracer read slices)."""
from __future__ import annotations

from typing import Sequence


def slice_index(shape: Sequence[int], starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None = None,
                steps: Sequence[int] | None = None) -> tuple[slice, ...]:
    """ONNX ``Slice`` parameters as one Python slice per axis of ``shape``, clamped as the operator defines
    (negative starts and ends count from the end; negative steps included; ``axes`` default to the leading axes,
    ``steps`` to 1)."""
    axes = list(axes) if axes else list(range(len(starts)))
    steps = list(steps) if steps else [1] * len(starts)
    index = [slice(None)] * len(shape)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        dim = shape[axis]
        start, end = start + dim if start < 0 else start, end + dim if end < 0 else end
        if step > 0:
            start, end = min(max(start, 0), dim), min(max(end, 0), dim)
        else:
            start, end = min(max(start, 0), dim - 1), min(max(end, -1), dim - 1)
        index[axis % len(shape)] = slice(start, None if end < 0 else end, step)
    return tuple(index)
