"""Pictures of results: saliency overlays on the original frames, a clip's contact sheet and the evidence plot.

Unlike the release's display (spec §1.9), which stretched the map over the whole 240×320 frame although the network
saw only the 224×224 centre crop, :func:`overlay` draws the map over the crop region only.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from ..core.errors import EbrError
from .colour import ColourScale, label_font
from .preprocess import CropBox

#: Overlays of smaller frames are upscaled so that their short side has at least this many pixels.
MIN_SIDE = 256


def display_size(frame_size: tuple[int, int], min_side: int = MIN_SIDE) -> tuple[int, int]:
    """``(H, W)`` of the pictures of a ``frame_size`` frame: upscaled (aspect kept) to a short side of ``min_side``
    when it is smaller, else unchanged."""
    h, w = frame_size
    factor = max(1.0, min_side / min(h, w))
    return round(h * factor), round(w * factor)


def overlays(
    frames: np.ndarray,
    maps: np.ndarray,
    crop_box: CropBox,
    scale: ColourScale,
    *,
    dim_outside: float = 0.5,
    min_side: int = MIN_SIDE,
) -> np.ndarray:
    """Blend saliency maps onto the uint8 RGB frames they came from; returns uint8 ``(T, H', W', 3)`` at
    :func:`display_size`.

    Each map becomes ``u = clip(m / limit)`` on the video's colour ``scale``, is resized bicubically (Pillow) to the
    crop region and blended there with the pixel weight ``|u|^0.8``, as the release's ``(1 − m^0.8)·img +
    m^0.8·colour``. Outside the crop, which the network never saw, the frame is multiplied by ``dim_outside``. A zero
    map leaves the crop region unchanged.
    """
    frames = np.asarray(frames)
    maps = np.asarray(maps)
    if frames.ndim != 4 or frames.shape[3] != 3 or frames.dtype != np.uint8:
        raise EbrError(f"frames must be uint8 (T, H, W, 3), got {frames.dtype} {frames.shape}")
    if maps.ndim != 3 or len(maps) != len(frames) or not np.all(np.isfinite(maps)):
        raise EbrError(f"saliency maps must be finite (T, h, w) with one per frame, got shape {maps.shape} for "
                       f"{len(frames)} frames")
    if tuple(frames.shape[1:3]) != tuple(crop_box.frame_size):
        raise EbrError(f"crop box is for a {crop_box.frame_size} frame, this frame is {frames.shape[1:3]}")
    H, W = display_size(frames.shape[1:3], min_side)
    sy, sx = H / crop_box.frame_size[0], W / crop_box.frame_size[1]
    x0, y0, x1, y1 = CropBox(crop_box.x0 * sx, crop_box.y0 * sy, crop_box.x1 * sx, crop_box.y1 * sy, (H, W)).pixels()
    # Pillow does the per-pixel work: the unit map resized ('F'), its colormap levels as a palette image, the
    # weight |u|^0.8 as a mask, and the blend is Image.composite.
    weights = np.rint(np.abs(scale.level_values()) ** 0.8 * 255).astype(np.uint8).tolist()
    weights += [0] * (256 - len(weights))
    palette = scale.palette()
    out = np.empty((len(frames), H, W, 3), np.uint8)
    for k, (frame, unit) in enumerate(zip(frames, scale.unit(maps))):
        image = Image.fromarray(frame)
        if (H, W) != frame.shape[:2]:
            image = image.resize((W, H), Image.BICUBIC)
        picture = image.point(lambda v: v * dim_outside)
        inside = image.crop((x0, y0, x1, y1))
        resized = np.asarray(Image.fromarray(unit).resize(inside.size, Image.BICUBIC))
        levels = Image.fromarray(scale.levels(resized))   # bicubic overshoot is clipped by the levels
        colour = levels.copy()
        colour.putpalette(palette)
        picture.paste(Image.composite(colour.convert("RGB"), inside, levels.point(weights)), (x0, y0))
        out[k] = np.asarray(picture)
    return out


def overlay(frame: np.ndarray, saliency_map: np.ndarray, crop_box: CropBox, *, signed: bool = True,
            scale: ColourScale | None = None, min_side: int = 0) -> np.ndarray:
    """One frame's overlay (see :func:`overlays`); without a ``scale``, the map is scaled by its own largest
    magnitude. ``min_side`` 0 keeps the frame's size."""
    m = np.asarray(saliency_map, dtype=np.float32)
    if scale is None:
        peak = float(np.abs(m if signed else np.maximum(m, 0)).max()) if np.all(np.isfinite(m)) else 0.0
        scale = ColourScale(peak if peak > 0 else 1.0, signed, "the map's own maximum")
    return overlays(np.asarray(frame)[None], m[None], crop_box, scale, min_side=min_side)[0]


def contact_sheet(pictures: np.ndarray, frame_indices: Sequence[int], evidence: Sequence[float],
                  scale: ColourScale, *, tile: int = 128, columns: int = 8) -> np.ndarray:
    """All frames of a clip in a grid (``columns`` per row, tiles ``tile`` px on the short side), each captioned
    with its frame number in the video and its evidence (the map's sum), with the colour bar of ``scale`` on the
    right; uint8 RGB."""
    pictures = np.asarray(pictures)
    count, h, w = pictures.shape[:3]
    factor = tile / min(h, w)
    th, tw = max(1, round(h * factor)), max(1, round(w * factor))
    caption = 14
    columns = min(columns, count)
    rows = -(-count // columns)
    grid = Image.new("RGB", (columns * (tw + 4) + 4, rows * (th + caption + 4) + 4), "white")
    draw = ImageDraw.Draw(grid)
    font = label_font()
    for k in range(count):
        r, c = divmod(k, columns)
        x, y = 4 + c * (tw + 4), 4 + r * (th + caption + 4)
        grid.paste(Image.fromarray(pictures[k]).resize((tw, th), Image.BILINEAR), (x, y + caption))
        draw.text((x, y + 1), f"{int(frame_indices[k])}  {float(evidence[k]):+.3g}", fill="black", font=font)
    bar = scale.bar(min(grid.height - caption - 8, 4 * th))
    sheet = Image.new("RGB", (grid.width + bar.shape[1] + 8, grid.height), "white")
    sheet.paste(grid, (0, 0))
    sheet.paste(Image.fromarray(bar), (grid.width + 4, 4 + caption))
    return np.asarray(sheet)


#: Curve points beyond this many times the 90th percentile of ``|S|`` are drawn at the axis limit and marked.
CLIP_FACTOR = 1.5
_THUMBNAILS = 10


def outlier_range(curve: np.ndarray) -> tuple[float, np.ndarray]:
    """The evidence plot's y limit, ``CLIP_FACTOR`` × the 90th percentile of ``|S|``, and the points beyond it
    (none when the limit is 0)."""
    limit = CLIP_FACTOR * float(np.percentile(np.abs(curve), 90)) if curve.size else 0.0
    return limit, (np.abs(curve) > limit if limit > 0 else np.zeros(curve.shape, bool))


def evidence_plot(
    path: str | Path,
    frame_indices: Sequence[int],
    curve: np.ndarray,
    *,
    probs: np.ndarray | None = None,
    segment: Sequence[int] | None = None,
    truth: Sequence[int] | None = None,
    fps: float | None = None,
    title: str = "",
    maps: np.ndarray | None = None,
    scale: ColourScale | None = None,
) -> None:
    """Save a PNG of the temporal evidence curve S_t (per-frame map sums, §4.1) over the video's frame numbers
    (seconds on the top axis when ``fps`` is known), with the localized ``segment`` shaded and the ground-truth
    ``truth`` hatched (both inclusive, in video frame numbers) and the class probability per frame on its own axis
    (0–1). When a few points reach beyond ``CLIP_FACTOR`` × the 90th percentile of ``|S|``, the y range stops there
    and those points are drawn at its edge as open triangles labelled with their values, so one outlier does not
    flatten the rest. With ``maps`` and their colour ``scale``, a row of map thumbnails at evenly spaced frames and
    the colour bar sit below the curve."""
    curve = np.asarray(curve, dtype=np.float64)
    t = np.asarray(frame_indices, dtype=np.float64)
    with_maps = maps is not None and scale is not None and len(maps) > 0
    fig = Figure(figsize=(9, 5.2 if with_maps else 3.8), dpi=100)
    ax = fig.add_axes((0.08, 0.42 if with_maps else 0.14, 0.82, 0.44 if with_maps else 0.66))
    ax.axhline(0.0, color="0.6", linewidth=0.8)
    limit, outliers = outlier_range(curve)
    shown = np.clip(curve, -limit, limit) if outliers.any() else curve
    ax.plot(t, shown, color="tab:red", marker=".", label="evidence (map sum)")
    if outliers.any():
        ax.set_ylim(-1.1 * limit if (curve < 0).any() else None, 1.1 * limit)
        for k in np.flatnonzero(outliers):
            up = curve[k] > 0
            ax.plot(t[k], shown[k], marker="^" if up else "v", markerfacecolor="none", color="tab:red")
            ax.annotate(f"{curve[k]:.3g}", (t[k], shown[k]), textcoords="offset points", xytext=(4, -10 if up else 4),
                        fontsize="x-small", color="tab:red")
    if segment is not None:
        ax.axvspan(segment[0] - 0.5, segment[1] + 0.5, color="tab:orange", alpha=0.25, label="localized")
    if truth is not None:
        ax.axvspan(truth[0] - 0.5, truth[1] + 0.5, fill=False, hatch="//", edgecolor="tab:green",
                   label="ground truth")
    ax.set_xlabel("frame")
    ax.set_ylabel("evidence")
    ax.set_xlim(t[0] - 0.5, t[-1] + 0.5)
    if fps:
        top = ax.secondary_xaxis("top", functions=(lambda f: f / fps, lambda s: s * fps))
        top.set_xlabel("time (s)", fontsize="small")
    handles, labels = ax.get_legend_handles_labels()
    if probs is not None:
        ax2 = ax.twinx()
        ax2.plot(t, np.asarray(probs, dtype=np.float64), color="tab:blue", linestyle="--", label="class probability")
        ax2.set_ylim(0.0, 1.0)
        ax2.set_ylabel("class probability")
        more = ax2.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper left", fontsize="x-small", framealpha=0.8)
    fig.suptitle(title, fontsize="medium")
    if with_maps:
        _thumbnails(fig, np.asarray(maps), t, scale)
    fig.savefig(Path(path), format="png")


def _thumbnails(fig: Figure, maps: np.ndarray, t: np.ndarray, scale: ColourScale) -> None:
    """A strip of up to ``_THUMBNAILS`` maps at evenly spaced frames (one image, white gaps), on the video's colour
    scale, and its colour bar."""
    picks = np.unique(np.linspace(0, len(maps) - 1, min(_THUMBNAILS, len(maps))).round().astype(int))
    h, w = maps.shape[1:]
    gap = max(1, w // 8)
    strip = np.full((h, len(picks) * (w + gap) - gap), np.nan)
    for i, k in enumerate(picks):
        strip[:, i * (w + gap):i * (w + gap) + w] = maps[k]
    ax = fig.add_axes((0.08, 0.04, 0.82, 0.24))
    low = -scale.limit if scale.signed else 0.0
    image = ax.imshow(strip, cmap=scale.cmap, vmin=low, vmax=scale.limit, interpolation="nearest", aspect="equal")
    ax.set_xticks([i * (w + gap) + w / 2 - 0.5 for i in range(len(picks))], [str(int(t[k])) for k in picks],
                  fontsize="x-small")
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel("maps at these frames", fontsize="x-small")
    bar = fig.add_axes((0.92, 0.06, 0.015, 0.2))
    fig.colorbar(image, cax=bar)
    bar.tick_params(labelsize="x-small")
    bar.set_title("map", fontsize="x-small")
