"""Temporal and spatial localization from saliency maps (paper §4.1 and §5).

The evidence curve is the per-frame sum of the saliency maps, S ∈ R^T (§4.1). Segments are inclusive frame indices
``(start, end)`` into the curve.
"""
from __future__ import annotations

import numpy as np

from ..core.errors import EbrError
from .preprocess import CropBox


def _curve(values: np.ndarray, what: str) -> np.ndarray:
    curve = np.asarray(values, dtype=np.float64)
    if curve.ndim != 1 or curve.size == 0 or not np.all(np.isfinite(curve)):
        raise EbrError(f"{what} must be a non-empty finite 1-D array, got shape {curve.shape}")
    return curve


def temporal_segment(curve: np.ndarray, anchor: int | None = None) -> tuple[int, int]:
    """The paper's §4.1 localization: take the anchor frame with the highest sum (the first on ties, unless
    ``anchor`` is given) and extend greedily left and right while the neighbouring frame's sum is non-negative,
    stopping at the first negative-sum map. An anchor with a negative sum gives ``(anchor, anchor)``."""
    s = _curve(curve, "evidence curve")
    start = end = int(np.argmax(s)) if anchor is None else anchor
    if not 0 <= start < len(s):
        raise EbrError(f"anchor {anchor} is outside the curve's {len(s)} frames")
    while start > 0 and s[start - 1] >= 0:
        start -= 1
    while end < len(s) - 1 and s[end + 1] >= 0:
        end += 1
    return start, end


def best_window(curve: np.ndarray, length: int) -> tuple[int, int]:
    """The known-length variant (§5.2): the ``length``-frame window with the highest sum (the earliest on ties)."""
    s = _curve(curve, "evidence curve")
    start = int(np.argmax(_window_sums(s, length)))
    return start, start + length - 1


def _window_sums(s: np.ndarray, length: int) -> np.ndarray:
    if not 1 <= length <= len(s):
        raise EbrError(f"window length must be in [1, {len(s)}], got {length}")
    cumulative = np.concatenate(([0.0], np.cumsum(s)))
    return cumulative[length:] - cumulative[:-length]


def _thresholded(probs: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    p = _curve(probs, "probabilities")
    return p, np.where(p >= threshold, 1.0, -1.0)


def probability_segment(probs: np.ndarray, threshold: float = 0.5) -> tuple[int, int]:
    """The paper's probability baseline (§5.2), unknown length: the per-frame class probability is mapped to +1 if
    ``p >= threshold`` else -1, and :func:`temporal_segment` runs on that ±1 curve anchored at ``argmax(p)``."""
    p, signs = _thresholded(probs, threshold)
    return temporal_segment(signs, anchor=int(np.argmax(p)))


def probability_window(probs: np.ndarray, length: int, threshold: float = 0.5) -> tuple[int, int]:
    """The probability baseline with a known length: the window with the highest sum of the ±1 curve; among tied
    windows the one with the highest probability sum, then the earliest."""
    p, signs = _thresholded(probs, threshold)
    sign_sums, prob_sums = _window_sums(signs, length), _window_sums(p, length)
    tied = np.flatnonzero(sign_sums == sign_sums.max())
    start = int(tied[np.argmax(prob_sums[tied])])
    return start, start + length - 1


def spatial_peaks(maps: np.ndarray) -> np.ndarray:
    """The pointing-game point of each map (§5.1): ``(T, 2)`` int ``(y, x)`` of the maximum, the first in row-major
    order on ties."""
    maps = np.asarray(maps)
    if maps.ndim != 3 or maps.size == 0:
        raise EbrError(f"maps must be a non-empty (T, h, w) array, got shape {maps.shape}")
    flat = np.argmax(maps.reshape(len(maps), -1), axis=1)
    return np.stack(np.unravel_index(flat, maps.shape[1:]), axis=1).astype(np.int64)


def peaks_to_frame_coords(peaks: np.ndarray, map_shape: tuple[int, int], crop_box: CropBox) -> np.ndarray:
    """Map ``(y, x)`` map cells to ORIGINAL-frame coordinates: the centre of the cell, with the ``(h, w)`` map laid
    over ``crop_box`` (the region the network saw). Returns float ``(N, 2)`` ``(y, x)`` in pixel-edge coordinates."""
    peaks = np.asarray(peaks, dtype=np.float64).reshape(-1, 2)
    h, w = map_shape
    y = crop_box.y0 + (peaks[:, 0] + 0.5) * (crop_box.y1 - crop_box.y0) / h
    x = crop_box.x0 + (peaks[:, 1] + 0.5) * (crop_box.x1 - crop_box.x0) / w
    return np.stack([y, x], axis=1)
