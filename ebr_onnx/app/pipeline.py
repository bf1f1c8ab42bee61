"""From a video to evidence: clips → preprocessing → explanation → temporal/spatial localization → files.

:func:`ground` drives what ``ebr-onnx ground`` does, in three passes over the video's clips:

1. only when no target is given, a forward pass over all clips: the target is the class with the highest mean
   probability at the explained time step, one class for the whole video;
2. the explanation of each clip, whose ``maps.npz`` and ``summary.json`` are written as soon as it is computed (a
   failure in a later clip keeps them); then the whole video's curve, segments, ``maps.npz`` and ``summary.json``;
3. the pictures (unless ``pictures=False``): one colour scale for the whole video
   (:meth:`ebr_onnx.app.colour.ColourScale.robust`), each clip's overlays, contact sheet and animation, written on
   a pool of threads, and the video's ``evidence.png``. The clips are decoded again for this pass: nothing holds
   more than one clip's frames.

Where clips overlap (``stride`` < T), a video frame's map, evidence and probability are the means over the clips
that contain it. The layout of the folder is in :mod:`ebr_onnx.app.outputs`.
"""
from __future__ import annotations

import hashlib
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import EbrError
from ..core.numeric import sigmoid
from ..core.result import ExplainResult
from ..core.targets import cnn_scores, logits_below
from ..explainer import Explainer
from ..methods import RECURRENT_METHODS
from ..methods.volume import VolumeLayout, model_input, volume_layout
from .colour import ColourScale
from .localize import peaks_to_frame_coords, spatial_peaks, temporal_segment
from .outputs import Evidence, PictureWriter, atomic_path, picture_files, write_evidence, write_json, write_pictures
from .overlay import evidence_plot
from .preprocess import Preprocess, model_preprocess, preprocess
from .progress import ClipProgress
from .video import VideoSource, clips

#: The methods whose maps are signed (drawn on a scale symmetric around 0).
SIGNED_METHODS = ("ceb", "cebr", "grad", "gradr", "grad_x_input")


@dataclass(frozen=True)
class GroundOptions:
    """What to explain and how (the ``ground`` command's flags)."""

    target: str | int | None = None
    method: str = "cebr"
    layer: str | None = None
    frames: int | None = None
    stride: int | None = None
    every: int = 1
    fps: float | None = None
    source_fps: float | None = None
    preset: str | None = None
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)
    recurrent_rules: str = "caffe"
    time_step: int = -1
    time_axis: int | None = None
    boundary: str | None = None
    classifier: str | None = None
    quiet: bool = False
    pictures: bool = True
    animations: Sequence[str] = ("gif",)
    labels: str | None = None


def clip_length(ex: Explainer, frames: int | None) -> int:
    """T: the flag, else the model's metadata, else the fixed first dimension of its input."""
    if frames is not None:
        return frames
    recorded = ex.graph.metadata_json("ebr_onnx.frames")
    if recorded:
        return int(recorded)
    dims = ex.graph.shapes.get(ex.input_name) or ()
    layout = volume_layout(ex.graph, ex.input_name)
    if layout is not None and layout.frames():  # a 3-D CNN: its clip's time axis
        return layout.frames()
    if dims and isinstance(dims[0], int) and dims[0] > 0 and layout is None:
        return int(dims[0])
    raise EbrError("the model does not fix the clip length: pass --frames T")


def clip_count(frame_count: int | None, T: int, stride: int) -> int | None:
    """How many clips :func:`ebr_onnx.app.video.clips` cuts from ``frame_count`` frames (None: unknown)."""
    if frame_count is None or frame_count < T:
        return None
    full = (frame_count - T) // stride + 1
    return full + int((frame_count - T) % stride != 0)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def check_out_dir(out: Path) -> None:
    """``out`` must be a folder or not exist yet (checked before any work is done)."""
    if out.exists() and not out.is_dir():
        raise EbrError(f"--out {str(out)!r} exists and is not a folder: name a folder (it is created if missing)")


def ground(model: str | Path, video: str | Path | np.ndarray, out: str | Path, options: GroundOptions,
           truth: tuple[int, int] | None = None) -> dict[str, Any]:
    """Ground ``options.target`` in every clip of ``video`` and write the results under ``out``; returns the whole
    video's summary. ``truth``: a ground-truth segment (video frame numbers, inclusive) drawn on the plot."""
    started = time.perf_counter()
    out = Path(out)
    check_out_dir(out)
    picture_files([], options.animations)   # checks the formats before any work
    ex = Explainer(model, labels=options.labels)
    layout = volume_layout(ex.graph, ex.input_name)
    options, notes = _for_volume(options, layout)
    spec = model_preprocess(ex.graph, options.preset, options.preprocess_overrides)
    T = clip_length(ex, options.frames)
    stride = options.stride or T
    layer = options.layer or ex.graph.metadata_json("ebr_onnx.map_layer")
    source = VideoSource(video, every=options.every, target_fps=options.fps, fps=options.source_fps)
    total = clip_count(source.frame_count, T, stride)
    timings = {"prediction": 0.0, "explanation": 0.0, "outputs": 0.0}
    kwargs = _method_options(options)

    def inputs():
        for indices, frames in clips(source, T, stride):
            x, crop = preprocess(frames, spec)
            yield indices, frames, model_input(layout, x), crop

    target = options.target
    if target is None:
        t0 = time.perf_counter()
        target = _video_prediction(ex, inputs(), options, total)
        timings["prediction"] = time.perf_counter() - t0

    settings = _settings(model, options, spec, T, stride, source, layer)
    results: list[Evidence] = []
    summaries: list[dict[str, Any]] = []
    last_step: list[np.ndarray] = []
    with ClipProgress("explaining", total, options.quiet) as bar:
        for number, (indices, frames, x, crop) in enumerate(inputs()):
            t0 = time.perf_counter()
            res = ex.explain(x, target=target, method=options.method, layer=layer, progress=bar.within, **kwargs)
            timings["explanation"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            clip, summary, probs = _clip_results(ex, res, number, indices, crop, source, settings)
            write_evidence(out / _clip_dir(number), clip, summary)
            results.append(clip)
            summaries.append(summary)
            last_step.append(probs)
            timings["outputs"] += time.perf_counter() - t0
            bar.clip_done()

    t0 = time.perf_counter()
    whole = _combine(results)
    k = results[0].settings["target"]
    summary = {
        "model": str(model), "video": source.name, "settings": whole.settings,
        "target": {"index": k, "label": _label(ex, k)},
        "top5": _top5(ex, np.mean(last_step, axis=0)),
        **_localized(whole, source),
        "clips": [{key: s[key] for key in ("clip", "frames", "segment_frames", "segment_seconds")}
                  for s in summaries],
        "files": ["evidence.png"] if options.pictures else [],
        "warnings": list(dict.fromkeys([*notes, *(w for s in summaries for w in s["warnings"])])),
    }
    if options.pictures:
        scale = ColourScale.robust([r.maps for r in results], signed=options.method in SIGNED_METHODS)
        summary["colour_scale"] = {"limit": scale.limit, "signed": scale.signed, "rule": scale.rule}
        _pictures(out, source, T, stride, results, summaries, scale, options, truth, whole)
    timings["outputs"] += time.perf_counter() - t0
    summary["seconds"] = {**{k: round(v, 3) for k, v in timings.items()},
                          "total": round(time.perf_counter() - started, 3)}
    write_evidence(out, whole, summary)
    return summary


#: The CNN method a recurrent method name stands for on a 3-D CNN (no recurrence: the clip is one input).
VOLUME_METHODS = {"ebr": "eb", "cebr": "ceb", "gradr": "grad"}


def _for_volume(options: GroundOptions, layout: VolumeLayout | None) -> tuple[GroundOptions, list[str]]:
    """On a 3-D CNN the recurrent methods run as their CNN counterparts (cebr → ceb …), with a note saying so."""
    if layout is None or options.method not in VOLUME_METHODS:
        return options, []
    method = VOLUME_METHODS[options.method]
    note = (f"the model is a 3-D CNN (input {layout.describe()}, no recurrence): method {options.method} runs as "
            f"{method} on each clip")
    return replace(options, method=method), [note]


def _method_options(options: GroundOptions) -> dict[str, Any]:
    if options.method in RECURRENT_METHODS:
        return dict(time_step=options.time_step, recurrent_rules=options.recurrent_rules,
                    boundary=options.boundary, time_axis=options.time_axis, classifier=options.classifier)
    if options.boundary is not None or options.time_axis is not None:
        raise EbrError(f"--boundary and --time-axis apply to the recurrent methods {RECURRENT_METHODS} only")
    return dict(classifier=options.classifier)


def _video_prediction(ex: Explainer, inputs, options: GroundOptions, total: int | None) -> int:
    """The class with the highest mean probability over the clips (a forward pass only)."""
    mean, count = None, 0
    with ClipProgress("predicting", total, options.quiet) as bar:
        for _, _, x, _ in inputs:
            probs = step_probabilities(ex, ex.predict(x), options.time_axis, options.method)
            per_clip = probs[options.time_step] if options.method in RECURRENT_METHODS else probs.mean(axis=0)
            mean = per_clip if mean is None else mean + per_clip
            count += 1
            bar.clip_done()
    return int(np.argmax(mean / count))


def step_probabilities(ex: Explainer, logits: np.ndarray, time_axis: int | None, method: str) -> np.ndarray:
    """Class probabilities ``(steps, classes)`` of a clip's logits: per time step for a recurrent output (its time
    axis first), per example (frame) for a CNN; softmax over the classes, or a sigmoid where the model's output is
    one (multi-label heads)."""
    logits = np.asarray(logits, dtype=np.float64)
    if method in RECURRENT_METHODS:
        axis = time_axis if time_axis is not None else 0
        steps = np.moveaxis(logits, axis, 0) if logits.ndim > 1 else logits[None]
        scores = steps.reshape(len(steps), -1, steps.shape[-1])[:, 0]
    else:
        scores = cnn_scores(logits) if logits.ndim > 1 else logits[None]
    if "Sigmoid" in logits_below(ex.graph, ex.graph.outputs[0])[1]:
        return np.asarray(sigmoid(np, scores))
    return softmax(scores)


def _clip_results(ex: Explainer, res: ExplainResult, number: int, indices: np.ndarray, crop, source: VideoSource,
                  settings: dict) -> tuple[Evidence, dict[str, Any], np.ndarray]:
    """A clip's :class:`Evidence`, its summary (segment, peaks, top-5) and its class probabilities at the last
    step. A 3-D CNN's clip (one example whose layer keeps time) is put on its frames first: each frame the map and
    evidence of its layer time slice (:meth:`~ebr_onnx.core.result.ExplainResult.frame_maps`)."""
    if res.info.map_fields:
        res = replace(res, maps=res.frame_maps(pixels=False)[0], temporal=res.frame_temporal()[0])
    maps = res.maps
    if maps.ndim != 3:
        raise EbrError(f"the maps at {res.layer!r} have shape {maps.shape}, not one (h, w) map per frame: choose a "
                       "convolutional layer (or the input) with --layer")
    curve = res.temporal if res.temporal is not None else maps.reshape(len(maps), -1).sum(axis=1)
    probs = step_probabilities(ex, res.output, res.info.time_axis, res.method)
    per_frame = probs if len(probs) == len(maps) else np.repeat(probs[-1:], len(maps), axis=0)
    target = res.target[0]
    start, end = temporal_segment(curve)
    segment = (int(indices[start]), int(indices[end]))
    peaks = peaks_to_frame_coords(spatial_peaks(maps), maps.shape[1:], crop)
    settings = {**settings, "target": target, "target_label": _label(ex, target), "layer": res.layer}
    summary = {
        "clip": number,
        "frames": [int(indices[0]), int(indices[-1])],
        "target": {"index": target, "label": _label(ex, target)},
        "top5": _top5(ex, probs[-1]),
        "segment_frames": list(segment),
        "segment_seconds": _seconds(segment, indices, source),
        "peaks_yx": np.round(peaks, 1).tolist(),
        "warnings": res.warnings,
    }
    clip = Evidence(maps, curve, indices, settings, probs=per_frame[:, target], segment=segment, crop_box=crop)
    return clip, summary, probs[-1]


def _combine(results: list[Evidence]) -> Evidence:
    """The whole video: each explained frame once, its map, evidence and probability averaged over the clips that
    contain it."""
    indices = np.unique(np.concatenate([r.frame_indices for r in results]))
    maps = np.zeros((len(indices), *results[0].maps.shape[1:]), np.float64)
    curve, probs, counts = (np.zeros(len(indices)) for _ in range(3))
    for r in results:
        rows = np.searchsorted(indices, r.frame_indices)
        maps[rows] += r.maps
        curve[rows] += r.temporal
        probs[rows] += r.probs
        counts[rows] += 1
    start, end = temporal_segment(curve / counts)
    return Evidence((maps / counts[:, None, None]).astype(results[0].maps.dtype), curve / counts, indices,
                    results[0].settings,
                    probs=probs / counts, segment=(int(indices[start]), int(indices[end])),
                    crop_box=results[0].crop_box)


def _localized(whole: Evidence, source: VideoSource) -> dict[str, Any]:
    """The whole video's segment (in video frames and seconds) and its evidence peak."""
    peak = int(np.argmax(whole.temporal))
    return {"segment_frames": list(whole.segment),
            "segment_seconds": _seconds(whole.segment, whole.frame_indices, source),
            "evidence_peak": {"frame": int(whole.frame_indices[peak]), "evidence": float(whole.temporal[peak])}}


def _seconds(segment: Sequence[int], indices: np.ndarray, source: VideoSource) -> list[float] | None:
    """A segment of video frame numbers in seconds: from its first frame's start to its last frame's end (a kept
    frame lasts the sampling step)."""
    if not source.source_fps:
        return None
    step = float(np.median(np.diff(indices))) if len(indices) > 1 else 1.0
    return [round(segment[0] / source.source_fps, 3), round((segment[1] + step) / source.source_fps, 3)]


def _pictures(out: Path, source: VideoSource, T: int, stride: int, results: list[Evidence],
              summaries: list[dict[str, Any]], scale: ColourScale, options: GroundOptions,
              truth: tuple[int, int] | None, whole: Evidence) -> None:
    """Each clip's overlays, sheet and animation, then the video's evidence plot; the clips' summaries list them."""
    with ClipProgress("pictures", len(results), options.quiet) as bar, PictureWriter() as writer:
        for (indices, frames), clip, summary in zip(clips(source, T, stride), results, summaries):
            if not np.array_equal(indices, clip.frame_indices):
                raise EbrError(f"{source.name} gave other frames on a second read: cannot draw its pictures")
            job = writer.submit(write_pictures, out / _clip_dir(summary["clip"]), frames, clip, scale,
                                animations=options.animations, fps=source.fps)
            job.add_done_callback(lambda _: bar.clip_done())
            summary["files"] = picture_files(clip.frame_indices, options.animations)
        run = whole.settings
        title = (f"{Path(run['model']).name} · target {run['target_label'] or run['target']} · {run['method']} · "
                 f"layer {run['layer']}")
        writer.submit(_plot, out / "evidence.png", whole.frame_indices, whole.temporal, probs=whole.probs,
                      segment=whole.segment, truth=truth, fps=source.source_fps, title=title, maps=whole.maps,
                      scale=scale)
        writer.wait()
    for clip, summary in zip(results, summaries):
        files = ["maps.npz", *summary["files"], "summary.json"]
        write_json(out / _clip_dir(summary["clip"]) / "summary.json", {**summary, "files": files})


def _plot(path: Path, *args: Any, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        evidence_plot(tmp, *args, **kwargs)


def _clip_dir(number: int) -> str:
    return f"clip_{number:03d}"


def _settings(model: str | Path, options: GroundOptions, spec: Preprocess, T: int, stride: int,
              source: VideoSource, layer: str | None) -> dict[str, Any]:
    """What produced the results: model file and hash, method, rules, preprocessing, sampling, versions."""
    path = Path(model)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    versions = {name: _version(name) for name in ("ebr_onnx", "onnx", "onnxruntime", "numpy")}
    return {
        "model": str(path), "model_sha256": digest.hexdigest(), "method": options.method, "layer": layer or "input",
        "recurrent_rules": options.recurrent_rules if options.method in ("ebr", "cebr") else None,
        "time_step": options.time_step, "time_axis": options.time_axis, "boundary": options.boundary,
        "classifier": options.classifier, "T": T, "stride": stride, "every": options.every, "fps": options.fps,
        "source_fps": source.source_fps, "preprocess": asdict(spec),
        "versions": {**versions, "python": platform.python_version()},
    }


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _label(ex: Explainer, index: int) -> str | None:
    return ex.labels[index] if ex.labels and index < len(ex.labels) else None


def _top5(ex: Explainer, probs: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:5]
    return [{"index": int(k), "label": _label(ex, int(k)), "probability": float(probs[k])} for k in order]


# ground()'s per-clip steps, for other drivers of the same work (ebr_onnx.app.video_audit): one home for each.
method_options = _method_options
for_volume = _for_volume
clip_results = _clip_results
combine_clips = _combine
run_settings = _settings
