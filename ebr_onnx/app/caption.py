"""``ebr-onnx caption``: ground the words of a video's caption in space and time (paper §4.2, §6).

:func:`caption_video` reads the video, samples the model's T frames evenly over it (all frames when the model does
not fix T), preprocesses them as the model records, and

1. takes the caption given (``--caption``, fed to a teacher-forced model after ``<bos>``) or decodes it greedily:
   a teacher-forced model word by word (each forward pass fed the words so far), a model with its own decoding loop
   in one run;
2. explains each requested word (default: every noun the model's metadata lists that the caption holds) at its
   first step in the caption (:mod:`ebr_onnx.recurrent.words`) with a recurrent method (default cEB-R): one map per
   frame and the evidence curve, whose localized segment (§4.1) says when the word's object is seen;
3. writes, per word, a folder ``word_NN_<word>/`` with ``maps.npz``, ``summary.json``, ``evidence.png`` (the curve,
   the segment, the maps at ten frames), ``sheet.png``, ``overlays/frame_NNNNN.jpg`` and the animation
   (:mod:`ebr_onnx.app.outputs`), all on one colour scale for the whole caption; then ``caption_sheet.png`` (the
   caption with each word's best frame: the peak of its evidence) and ``summary.json`` (the caption, each word's
   step, probability, segment, peak frame and seconds, the settings).
"""
from __future__ import annotations

import hashlib
import platform
import re
import time
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from ..core.errors import EbrError
from ..explainer import Explainer
from ..methods import RECURRENT_METHODS
from ..recurrent.words import CaptionSpec, caption_spec, caption_text, check_word
from .colour import ColourScale, label_font
from .localize import temporal_segment
from .outputs import (
    Evidence,
    PictureWriter,
    atomic_path,
    picture_files,
    write_evidence,
    write_json,
    write_pictures,
    write_png,
)
from .overlay import evidence_plot, overlays
from .preprocess import model_preprocess, preprocess
from .video import VideoSource

#: The methods whose maps are signed (drawn on a scale symmetric around 0).
_SIGNED = ("cebr", "gradr")
_TILE = 160


@dataclass(frozen=True)
class CaptionOptions:
    """What to ground and how (the ``caption`` command's flags)."""

    caption: str | None = None
    words: Sequence[str] | None = None
    method: str = "cebr"
    layer: str | None = None
    frames: int | None = None
    every: int = 1
    fps: float | None = None
    source_fps: float | None = None
    preset: str | None = None
    recurrent_rules: str = "caffe"
    labels: str | None = None
    pictures: bool = True
    animations: Sequence[str] = ("gif",)


@dataclass(frozen=True)
class Caption:
    """A caption: its ``words`` and the ``fed`` ids a teacher-forced model reads (None for a decoder)."""

    words: list[str]
    fed: np.ndarray | None


def caption_video(model: str | Path, video: str | Path | np.ndarray, out: str | Path, options: CaptionOptions
                  ) -> dict[str, Any]:
    """Ground the caption's words in ``video`` and write the results under ``out`` (see the module docstring);
    returns the run's summary."""
    started = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise EbrError(f"--out {str(out)!r} exists and is not a folder: name a folder (it is created if missing)")
    if options.method not in RECURRENT_METHODS:
        raise EbrError(f"method {options.method!r} does not ground words; use one of {', '.join(RECURRENT_METHODS)}")
    picture_files([], options.animations)   # checks the formats before any work
    ex = Explainer(model, labels=options.labels)
    if ex.labels is None:
        raise EbrError("the model has no vocabulary: record it as ebr_onnx.labels in its metadata or pass --labels "
                       "FILE (one word per line)")
    spec = caption_spec(ex.graph, ex.input_name, ex.labels)
    teacher = spec.words_input is not None and spec.words_input in ex.graph.inputs
    pre = model_preprocess(ex.graph, options.preset)
    source = VideoSource(video, every=options.every, target_fps=options.fps, fps=options.source_fps)
    indices, frames = _sample(source, options.frames or ex.graph.metadata_json("ebr_onnx.frames"))
    x, crop = preprocess(frames, pre)
    t0 = time.perf_counter()
    caption = _given(options.caption, spec, ex.labels, teacher) if options.caption else _decode(ex, x, spec, teacher)
    decoding = time.perf_counter() - t0
    sentence = caption_text(caption.words, spec)
    words = _requested(options.words, caption.words, spec, ex.labels, sentence)
    layer = options.layer or ex.graph.metadata_json("ebr_onnx.map_layer")
    extra = {spec.words_input: caption.fed} if teacher else None
    settings = _settings(model, options, pre, layer, len(frames), source)

    results: list[dict[str, Any]] = []
    for k, word in enumerate(words):
        t0 = time.perf_counter()
        res = ex.explain(x, target=word, method=options.method, layer=layer, time_step="first",
                         recurrent_rules=options.recurrent_rules, extra_inputs=extra)
        seconds = time.perf_counter() - t0
        if res.maps.ndim != 3:
            raise EbrError(f"the maps at {res.layer!r} have shape {res.maps.shape}, not one (h, w) map per frame: "
                           "choose a convolutional layer (or the input) with --layer")
        step = res.info.time_steps[0]
        logits = np.moveaxis(res.output, res.info.time_axis, 0).reshape(res.output.shape[res.info.time_axis], -1,
                                                                         res.output.shape[-1])[step, 0]
        probs = np.exp(logits - logits.max())
        start, end = temporal_segment(res.temporal)
        peak = int(np.argmax(res.temporal))
        folder = f"word_{k:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', word)}"
        entry = {"word": word, "step": step, "probability": float(probs[ex.labels.index(word)] / probs.sum()),
                 "folder": folder, "segment_frames": [int(indices[start]), int(indices[end])],
                 "best_frame": int(indices[peak]), "evidence_peak": float(res.temporal[peak]),
                 "seconds": round(seconds, 4), "warnings": res.warnings}
        evidence = Evidence(res.maps, res.temporal, indices, {**settings, "word": word, "layer": res.layer},
                            segment=entry["segment_frames"], crop_box=crop)
        write_evidence(out / folder, evidence, {**entry, "caption": sentence})
        results.append({**entry, "evidence": evidence, "peak_index": peak})

    summary: dict[str, Any] = {
        "model": str(model), "video": source.name, "caption": sentence, "caption_given": options.caption is not None,
        "steps": caption.words, "words": [{k: v for k, v in r.items() if k not in ("evidence", "peak_index")}
                                          for r in results],
        "frames": indices.tolist(), "settings": settings, "files": [],
    }
    if options.pictures:
        scale = ColourScale.robust([r["evidence"].maps for r in results], signed=options.method in _SIGNED)
        summary["colour_scale"] = {"limit": scale.limit, "signed": scale.signed, "rule": scale.rule}
        _pictures(out, frames, crop, results, scale, sentence, options, source)
        summary["files"] = ["caption_sheet.png"]
    elapsed = time.perf_counter() - started
    summary["seconds"] = {"decoding": round(decoding, 3), "explanation": round(sum(r["seconds"] for r in results), 3),
                          "total": round(elapsed, 3)}
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", {**summary, "files": [*summary["files"], "summary.json"]})
    return summary


def _sample(source: VideoSource, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The video's frames (and their numbers), ``count`` of them evenly spread when it has more."""
    pairs = list(source)
    if not pairs:
        raise EbrError(f"{source.name} has no frames")
    if count and len(pairs) > int(count):
        pairs = [pairs[int(i)] for i in np.unique(np.linspace(0, len(pairs) - 1, int(count)).round())]
    return np.array([i for i, _ in pairs], dtype=np.int64), np.stack([f for _, f in pairs])


def _given(text: str, spec: CaptionSpec, labels: Sequence[str], teacher: bool) -> Caption:
    """A caption typed by the user: its words checked against the vocabulary, fed after ``<bos>``."""
    if not teacher:
        raise EbrError("the model decodes its own caption (it has no words input): leave out --caption")
    words = text.split()
    if not words:
        raise EbrError("--caption is empty")
    for w in words:
        check_word(w, labels, "caption word")
    if spec.bos is None:
        raise EbrError("the model's vocabulary has no <bos> token to start a fed caption with (ebr_onnx.caption)")
    ids = [labels.index(w) for w in [spec.bos, *words]]
    return Caption([*words, spec.eos or ""], np.array(ids, dtype=np.int64))


def _decode(ex: Explainer, x: np.ndarray, spec: CaptionSpec, teacher: bool) -> Caption:
    """The model's own caption: greedy, word by word for a teacher-forced model, one run for a decoder."""
    labels = ex.labels
    if not teacher:
        logits = ex.predict(x)
        steps = logits.reshape(logits.shape[0], -1, logits.shape[-1])[:, 0]
        return Caption([labels[int(k)] for k in steps.argmax(axis=1)], None)
    if spec.bos is None:
        raise EbrError("the model's vocabulary has no <bos> token to start decoding with (ebr_onnx.caption)")
    ids = [labels.index(spec.bos)]
    for _ in range(spec.max_steps):
        logits = ex.predict(x, extra_inputs={spec.words_input: np.array(ids, dtype=np.int64)})
        word = int(logits.reshape(logits.shape[0], -1, logits.shape[-1])[-1, 0].argmax())
        if labels[word] == spec.eos:
            break
        ids.append(word)
    return Caption([labels[k] for k in ids[1:]] + [spec.eos or ""], np.array(ids, dtype=np.int64))


def _requested(words: Sequence[str] | None, caption: list[str], spec: CaptionSpec, labels: Sequence[str],
               sentence: str) -> list[str]:
    """The words to ground: those given (each in the vocabulary and the caption), else the caption's nouns."""
    if words:
        for w in words:
            check_word(w, labels)
            if w not in caption:
                raise EbrError(f"word {w!r} is not in the caption {sentence!r}")
        return list(dict.fromkeys(words))
    nouns = [w for w in dict.fromkeys(caption) if w in spec.nouns]
    if not nouns:
        why = "the model lists no nouns (ebr_onnx.caption)" if not spec.nouns else "it holds none of the model's nouns"
        raise EbrError(f"nothing to ground in the caption {sentence!r}: {why}; name the words with --words")
    return nouns


def _pictures(out: Path, frames: np.ndarray, crop, results: list[dict[str, Any]], scale: ColourScale,
              sentence: str, options: CaptionOptions, source: VideoSource) -> None:
    """Each word's overlays, sheet, animation and evidence plot, then the caption sheet."""
    with PictureWriter() as writer:
        for r in results:
            evidence: Evidence = r["evidence"]
            writer.submit(write_pictures, out / r["folder"], frames, evidence, scale, animations=options.animations,
                          fps=source.fps)
            writer.submit(_plot, out / r["folder"] / "evidence.png", evidence.frame_indices, evidence.temporal,
                          segment=evidence.segment, fps=source.source_fps, maps=evidence.maps, scale=scale,
                          title=f"{r['word']!r} (step {r['step']}) in '{sentence}' · {options.method}")
        writer.wait()
    for r in results:
        files = ["maps.npz", *picture_files(r["evidence"].frame_indices, options.animations), "evidence.png",
                 "summary.json"]
        summary = {k: v for k, v in r.items() if k not in ("evidence", "peak_index")}
        write_json(out / r["folder"] / "summary.json", {**summary, "caption": sentence, "files": files})
    best = [overlays(frames[r["peak_index"]][None], r["evidence"].maps[r["peak_index"]][None], crop, scale)[0]
            for r in results]
    write_png(out / "caption_sheet.png", caption_sheet(sentence, results, best, scale))


def _plot(path: Path, *args: Any, **kwargs: Any) -> None:
    with atomic_path(path) as tmp:
        evidence_plot(tmp, *args, **kwargs)


def caption_sheet(sentence: str, results: Sequence[dict[str, Any]], pictures: Sequence[np.ndarray],
                  scale: ColourScale) -> np.ndarray:
    """The caption over a row of tiles, one per grounded word: its best frame's overlay, with the word, its step,
    the frame and its evidence; the colour bar on the right. uint8 RGB."""
    font = label_font()
    tiles = []
    for r, picture in zip(results, pictures):
        image = Image.fromarray(picture)
        factor = _TILE / min(image.size)
        tiles.append(image.resize((round(image.width * factor), round(image.height * factor)), Image.BILINEAR))
    width = sum(t.width + 8 for t in tiles) + 8
    header, footer = 30, 30
    height = header + max(t.height for t in tiles) + footer
    bar = scale.bar(max(t.height for t in tiles))
    sheet = Image.new("RGB", (width + bar.shape[1] + 8, height), "white")
    draw = ImageDraw.Draw(sheet)
    x = 8
    grounded = {r["word"] for r in results}
    for word in sentence.split():
        colour = "firebrick" if word in grounded else "black"
        draw.text((x, 8), word, fill=colour, font=font)
        x += int(font.getlength(word + " ")) + 2
    x = 8
    for r, tile in zip(results, tiles):
        sheet.paste(tile, (x, header))
        draw.text((x, header + tile.height + 3), f"{r['word']} · step {r['step']} · p {r['probability']:.2f}",
                  fill="black", font=font)
        draw.text((x, header + tile.height + 15), f"frame {r['best_frame']} · evidence {r['evidence_peak']:+.3g}",
                  fill="black", font=font)
        x += tile.width + 8
    sheet.paste(Image.fromarray(bar), (width, header))
    return np.asarray(sheet)


def _settings(model: str | Path, options: CaptionOptions, pre, layer: str | None, frames: int,
              source: VideoSource) -> dict[str, Any]:
    """What produced the results: model file and hash, method, rules, layer, preprocessing, frames, versions."""
    digest = hashlib.sha256(Path(model).read_bytes()).hexdigest()
    versions = {}
    for name in ("ebr_onnx", "onnx", "onnxruntime", "numpy"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"model": str(model), "model_sha256": digest, "method": options.method, "layer": layer or "input",
            "recurrent_rules": options.recurrent_rules if options.method != "gradr" else None, "frames": frames,
            "every": options.every, "fps": options.fps, "source_fps": source.source_fps, "preprocess": asdict(pre),
            "versions": {**versions, "python": platform.python_version()}}
