"""The paper's experiments (Bargal et al., CVPR 2018, Sec. 5) on the bundled LRCN-style model
``models/action_lrcn.onnx`` with generated videos (``ebr_onnx.app.synthetic``), each printed beside the paper's numbers.

    python benchmarks/bench_paper.py table2 [--quick] [--clips 500]    # temporal localization, mAP at α = 0.5
    python benchmarks/bench_paper.py fig7 [--quick] [--clips 400]      # sums of the cEB-R maps at fc7 over time
    python benchmarks/bench_paper.py table1 [--quick] [--clips 200]    # spatial pointing game, and the BP-R study

``--quick`` runs a few clips (seconds; the CI test runs it); ``--model`` explains another model of the bundled
structure (e.g. ``models/action_lstm.onnx``); ``--json PATH`` writes the numbers.

**Table 2** (Sec. 5.2): ``rand+GT+rand`` clips of 128 frames, a GT action of 11, 41 or 65 frames inserted at a random
position into a clip of another class. One detection per clip for its GT class, the prior at the last step:

* probability baseline: the GT class probability per step thresholded at 0.5 to ±1 (the paper's baseline); known
  length = the best window of that length on the ±1 curve, unknown = Sec. 4.1 on it, anchored at the peak probability;
* EB-R / cEB-R: the per-frame sums of the maps at the map layer (the evidence curve); known length = the window with
  the highest sum, unknown length = Sec. 4.1 (anchor at the peak, extended while the sums are ≥ 0);

each with both recurrent rule sets (``caffe``: the release; ``excitation``: mass-conserving). A detection's score is
the mean of its curve over the segment (probability: the mean probability); AP per class (VOC all-point), mean over
classes. Diagnostic rows (not in the paper) say, per method, in how many clips the anchor lies in the GT and which
share of the positive evidence lies in the GT, before it and after it.

**Fig. 7**: 16-frame ``rand+GT`` and ``GT+rand`` clips (8 + 8 frames), cEB-R for the GT class with the prior at the
last step; per frame the sum of the cEB-R map at the RNN→CNN boundary (``features``, the model's fc7), mean ± std
over the clips, for both rule sets.

**Table 1** (Sec. 5.1): single-action clips with the actor's box in every frame; the peak of every frame's map at the
map layer scores a hit when a circle of 15 px diameter at the paper's 224-px scale (2.1 px at 64 px) around it meets
the box. EB-R, cEB-R, BP-R on the model; per-frame EB, cEB, BP on the **per-frame classifier derived from it**: the
same weights with the frames moved to the LSTM's batch axis, so that each frame is a one-step sequence (CNN → one
LSTM step from the zero state → classifier): the model without its temporal context. The BP study scores the
gradient read at other tensors (the map layer, its ReLU's input as the release's ``conv5_1.diff``, the input of the
conv below it, the pixels) and in other ways (``Σ_c g`` as the library's map, its negation, ``|Σ_c g|``,
``Σ_c |g|``, ``Σ_c g·a``, ``max_c |g|``).
"""
from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

from ebr_onnx import Explainer
from ebr_onnx.app.localize import (
    best_window,
    peaks_to_frame_coords,
    probability_segment,
    probability_window,
    spatial_peaks,
    temporal_segment,
)
from ebr_onnx.app.metrics import PointingGame, mean_average_precision, temporal_iou
from ebr_onnx.app.preprocess import CropBox, Preprocess, model_preprocess, preprocess
from ebr_onnx.app.synthetic import CLASS_NAMES, edge_boxes, make_clip, make_concatenated

ROOT = Path(__file__).resolve().parents[1]
LRCN_MODEL = ROOT / "models" / "action_lrcn.onnx"
FIG7_PATH = ROOT / "docs" / "fig7_boundary_sums.png"
RULE_SETS = ("caffe", "excitation")

#: Paper Table 2 (mAP %, α = 0.5): (setting, GT length) → (probability, EB-R, cEB-R).
PAPER_TABLE2 = {("known", 11): (8.5, 11.3, 15.5), ("known", 41): (28.2, 38.5, 53.2), ("known", 65): (47.7, 56.3, 73.5),
                ("unknown", 11): (3.4, None, 4.1), ("unknown", 41): (9.5, None, 47.9),
                ("unknown", 65): (35.7, None, 62.0)}
#: Paper Table 1 (pointing game accuracy %).
PAPER_TABLE1 = {"EB": 55.8, "EB-R": 61.5, "cEB": 37.0, "cEB-R": 39.1, "BP": 37.3, "BP-R": 39.2}
#: Table 2's explained columns: (name, method, recurrent rule set).
TABLE2_COLUMNS = (("EB-R", "ebr", "caffe"), ("cEB-R", "cebr", "caffe"),
                  ("EB-R exc.", "ebr", "excitation"), ("cEB-R exc.", "cebr", "excitation"))


@dataclass(frozen=True)
class Setup:
    """The model under test: its explainer, preprocessing, map layer, boundary and the frame size."""

    ex: Explainer
    spec: Preprocess
    layer: str
    boundary: str
    size: int

    @classmethod
    def load(cls, model: Path) -> Setup:
        ex = Explainer(model)
        return cls(ex, model_preprocess(ex.graph), ex.graph.metadata_json("ebr_onnx.map_layer"),
                   ex.graph.metadata_json("ebr_onnx.boundary"), int(ex.graph.metadata_json("ebr_onnx.input_size")[0]))

    def input(self, frames: np.ndarray) -> tuple[np.ndarray, CropBox]:
        return preprocess(frames, self.spec)


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


# -- Table 2 -------------------------------------------------------------------------------------------------------
def _clip_diagnostics(curve: np.ndarray, signed: np.ndarray, seg: tuple[int, int],
                      found: tuple[int, int]) -> dict[str, float]:
    """Where one clip's curve puts its evidence: the anchor (its peak) in the GT; the shares of its positive part
    before, inside and after the GT; the share of |curve| in the last 16 frames; the share of GT frames where the
    ``signed`` curve (the ±1 curve for the probability) is negative, which stop Sec. 4.1's extension, and of the
    other frames where it is not; the
    unknown-length segment ``found``: its length and whether its IoU with the GT reaches 0.5."""
    start, end = seg
    anchor = int(np.argmax(curve))
    pos = np.maximum(curve, 0)
    total = max(pos.sum(), 1e-30)
    return {"anchor_in_gt": float(start <= anchor <= end), "before": pos[:start].sum() / total,
            "inside": pos[start:end + 1].sum() / total, "after": pos[end + 1:].sum() / total,
            "last_16": np.abs(curve[-16:]).sum() / max(np.abs(curve).sum(), 1e-30),
            "gt_negative": float(np.mean(signed[start:end + 1] < 0)),
            "rand_positive": float(np.mean(np.concatenate([signed[:start], signed[end + 1:]]) >= 0)),
            "found_length": float(found[1] - found[0] + 1), "hit": float(temporal_iou(found, seg) >= 0.5)}


def table2(setup: Setup, clips: int, frames: int, lengths: list[int], seed: int) -> dict:
    """mAP at α = 0.5 per (column, known/unknown, length), and the diagnostics per (column, length)."""
    names = ["probability"] + [name for name, _, _ in TABLE2_COLUMNS]
    maps: dict[str, dict[str, dict[int, float]]] = {"known": {}, "unknown": {}}
    diagnostics: dict[str, dict[int, dict[str, float]]] = {}
    for length in lengths:
        dets: dict[tuple[str, str], dict[int, list]] = {}
        gts: dict[int, list] = {}
        per_clip: dict[str, list[dict[str, float]]] = {name: [] for name in names}
        for i in range(clips):
            clip = make_concatenated(np.random.default_rng([seed, length, i]), "rand+GT+rand", frames=frames,
                                     gt_length=length)
            x, _ = setup.input(clip.frames)
            k, seg = clip.gt_class, clip.gt_segment
            gts.setdefault(k, []).append((i, seg))
            results = {name: setup.ex.explain(x, target=k, method=method, layer=setup.layer, time_step=-1,
                                              recurrent_rules=rules)
                       for name, method, rules in TABLE2_COLUMNS}
            probs = _softmax(np.asarray(results["cEB-R"].output, np.float64).reshape(frames, -1))[:, k]
            curves = {"probability": probs, **{name: r.temporal for name, r in results.items()}}
            for name, curve in curves.items():
                if name == "probability":
                    known, unknown = probability_window(probs, length), probability_segment(probs)
                else:
                    known, unknown = best_window(curve, length), temporal_segment(curve)
                for setting, found in (("known", known), ("unknown", unknown)):
                    score = float(np.mean(curve[found[0]:found[1] + 1]))
                    dets.setdefault((name, setting), {}).setdefault(k, []).append((i, found, score))
                signed = np.where(probs >= 0.5, 1.0, -1.0) if name == "probability" else curve
                per_clip[name].append(_clip_diagnostics(curve, signed, seg, unknown))
        for (name, setting), by_class in dets.items():
            maps[setting].setdefault(name, {})[length] = mean_average_precision(by_class, gts, 0.5)
        for name, rows in per_clip.items():
            summary = {key: float(np.mean([r[key] for r in rows])) for key in rows[0]}
            summary["found_length"] = float(np.median([r["found_length"] for r in rows]))
            inside = [r["hit"] for r in rows if r["anchor_in_gt"]]
            summary["hit_given_anchor"] = float(np.mean(inside)) if inside else 0.0
            diagnostics.setdefault(name, {})[length] = summary
    return {"mAP": maps, "diagnostics": diagnostics}


def print_table2(t2: dict, lengths: list[int], frames: int, clips: int, model: Path) -> None:
    names = ["probability"] + [name for name, _, _ in TABLE2_COLUMNS]
    paper = frames == 128 and lengths == [11, 41, 65]
    print(f"Table 2: mAP (%) at IoU α = 0.5, rand+GT+rand, {frames}-frame clips, {clips} clips per GT length, "
          f"{len(CLASS_NAMES)} classes, {model.name}")
    head = ["setting", "GT length", "probability", "EB-R", "cEB-R", "EB-R (exc.)", "cEB-R (exc.)"]
    if paper:
        head += ["paper: prob.", "paper: EB-R", "paper: cEB-R"]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for setting in ("known", "unknown"):
        for length in lengths:
            row = [_pct(t2["mAP"][setting][n][length]) for n in names]
            if setting == "unknown":  # EB-R is non-negative: Sec. 4.1's extension never stops (the paper leaves it out)
                row[1] = row[3] = "–"
            if paper:
                row += ["–" if v is None else f"{v:.1f}" for v in PAPER_TABLE2[(setting, length)]]
            print(f"| {setting} | {length} | " + " | ".join(row) + " |")
    d = t2["diagnostics"]
    print("\nWhere the evidence lies (mean over the clips, %): the anchor (the curve's peak) in the GT · the positive "
          "part of the curve before / inside / after the GT · |curve| in the last 16 frames")
    print("| method | " + " | ".join(f"GT {n}" for n in lengths) + " |\n|" + "---|" * (len(lengths) + 1))
    for name in names:
        print(f"| {name} | " + " | ".join(
            f"{100 * c['anchor_in_gt']:.0f} · {100 * c['before']:.0f}/{100 * c['inside']:.0f}/{100 * c['after']:.0f}"
            f" · {100 * c['last_16']:.0f}" for c in (d[name][n] for n in lengths)) + " |")
    print("\nUnknown length (Sec. 4.1): GT frames with a negative sum (probability: p < 0.5), % · rand frames with a "
          "sum ≥ 0 (p ≥ 0.5), % · median length of the found segment · clips with IoU ≥ 0.5, % (all · those whose "
          "anchor is in the GT)")
    print("| method | " + " | ".join(f"GT {n}" for n in lengths) + " |\n|" + "---|" * (len(lengths) + 1))
    for name in ("probability", "cEB-R", "cEB-R exc."):
        print(f"| {name} | " + " | ".join(
            f"{100 * c['gt_negative']:.0f} · {100 * c['rand_positive']:.0f} · {c['found_length']:.0f} · "
            f"{100 * c['hit']:.0f} · {100 * c['hit_given_anchor']:.0f}" for c in (d[name][n] for n in lengths)) + " |")


# -- Fig. 7 --------------------------------------------------------------------------------------------------------
def fig7(setup: Setup, clips: int, seed: int, frames: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Per rule set and setup, the per-frame sums of the cEB-R boundary signal (Eq. 7) of each clip: (clips, T)."""
    sums: dict[str, dict[str, np.ndarray]] = {}
    for rules in RULE_SETS:
        for setup_name in ("rand+GT", "GT+rand"):
            rows = []
            for i in range(clips):
                clip = make_concatenated(np.random.default_rng([seed, 7, len(setup_name), i]), setup_name,
                                         frames=frames, gt_length=frames // 2)
                x, _ = setup.input(clip.frames)
                res = setup.ex.explain(x, target=clip.gt_class, method="cebr", layer=setup.boundary, time_step=-1,
                                       recurrent_rules=rules)
                rows.append(np.asarray(res.info.boundary_signal, np.float64).reshape(frames, -1).sum(axis=1))
            sums.setdefault(rules, {})[setup_name] = np.array(rows)
    return sums


def plot_fig7(sums: dict[str, dict[str, np.ndarray]], out: Path, model: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sums), figsize=(5.2 * len(sums), 3.6), sharey=False)
    for ax, (rules, by_setup) in zip(np.atleast_1d(axes), sums.items()):
        for setup_name, colour in (("rand+GT", "tab:blue"), ("GT+rand", "tab:green")):
            rows = by_setup[setup_name]
            t = np.arange(1, rows.shape[1] + 1)
            mean, std = rows.mean(axis=0), rows.std(axis=0)
            ax.plot(t, mean, color=colour, marker="o", ms=3, label=f"{setup_name}")
            ax.fill_between(t, mean - std, mean + std, color=colour, alpha=0.2)
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline((rows.shape[1] + 1) / 2, color="gray", ls="--", lw=0.8)
        ax.set_title(f"cEB-R, recurrent_rules='{rules}'")
        ax.set_xlabel("frame")
        ax.set_ylabel("sum of the map at fc7 (features)")
        ax.legend(loc="best", fontsize=8)
    n = next(iter(next(iter(sums.values())).values())).shape[0]
    fig.suptitle(f"Fig. 7 on {model.name}: mean ± std over {n} clips per setup, prior at the last step", fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def print_fig7(sums: dict[str, dict[str, np.ndarray]]) -> None:
    for rules, by_setup in sums.items():
        for setup_name, rows in by_setup.items():
            mean = rows.mean(axis=0)
            half = rows.shape[1] // 2
            gt = slice(half, None) if setup_name == "rand+GT" else slice(0, half)
            rand = slice(0, half) if setup_name == "rand+GT" else slice(half, None)
            share = np.mean(rows[:, gt].sum(axis=1) > 0)
            print(f"{rules:10s} {setup_name:8s} mean per frame: " + " ".join(f"{v:+.3f}" for v in mean) +
                  f"\n{'':19s} GT half {mean[gt].sum():+.3f}, rand half {mean[rand].sum():+.3f}; GT half positive "
                  f"in {100 * share:.0f} % of the clips; sign changes at frames "
                  f"{[int(j) + 1 for j in np.flatnonzero(np.diff(np.sign(mean)))]} (1-based, between j and j+1)")


# -- Table 1 -------------------------------------------------------------------------------------------------------
def frame_classifier(model: onnx.ModelProto) -> onnx.ModelProto:
    """The per-frame classifier derived from the bundled model: the frames become the LSTM's batch (a one-step
    sequence each), the output is ``probs`` (N, K). The same weights and tensor names; ``classifier`` is still the
    MatMul ``ceb`` negates."""
    derived = onnx.ModelProto()
    derived.CopyFrom(model)
    graph = derived.graph
    for node in graph.node:
        if node.op_type == "Unsqueeze" and node.output[0] == "lstm_X":
            old = node.input[1]
            node.input[1] = "axes_0"          # (N, D) → (1, N, D): one step, N sequences
        elif node.op_type == "Squeeze" and node.output[0] == "lstm_H":
            node.input[1] = "axes_01"         # (1, 1, N, H) → (N, H)
        elif node.op_type == "Softmax":
            node.ClearField("attribute")
            node.attribute.append(helper.make_attribute("axis", 1))
    kept = [t for t in graph.initializer if t.name != old]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(np.array([0], np.int64), "axes_0"),
                                     numpy_helper.from_array(np.array([0, 1], np.int64), "axes_01")])
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, ["N", len(CLASS_NAMES)]))
    graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph.name += "_per_frame"
    kept = [p for p in derived.metadata_props if p.key not in ("ebr_onnx.frames", "ebr_onnx.boundary")]
    del derived.metadata_props[:]
    derived.metadata_props.extend(kept)
    onnx.checker.check_model(derived)
    return derived


def _activations(model: onnx.ModelProto, tensors: list[str]) -> ort.InferenceSession:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    copy.graph.output.extend(helper.make_empty_tensor_value_info(t) for t in tensors)
    return ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])


#: Table 1's explained rows: (name, family, method, recurrent rules). Family "R": the model; "F": the per-frame
#: classifier derived from it.
TABLE1_ROWS = (("EB-R", "R", "ebr", "caffe"), ("cEB-R", "R", "cebr", "caffe"), ("EB", "F", "eb", None),
               ("cEB", "F", "ceb", None), ("EB-R exc.", "R", "ebr", "excitation"),
               ("cEB-R exc.", "R", "cebr", "excitation"))
#: How a gradient g (with the activation a of its tensor) becomes a map: its peak is the pointing-game point.
READINGS = ("Σc g", "−Σc g", "|Σc g|", "Σc |g|", "Σc g·a", "max_c |g|")


def _readings(g: np.ndarray, a: np.ndarray) -> dict[str, np.ndarray]:
    return {"Σc g": g.sum(1), "−Σc g": -g.sum(1), "|Σc g|": np.abs(g.sum(1)), "Σc |g|": np.abs(g).sum(1),
            "Σc g·a": (g * a).sum(1), "max_c |g|": np.abs(g).max(1)}


def gradient_layers(proto: onnx.ModelProto, layer: str) -> dict[str, str]:
    """Where the BP study reads the gradient: the map layer, its ReLU's input (the release's BP-R reads
    ``conv5_1.diff`` after the in-place ReLU's backward), the input of the conv that made that (``conv5_1`` is the
    input of ``conv5_2`` in VGG-16, three convs below the classifier; our map layer feeds a max-pool and the fc) and
    the input pixels."""
    producer = {out: n for n in proto.graph.node for out in n.output}
    pre = producer[layer].input[0]
    return {"map layer": layer, "ReLU input": pre, "conv input": producer[pre].input[0],
            "pixels": proto.graph.input[0].name}


def table1(setup: Setup, model_path: Path, clips: int, frames: int, seed: int) -> dict:
    """Pointing-game accuracy per row and per gradient reading; the classifiers' accuracies on these clips."""
    proto = onnx.load(model_path)
    derived = frame_classifier(proto)
    explainers = {"R": setup.ex, "F": Explainer(derived)}
    where = gradient_layers(proto, setup.layer)
    inner = [t for t in where.values() if t != where["pixels"]]
    acts = {"R": _activations(proto, inner), "F": _activations(derived, inner)}
    tolerance = 15.0 / 2 * setup.size / 224.0
    games: dict[str, PointingGame] = {}
    peak_cells: dict[str, Counter] = {}
    dead: dict[str, list[float]] = {}
    correct = {"R last step": 0, "R every step": 0, "F every frame": 0}

    def score(name: str, maps: np.ndarray, crop: CropBox, boxes: np.ndarray) -> None:
        game = games.setdefault(name, PointingGame(tolerance))
        peaks = spatial_peaks(maps)
        peak_cells.setdefault(name, Counter()).update(map(tuple, peaks.tolist()))
        for point, box in zip(peaks_to_frame_coords(peaks, maps.shape[1:], crop), boxes):
            game.aggregate(game.evaluate(point, box))

    for i in range(clips):
        clip = make_clip(np.random.default_rng([seed, 1, i]), frames=frames)
        x, crop = setup.input(clip.frames)
        k, boxes = clip.label, edge_boxes(clip.boxes)
        for fam, ex in explainers.items():
            opts = {"time_step": -1} if fam == "R" else {}
            for name, family, method, rules in TABLE1_ROWS:
                if family == fam:
                    extra = {"recurrent_rules": rules} if rules else {}
                    score(name, ex.explain(x, target=k, method=method, layer=setup.layer, **opts, **extra).maps,
                          crop, boxes)
            grad = "gradr" if fam == "R" else "grad"
            values = dict(zip(inner, acts[fam].run(inner, {ex.input_name: x})))
            values[where["pixels"]] = x
            for place, tensor in where.items():
                res = ex.explain(x, target=k, method=grad, layer=tensor, **opts)
                bp = "BP-R" if fam == "R" else "BP"
                for reading, maps in _readings(np.asarray(res.signal), values[tensor]).items():
                    score(f"{bp} @ {place}: {reading}", maps, crop, boxes)
                if place != "pixels":  # how much of the gradient sits on units that are 0 (or below)
                    g = np.abs(np.asarray(res.signal))
                    dead.setdefault(f"{bp} @ {place}", []).append(g[values[tensor] <= 0].sum() / max(g.sum(), 1e-30))
            logits = np.asarray(res.output).reshape(frames, -1)
            if fam == "R":
                correct["R last step"] += int(logits[-1].argmax() == k)
                correct["R every step"] += int((logits.argmax(1) == k).sum())
            else:
                correct["F every frame"] += int((logits.argmax(1) == k).sum())
        centre = (clip.frames.shape[1] / 2, clip.frames.shape[2] / 2)  # pixel edges, as the boxes
        game = games.setdefault("frame centre", PointingGame(tolerance))
        for box in boxes:
            game.aggregate(game.evaluate(centre, box))
    for name in ("BP-R", "BP"):
        games[name] = games[f"{name} @ map layer: Σc g"]
        peak_cells[name] = peak_cells[f"{name} @ map layer: Σc g"]
    accuracy = {"R last step": correct["R last step"] / clips, "R every step": correct["R every step"] /
                (clips * frames), "F every frame": correct["F every frame"] / (clips * frames)}
    top_share = {name: max(c.values()) / sum(c.values()) for name, c in peak_cells.items()}
    return {"pointing": {name: g.accuracy() for name, g in games.items()}, "classification": accuracy,
            "gradient_layers": where, "top_peak_share": top_share,
            "peaks_on_inactive_cells": {name: float(np.mean(v)) for name, v in dead.items()}}


def print_table1(t1: dict, clips: int, frames: int, model: Path) -> None:
    p, where = t1["pointing"], t1["gradient_layers"]
    print(f"Table 1: spatial pointing game accuracy (%), {clips} single-action {frames}-frame clips, every frame, "
          f"{model.name} (-R) and the per-frame classifier derived from it; maps at {where['map layer']}")
    print("| | EB | EB-R | cEB | cEB-R | BP | BP-R | frame centre |\n|---|---|---|---|---|---|---|---|")
    print("| ours | " + " | ".join(_pct(p[n]) for n in ("EB", "EB-R", "cEB", "cEB-R", "BP", "BP-R", "frame centre")) +
          " |")
    print(f"| ours, the gradient read at the ReLU's input ({where['ReLU input']}, as the release's conv5_1.diff) | "
          f"| | | | {_pct(p['BP @ ReLU input: Σc g'])} | {_pct(p['BP-R @ ReLU input: Σc g'])} | |")
    print("| paper | " + " | ".join(f"{PAPER_TABLE1[n]:.1f}" for n in ("EB", "EB-R", "cEB", "cEB-R", "BP", "BP-R")) +
          " | – |")
    print(f"(-R methods with recurrent_rules='excitation': EB-R {_pct(p['EB-R exc.'])}, cEB-R {_pct(p['cEB-R exc.'])})")
    print("\nThe gradient (BP-R: through the model; BP: the per-frame classifier) read at other tensors and in other "
          "ways (g: the gradient, a: the tensor's value, Σc: over channels)")
    places = list(where)
    head = [f"{fam} @ {place} ({where[place]})" for fam in ("BP-R", "BP") for place in places]
    print("| reading | " + " | ".join(head) + " |\n|" + "---|" * (len(head) + 1))
    for reading in READINGS:
        print(f"| {reading} | " + " | ".join(_pct(p[f'{fam} @ {place}: {reading}']) for fam in ("BP-R", "BP")
                                            for place in places) + " |")
    share = t1["top_peak_share"]
    print("\nHow often the map's peak falls on its most frequent cell, whatever the clip (% of the frames): " +
          ", ".join(f"{n} {_pct(share[n])}" for n in ("EB-R", "cEB-R", "BP-R", "EB", "cEB", "BP")) + "; BP-R @ "
          + ", ".join(f"{place} {_pct(share[f'BP-R @ {place}: Σc g'])}" for place in places[1:]))
    inactive = t1["peaks_on_inactive_cells"]
    print("Share of |g| on units whose value is ≤ 0 (mean over clips, %): " +
          ", ".join(f"{n} {_pct(v)}" for n, v in inactive.items()))
    c = t1["classification"]
    print(f"\nClassification on these clips: the model {_pct(c['R last step'])} % at the last step, "
          f"{_pct(c['R every step'])} % over all steps; the per-frame classifier {_pct(c['F every frame'])} % of "
          f"the frames (chance {100 / len(CLASS_NAMES):.1f} %: one frame does not show the motion)")


# -- command -------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("experiment", choices=("table2", "fig7", "table1"))
    parser.add_argument("--quick", action="store_true", help="a few clips (seconds), for CI")
    parser.add_argument("--clips", type=int, default=None,
                        help="clips per GT length (table2; default 500), per setup (fig7; 400), in all (table1; 200)")
    parser.add_argument("--frames", type=int, default=None, help="clip length (table2: 128, table1: 16)")
    parser.add_argument("--lengths", type=int, nargs="+", default=[11, 41, 65], help="table2's GT lengths")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--model", type=Path, default=LRCN_MODEL)
    parser.add_argument("--out", type=Path, default=FIG7_PATH, help="fig7's picture")
    parser.add_argument("--json", type=Path, default=None, help="write the numbers here")
    args = parser.parse_args(argv)
    full = {"table2": 500, "fig7": 400, "table1": 200}[args.experiment]
    clips = args.clips or (2 if args.quick else full)
    setup = Setup.load(args.model)
    started = time.perf_counter()
    if args.experiment == "table2":
        frames = args.frames or 128
        result = table2(setup, clips, frames, args.lengths, args.seed)
        print_table2(result, args.lengths, frames, clips, args.model)
    elif args.experiment == "fig7":
        sums = fig7(setup, clips, args.seed)
        plot_fig7(sums, args.out, args.model)
        print_fig7(sums)
        print(f"wrote {args.out}")
        result = {rules: {s: rows.tolist() for s, rows in by.items()} for rules, by in sums.items()}
    else:
        frames = args.frames or 16
        result = table1(setup, args.model, clips, frames, args.seed)
        print_table1(result, clips, frames, args.model)
    print(f"({time.perf_counter() - started:.0f} s; python benchmarks/bench_paper.py {args.experiment}"
          f"{' --quick' if args.quick else ''}{f' --clips {args.clips}' if args.clips else ''})")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
