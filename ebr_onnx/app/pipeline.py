"""From a video to evidence: clips → preprocessing → explanation → temporal/spatial localization → files.

One function, :func:`ground`, drives what ``ebr-onnx ground`` does; each clip's results are written as soon as they
are computed (:func:`ebr_onnx.app.outputs.write_results`), so a failure in a later clip keeps the earlier ones.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..core.errors import EbrError
from ..explainer import Explainer
from ..methods import RECURRENT_METHODS
from .localize import peaks_to_frame_coords, spatial_peaks, temporal_segment
from .outputs import ClipResults, progress, write_results
from .preprocess import Preprocess, get_preset, preprocess
from .video import VideoSource, clips


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
    preset: str | None = None
    preprocess_overrides: dict[str, Any] = field(default_factory=dict)
    recurrent_rules: str = "caffe"
    time_step: int = -1
    quiet: bool = False
    animations: Sequence[str] = ("gif",)
    labels: str | None = None


def model_preprocess(ex: Explainer, preset: str | None, overrides: dict[str, Any] | None = None) -> Preprocess:
    """The preprocessing: a named preset, else the one recorded in the model's metadata (else, with custom
    ``overrides``, the identity transform), with ``overrides`` (size, crop, mean, std, channel_order, scale) applied."""
    if overrides:
        try:
            base = model_preprocess(ex, preset)
        except EbrError:
            base = Preprocess(size=None, crop=None)
        return replace(base, **overrides)
    if preset is not None:
        return get_preset(preset)
    meta = ex.graph.metadata_json("ebr_onnx.preprocess")
    if isinstance(meta, str):
        return get_preset(meta)
    if isinstance(meta, dict):
        if "preset" in meta:
            return get_preset(meta["preset"])
        fields = {k: meta[k] for k in ("size", "crop", "mean", "std", "channel_order", "scale") if k in meta}
        for key in ("size", "crop", "mean", "std"):
            if isinstance(fields.get(key), list):
                fields[key] = tuple(fields[key])
        return Preprocess(**fields)
    raise EbrError("the model records no preprocessing: pass --preset (caffe-ucf101, imagenet) or custom flags")


def clip_length(ex: Explainer, frames: int | None) -> int:
    """T: the flag, else the model's metadata, else the fixed first dimension of its input."""
    if frames is not None:
        return frames
    recorded = ex.graph.metadata_json("ebr_onnx.frames")
    if recorded:
        return int(recorded)
    dims = ex.graph.shapes.get(ex.input_name) or ()
    if dims and isinstance(dims[0], int) and dims[0] > 0:
        return int(dims[0])
    raise EbrError("the model does not fix the clip length: pass --frames T")


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    z = logits - logits.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=axis, keepdims=True)


def ground(model: str | Path, video: str | Path | np.ndarray, out: str | Path, options: GroundOptions,
           truth: tuple[int, int] | None = None) -> dict[str, Any]:
    """Ground ``options.target`` in every clip of ``video`` and write the results under ``out``; returns the summary."""
    started = time.perf_counter()
    ex = Explainer(model, labels=options.labels)
    spec = model_preprocess(ex, options.preset, options.preprocess_overrides)
    T = clip_length(ex, options.frames)
    layer = options.layer or ex.graph.metadata_json("ebr_onnx.map_layer")
    source = VideoSource(video, every=options.every, target_fps=options.fps)
    out = Path(out)
    clip_summaries = []
    for number, (indices, frames) in enumerate(progress(clips(source, T, options.stride), "clips", options.quiet)):
        t0 = time.perf_counter()
        x, crop = preprocess(frames, spec)
        kwargs = dict(time_step=options.time_step, recurrent_rules=options.recurrent_rules) \
            if options.method in RECURRENT_METHODS else {}
        res = ex.explain(x, target=options.target, method=options.method, layer=layer, **kwargs)
        seconds = time.perf_counter() - t0
        probs = _class_probs(ex, res)
        target = res.target[0]
        curve = res.temporal if res.temporal is not None else res.maps.reshape(len(res.maps), -1).sum(axis=1)
        segment = temporal_segment(curve)
        peaks = peaks_to_frame_coords(spatial_peaks(res.maps), res.maps.shape[1:], crop)
        fps = source.fps
        summary = {
            "clip": number,
            "frames": [int(indices[0]), int(indices[-1])],
            "target": {"index": target, "label": _label(ex, target)},
            "top5": _top5(ex, probs[-1]),
            "segment_frames": [int(indices[segment[0]]), int(indices[segment[1]])],
            "segment_seconds": None if not fps else [float(indices[segment[0]] / fps),
                                                      float((indices[segment[1]] + 1) / fps)],
            "peaks_yx": np.round(peaks, 1).tolist(),
            "warnings": res.warnings,
            "seconds": round(seconds, 3),
        }
        clip_dir = out if number == 0 else out / f"clip_{number:03d}"
        results = ClipResults(
            maps=res.maps, temporal=curve, frame_indices=indices,
            settings={"model": str(model) if not isinstance(model, np.ndarray) else "array",
                      "method": options.method, "layer": res.layer, "target": target,
                      "recurrent_rules": options.recurrent_rules, "time_step": options.time_step, "T": T},
            frames=frames, crop_box=crop, probs=probs[:, target], segment=segment, truth=truth, summary=summary,
            fps=fps, signed=options.method in ("ceb", "cebr", "grad", "gradr"),
        )
        files = write_results(clip_dir, results, animations=options.animations, quiet=options.quiet)
        summary["files"] = files
        clip_summaries.append(summary)
    return {"model": str(model), "video": str(video) if not isinstance(video, np.ndarray) else "array",
            "clips": clip_summaries, "seconds": round(time.perf_counter() - started, 3)}


def _class_probs(ex: Explainer, res) -> np.ndarray:
    """Per-frame class probabilities (T, K) from the explained output (softmax over the class axis)."""
    out = np.asarray(res.output, dtype=np.float64)
    frames = res.maps.shape[0]
    classes = out.shape[-1]
    per_step = out.reshape(-1, classes)
    probs = softmax(per_step)
    if len(probs) != frames:
        probs = np.repeat(probs[-1:], frames, axis=0)
    return probs


def _label(ex: Explainer, index: int) -> str | None:
    return ex.labels[index] if ex.labels and index < len(ex.labels) else None


def _top5(ex: Explainer, probs: np.ndarray) -> list[dict[str, Any]]:
    order = np.argsort(-probs)[:5]
    return [{"index": int(k), "label": _label(ex, int(k)), "probability": float(probs[k])} for k in order]
