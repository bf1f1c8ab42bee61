"""Evaluation metrics of the paper's §5: spatial and temporal pointing games, temporal IoU, AP and mAP.

Conventions: points are ``(y, x)`` and boxes ``(x0, y0, x1, y1)`` in one continuous pixel coordinate system (that of
:func:`ebr_onnx.app.localize.peaks_to_frame_coords` and :class:`ebr_onnx.app.preprocess.CropBox`); temporal segments are
inclusive frame indices ``(start, end)``.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterable, Mapping, Sequence

import numpy as np

from ..core.errors import EbrError


class _HitCounter:
    """Hits and misses per class; accuracy = #hits / (#hits + #misses) (§5.1)."""

    def __init__(self) -> None:
        self._counts: dict[Hashable, list[int]] = defaultdict(lambda: [0, 0])

    def aggregate(self, hit: bool, class_id: Hashable = 0) -> None:
        """Record one hit or miss for ``class_id``."""
        self._counts[class_id][0 if hit else 1] += 1

    def accuracy(self, class_id: Hashable | None = None) -> float:
        """Accuracy of one class, or over all recorded trials when ``class_id`` is None."""
        counts = list(self._counts.values()) if class_id is None else [self._counts.get(class_id, [0, 0])]
        hits, misses = sum(c[0] for c in counts), sum(c[1] for c in counts)
        if hits + misses == 0:
            raise EbrError(f"no pointing-game trials recorded{'' if class_id is None else f' for {class_id!r}'}")
        return hits / (hits + misses)


class PointingGame(_HitCounter):
    """The spatial pointing game (Zhang et al.; paper §5.1): a hit when a circle of 15 px DIAMETER around the
    located point intersects the ground-truth box, i.e. when the point's Euclidean distance to the box is at most
    ``tolerance`` = 7.5 px (the radius). (TorchRay's benchmark uses 15 px as the radius instead.)"""

    def __init__(self, tolerance: float = 7.5) -> None:
        super().__init__()
        self.tolerance = tolerance

    def evaluate(self, point: Sequence[float], box: Sequence[float]) -> bool:
        """Whether ``point`` ``(y, x)`` is within ``tolerance`` of ``box`` ``(x0, y0, x1, y1)``, both in pixel-edge
        coordinates (the box of the pixels ``c0…c1`` has ``x0 = c0``, ``x1 = c1 + 1``; the generated clips' boxes of
        inclusive indices convert with :func:`ebr_onnx.app.synthetic.edge_boxes`)."""
        y, x = point
        x0, y0, x1, y1 = box
        dx = max(x0 - x, 0.0, x - x1)
        dy = max(y0 - y, 0.0, y - y1)
        return bool(dx * dx + dy * dy <= self.tolerance**2)


class TemporalPointingGame(_HitCounter):
    """The temporal pointing game (§5.2, THUMOS14): a hit when the peak frame lies within the ground-truth segment."""

    def evaluate(self, peak_frame: int, segment: Sequence[int]) -> bool:
        """Whether ``start <= peak_frame <= end``."""
        start, end = segment
        return bool(start <= peak_frame <= end)


def temporal_iou(a: Sequence[int], b: Sequence[int]) -> float:
    """Intersection over union of two inclusive frame segments, counting frames (a segment (s, e) has e - s + 1)."""
    (sa, ea), (sb, eb) = a, b
    if ea < sa or eb < sb:
        raise EbrError(f"segments must have start <= end, got {tuple(a)} and {tuple(b)}")
    inter = max(0, min(ea, eb) - max(sa, sb) + 1)
    return inter / ((ea - sa + 1) + (eb - sb + 1) - inter)


Detection = tuple[Hashable, Sequence[int], float]  # (video id, (start, end), score)
GroundTruth = tuple[Hashable, Sequence[int]]  # (video id, (start, end))


def average_precision(
    detections: Iterable[Detection], ground_truths: Iterable[GroundTruth], iou_threshold: float
) -> float:
    """Average precision of one class's temporal detections.

    Detections are taken by decreasing score (input order on ties). Each is a true positive when the unmatched
    ground truth of the same video with the highest IoU has IoU >= ``iou_threshold`` (that ground truth is then
    matched and cannot be matched again); otherwise a false positive. AP is the area under the precision-recall
    curve with all-point interpolation (VOC 2010+, ActivityNet): precision is replaced by its running maximum from
    the right, AP = Σ_k (r_k − r_{k−1}) · max_{j≥k} p_j.
    """
    truths: dict[Hashable, list[Sequence[int]]] = defaultdict(list)
    for video, segment in ground_truths:
        truths[video].append(segment)
    n_truths = sum(len(v) for v in truths.values())
    if n_truths == 0:
        raise EbrError("average precision needs at least one ground-truth segment")
    matched = {video: [False] * len(segs) for video, segs in truths.items()}
    ranked = sorted(detections, key=lambda d: -d[2])
    tp = np.zeros(len(ranked))
    for k, (video, segment, _) in enumerate(ranked):
        candidates = zip(truths.get(video, []), matched.get(video, []))
        ious = [-1.0 if used else temporal_iou(segment, gt) for gt, used in candidates]
        if ious and max(ious) >= iou_threshold:
            matched[video][int(np.argmax(ious))] = True
            tp[k] = 1
    hits = np.cumsum(tp)
    recall = np.concatenate(([0.0], hits / n_truths))
    precision = np.concatenate(([0.0], hits / np.arange(1, len(ranked) + 1)))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    return float(np.sum(np.diff(recall) * envelope[1:]))


def mean_average_precision(
    detections: Mapping[Hashable, Iterable[Detection]],
    ground_truths: Mapping[Hashable, Iterable[GroundTruth]],
    iou_threshold: float,
) -> float:
    """Mean over classes of :func:`average_precision`; the classes are those with ground truth (a class with ground
    truth and no detections scores 0; detections of classes without ground truth are ignored)."""
    if not ground_truths:
        raise EbrError("mean average precision needs ground truth for at least one class")
    aps = [average_precision(detections.get(c, ()), gts, iou_threshold) for c, gts in ground_truths.items()]
    return float(np.mean(aps))
