"""One video of an audit, as a worker runs it: prediction, explanation of each target, the per-video metrics.

:func:`audit_task` is what ``ebr-onnx audit`` hands to each Dask worker (or runs in its own process with
``--workers 0``). The model arrives as bytes (scattered once to every worker) and is loaded once per worker
process and thread (:func:`worker_explainer`). For each video, two passes over its clips, as ``ground`` makes them
(:func:`~ebr_onnx.app.video.clips`, the model's preprocessing):

1. a forward pass: the predicted class (the highest mean probability over the clips at ``--time-step``);
2. for each target (the video's labels; the predicted class where a label is missing), each clip is explained with
   ``ground``'s own steps (:func:`~ebr_onnx.app.pipeline.clip_results`, combined over the video with
   :func:`~ebr_onnx.app.pipeline.combine_clips`) and, with ``steps`` > 0, its deletion and insertion curves are
   measured in evidence order and in a random order (:func:`~ebr_onnx.app.dataset_metrics.deletion_insertion`).

The result is a :class:`VideoOutcome`: the video's rows (one per target, one per ground-truth segment; the columns
of :mod:`ebr_onnx.app.results`) and its maps. Any failure of a video — missing, corrupt, too short, a label the
model does not know — becomes one row with ``status="error"`` and the message: the run goes on.
"""
from __future__ import annotations

import os
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..core.errors import EbrError
from ..explainer import Explainer
from ..methods import RECURRENT_METHODS
from ..methods.volume import VolumeLayout, model_input, volume_layout
from .dataset_metrics import (
    curve_area,
    deletion_insertion,
    evidence_order,
    frames_in_segment,
    interval_iou,
    spatial_hits,
    temporal_pointing,
)
from .datasets import VideoItem, read_boxes
from .localize import peaks_to_frame_coords, spatial_peaks
from .outputs import Evidence, to_json
from .pipeline import (
    GroundOptions,
    clip_length,
    clip_results,
    combine_clips,
    for_volume,
    method_options,
    step_probabilities,
)
from .preprocess import Preprocess, model_preprocess, preprocess
from .video import VideoSource, clips

#: Deletion/insertion steps per clip by default (4·steps − 2 forward passes per clip and target).
DEFAULT_STEPS = 8


@dataclass(frozen=True)
class AuditJob:
    """What every video of a run shares: the ``ground`` options (``target`` unused: each video's labels or its
    prediction), class ``labels`` (read once by the driver), deletion/insertion ``steps`` (0: none), onnxruntime
    ``threads`` per worker (None: its default), the model's SHA-256 (the workers' cache key) and the run's
    ``settings`` (recorded in each video's maps)."""

    options: GroundOptions
    model_sha256: str
    labels: tuple[str, ...] | None = None
    steps: int = DEFAULT_STEPS
    threads: int | None = None
    settings: dict = field(default_factory=dict)


@dataclass
class VideoOutcome:
    """A video's result: its ``rows`` (dicts of :data:`ebr_onnx.app.results.SCHEMA` columns) and its maps as the
    arrays of ``maps/<id>.npz`` (None for an error)."""

    id: str
    rows: list[dict[str, Any]]
    arrays: dict[str, np.ndarray] | None = None

    @property
    def ok(self) -> bool:
        return self.arrays is not None


@dataclass(frozen=True)
class _Model:
    """A worker's loaded model and what follows from it and the options; ``layout``: a 3-D CNN's clip layout
    (None for a model that takes frames)."""

    ex: Explainer
    spec: Preprocess
    T: int
    layer: str | None
    layout: VolumeLayout | None

    def arrange(self, x: np.ndarray) -> np.ndarray:
        """Preprocessed frames ``(T, C, H, W)`` as the model takes them: a 3-D CNN's one clip, else unchanged."""
        return model_input(self.layout, x)


_MODELS: dict[tuple, _Model] = {}


def worker_explainer(model: bytes, job: AuditJob) -> _Model:
    """The model of ``job``, loaded once per worker process (kept by its SHA-256, labels, threads and
    preprocessing) — once per thread on a worker that runs several tasks at a time: an explainer is not shared
    between threads."""
    g = job.options
    key = (threading.get_ident(), job.model_sha256, job.labels, job.threads, g.preset,
           tuple(sorted(g.preprocess_overrides.items())), g.frames, g.layer)
    if key not in _MODELS:
        ex = Explainer(onnx.load_from_string(model), labels=list(job.labels) if job.labels else None,
                       threads=job.threads)
        spec = model_preprocess(ex.graph, g.preset, g.preprocess_overrides)
        layer = g.layer or ex.graph.metadata_json("ebr_onnx.map_layer")
        _MODELS[key] = _Model(ex, spec, clip_length(ex, g.frames), layer, volume_layout(ex.graph, ex.input_name))
    return _MODELS[key]


def audit_task(model: bytes, item: VideoItem, job: AuditJob) -> VideoOutcome:
    """Audit one video on a worker; never raises for a bad video (see the module docstring)."""
    started = time.perf_counter()
    try:
        loaded = worker_explainer(model, job)
        return _audit(loaded, item, job, started)
    except Exception as error:  # noqa: BLE001 — every failure of one video is that video's error row
        message = str(error) if isinstance(error, EbrError) else f"{type(error).__name__}: {error}"
        row = {"kind": "video", "id": item.id, "status": "error", "error": " ".join(message.split()),
               "target_label": item.labels[0] if item.labels else None, "worker": _worker(),
               "seconds_total": time.perf_counter() - started}
        return VideoOutcome(item.id, [row])


def _worker() -> str:
    return f"{os.uname().nodename}:{os.getpid()}"


def _score(model: _Model, options: GroundOptions, target: int):
    """The target's probability for a clip of frames, as the prediction reads it: at ``time_step`` for a recurrent
    model, the mean over the frames (or the clip's one output) for a CNN."""
    ex = model.ex

    def score(x: np.ndarray) -> float:
        probs = step_probabilities(ex, ex.predict(model.arrange(x)), options.time_axis, options.method)
        return float(probs[options.time_step, target] if options.method in RECURRENT_METHODS
                     else probs[:, target].mean())
    return score


def _audit(model: _Model, item: VideoItem, job: AuditJob, started: float) -> VideoOutcome:
    ex = model.ex
    g, notes = for_volume(job.options, model.layout)
    boxes = read_boxes(item.boxes) if item.boxes else None
    source = VideoSource(_video(item.path), every=g.every, target_fps=g.fps, fps=g.source_fps)
    scored = [s for s in item.segments if not s.ambiguous]
    if item.segments and not source.source_fps:
        raise EbrError(f"{item.path} has ground-truth segments in seconds but no frame rate: declare it with "
                       "--source-fps")
    stride = g.stride or model.T
    timings = {"prediction": 0.0, "explanation": 0.0, "faithfulness": 0.0}
    recurrent = g.method in RECURRENT_METHODS

    def inputs():
        for indices, frames in clips(source, model.T, stride):
            yield indices, *preprocess(frames, model.spec)

    t0 = time.perf_counter()
    per_clip = []
    for _, x, _ in inputs():
        probs = step_probabilities(ex, ex.predict(model.arrange(x)), g.time_axis, g.method)
        per_clip.append(probs[g.time_step] if recurrent else probs.mean(axis=0))
    video_probs = np.mean(per_clip, axis=0)
    predicted = int(np.argmax(video_probs))
    timings["prediction"] = time.perf_counter() - t0

    classes = len(video_probs)
    targets = [ex.class_index(label, classes) for label in item.labels]
    if not targets or any(s.label is None for s in scored):
        targets.append(predicted)
    targets = list(dict.fromkeys(targets))
    labelled = {ex.class_index(label, classes) for label in item.labels}

    evidence: dict[int, list[Evidence]] = {k: [] for k in targets}
    curves: dict[int, list[np.ndarray]] = {k: [] for k in targets}
    warnings: list[str] = list(notes)
    seed = zlib.crc32(item.id.encode())
    for number, (indices, x, crop) in enumerate(inputs()):
        for k in targets:
            t0 = time.perf_counter()
            res = ex.explain(model.arrange(x), target=k, method=g.method, layer=model.layer, **method_options(g))
            clip, summary, _ = clip_results(ex, res, number, indices, crop, source, job.settings)
            evidence[k].append(clip)
            warnings += summary["warnings"]
            timings["explanation"] += time.perf_counter() - t0
            if job.steps and len(clip.temporal) == len(x):
                t0 = time.perf_counter()
                steps = min(job.steps, len(x))
                score = _score(model, g, k)
                rng = np.random.default_rng([seed, number, k])
                ordered = deletion_insertion(x, evidence_order(clip.temporal), score, steps)
                shuffled = deletion_insertion(x, rng.permutation(len(x)), score, steps)
                curves[k].append(np.stack([*ordered, *shuffled]))
                timings["faithfulness"] += time.perf_counter() - t0

    fps = source.source_fps
    rows, wholes = [], {}
    for k in targets:
        whole = combine_clips(evidence[k])
        wholes[k] = whole
        rows.append(_video_row(ex, item, k, whole, evidence[k], curves[k], boxes, fps, predicted, video_probs,
                               k in labelled))
    for segment in item.segments:
        k = predicted if segment.label is None else ex.class_index(segment.label, classes)
        if segment.ambiguous:
            rows.append(_segment_row(item, segment, None, None, None, fps, None))
        else:
            rows.append(_segment_row(item, segment, k, wholes[k], evidence[k], fps, rows[targets.index(k)]))
    for row in rows:
        row.update(status="ok", worker=_worker(), fps=fps, clips=len(evidence[targets[0]]),
                   frames=len(wholes[targets[0]].frame_indices),
                   seconds_prediction=timings["prediction"], seconds_explanation=timings["explanation"],
                   seconds_faithfulness=timings["faithfulness"], seconds_total=time.perf_counter() - started,
                   warnings=list(dict.fromkeys(warnings)))
    return VideoOutcome(item.id, rows, _arrays(targets, wholes, job.settings))


def _video(path: str) -> str | np.ndarray:
    """A video's path, or the frames of a ``.npy`` file (a uint8 ``(T, H, W, 3)`` array, never unpickled)."""
    if not path.endswith(".npy"):
        return path
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise EbrError(f"video not found: {path}") from None
    except ValueError as error:
        raise EbrError(f"{path} is not a plain array ({str(error).splitlines()[0]})") from None


def _label(ex: Explainer, k: int) -> str | None:
    return ex.labels[k] if ex.labels and k < len(ex.labels) else None


def _step(indices: np.ndarray) -> float:
    """How many video frames one kept frame stands for (the sampling step)."""
    return float(np.median(np.diff(indices))) if len(indices) > 1 else 1.0


def _seconds(segment, indices: np.ndarray, fps: float | None) -> tuple[float | None, float | None]:
    """An inclusive segment of video frame numbers in seconds: its first frame's start to its last frame's end."""
    if not fps:
        return None, None
    return segment[0] / fps, (segment[1] + _step(indices)) / fps


def _detections(clips: list[Evidence], fps: float | None) -> list[dict[str, Any]]:
    """Each clip's localized segment (§4.1) as a detection, scored by the target's mean probability over it."""
    found = []
    for clip in clips:
        s, e = clip.segment
        inside = (clip.frame_indices >= s) & (clip.frame_indices <= e)
        start, end = _seconds((s, e), clip.frame_indices, fps)
        found.append({"start": start, "end": end, "start_frame": int(s), "end_frame": int(e),
                      "score": float(np.mean(clip.probs[inside]))})
    return found


def _video_row(ex: Explainer, item: VideoItem, k: int, whole: Evidence, clips: list[Evidence], curves: list,
               boxes: dict | None, fps: float | None, predicted: int, video_probs: np.ndarray,
               labelled: bool) -> dict[str, Any]:
    peak = int(np.argmax(whole.temporal))
    start, end = _seconds(whole.segment, whole.frame_indices, fps)
    row: dict[str, Any] = {
        "kind": "video", "id": item.id, "target": k, "target_label": _label(ex, k), "labelled": labelled,
        "predicted": predicted, "predicted_label": _label(ex, predicted),
        "probability": float(video_probs[predicted]), "target_probability": float(video_probs[k]),
        "segment_start": start, "segment_end": end,
        "segment_start_frame": int(whole.segment[0]), "segment_end_frame": int(whole.segment[1]),
        "detections": _detections(clips, fps),
        "evidence_peak_frame": int(whole.frame_indices[peak]), "evidence_peak": float(whole.temporal[peak]),
        "evidence_peak_seconds": None if not fps else float(whole.frame_indices[peak]) / fps,
    }
    if boxes is not None:
        points = peaks_to_frame_coords(spatial_peaks(whole.maps), whole.maps.shape[1:], whole.crop_box)
        row["spatial_hits"], row["spatial_frames"] = spatial_hits(points, whole.frame_indices, boxes)
    if curves:
        mean = np.mean(curves, axis=0)   # (4, steps + 1): deletion, insertion, then the random order's
        names = ("deletion", "insertion", "deletion_random", "insertion_random")
        for name, curve in zip(names, mean):
            row[f"{name}_curve"] = curve.tolist()
            row[f"{name}_auc"] = float(np.mean([curve_area(c[names.index(name)]) for c in curves]))
    return row


def _segment_row(item: VideoItem, segment, k: int | None, whole: Evidence | None, clips: list[Evidence] | None,
                 fps: float, video_row: dict | None) -> dict[str, Any]:
    """A ground-truth segment's row: the temporal pointing game within the clips that overlap it, and the best
    tIoU of the video's detections of its class."""
    row: dict[str, Any] = {"kind": "segment", "id": item.id, "gt_start": segment.start, "gt_end": segment.end,
                           "ambiguous": segment.ambiguous, "target_label": segment.label}
    if whole is None or video_row is None:
        return row
    row.update(target=k, target_label=video_row["target_label"], labelled=segment.label is not None)
    interval = (segment.start, segment.end)
    step = _step(whole.frame_indices)
    truth = frames_in_segment(whole.frame_indices, fps, interval, step)
    overlapping = [c.frame_indices for c in clips if frames_in_segment(c.frame_indices, fps, interval, step).any()]
    if overlapping:
        window = np.isin(whole.frame_indices, np.concatenate(overlapping))
        trial = temporal_pointing(whole.frame_indices, whole.temporal, whole.probs, window, truth)
        row.update(pointer_evidence=trial.evidence, pointer_probability=trial.probability,
                   pointer_combined=trial.combined, hit_evidence=trial.hit_evidence,
                   hit_probability=trial.hit_probability, hit_combined=trial.hit_combined,
                   hit_either=trial.hit_either, random_hit_rate=trial.random)
    found = [(d["start"], d["end"]) for d in video_row["detections"]]
    row["best_tiou"] = max((interval_iou(interval, d) for d in found), default=0.0)
    return row


def _arrays(targets: list[int], wholes: dict[int, Evidence], settings: dict) -> dict[str, np.ndarray]:
    """The maps of a video, one entry per target on the first axis (``maps/<id>.npz``)."""
    first = wholes[targets[0]]
    box = first.crop_box
    return {
        "targets": np.array(targets, dtype=np.int64),
        "frame_indices": np.asarray(first.frame_indices),
        "maps": np.stack([wholes[k].maps for k in targets]),
        "temporal": np.stack([wholes[k].temporal for k in targets]),
        "probs": np.stack([wholes[k].probs for k in targets]),
        "segments": np.array([wholes[k].segment for k in targets], dtype=np.int64),
        "crop_box": np.array([box.x0, box.y0, box.x1, box.y1]),
        "frame_size": np.array(box.frame_size, dtype=np.int64),
        "settings": np.array(to_json(settings)),
    }
