"""Procedurally generated action videos: one moving object whose class is its motion pattern, in clutter.

Every clip shows a textured background, a few static translucent distractor shapes, per-frame pixel noise and one
opaque *acting* object. The actor's shape, colour and size are drawn at random independently of the class, from the
same shapes and palette as the distractors, so a single frame does not tell the class: only the motion over time does.
The classes are :data:`CLASS_NAMES`. Every frame comes with the actor's ground-truth box for the spatial pointing game.

:func:`make_concatenated` builds the synthetic temporal-localization setups of the paper (Sec. 5.2): ``rand+GT``,
``GT+rand`` (two clips of different classes back to back) and ``rand+GT+rand`` (a GT clip inserted into a clip of
another class). Everything is deterministic from a seed through :func:`numpy.random.default_rng`.

Boxes are ``(x0, y0, x1, y1)`` in integer pixel indices, both ends inclusive: the box is the tight bounding box of the
actor's visible pixels (x is the column, y the row). The pointing game and dataset box files take pixel edges
(:func:`edge_boxes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CLASS_NAMES: list[str] = [
    "left_to_right",
    "right_to_left",
    "top_to_bottom",
    "bottom_to_top",
    "clockwise",
    "counterclockwise",
    "growing",
    "shrinking",
]
SETUPS = ("rand+GT", "GT+rand", "rand+GT+rand")
SHAPES = ("square", "disc", "diamond", "triangle")
PALETTE = np.array(
    [[230, 40, 40], [40, 200, 60], [50, 90, 240], [240, 220, 40], [220, 60, 220], [40, 220, 230], [250, 140, 30],
     [250, 250, 250], [20, 20, 20]],
    dtype=np.float32,
)

DISTRACTOR_ALPHA = 0.5  # distractors are half-transparent, the actor is opaque
Seed = int | np.random.Generator


@dataclass(frozen=True)
class Clip:
    """One action clip: ``frames`` (T, H, W, 3) uint8, its class id ``label``, actor ``boxes`` (T, 4) int."""

    frames: np.ndarray
    label: int
    boxes: np.ndarray


@dataclass(frozen=True)
class ConcatenatedClip:
    """Clips of different classes back to back, with the GT segment ``gt_segment = (start, end)``, ends inclusive.

    ``labels`` (T,) is each frame's class and ``boxes`` (T, 4) the box of each frame's own actor (the GT actor inside
    the segment, the rand clip's actor outside it).
    """

    frames: np.ndarray
    labels: np.ndarray
    gt_segment: tuple[int, int]
    gt_class: int
    boxes: np.ndarray


def edge_boxes(boxes: np.ndarray) -> np.ndarray:
    """Boxes of inclusive pixel indices (this module's, and :mod:`ebr_onnx.app.synthetic_captions`') in pixel-edge
    coordinates, the convention of :class:`~ebr_onnx.app.metrics.PointingGame` and of dataset box files: the pixels
    ``c0…c1`` span ``[c0, c1 + 1]``. Rows of -1 (the object not visible) stay -1."""
    boxes = np.asarray(boxes, dtype=np.float64)
    visible = (boxes >= 0).all(axis=-1, keepdims=True)
    return np.where(visible, boxes + np.array([0.0, 0.0, 1.0, 1.0]), boxes)


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _shape_mask(shape: str, cx: float, cy: float, r: float, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Boolean mask of a shape of half-size ``r`` centred at (cx, cy) on the pixel grid ``xs``/``ys``."""
    dx, dy = xs - cx, ys - cy
    if shape == "square":
        return (np.abs(dx) <= r) & (np.abs(dy) <= r)
    if shape == "disc":
        return dx * dx + dy * dy <= r * r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    return (np.abs(dy) <= r) & (np.abs(dx) <= (dy + r) / 2)  # triangle, apex up


def _background(rng: np.random.Generator, size: int, clutter: float) -> np.ndarray:
    """Smooth colour field, static fine texture and 2-5 static translucent distractors (scaled by ``clutter``)."""
    gray = rng.uniform(70, 180)
    coarse = gray + clutter * (rng.uniform(-55, 55, (5, 5, 1)) + rng.uniform(-35, 35, (5, 5, 3)))
    interp = 1 - np.abs(np.clip(np.linspace(0, 4, size)[:, None] - np.arange(5)[None, :], -1, 1))  # bilinear
    bg = (interp @ coarse.transpose(2, 0, 1) @ interp.T).transpose(1, 2, 0)
    bg += clutter * rng.normal(0, 8, (size, size, 1))
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    count = rng.integers(2, 6)
    for k in range(count):
        r = rng.uniform(3, 8)
        cx, cy = rng.uniform(r, size - 1 - r, 2)
        mask = _shape_mask(SHAPES[rng.integers(len(SHAPES))], cx, cy, r, xs, ys)
        colour = PALETTE[rng.integers(len(PALETTE))]
        if k < round(count * clutter):
            bg[mask] = (1 - DISTRACTOR_ALPHA) * bg[mask] + DISTRACTOR_ALPHA * colour
    return bg.astype(np.float32)


def _wrap(start: float, step: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Positions ``start + step * t`` wrapped into ``[lo, hi)`` (an object leaving one side re-enters the other)."""
    return lo + np.mod(start - lo + step * t, hi - lo)


def _trajectory(label: int, frames: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """Centre x, centre y and half-size of the actor at each frame for motion class ``label``."""
    t = np.arange(frames, dtype=np.float64)
    name = CLASS_NAMES[label]
    if name in ("growing", "shrinking"):
        lo, hi, rate = 2.5, 13.0, rng.uniform(0.4, 0.65)
        travel = rate * (frames - 1)  # the size wraps around only when the clip is too long to avoid it
        start = lo + rng.uniform(0, max(0.0, hi - lo - travel)) + (travel if name == "shrinking" else 0.0)
        r = _wrap(start, rate if name == "growing" else -rate, t, lo, hi)
        cx, cy = rng.uniform(14, size - 15, 2)
        return np.full(frames, cx), np.full(frames, cy), r
    r = np.full(frames, rng.uniform(4, 7.5))
    if name in ("clockwise", "counterclockwise"):
        radius = rng.uniform(8, 18)
        cx, cy = rng.uniform(radius + r[0] + 1, size - 2 - radius - r[0], 2)
        omega = rng.uniform(2 * np.pi / 20, 2 * np.pi / 10) * (1 if name == "clockwise" else -1)  # y points down
        angle = rng.uniform(0, 2 * np.pi) + omega * t
        return cx + radius * np.cos(angle), cy + radius * np.sin(angle), r
    step = rng.uniform(1.5, 3.0) * (1 if name in ("left_to_right", "top_to_bottom") else -1)
    along = _wrap(rng.uniform(0, size), step, t, 2 - r[0], size - 3 + r[0])  # always partly visible
    across = np.full(frames, rng.uniform(r[0] + 1, size - 2 - r[0]))
    return (along, across, r) if name in ("left_to_right", "right_to_left") else (across, along, r)


def make_clip(seed: Seed, label: int | None = None, frames: int = 16, size: int = 64, clutter: float = 1.0) -> Clip:
    """One clip of ``frames`` frames of ``size``×``size`` pixels; ``label=None`` draws the class at random.

    ``clutter`` in [0, 1] scales the background texture, the share of distractors drawn and the noise (1 = full;
    lower values serve as a training curriculum). The random draws do not depend on it.
    """
    rng = _rng(seed)
    if label is None:
        label = int(rng.integers(len(CLASS_NAMES)))
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in [0, {len(CLASS_NAMES)}), got {label}")
    bg = _background(rng, size, clutter)
    shape = SHAPES[rng.integers(len(SHAPES))]
    colour = PALETTE[rng.integers(len(PALETTE))]
    cxs, cys, rs = _trajectory(label, frames, size, rng)
    noise_sigma = clutter * rng.uniform(3, 10)
    video = bg + np.float32(noise_sigma) * rng.standard_normal((frames, size, size, 3), dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    boxes = np.empty((frames, 4), dtype=np.int64)
    for t in range(frames):
        mask = _shape_mask(shape, cxs[t], cys[t], rs[t], xs, ys)
        video[t][mask] = colour
        cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
        boxes[t] = cols[0], rows[0], cols[-1], rows[-1]
    return Clip(np.clip(video, 0, 255).astype(np.uint8), label, boxes)


def make_dataset(
    n: int, seed: Seed, frames: int = 16, size: int = 64, clutter: float = 1.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` clips with balanced classes in random order: frames (n, T, H, W, 3) uint8, labels (n,), boxes (n, T, 4)."""
    rng = _rng(seed)
    labels = rng.permutation(np.arange(n) % len(CLASS_NAMES))
    clips = [make_clip(rng, int(label), frames, size, clutter) for label in labels]
    return np.stack([c.frames for c in clips]), labels, np.stack([c.boxes for c in clips])


def make_concatenated(
    seed: Seed,
    setup: str = "rand+GT",
    frames: int = 16,
    gt_length: int | None = None,
    gt_start: int | None = None,
    gt_class: int | None = None,
    size: int = 64,
) -> ConcatenatedClip:
    """A ``frames``-long video holding a GT clip of ``gt_class`` and a rand clip of another class (paper Sec. 5.2).

    ``rand+GT`` / ``GT+rand``: the GT clip ends / starts the video; its length defaults to half the video.
    ``rand+GT+rand``: the GT clip is inserted into one rand clip at ``gt_start`` (random by default, leaving at least
    one rand frame on each side); its length defaults to a random length in ``[1, frames - 2]``.
    Unset classes and positions are drawn from the seed.
    """
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; supported: {', '.join(SETUPS)}")
    rng = _rng(seed)
    k = len(CLASS_NAMES)
    gt_class = int(rng.integers(k)) if gt_class is None else gt_class
    rand_class = int((gt_class + rng.integers(1, k)) % k)
    three = setup == "rand+GT+rand"
    if gt_length is None:
        gt_length = int(rng.integers(1, frames - 1)) if three else frames // 2
    if three:
        if gt_start is None:
            gt_start = int(rng.integers(1, frames - gt_length))
        if not (1 <= gt_length and 1 <= gt_start and gt_start + gt_length <= frames - 1):
            raise ValueError(f"rand+GT+rand needs rand frames on both sides; got {frames=}, {gt_length=}, {gt_start=}")
    else:
        if gt_start is not None:
            raise ValueError(f"gt_start is fixed by the setup {setup!r}; leave it unset")
        if not 1 <= gt_length <= frames - 1:
            raise ValueError(f"{setup} needs 1 <= gt_length <= frames - 1; got {frames=}, {gt_length=}")
        gt_start = frames - gt_length if setup == "rand+GT" else 0
    gt = make_clip(rng, gt_class, gt_length, size)
    rand = make_clip(rng, rand_class, frames - gt_length, size)
    video = np.concatenate([rand.frames[:gt_start], gt.frames, rand.frames[gt_start:]])
    boxes = np.concatenate([rand.boxes[:gt_start], gt.boxes, rand.boxes[gt_start:]])
    labels = np.full(frames, rand_class, dtype=np.int64)
    labels[gt_start : gt_start + gt_length] = gt_class
    return ConcatenatedClip(video, labels, (gt_start, gt_start + gt_length - 1), gt_class, boxes)
