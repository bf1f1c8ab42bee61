"""The whole dataset's metrics from an audit's rows (``metrics.json``): the paper's Tables 1, 3 and 4, deletion and
insertion in time, classification accuracy, a per-class breakdown and timings.

Only finished videos with ``status="ok"`` are scored; failed videos are counted and listed, and their ground truth is
left out of every metric (a failure is not scored as a miss). The metrics' definitions are in
:mod:`ebr_onnx.app.dataset_metrics`.
"""
from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .dataset_metrics import TIOU_THRESHOLDS, thumos_map
from .metrics import PointingGame

Row = dict[str, Any]
FAITHFULNESS = ("deletion", "insertion", "deletion_random", "insertion_random")


def class_key(row: Row) -> str:
    """The name of a row's class: its label, else its index."""
    return row["target_label"] if row.get("target_label") else str(row["target"])


def _mean(values: Sequence[Any]) -> float | None:
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


def summarize(rows: Sequence[Row], total: int | None = None) -> dict[str, Any]:
    """The metrics of ``rows`` (all rows of a results folder); ``total``: the dataset's number of videos."""
    videos = [r for r in rows if r["kind"] == "video"]
    ok = [r for r in videos if r["status"] == "ok"]
    ok_ids = {r["id"] for r in ok}
    errors = {r["id"]: r["error"] for r in videos if r["status"] == "error"}
    segments = [r for r in rows if r["kind"] == "segment" and r["id"] in ok_ids and not r["ambiguous"]]
    ambiguous = [r for r in rows if r["kind"] == "segment" and r["id"] in ok_ids and r["ambiguous"]]
    detection, aps = _detection(ok, segments, ambiguous)
    return {
        "videos": {"total": total if total is not None else len(ok_ids) + len(errors), "ok": len(ok_ids),
                   "error": len(errors), "explained_targets": len(ok), "segments": len(segments)},
        "classification": _classification(ok),
        "temporal_pointing_game": _pointing(segments),
        "detection": detection,
        "spatial_pointing_game": _spatial(ok),
        "faithfulness": _faithfulness(ok),
        "per_class": _per_class(ok, segments, aps),
        "timing": _timing(videos),
        "errors": errors,
    }


def _classification(ok: Sequence[Row]) -> dict[str, Any]:
    """Top-1 accuracy over the explained targets that came from the dataset's labels."""
    labelled = [r for r in ok if r["labelled"]]
    return {"videos": len(labelled),
            "accuracy": _mean([r["predicted"] == r["target"] for r in labelled])}


def _pointing(segments: Sequence[Row]) -> dict[str, Any]:
    """Table 3: the share of ground-truth segments hit by each pointer (random: the expected share)."""
    trials = [r for r in segments if r["hit_evidence"] is not None]
    return {
        "segments": len(trials),
        "random": _mean([r["random_hit_rate"] for r in trials]),
        "peak_probability": _mean([r["hit_probability"] for r in trials]),
        "evidence": _mean([r["hit_evidence"] for r in trials]),
        "probability_plus_evidence": _mean([r["hit_combined"] for r in trials]),
        "either": _mean([r["hit_either"] for r in trials]),
    }


def _detection(ok: Sequence[Row], segments: Sequence[Row], ambiguous: Sequence[Row]
               ) -> tuple[dict[str, Any], dict[str, dict[str, float]]]:
    """Table 4: THUMOS14's mAP at each tIoU threshold, over the classes with ground truth."""
    truths: dict[str, list] = defaultdict(list)
    for r in segments:
        truths[class_key(r)].append((r["id"], (r["gt_start"], r["gt_end"])))
    found: dict[str, list] = defaultdict(list)
    for r in ok:
        for d in r["detections"] or []:
            if d["start"] is not None:
                found[class_key(r)].append((r["id"], (d["start"], d["end"]), d["score"]))
    excused = [(r["id"], (r["gt_start"], r["gt_end"])) for r in ambiguous]
    out: dict[str, Any] = {"classes": len(truths), "segments": len(segments),
                           "protocol": "THUMOS14 kit (2015): per class, detections ranked by score, AP without "
                                       "interpolation, mean over the classes with ground truth",
                           "map": {}}
    aps: dict[str, dict[str, float]] = defaultdict(dict)
    if not truths:
        return out, aps
    for threshold in TIOU_THRESHOLDS:
        mean, per_class = thumos_map(found, truths, threshold, excused)
        out["map"][f"{threshold:.1f}"] = mean
        for c, ap in per_class.items():
            aps[str(c)][f"{threshold:.1f}"] = ap
    out["ap"] = dict(aps)
    return out, aps


def _spatial(ok: Sequence[Row]) -> dict[str, Any]:
    """Table 1: hits over all frames with boxes (Acc = #hits / (#hits + #misses))."""
    with_boxes = [r for r in ok if r["spatial_frames"]]
    frames = sum(r["spatial_frames"] for r in with_boxes)
    hits = sum(r["spatial_hits"] for r in with_boxes)
    return {"videos": len(with_boxes), "frames": frames, "accuracy": hits / frames if frames else None,
            "tolerance_px": PointingGame().tolerance}


def _faithfulness(ok: Sequence[Row]) -> dict[str, Any]:
    """Mean areas and mean curves of deletion and insertion in time, in evidence order and in a random order."""
    measured = [r for r in ok if r["deletion_auc"] is not None]
    out: dict[str, Any] = {"videos": len(measured)}
    for name in FAITHFULNESS:
        out[f"{name}_auc"] = _mean([r[f"{name}_auc"] for r in measured])
    lengths = {len(r["deletion_curve"]) for r in measured}
    if len(lengths) == 1:
        out["curves"] = {name: np.mean([r[f"{name}_curve"] for r in measured], axis=0).tolist()
                         for name in FAITHFULNESS}
    return out


def _per_class(ok: Sequence[Row], segments: Sequence[Row], aps: dict[str, dict[str, float]]) -> dict[str, Any]:
    by_class: dict[str, list[Row]] = defaultdict(list)
    for r in ok:
        by_class[class_key(r)].append(r)
    segs: dict[str, list[Row]] = defaultdict(list)
    for r in segments:
        segs[class_key(r)].append(r)
    out = {}
    for c in sorted(set(by_class) | set(segs)):
        rows, trials = by_class.get(c, []), [r for r in segs.get(c, []) if r["hit_evidence"] is not None]
        frames = sum(r["spatial_frames"] or 0 for r in rows)
        out[c] = {
            "videos": len(rows),
            "accuracy": _mean([r["predicted"] == r["target"] for r in rows if r["labelled"]]),
            "segments": len(trials),
            "pointing_evidence": _mean([r["hit_evidence"] for r in trials]),
            "pointing_probability": _mean([r["hit_probability"] for r in trials]),
            "spatial": sum(r["spatial_hits"] or 0 for r in rows) / frames if frames else None,
            "ap_0.5": aps.get(c, {}).get("0.5"),
            "deletion_auc": _mean([r["deletion_auc"] for r in rows]),
            "insertion_auc": _mean([r["insertion_auc"] for r in rows]),
        }
    return out


def _timing(videos: Sequence[Row]) -> dict[str, Any]:
    """Seconds per video on the workers (the first row of each video carries them)."""
    first = {r["id"]: r for r in reversed(videos)}
    totals = [r["seconds_total"] for r in first.values() if r["seconds_total"] is not None]
    out = {"videos": len(totals), "seconds_per_video": _mean(totals), "worker_seconds": float(np.sum(totals))}
    for part in ("prediction", "explanation", "faithfulness"):
        out[f"{part}_per_video"] = _mean([r[f"seconds_{part}"] for r in first.values()])
    return out
