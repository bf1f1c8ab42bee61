"""Caption grounding on the bundled captioner (paper §4.2, §6): cEB-R, EB-R and BP-R against the caption-guided
saliency baseline of Ramanishka et al. (2017), on generated videos whose nouns have known boxes and frames.

Each video (:mod:`ebr_onnx.app.synthetic_captions`, 16 frames) is captioned by its true caption, fed to the
teacher-forced ``models/captioner.onnx``; each of its two nouns is grounded at its step in the caption:

* **cEB-R / EB-R / BP-R**: one ``explain`` call per word at the model's map layer (``relu3``, 16×16 per frame);
  the maps and the evidence curve (their per-frame sums);
* **caption-guided saliency** (the baseline): the drop in the word's log-probability at its step when one frame is
  removed (the temporal curve: T forwards) and when one cell of a G×G grid of one frame is greyed out (the map:
  T·G² forwards; G = 16, the maps' resolution, by default). One forward gives every step's probabilities, so a
  video's forwards serve both its nouns: its seconds per word are the video's seconds over its two nouns. The
  log-probability is computed from the logits (the captioner's Softmax input) in float64 with ``log1p``: from the
  model's float32 probabilities a confident word's p rounds to 1 and every drop to 0 (on the bundled captioner,
  nouns have log p ≈ −5e-5, some below −1e-15), which left the baseline pointing nowhere.

Metrics per noun: the **spatial pointing game** — in every frame where the noun's object is visible, a hit when the
map's peak (its largest value, if positive: a map with no positive value is a miss) lies within 15 px *at the
paper's 224-px scale* (2.1 px here) of the object's box (the edges of its pixels); the **temporal pointing game** — a
hit when the evidence curve's peak frame (likewise) lies in the object's frames; and the seconds per word (wall time of the calls, this
process, one onnxruntime thread). Baselines of the games: the frame centre (spatial) and a random frame (temporal:
the object's share of the frames).

    python benchmarks/bench_captions.py [--videos 100] [--grid 16] [--seed 7] [--json results.json]
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ebr_onnx import EbrError, Explainer
from ebr_onnx.app.localize import peaks_to_frame_coords, spatial_peaks
from ebr_onnx.app.metrics import PointingGame, TemporalPointingGame
from ebr_onnx.app.preprocess import model_preprocess, preprocess
from ebr_onnx.app.synthetic import edge_boxes
from ebr_onnx.app.synthetic_captions import NOUNS, make_caption_clip, teacher_inputs

MODEL = Path(__file__).resolve().parents[1] / "models" / "captioner.onnx"
#: The columns: (name, method, recurrent rule set).
METHODS = (("cEB-R", "cebr", "caffe"), ("EB-R", "ebr", "caffe"), ("BP-R", "gradr", "caffe"),
           ("cEB-R (excitation rules)", "cebr", "excitation"))
BASELINE = "caption-guided saliency"


def _with_logits(model: onnx.ModelProto) -> tuple[onnx.ModelProto, str]:
    """The captioner with the input of its final Softmax exposed as an output too, and that tensor's name."""
    (probs,) = model.graph.output
    softmax = next((n for n in model.graph.node if probs.name in n.output and n.op_type == "Softmax"), None)
    if softmax is None:
        raise EbrError(f"the baseline needs the captioner's logits: its output {probs.name!r} is not a Softmax's")
    model.graph.output.append(onnx.helper.make_tensor_value_info(softmax.input[0], onnx.TensorProto.FLOAT, None))
    return model, softmax.input[0]


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """``log p = z − logsumexp(z)`` over the last axis, with ``logsumexp(z) = m + log1p(Σ_{j ≠ argmax} e^{z_j − m})``
    so that a confident word's log-probability keeps its precision (−1e-20 does not round to 0)."""
    m = logits.max(axis=-1, keepdims=True)
    others = np.exp(logits - m)
    np.put_along_axis(others, logits.argmax(axis=-1)[..., None], 0.0, axis=-1)
    return logits - m - np.log1p(others.sum(axis=-1, keepdims=True))


class CaptionSaliency:
    """The caption-guided saliency baseline (Ramanishka et al. 2017) on a teacher-forced captioner: the drop of each
    word's log-probability when a frame is removed, or a cell of a G×G grid of one frame is set to 0 (grey after
    the model's normalisation)."""

    def __init__(self, model: Path, grid: int) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        exposed, self.logits = _with_logits(onnx.load(str(model)))
        self.session = ort.InferenceSession(exposed.SerializeToString(), options, providers=["CPUExecutionProvider"])
        self.grid = grid

    def log_probs(self, x: np.ndarray, fed: np.ndarray) -> np.ndarray:
        """(steps, V) log-probabilities of the caption's steps, from the logits in float64: the model's float32
        probabilities saturate (a confident word's p rounds to 1, and every drop to 0)."""
        logits = self.session.run([self.logits], {"frames": x, "words": fed})[0]
        return log_softmax(logits[:, 0].astype(np.float64))

    def saliency(self, x: np.ndarray, fed: np.ndarray, steps: list[int], words: list[int]
                 ) -> tuple[np.ndarray, np.ndarray]:
        """Per word: the temporal curve (T,) and the maps (T, G, G) of log-probability drops."""
        full = self.log_probs(x, fed)[steps, words]
        frames = len(x)
        curve = np.zeros((len(words), frames))
        for t in range(frames):
            curve[:, t] = full - self.log_probs(np.delete(x, t, axis=0), fed)[steps, words]
        maps = np.zeros((len(words), frames, self.grid, self.grid))
        h, w = x.shape[2:]
        ys, xs = (np.linspace(0, side, self.grid + 1).round().astype(int) for side in (h, w))
        for t in range(frames):
            for i in range(self.grid):
                for j in range(self.grid):
                    occluded = x.copy()
                    occluded[t, :, ys[i]:ys[i + 1], xs[j]:xs[j + 1]] = 0.0
                    maps[:, t, i, j] = full - self.log_probs(occluded, fed)[steps, words]
        return curve, maps


def score(games: dict, name: str, noun: str, maps: np.ndarray, curve: np.ndarray, obj, crop) -> None:
    """The spatial pointing game in every frame where the object is visible, the temporal one on the curve; a map
    or curve with no positive value (no evidence for the word: all zero, or a contrastive map all negative) points
    nowhere and is a miss, whatever the method."""
    spatial, temporal = games[name]
    start, end = obj.segment
    seen = maps[start:end + 1]
    points = peaks_to_frame_coords(spatial_peaks(seen), maps.shape[1:], crop)
    boxes = edge_boxes(obj.boxes[start:end + 1])
    for point, box, peak in zip(points, boxes, seen.reshape(len(seen), -1).max(axis=1)):
        spatial.aggregate(bool(peak > 0) and spatial.evaluate(point, box), noun)
    temporal.aggregate(bool(curve.max() > 0) and temporal.evaluate(int(np.argmax(curve)), obj.segment), noun)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="a teacher-forced captioner (default: bundled)")
    parser.add_argument("--videos", type=int, default=100)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--grid", type=int, default=16, help="the baseline's grid per frame (default: 16, the maps')")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    ex = Explainer(args.model, threads=1)
    spec = model_preprocess(ex.graph)
    size = spec.size[0] if isinstance(spec.size, tuple) else spec.size
    tolerance = 15.0 / 2 * size / 224.0
    baseline = CaptionSaliency(args.model, args.grid)
    names = [m[0] for m in METHODS] + [BASELINE]
    games = {name: (PointingGame(tolerance), TemporalPointingGame()) for name in names + ["frame centre / random"]}
    seconds: dict[str, list[float]] = {name: [] for name in names}
    chance: list[float] = []
    started = time.perf_counter()
    for v in range(args.videos):
        clip = make_caption_clip(np.random.default_rng([args.seed, v]), args.frames)
        x, crop = preprocess(clip.frames, spec)
        fed = teacher_inputs(clip.caption)[0]
        steps = list(clip.steps)   # the two nouns' steps (a caption may name one shape twice)
        for name, method, rules in METHODS:
            for obj, step in zip(clip.objects, steps):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = ex.explain(x, target=obj.noun, method=method, time_step=step, recurrent_rules=rules,
                                     layer="relu3", extra_inputs={"words": fed})
                seconds[name].append(time.perf_counter() - t0)
                score(games, name, obj.noun, res.maps, res.temporal, obj, crop)
        t0 = time.perf_counter()
        curves, maps = baseline.saliency(x, fed, steps, [ex.labels.index(o.noun) for o in clip.objects])
        per_word = (time.perf_counter() - t0) / len(steps)
        for k, obj in enumerate(clip.objects):
            seconds[BASELINE].append(per_word)
            score(games, BASELINE, obj.noun, maps[k], curves[k], obj, crop)
            spatial = games["frame centre / random"][0]
            for box in edge_boxes(obj.boxes[obj.segment[0]:obj.segment[1] + 1]):
                spatial.aggregate(spatial.evaluate((size / 2, size / 2), box), obj.noun)
            chance.append((obj.segment[1] - obj.segment[0] + 1) / args.frames)
        if (v + 1) % 10 == 0:
            print(f"{v + 1}/{args.videos} videos, {time.perf_counter() - started:.0f} s", flush=True)

    results = {"videos": args.videos, "frames": args.frames, "grid": args.grid, "tolerance_px": tolerance,
               "methods": {}}
    for name in names + ["frame centre / random"]:
        spatial, temporal = games[name]
        row = {"spatial": {n: _accuracy(spatial, n) for n in NOUNS}, "spatial_all": spatial.accuracy()}
        if name == "frame centre / random":
            row["temporal_all"] = float(np.mean(chance))
        else:
            row["temporal"] = {n: _accuracy(temporal, n) for n in NOUNS}
            row["temporal_all"] = temporal.accuracy()
            row["seconds_per_word"] = float(np.mean(seconds[name]))
        results["methods"][name] = row
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


def _accuracy(game, noun: str) -> float:
    """A game's accuracy for one noun (NaN when no video had it)."""
    try:
        return game.accuracy(noun)
    except EbrError:
        return float("nan")


def table(results: dict) -> str:
    """The results as a Markdown table."""
    head = ("| method | " + " | ".join(f"spatial {n}" for n in NOUNS) + " | spatial all | temporal all | "
            "s / word | × faster than baseline |")
    lines = [head, "|" + "---|" * (len(NOUNS) + 5)]
    base = results["methods"][BASELINE]["seconds_per_word"]
    for name, row in results["methods"].items():
        secs = row.get("seconds_per_word")
        cells = [f"{100 * row['spatial'][n]:.1f}" for n in NOUNS]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {100 * row['spatial_all']:.1f} | "
                     f"{100 * row['temporal_all']:.1f} | " + (f"{secs:.3f} | {base / secs:.0f}" if secs else "– | –")
                     + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
