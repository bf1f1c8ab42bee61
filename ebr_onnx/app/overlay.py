"""Pictures of results: saliency overlays on the original frames and the temporal evidence plot.

Unlike the release's display (spec §1.9), which stretched the map over the whole 240×320 frame although the network
saw only the 224×224 centre crop, :func:`overlay` draws the map over the crop region only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..core.errors import EbrError
from .preprocess import CropBox


def overlay(
    frame: np.ndarray,
    saliency_map: np.ndarray,
    crop_box: CropBox,
    *,
    signed: bool = True,
    cmap: str | None = None,
    dim_outside: float = 0.5,
) -> np.ndarray:
    """Blend a saliency map onto the uint8 RGB frame it came from; returns uint8 ``(H, W, 3)``.

    The map is scaled to ``[-1, 1]`` by its largest magnitude (``signed``; colormap ``RdBu_r``: positive warm,
    negative cool) or, for non-negative display, clipped at 0 and scaled to ``[0, 1]`` by its maximum (``inferno``),
    resized bicubically (Pillow) to the crop region and pasted there; the pixel weight is ``|m|^0.8`` as in the
    release's ``(1 − m^0.8)·img + m^0.8·colour``. Outside the crop, which the network never saw, the frame is
    multiplied by ``dim_outside``. An all-zero map leaves the crop region unchanged.
    """
    frame = np.asarray(frame)
    m = np.asarray(saliency_map, dtype=np.float64)
    if frame.ndim != 3 or frame.shape[2] != 3 or frame.dtype != np.uint8:
        raise EbrError(f"frame must be uint8 (H, W, 3), got {frame.dtype} {frame.shape}")
    if m.ndim != 2 or not np.all(np.isfinite(m)):
        raise EbrError(f"saliency map must be a finite (h, w) array, got shape {m.shape}")
    if tuple(frame.shape[:2]) != tuple(crop_box.frame_size):
        raise EbrError(f"crop box is for a {crop_box.frame_size} frame, this frame is {frame.shape[:2]}")
    low = -1.0 if signed else 0.0
    m = m if signed else np.maximum(m, 0.0)
    peak = np.abs(m).max()
    m = m / peak if peak > 0 else np.zeros_like(m)
    x0, y0, x1, y1 = crop_box.pixels()
    resized = Image.fromarray(m.astype(np.float32)).resize((x1 - x0, y1 - y0), Image.BICUBIC)
    m = np.clip(np.asarray(resized, dtype=np.float64), low, 1.0)
    colormap = matplotlib.colormaps[cmap or ("RdBu_r" if signed else "inferno")]
    colour = colormap((m - low) / (1.0 - low))[..., :3]
    weight = np.abs(m)[..., None] ** 0.8
    image = frame / 255.0
    out = image * dim_outside
    out[y0:y1, x0:x1] = (1.0 - weight) * image[y0:y1, x0:x1] + weight * colour
    return np.round(out * 255.0).astype(np.uint8)


def evidence_curve_plot(
    path: str | Path,
    curve: np.ndarray,
    probs: np.ndarray | None = None,
    segment: Sequence[int] | None = None,
    truth: Sequence[int] | None = None,
    fps: float | None = None,
) -> None:
    """Save a PNG of the temporal evidence curve S_t (per-frame map sums, §4.1) with the localized ``segment``
    shaded, the ground-truth ``truth`` segment hatched, and the class probability per frame on a second axis.
    Segments are inclusive frame indices; the x axis is in seconds when ``fps`` is given, else in frames."""
    curve = np.asarray(curve, dtype=np.float64)
    unit = 1.0 / fps if fps else 1.0
    t = np.arange(len(curve)) * unit
    fig = Figure(figsize=(8, 3.5), dpi=100)
    ax = fig.add_subplot()
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    ax.plot(t, curve, color="tab:red", marker=".", label="evidence (map sum)")
    if segment is not None:
        ax.axvspan((segment[0] - 0.5) * unit, (segment[1] + 0.5) * unit, color="tab:orange", alpha=0.25,
                   label="localized")
    if truth is not None:
        ax.axvspan((truth[0] - 0.5) * unit, (truth[1] + 0.5) * unit, fill=False, hatch="//", edgecolor="tab:green",
                   label="ground truth")
    ax.set_xlabel("time (s)" if fps else "frame")
    ax.set_ylabel("evidence")
    handles, labels = ax.get_legend_handles_labels()
    if probs is not None:
        ax2 = ax.twinx()
        ax2.plot(t, np.asarray(probs, dtype=np.float64), color="tab:blue", linestyle="--", label="probability")
        ax2.set_ylim(0.0, 1.0)
        ax2.set_ylabel("class probability")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, fontsize="small", frameon=False)
    fig.tight_layout()
    fig.savefig(Path(path), format="png")
