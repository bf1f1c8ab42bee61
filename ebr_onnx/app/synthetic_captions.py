"""Procedurally generated videos with captions: two objects, one after the other, and the sentence that names them.

Every video shows the textured, cluttered background of :mod:`ebr_onnx.app.synthetic` (static translucent
distractor shapes, per-frame pixel noise) and two opaque *objects*, one in the left half of the frame and one in the
right half, each visible in its own contiguous run of frames: the first from frame 0 up to a random split point, the
second from there to the end (which side comes first is random). Each object has a shape (:data:`NOUNS`) and a
colour (:data:`COLOURS`), drawn independently (the two may share them), covers the same area whatever its shape (that
of a circle of the drawn half-size), drifts slowly inside its half and is named by the caption, left one first::

    a red square on the left and a blue circle on the right

The caption names the objects by side, not in the order they appear (a mean-pooled encoder cannot tell time order),
so each noun is a function of one object's appearance. Every object comes with its frames (an inclusive segment)
and its box in every frame (``(x0, y0, x1, y1)``, inclusive pixel indices; ``-1`` where it is not visible), for the
spatial and temporal pointing games of the nouns. Everything is deterministic from a seed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .synthetic import Seed, _background, _rng, _shape_mask

#: The nouns and the shape each one draws.
NOUNS: tuple[str, ...] = ("square", "circle", "triangle", "diamond")
_SHAPE_OF = {"square": "square", "circle": "disc", "triangle": "triangle", "diamond": "diamond"}
#: Each shape's half-size relative to a circle's, so that every shape covers a circle's area for the same draw
#: (πr²; a square of half-size s covers 4s², a diamond or a triangle 2s²).
_AREA_SCALE = {"square": (np.pi / 4) ** 0.5, "circle": 1.0, "triangle": (np.pi / 2) ** 0.5,
               "diamond": (np.pi / 2) ** 0.5}
#: The objects' colours (RGB), a subset of the action videos' palette.
COLOURS: dict[str, tuple[int, int, int]] = {"red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
                                            "yellow": (240, 220, 40)}
SIDES: tuple[str, ...] = ("left", "right")
BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
#: Every token a caption uses, and the decoder's special tokens; index = token id.
VOCABULARY: tuple[str, ...] = (PAD, BOS, EOS, "a", "and", "on", "the", *COLOURS, *NOUNS, *SIDES)
#: Words per caption (all captions have this length; the decoder emits one more step, ``<eos>``).
CAPTION_WORDS = 13


@dataclass(frozen=True)
class CaptionObject:
    """One object of a video: its ``noun``, ``colour`` and ``side``, the inclusive ``segment`` of frames where it is
    visible, and its ``boxes`` ``(T, 4)`` (``-1`` outside the segment)."""

    noun: str
    colour: str
    side: str
    segment: tuple[int, int]
    boxes: np.ndarray

    @property
    def phrase(self) -> list[str]:
        return ["a", self.colour, self.noun, "on", "the", self.side]


@dataclass(frozen=True)
class CaptionClip:
    """A video ``frames`` (T, H, W, 3) uint8, its ``caption`` (words, no special tokens) and its two ``objects`` in
    the caption's order (left, right); :attr:`steps` are the caption positions of their nouns."""

    frames: np.ndarray
    caption: list[str]
    objects: tuple[CaptionObject, CaptionObject]

    @property
    def steps(self) -> tuple[int, int]:
        """The positions of the two nouns in the caption (the decoder's steps that emit them)."""
        return 2, 9


def caption_of(objects: tuple[CaptionObject, CaptionObject]) -> list[str]:
    """The caption of two objects (left, right)."""
    return [*objects[0].phrase, "and", *objects[1].phrase]


def make_caption_clip(seed: Seed, frames: int = 16, size: int = 64, clutter: float = 1.0) -> CaptionClip:
    """One video of ``frames`` frames of ``size``×``size`` pixels (``frames`` ≥ 2); ``clutter`` in [0, 1] scales the
    background texture, the distractors drawn and the noise, as in :func:`ebr_onnx.app.synthetic.make_clip`."""
    if frames < 2:
        raise ValueError(f"a caption video needs at least 2 frames, got {frames}")
    rng = _rng(seed)
    bg = _background(rng, size, clutter)
    first = int(rng.integers(2))                      # which of the two (left, right) is seen first
    split = int(rng.integers(max(1, round(frames / 3)), min(frames - 1, round(2 * frames / 3)) + 1))
    segments = [(0, split - 1), (split, frames - 1)]
    noise = clutter * rng.uniform(3, 8)
    video = bg + np.float32(noise) * rng.standard_normal((frames, size, size, 3), dtype=np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    objects = []
    for k, side in enumerate(SIDES):
        noun = NOUNS[int(rng.integers(len(NOUNS)))]
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        start, end = segments[k if first == 0 else 1 - k]
        r = rng.uniform(6.0, 9.0) * _AREA_SCALE[noun]   # the shape's half-size
        lo, hi = (r + 2, size * 0.4) if side == "left" else (size * 0.6, size - 3 - r)
        cx, cy = rng.uniform(lo, hi), rng.uniform(r + 2, size - 3 - r)
        vx, vy = rng.uniform(-0.6, 0.6, 2)
        boxes = np.full((frames, 4), -1, dtype=np.int64)
        for t in range(start, end + 1):
            x = float(np.clip(cx + vx * (t - start), lo, hi))
            y = float(np.clip(cy + vy * (t - start), r + 2, size - 3 - r))
            mask = _shape_mask(_SHAPE_OF[noun], x, y, r, xs, ys)
            video[t][mask] = COLOURS[colour]
            cols, rows = np.flatnonzero(mask.any(axis=0)), np.flatnonzero(mask.any(axis=1))
            boxes[t] = cols[0], rows[0], cols[-1], rows[-1]
        objects.append(CaptionObject(noun, colour, side, (start, end), boxes))
    pair = (objects[0], objects[1])
    return CaptionClip(np.clip(video, 0, 255).astype(np.uint8), caption_of(pair), pair)


def encode(words: list[str], vocabulary: tuple[str, ...] | list[str] = VOCABULARY) -> np.ndarray:
    """Token ids of ``words`` (int64)."""
    index = {w: i for i, w in enumerate(vocabulary)}
    return np.array([index[w] for w in words], dtype=np.int64)


def teacher_inputs(caption: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A caption as a teacher-forced decoder reads and predicts it: the fed words ``<bos> w1 … wn`` and the targets
    ``w1 … wn <eos>`` (step ``k`` reads fed word ``k`` and predicts target ``k``)."""
    return encode([BOS, *caption]), encode([*caption, EOS])
