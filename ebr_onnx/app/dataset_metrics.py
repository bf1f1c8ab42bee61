"""The paper's evaluation protocols at dataset scale, and a faithfulness measure in time.

- **Temporal pointing game** (paper §5.2, Table 3): for each ground-truth segment, point at one frame of the clips
  that overlap it and score a hit when that frame lies inside the segment. Pointers: the peak of the evidence curve
  (the method's map sums), the peak of the target's probability, a uniformly random frame (scored by its expected hit
  rate, so the baseline is exact rather than sampled) and "peak probability + evidence" (see
  :func:`temporal_pointing`).
- **Temporal detection** (Table 4, THUMOS14's protocol as its evaluation kit computes it): per class, detections
  ``(video, [start, end] s, score)``; per video, each ground truth in turn takes the unmatched detection of highest
  overlap when that overlap exceeds the threshold; unmatched detections that overlap an Ambiguous segment are
  dropped; all detections are then ranked by score (:func:`thumos_average_precision`), mAP is the mean over the
  classes that have ground truth (:func:`thumos_map`).
- **Spatial pointing game** (§5.1, Table 1): the map's peak against the frame's boxes with
  :class:`~ebr_onnx.app.metrics.PointingGame` (a 15-pixel-diameter circle, :func:`spatial_hits`).
- **Deletion and insertion in time** (after RISE's pixel curves, Petsiuk et al. 2018; reported by no paper for
  video): frames are removed from (or inserted into) a clip in decreasing order of evidence and the target's
  probability is tracked; the area under each curve over the fraction of frames changed (:func:`deletion_insertion`,
  :func:`curve_area`). Low deletion and high insertion areas mean the evidence ranks the frames the model needs.

Times are seconds; a kept video frame ``f`` lasts ``[f, f + step) / fps`` and lies in a segment when its midpoint
does (:func:`frames_in_segment`).
"""
from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import EbrError
from .metrics import PointingGame

#: The tIoU thresholds of THUMOS14's detection protocol (Table 4 reports 0.1).
TIOU_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5)
Interval = Sequence[float]  # (start, end) in seconds


def frames_in_segment(frame_indices: np.ndarray, fps: float, segment: Interval, step: float = 1.0) -> np.ndarray:
    """Which of the video frames ``frame_indices`` lie in ``segment`` (seconds): a frame ``f`` lasts
    ``[f, f + step) / fps`` and is in when its midpoint ``(f + step / 2) / fps`` is in ``[start, end]``."""
    if not fps > 0:
        raise EbrError(f"segments in seconds need the video's frame rate, got {fps!r}")
    mid = (np.asarray(frame_indices, dtype=np.float64) + step / 2.0) / fps
    return (mid >= segment[0]) & (mid <= segment[1])


@dataclass(frozen=True)
class PointingTrial:
    """One ground-truth segment's temporal pointing game: the frames pointed at (video frame numbers) and whether
    each is a hit; ``random`` is the expected hit rate of a uniformly random frame of the window."""

    evidence: int
    probability: int
    combined: int
    hit_evidence: bool
    hit_probability: bool
    hit_combined: bool
    random: float

    @property
    def hit_either(self) -> bool:
        """A hit of the probability's or the evidence's peak: how complementary the two are (an upper bound of
        any pointer that picks one of them)."""
        return self.hit_evidence or self.hit_probability


def _unit(values: np.ndarray) -> np.ndarray:
    """``values`` min–max scaled to [0, 1] (all zeros when constant)."""
    span = values.max() - values.min()
    return (values - values.min()) / span if span > 0 else np.zeros_like(values)


def temporal_pointing(frame_indices: np.ndarray, curve: np.ndarray, probs: np.ndarray, window: np.ndarray,
                      truth: np.ndarray) -> PointingTrial:
    """The temporal pointing game (Table 3) on one ground-truth segment.

    ``curve`` (evidence) and ``probs`` (the target's probability) are per explained frame, ``frame_indices`` their
    numbers in the video; ``window`` marks the frames of the clips that overlap the segment (the paper points within
    the 128-frame clip), ``truth`` the frames inside the segment. Each pointer is the first frame of the window
    with the highest value of: the evidence; the probability; and, for "peak probability + cEB-R" (which the paper
    does not define), the sum of the two curves each min–max scaled to [0, 1] over the window. ``random`` is
    ``|window ∩ truth| / |window|``.
    """
    curve, probs = np.asarray(curve, np.float64), np.asarray(probs, np.float64)
    window, truth = np.asarray(window, bool), np.asarray(truth, bool)
    if not (len(curve) == len(probs) == len(window) == len(truth) == len(frame_indices)):
        raise EbrError("curve, probabilities, window, truth and frame numbers must describe the same frames")
    rows = np.flatnonzero(window)
    if rows.size == 0:
        raise EbrError("the pointing window has no frames")
    evidence = rows[int(np.argmax(curve[rows]))]
    probability = rows[int(np.argmax(probs[rows]))]
    combined = rows[int(np.argmax(_unit(curve[rows]) + _unit(probs[rows])))]
    return PointingTrial(
        evidence=int(frame_indices[evidence]), probability=int(frame_indices[probability]),
        combined=int(frame_indices[combined]), hit_evidence=bool(truth[evidence]),
        hit_probability=bool(truth[probability]), hit_combined=bool(truth[combined]),
        random=float(truth[rows].mean()),
    )


def interval_iou(a: Interval, b: Interval) -> float:
    """Intersection over union of two intervals in seconds (THUMOS14's ``intervaloverlapvalseconds``): 0 when they
    only touch or are apart."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    if inter <= 0:
        return 0.0
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


Detection = tuple[Hashable, Interval, float]  # (video, (start, end) s, score)
Truth = tuple[Hashable, Interval]  # (video, (start, end) s)


def thumos_average_precision(detections: Iterable[Detection], truths: Iterable[Truth], threshold: float,
                             ambiguous: Iterable[Truth] = (), interpolation: str = "none") -> float:
    """AP of one class's detections under THUMOS14's protocol (its kit's ``TH14eventdetpr``).

    Per video, detections are sorted by decreasing score and each ground truth, in the order given, takes the
    still-free detection of highest :func:`interval_iou` (the first on ties) when that IoU is **greater than**
    ``threshold``. Free detections that overlap any ``ambiguous`` segment of their video are dropped. All detections
    left, true and false positives, are ranked by decreasing score (ties: by video, then by rank within it), with
    ``n`` ground truths: precision ``p_k`` and recall ``r_k`` after the k-th. ``interpolation="none"`` (the kit as
    updated in 2015 and used since): AP = Σ_{k a true positive} p_k / n. ``"11-point"`` (the 2014 kit): AP =
    mean over r ∈ {0, 0.1, …, 1} of max_{k: r_k ≥ r} p_k (0 when no k). No detection gives 0.
    """
    if interpolation not in ("none", "11-point"):
        raise EbrError(f"interpolation must be 'none' or '11-point', not {interpolation!r}")
    by_video: dict[Hashable, list[Interval]] = {}
    for video, segment in truths:
        by_video.setdefault(video, []).append(segment)
    n = sum(len(v) for v in by_video.values())
    if n == 0:
        raise EbrError("average precision needs at least one ground-truth segment")
    excused: dict[Hashable, list[Interval]] = {}
    for video, segment in ambiguous:
        excused.setdefault(video, []).append(segment)
    dets: dict[Hashable, list[tuple[Interval, float]]] = {}
    for video, segment, score in detections:
        dets.setdefault(video, []).append((segment, float(score)))
    ranked: list[tuple[float, bool]] = []
    for video in sorted(dets, key=str):
        ordered = sorted(dets[video], key=lambda d: -d[1])
        free = [True] * len(ordered)
        for gt in by_video.get(video, []):
            candidates = [(interval_iou(gt, seg), k) for k, (seg, _) in enumerate(ordered) if free[k]]
            if candidates:
                best = max(candidates, key=lambda c: (c[0], -c[1]))
                if best[0] > threshold:
                    free[best[1]] = False
            # a ground truth with no free detection left stays unmatched
        for k, (segment, score) in enumerate(ordered):
            if free[k] and any(interval_iou(segment, a) > 0 for a in excused.get(video, [])):
                continue
            ranked.append((score, not free[k]))
    if not any(tp for _, tp in ranked):
        return 0.0
    order = sorted(range(len(ranked)), key=lambda k: -ranked[k][0])
    tp = np.array([ranked[k][1] for k in order], dtype=np.float64)
    hits = np.cumsum(tp)
    precision = hits / np.arange(1, len(tp) + 1)
    recall = hits / n
    if interpolation == "none":
        return float(precision[tp == 1].sum() / n)
    points = [precision[recall >= r].max() if (recall >= r).any() else 0.0 for r in np.linspace(0, 1, 11)]
    return float(np.mean(points))


def thumos_map(detections: Mapping[Hashable, Iterable[Detection]], truths: Mapping[Hashable, Iterable[Truth]],
               threshold: float, ambiguous: Iterable[Truth] = (), interpolation: str = "none"
               ) -> tuple[float, dict[Hashable, float]]:
    """Mean of :func:`thumos_average_precision` over the classes that have ground truth (a class without
    detections scores 0; detections of classes without ground truth are ignored); returns the mAP and each class's
    AP."""
    excused = list(ambiguous)
    aps = {c: thumos_average_precision(detections.get(c, ()), gts, threshold, excused, interpolation)
           for c, gts in truths.items()}
    if not aps:
        raise EbrError("mean average precision needs ground truth for at least one class")
    return float(np.mean(list(aps.values()))), aps


def spatial_hits(points: np.ndarray, frame_indices: Sequence[int],
                 boxes: Mapping[int, Sequence[Sequence[float]]], game: PointingGame | None = None
                 ) -> tuple[int, int]:
    """The spatial pointing game (Table 1) on one video: ``points`` ``(F, 2)`` the ``(y, x)`` peak of each explained
    frame's map in original-frame pixels, ``boxes`` the ground-truth boxes by video frame number. A frame with
    boxes is a hit when its point is within the game's tolerance of any of them (default :class:`PointingGame`:
    7.5 px, a 15-pixel-diameter circle as in the paper); frames without boxes are not trials. Returns
    ``(hits, trials)``."""
    game = game or PointingGame()
    hits = trials = 0
    for point, frame in zip(np.asarray(points, np.float64), frame_indices):
        frame_boxes = boxes.get(int(frame))
        if not frame_boxes:
            continue
        trials += 1
        hits += any(game.evaluate(point, box) for box in frame_boxes)
    return hits, trials


def evidence_order(curve: np.ndarray) -> np.ndarray:
    """Frame positions by decreasing evidence (the earlier frame first on ties)."""
    return np.argsort(-np.asarray(curve, np.float64), kind="stable")


def step_counts(frames: int, steps: int) -> np.ndarray:
    """How many frames are changed at each of the ``steps + 1`` points of a deletion or insertion curve:
    ``round(i · frames / steps)`` for i = 0…steps (``steps`` at most ``frames``)."""
    if not 1 <= steps <= frames:
        raise EbrError(f"deletion/insertion steps must be in [1, {frames}], got {steps}")
    return np.rint(np.arange(steps + 1) * frames / steps).astype(np.int64)


def deletion_insertion(x: np.ndarray, order: np.ndarray, score: Callable[[np.ndarray], float], steps: int,
                       baseline: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves in time on one clip ``x`` (frames on its first axis).

    Deletion: starting from ``x``, the frames ``order[:n]`` are replaced by ``baseline`` (0 in the model's input:
    the preprocessing's mean image) for ``n`` in :func:`step_counts`, and ``score`` (the target's probability) is
    read after each step. Insertion: starting from all frames at ``baseline``, the frames ``order[:n]`` are put
    back. Both curves have ``steps + 1`` points; the full clip and the empty clip are scored once each and shared.
    """
    x = np.asarray(x)
    counts = step_counts(len(x), steps)
    full, empty = float(score(x)), float(score(np.full_like(x, baseline)))
    deletion, insertion = [full], [empty]
    for n in counts[1:-1]:
        removed = x.copy()
        removed[order[:n]] = baseline
        deletion.append(float(score(removed)))
        inserted = np.full_like(x, baseline)
        inserted[order[:n]] = x[order[:n]]
        insertion.append(float(score(inserted)))
    return np.array([*deletion, empty]), np.array([*insertion, full])


def curve_area(curve: np.ndarray) -> float:
    """The area under a deletion or insertion curve: the trapezoid rule over its points spread evenly on [0, 1] (the
    fraction of frames changed)."""
    curve = np.asarray(curve, np.float64)
    if curve.ndim != 1 or len(curve) < 2:
        raise EbrError(f"a curve needs at least two points, got shape {curve.shape}")
    return float(((curve[:-1] + curve[1:]) / 2).sum() / (len(curve) - 1))
