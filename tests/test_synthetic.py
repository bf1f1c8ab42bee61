"""The synthetic video generators: determinism, shapes, ground-truth boxes, motion semantics, concatenation; the
caption videos' equal shape areas."""
from __future__ import annotations

import numpy as np
import pytest

from ebr_onnx.app.metrics import PointingGame
from ebr_onnx.app.synthetic import (
    CLASS_NAMES,
    SETUPS,
    edge_boxes,
    make_clip,
    make_concatenated,
    make_dataset,
)
from ebr_onnx.app.synthetic_captions import COLOURS, NOUNS, make_caption_clip


def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def test_clip_shapes_and_types() -> None:
    clip = make_clip(0, label=3, frames=20, size=64)
    assert clip.frames.shape == (20, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.boxes.shape == (20, 4) and clip.label == 3
    assert np.all(clip.boxes[:, :2] <= clip.boxes[:, 2:]) and clip.boxes.min() >= 0 and clip.boxes.max() <= 63


def test_deterministic_from_seed() -> None:
    a, b, c = make_dataset(12, 5), make_dataset(12, 5), make_dataset(12, 6)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    np.testing.assert_array_equal(make_clip(np.random.default_rng(3)).frames, make_clip(3).frames)


def test_dataset_is_balanced() -> None:
    frames, labels, boxes = make_dataset(24, 1, frames=8)
    assert frames.shape == (24, 8, 64, 64, 3) and boxes.shape == (24, 8, 4)
    np.testing.assert_array_equal(np.bincount(labels), np.full(len(CLASS_NAMES), 3))


@pytest.mark.parametrize("seed", range(8))
def test_boxes_are_tight_around_the_actor(seed: int) -> None:
    """Without clutter the frame is flat grey plus the actor: its pixels are exactly what differs from the grey,
    and the box is their bounding box. The random draws do not depend on clutter, so the boxes are the same."""
    clean, cluttered = make_clip(seed, label=seed, clutter=0.0), make_clip(seed, label=seed)
    np.testing.assert_array_equal(clean.boxes, cluttered.boxes)
    grey = clean.frames[0, 0, 0]
    for frame, (x0, y0, x1, y1) in zip(clean.frames, clean.boxes):
        rows, cols = np.nonzero(np.any(frame != grey, axis=2))
        assert (cols.min(), rows.min(), cols.max(), rows.max()) == (x0, y0, x1, y1)


def test_edge_boxes_cover_the_boxes_pixels() -> None:
    """In pixel edges a box spans its pixels whole: the centre of every actor pixel (c + 0.5, r + 0.5) lies inside,
    its area is the inclusive box's pixel count, and the pointing game at 0 px tolerance hits every actor pixel;
    boxes of frames without the object stay -1."""
    clip = make_clip(3, label=3, clutter=0.0)
    edges = edge_boxes(clip.boxes)
    grey = clip.frames[0, 0, 0]
    game = PointingGame(tolerance=0.0)
    for frame, box, (x0, y0, x1, y1) in zip(clip.frames, edges, clip.boxes):
        assert (box[2] - box[0]) * (box[3] - box[1]) == (x1 - x0 + 1) * (y1 - y0 + 1)
        rows, cols = np.nonzero(np.any(frame != grey, axis=2))
        assert all(game.evaluate((r + 0.5, c + 0.5), box) for r, c in zip(rows, cols))
        assert not game.evaluate((rows.max() + 1.5, cols.max() + 1.5), box)
    caption = make_caption_clip(0)
    for obj in caption.objects:
        hidden = (obj.boxes < 0).all(axis=1)
        assert hidden.any() and (edge_boxes(obj.boxes)[hidden] == -1).all()


def test_actor_keeps_its_colour_inside_the_box_under_clutter() -> None:
    clip = make_clip(11, label=4)
    clean = make_clip(11, label=4, clutter=0.0)
    grey = clean.frames[0, 0, 0]
    for frame, ref in zip(clip.frames, clean.frames):
        actor = np.any(ref != grey, axis=2)
        np.testing.assert_array_equal(frame[actor], ref[actor])  # the opaque actor is drawn last, without noise


@pytest.mark.parametrize("label", range(len(CLASS_NAMES)))
def test_motion_matches_the_class(label: int) -> None:
    """Median per-frame change of the box says the class: direction of travel, turning sense, or size change."""
    name = CLASS_NAMES[label]
    for seed in range(5):
        boxes = make_clip(seed, label=label, frames=16).boxes.astype(float)
        step = np.diff(_centres(boxes), axis=0)
        if name in ("left_to_right", "right_to_left", "top_to_bottom", "bottom_to_top"):
            axis = 0 if name in ("left_to_right", "right_to_left") else 1
            sign = 1 if name in ("left_to_right", "top_to_bottom") else -1
            assert sign * np.median(step[:, axis]) > 0
        elif name in ("clockwise", "counterclockwise"):
            turn = step[:-1, 0] * step[1:, 1] - step[:-1, 1] * step[1:, 0]  # > 0: clockwise with y pointing down
            assert (1 if name == "clockwise" else -1) * np.median(turn) > 0
        else:
            grow = np.diff(boxes[:, 2] - boxes[:, 0])
            assert (1 if name == "growing" else -1) * np.median(grow) > 0


@pytest.mark.parametrize("setup,segment", [("rand+GT", (8, 15)), ("GT+rand", (0, 7))])
def test_two_clip_setups(setup: str, segment: tuple[int, int]) -> None:
    clip = make_concatenated(2, setup, frames=16, gt_class=5)
    assert clip.gt_segment == segment and clip.gt_class == 5
    assert clip.frames.shape == (16, 64, 64, 3) and clip.boxes.shape == (16, 4)
    start, end = segment
    inside = np.zeros(16, dtype=bool)
    inside[start : end + 1] = True
    assert np.all(clip.labels[inside] == 5)
    assert len(set(clip.labels[~inside])) == 1 and clip.labels[~inside][0] != 5


def test_rand_gt_rand_given_and_random_positions() -> None:
    clip = make_concatenated(4, "rand+GT+rand", frames=128, gt_length=41, gt_start=30)
    assert clip.gt_segment == (30, 70)
    assert np.all(clip.labels[30:71] == clip.gt_class)
    rest = np.concatenate([clip.labels[:30], clip.labels[71:]])
    assert len(set(rest)) == 1 and rest[0] != clip.gt_class
    for seed in range(20):
        clip = make_concatenated(seed, "rand+GT+rand", frames=32)
        start, end = clip.gt_segment
        assert 1 <= start <= end <= 30
        np.testing.assert_array_equal(np.flatnonzero(clip.labels == clip.gt_class), np.arange(start, end + 1))


def test_concatenated_is_deterministic() -> None:
    for setup in SETUPS:
        a, b = make_concatenated(9, setup, frames=24), make_concatenated(9, setup, frames=24)
        np.testing.assert_array_equal(a.frames, b.frames)
        np.testing.assert_array_equal(a.boxes, b.boxes)
        assert a.gt_segment == b.gt_segment


@pytest.mark.parametrize(
    "kwargs",
    [
        {"setup": "GT+GT"},
        {"setup": "rand+GT", "gt_start": 3},
        {"setup": "rand+GT", "gt_length": 16},
        {"setup": "rand+GT+rand", "gt_length": 10, "gt_start": 6},
        {"setup": "rand+GT+rand", "gt_length": 4, "gt_start": 0},
    ],
)
def test_invalid_requests_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        make_concatenated(0, frames=16, **kwargs)


def test_invalid_label_raises() -> None:
    with pytest.raises(ValueError):
        make_clip(0, label=len(CLASS_NAMES))


def test_caption_shapes_cover_the_same_area() -> None:
    """Whatever its noun, a caption video's object covers on average a circle's area for the same half-size draw
    (the object's pixels are exactly its colour: it is drawn opaque after the noise)."""
    areas: dict[str, list[int]] = {noun: [] for noun in NOUNS}
    for v in range(200):
        clip = make_caption_clip(np.random.default_rng([3, v]), 4)
        for obj in clip.objects:
            t = obj.segment[0]
            areas[obj.noun].append(int((clip.frames[t] == COLOURS[obj.colour]).all(axis=-1).sum()))
    means = np.array([np.mean(areas[noun]) for noun in NOUNS])
    assert means.max() / means.min() < 1.1, dict(zip(NOUNS, means.round(1)))
