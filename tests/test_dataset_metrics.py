"""The audit's metrics on hand-computed cases: the temporal pointing game (Table 3), THUMOS14 detection AP/mAP (Table
4), the spatial pointing game (Table 1), deletion/insertion in time, and their aggregation over a results table."""
from __future__ import annotations

import numpy as np
import pytest

from ebr_onnx.app.audit_summary import summarize
from ebr_onnx.app.dataset_metrics import (
    curve_area,
    deletion_insertion,
    evidence_order,
    frames_in_segment,
    interval_iou,
    spatial_hits,
    step_counts,
    temporal_pointing,
    thumos_average_precision,
    thumos_map,
)
from ebr_onnx.app.results import SCHEMA
from ebr_onnx.core.errors import EbrError


def test_a_frame_is_in_a_segment_when_its_midpoint_is() -> None:
    # 8 fps: frame f lasts [f/8, (f+1)/8); midpoints 0.0625 + f/8. Segment [1.0, 2.0] holds frames 8..15.
    inside = frames_in_segment(np.arange(20), 8.0, (1.0, 2.0))
    assert np.flatnonzero(inside).tolist() == list(range(8, 16))
    # every 2nd frame kept (step 2): frame 6 lasts [6, 8)/8, midpoint 0.875 → out; frame 14 midpoint 1.875 → in
    assert np.flatnonzero(frames_in_segment(np.arange(0, 20, 2), 8.0, (1.0, 2.0), step=2)).tolist() == [4, 5, 6, 7]
    with pytest.raises(EbrError, match="frame rate"):
        frames_in_segment(np.arange(3), 0.0, (0, 1))


def test_temporal_pointing_game_on_a_hand_case() -> None:
    frames = np.arange(10, 18)                       # video frames 10..17
    curve = np.array([5.0, 0.1, 0.2, 0.3, 0.9, 0.4, -1.0, 0.0])
    probs = np.array([0.0, 0.1, 0.8, 0.9, 0.2, 0.3, 0.95, 0.1])
    window = np.array([0, 1, 1, 1, 1, 1, 1, 1], bool)   # the first frame lies outside the clips that overlap
    truth = np.array([0, 0, 0, 1, 1, 1, 0, 0], bool)    # video frames 13..15
    trial = temporal_pointing(frames, curve, probs, window, truth)
    # evidence peak within the window: 0.9 at position 4 (frame 14) → hit; probability peak 0.95 at position 6
    # (frame 16) → miss. Combined: evidence scaled over the window (min −1, max 0.9) plus probability scaled (min 0.1,
    # max 0.95): position 3: (1.3/1.9) + (0.8/0.85) = 1.625; position 4: 1 + 0.1/0.85 = 1.118; position 6: 0 + 1 = 1
    # → frame 13, a hit. Random: 3 of the window's 7 frames are inside.
    assert (trial.evidence, trial.probability, trial.combined) == (14, 16, 13)
    assert (trial.hit_evidence, trial.hit_probability, trial.hit_combined, trial.hit_either) == (True, False, True,
                                                                                              True)
    assert trial.random == pytest.approx(3 / 7)
    tie = temporal_pointing(frames[:3], np.zeros(3), np.zeros(3), np.ones(3, bool), np.array([0, 1, 0], bool))
    assert (tie.evidence, tie.combined, tie.hit_evidence) == (10, 10, False)   # ties: the first frame
    with pytest.raises(EbrError, match="no frames"):
        temporal_pointing(frames, curve, probs, np.zeros(8, bool), truth)


def test_interval_iou_in_seconds() -> None:
    assert interval_iou((0, 10), (5, 15)) == pytest.approx(5 / 15)
    assert interval_iou((0, 10), (10, 20)) == 0.0          # touching
    assert interval_iou((2, 4), (0, 10)) == pytest.approx(0.2)


GT = [("v1", (0, 10)), ("v1", (20, 30)), ("v2", (5, 15))]
DETS = [("v1", (0, 9), 0.9), ("v1", (21, 30), 0.8), ("v1", (40, 50), 0.7), ("v2", (30, 40), 0.6),
        ("v2", (5, 14), 0.5)]


def test_thumos_average_precision_on_a_hand_case() -> None:
    # ranked: TP (IoU .9), TP (.9), FP, FP, TP (.9): precisions at the true positives 1, 1, 3/5 → AP = 2.6 / 3
    assert thumos_average_precision(DETS, GT, 0.5) == pytest.approx(2.6 / 3)
    # 11-point (the 2014 kit): recall 1/3, 2/3, 2/3, 2/3, 1 with precision 1, 1, 2/3, 1/2, 3/5: r = 0…0.6 → 1,
    # r = 0.7…1 → 0.6 → (7 + 4 · 0.6) / 11
    assert thumos_average_precision(DETS, GT, 0.5, interpolation="11-point") == pytest.approx(9.4 / 11)
    # at tIoU 0.95 nothing matches
    assert thumos_average_precision(DETS, GT, 0.95) == 0.0
    # a false positive over an Ambiguous segment is dropped: FP (v1 40–50) gone → precisions 1, 1, 3/4
    assert thumos_average_precision(DETS, GT, 0.5, ambiguous=[("v1", (45, 60))]) == pytest.approx(2.75 / 3)


def test_thumos_matching_follows_the_kit() -> None:
    # each ground truth takes the free detection of highest IoU, whatever its score: the tight low-score detection
    # is the true positive and the loose high-score one a false positive → precision 1/2 at the only TP
    gt = [("v", (0, 10))]
    assert thumos_average_precision([("v", (0, 6), 0.9), ("v", (0, 10), 0.5)], gt, 0.5) == pytest.approx(0.5)
    # the overlap must be GREATER than the threshold: IoU exactly 0.5 is a miss
    assert thumos_average_precision([("v", (0, 5), 0.9)], gt, 0.5) == 0.0
    assert thumos_average_precision([("v", (0, 5), 0.9)], gt, 0.4) == 1.0
    # a detection in a video without ground truth is a false positive
    assert thumos_average_precision([("w", (0, 10), 0.9), ("v", (0, 10), 0.1)], gt, 0.5) == pytest.approx(0.5)
    with pytest.raises(EbrError, match="at least one ground-truth"):
        thumos_average_precision([], [], 0.5)


def test_thumos_map_averages_the_classes_with_ground_truth() -> None:
    mean, aps = thumos_map({"A": DETS, "C": [("v1", (0, 10), 1.0)]}, {"A": GT, "B": [("v3", (0, 1))]}, 0.5)
    assert aps == pytest.approx({"A": 2.6 / 3, "B": 0.0})      # B has no detections; C has no ground truth
    assert mean == pytest.approx((2.6 / 3) / 2)


def test_spatial_pointing_game_with_a_15_pixel_diameter() -> None:
    boxes = {0: [(10, 10, 20, 20)], 1: [(10, 10, 20, 20)], 2: [(0, 0, 1, 1), (30, 30, 40, 40)], 5: [(0, 0, 5, 5)]}
    points = np.array([[15, 15],       # inside the box
                       [15, 27.4],     # 7.4 px right of it: within the 7.5 px radius
                       [25, 25],       # 5·√2 ≈ 7.07 px from the second box's corner (30, 30)
                       [50, 50]])      # frame 3 has no boxes: not a trial
    assert spatial_hits(points, [0, 1, 2, 3], boxes) == (3, 3)
    assert spatial_hits(np.array([[15, 27.6]]), [1], boxes) == (0, 1)


def test_deletion_and_insertion_on_a_hand_case() -> None:
    x = np.array([[4.0], [0.0], [2.0], [1.0]])      # 4 frames of one value; the score is the clip's mean
    score = lambda clip: float(clip.mean())         # noqa: E731
    order = evidence_order(np.array([0.5, -1.0, 0.9, 0.1]))
    assert order.tolist() == [2, 0, 3, 1]
    deletion, insertion = deletion_insertion(x, order, score, steps=2)
    # step 1 removes 2 frames (2 and 0): mean of (0, 0, 0, 1) = 0.25
    assert deletion.tolist() == [1.75, 0.25, 0.0]
    assert insertion.tolist() == [0.0, 1.5, 1.75]
    assert curve_area(deletion) == pytest.approx((1.75 + 0.25) / 2 / 2 + (0.25 + 0) / 2 / 2)
    assert curve_area(insertion) == pytest.approx((0 + 1.5) / 4 + (1.5 + 1.75) / 4)
    assert step_counts(16, 8).tolist() == [0, 2, 4, 6, 8, 10, 12, 14, 16]
    assert step_counts(5, 2).tolist() == [0, 2, 5]
    with pytest.raises(EbrError, match="steps"):
        step_counts(4, 5)


def _row(**values):
    return {name: None for name in SCHEMA.names} | values


def test_summarize_counts_hits_over_the_finished_videos() -> None:
    video = dict(kind="video", status="ok", labelled=True, target_label="a", detections=[], deletion_auc=None)
    rows = [
        _row(id="v1", target=0, predicted=0, spatial_hits=3, spatial_frames=4, **video),
        _row(id="v2", target=0, predicted=1, spatial_hits=1, spatial_frames=4, **video),
        _row(kind="video", id="bad", status="error", error="video not found: bad"),
        _row(kind="segment", id="v1", ambiguous=False, target=0, target_label="a", hit_evidence=True,
             hit_probability=False, hit_combined=True, hit_either=True, random_hit_rate=0.25, gt_start=0.0,
             gt_end=1.0),
        _row(kind="segment", id="v2", ambiguous=False, target=0, target_label="a", hit_evidence=False,
             hit_probability=True, hit_combined=True, hit_either=True, random_hit_rate=0.75, gt_start=0.0,
             gt_end=1.0),
        _row(kind="segment", id="bad", ambiguous=False, hit_evidence=True),   # a failed video is not scored
    ]
    m = summarize(rows, total=3)
    assert m["videos"] == {"total": 3, "ok": 2, "error": 1, "explained_targets": 2, "segments": 2}
    assert m["classification"] == {"videos": 2, "accuracy": 0.5}
    assert m["temporal_pointing_game"] == {"segments": 2, "random": 0.5, "peak_probability": 0.5, "evidence": 0.5,
                                           "probability_plus_evidence": 1.0, "either": 1.0}
    assert m["spatial_pointing_game"]["accuracy"] == 0.5 and m["spatial_pointing_game"]["frames"] == 8
    assert m["detection"]["map"] == {"0.1": 0.0, "0.2": 0.0, "0.3": 0.0, "0.4": 0.0, "0.5": 0.0}   # no detections
    assert m["errors"] == {"bad": "video not found: bad"}
    assert m["per_class"]["a"]["pointing_evidence"] == 0.5
