"""An audit's ``report.html``: one self-contained page (pictures embedded as base64 PNG, no scripts, no links out).

It shows the run's counts and settings, the metric tables of ``metrics.json`` (the temporal pointing game of Table 3,
detection mAP of Table 4, the spatial pointing game of Table 1, deletion and insertion in time with their mean
curves, classification accuracy), the per-class breakdown, the best and the worst videos — each with its evidence
plot and a grid of its overlays — and the videos that failed with their messages.

Videos are ranked by the mean best tIoU of their detections against their ground-truth segments where they have
segments, else by insertion − deletion area, else by the target's probability.
"""
from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from ..core.errors import EbrError
from .audit_summary import FAITHFULNESS, Row
from .colour import ColourScale
from .dataset_metrics import frames_in_segment
from .outputs import atomic_path
from .overlay import contact_sheet, evidence_plot, overlays
from .pipeline import SIGNED_METHODS
from .preprocess import CropBox
from .results import ResultStore
from .video import VideoSource

#: Frames shown in each example's overlay grid.
GRID_FRAMES = 8

_STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; } h3 { margin-bottom: .3em; }
table { border-collapse: collapse; margin: .5em 0 1em; }
td, th { border: 1px solid #ddd; padding: .25em .6em; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
.note { color: #555; font-size: .92em; max-width: 80ch; } img { max-width: 100%; }
.err td { text-align: left; font-family: monospace; font-size: .9em; }
"""


def write_report(path: Path, metrics: dict[str, Any], rows: Sequence[Row], settings: dict[str, Any],
                 store: ResultStore, paths: dict[str, str], examples: int = 3) -> None:
    """Write ``report.html`` for ``metrics`` (:func:`~ebr_onnx.app.audit_summary.summarize`) of ``rows``;
    ``paths`` maps video ids to files (for the overlay grids), ``examples`` is the number of best and of worst
    videos shown."""
    method = settings.get("method", "")
    parts = [
        f"<h1>Audit of {_e(Path(settings.get('model', '?')).name)} · {_e(method)}</h1>",
        _counts(metrics),
        "<h2>Temporal pointing game (paper Table 3)</h2>", _pointing(metrics, method),
        "<h2>Temporal detection (paper Table 4)</h2>", _detection(metrics),
        "<h2>Spatial pointing game (paper Table 1)</h2>", _spatial(metrics),
        "<h2>Deletion and insertion in time</h2>", _faithfulness(metrics),
        "<h2>Classification</h2>", _classification(metrics),
        "<h2>Per class</h2>", _per_class(metrics),
        "<h2>Best and worst videos</h2>", _examples(rows, settings, store, paths, examples),
        "<h2>Failed videos</h2>", _errors(metrics),
        "<h2>Settings</h2>", _table(["setting", "value"], [[k, _value(v)] for k, v in settings.items()]),
    ]
    page = ("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>ebr-onnx audit</title>"
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(parts) + "\n</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")


def _e(text: Any) -> str:
    return html.escape(str(text))


def _value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}"
    if v is None:
        return "–"
    return str(v)


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], cls: str = "") -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table class='{cls}'><tr>{head}</tr>{body}</table>"


def _png(picture: np.ndarray | bytes, alt: str) -> str:
    if isinstance(picture, np.ndarray):
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        picture = buffer.getvalue()
    return f"<img alt='{_e(alt)}' src='data:image/png;base64,{base64.b64encode(picture).decode()}'>"


def _counts(m: dict) -> str:
    v, t = m["videos"], m["timing"]
    per = t["seconds_per_video"]
    return (f"<p>{v['ok']} of {v['total']} videos audited, {v['error']} failed; {v['explained_targets']} targets "
            f"explained, {v['segments']} ground-truth segments. Worker time "
            f"{'–' if per is None else f'{per:.3f}'} s per video.</p>")


def _pointing(m: dict, method: str) -> str:
    p = m["temporal_pointing_game"]
    if not p["segments"]:
        return "<p class='note'>No ground-truth segments: nothing to point at.</p>"
    rows = [["Random (expected)", _pct(p["random"])], ["Peak probability", _pct(p["peak_probability"])],
            [f"Peak of {method} evidence", _pct(p["evidence"])],
            [f"Peak probability + {method}", _pct(p["probability_plus_evidence"])],
            ["Either peak hits (bound)", _pct(p["either"])]]
    return (_table(["pointer", f"accuracy over {p['segments']} segments"], rows) +
            "<p class='note'>Each ground-truth segment: a hit when the frame pointed at, within the clips that "
            "overlap it, lies inside it. Peak probability + evidence points at the peak of the sum of the two "
            "curves, each scaled to [0, 1] (the paper does not define its combination); 'either' counts a hit when "
            "either peak hits.</p>")


def _detection(m: dict) -> str:
    d = m["detection"]
    if not d["map"]:
        return "<p class='note'>No ground-truth segments (or no frame rate): no detection metrics.</p>"
    header = ["", *(f"tIoU {t}" for t in d["map"])]
    return (_table(header, [["mAP", *(_pct(v) for v in d["map"].values())]]) +
            f"<p class='note'>{_e(d['protocol'])}; {d['classes']} classes, {d['segments']} segments. Detections: "
            "each clip's localized segment (§4.1) for the target, scored by its mean probability there.</p>")


def _spatial(m: dict) -> str:
    s = m["spatial_pointing_game"]
    if not s["frames"]:
        return "<p class='note'>No boxes given.</p>"
    return (_table(["frames with boxes", "videos", "accuracy"], [[s["frames"], s["videos"], _pct(s["accuracy"])]]) +
            f"<p class='note'>A hit when the map's peak is within {s['tolerance_px']:g} px of a box (a "
            "15-pixel-diameter circle).</p>")


def _faithfulness(m: dict) -> str:
    f = m["faithfulness"]
    if not f["videos"]:
        return "<p class='note'>Not measured (--steps 0, or maps not one per frame).</p>"
    rows = [["evidence order", _value(f["deletion_auc"]), _value(f["insertion_auc"])],
            ["random order", _value(f["deletion_random_auc"]), _value(f["insertion_random_auc"])]]
    out = _table(["frames removed / inserted in", "deletion area ↓", "insertion area ↑"], rows)
    if "curves" in f:
        out += _png(_curves_plot(f["curves"]), "mean deletion and insertion curves")
    return out + ("<p class='note'>Frames are replaced by the model's mean input (deletion) or put back into an "
                  "all-mean clip (insertion), most evidence first; the target's probability is tracked; areas over "
                  "the fraction of frames changed, averaged over clips and videos.</p>")


def _curves_plot(curves: dict[str, list[float]]) -> bytes:
    fig = Figure(figsize=(6.4, 3.2), dpi=100)
    ax = fig.add_axes((0.1, 0.16, 0.86, 0.76))
    styles = {"deletion": ("tab:blue", "-"), "insertion": ("tab:red", "-"),
              "deletion_random": ("tab:blue", ":"), "insertion_random": ("tab:red", ":")}
    for name in FAITHFULNESS:
        y = np.asarray(curves[name])
        colour, line = styles[name]
        ax.plot(np.linspace(0, 1, len(y)), y, color=colour, linestyle=line, marker=".",
                label=name.replace("_", " (") + (")" if "_" in name else ""))
    ax.set_xlabel("fraction of frames removed / inserted")
    ax.set_ylabel("target probability")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def _classification(m: dict) -> str:
    c = m["classification"]
    if not c["videos"]:
        return "<p class='note'>No labels given: the predicted classes were explained.</p>"
    return _table(["labelled targets", "top-1 accuracy"], [[c["videos"], _pct(c["accuracy"])]])


def _per_class(m: dict) -> str:
    header = ["class", "videos", "accuracy", "segments", "pointing: evidence", "pointing: probability",
              "spatial", "AP@0.5", "deletion", "insertion"]
    rows = [[c, v["videos"], _pct(v["accuracy"]), v["segments"], _pct(v["pointing_evidence"]),
             _pct(v["pointing_probability"]), _pct(v["spatial"]), _pct(v["ap_0.5"]), _value(v["deletion_auc"]),
             _value(v["insertion_auc"])] for c, v in m["per_class"].items()]
    return _table(header, rows) if rows else "<p class='note'>No videos audited.</p>"


#: Failed videos listed in the report at most (metrics.json lists all).
ERRORS_SHOWN = 200


def _errors(m: dict) -> str:
    if not m["errors"]:
        return "<p>None.</p>"
    failed = sorted(m["errors"].items())
    more = (f"<p class='note'>… and {len(failed) - ERRORS_SHOWN} more (metrics.json lists them all).</p>"
            if len(failed) > ERRORS_SHOWN else "")
    return _table(["video", "error"], failed[:ERRORS_SHOWN], cls="err") + more


def rank_videos(rows: Sequence[Row]) -> list[tuple[Row, float, str]]:
    """The finished videos, best first: ``(video row, score, what the score is)`` (see the module docstring)."""
    tious: dict[str, list[float]] = {}
    for r in rows:
        if r["kind"] == "segment" and r["best_tiou"] is not None:
            tious.setdefault(r["id"], []).append(r["best_tiou"])
    ranked, seen = [], set()
    for r in rows:
        if r["kind"] != "video" or r["status"] != "ok" or r["id"] in seen:
            continue
        seen.add(r["id"])
        if r["id"] in tious:
            ranked.append((r, float(np.mean(tious[r["id"]])), "mean best tIoU"))
        elif r["deletion_auc"] is not None:
            ranked.append((r, r["insertion_auc"] - r["deletion_auc"], "insertion − deletion area"))
        else:
            ranked.append((r, r["target_probability"], "target probability"))
    return sorted(ranked, key=lambda t: -t[1])


def _examples(rows: Sequence[Row], settings: dict, store: ResultStore, paths: dict[str, str], count: int) -> str:
    ranked = rank_videos(rows)
    if not ranked:
        return "<p class='note'>No videos audited.</p>"
    best = ranked[:min(count, (len(ranked) + 1) // 2)]
    worst = ranked[len(best):][-count:][::-1]
    segments = [r for r in rows if r["kind"] == "segment" and not r["ambiguous"]]
    out = []
    for title, chosen in (("Best", best), ("Worst", worst)):
        for row, score, why in chosen:
            truth = next((s for s in segments if s["id"] == row["id"] and s["target"] == row["target"]), None)
            out.append(f"<h3>{title}: {_e(row['id'])}</h3><p>target {_e(row['target_label'] or row['target'])}, "
                       f"predicted {_e(row['predicted_label'] or row['predicted'])} "
                       f"(p = {row['probability']:.2f}); {why} {score:.3f}</p>")
            out.append(_example(row, truth, settings, store, paths.get(row["id"])))
    return "\n".join(out)


def _example(row: Row, truth: Row | None, settings: dict, store: ResultStore, path: str | None) -> str:
    """A video's evidence plot and its overlay grid, from its ``maps/<id>.npz`` (and its frames, decoded again)."""
    try:
        with np.load(store.map_path(row["id"]), allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except OSError as error:
        return f"<p class='note'>maps unavailable: {_e(error)}</p>"
    k = int(np.flatnonzero(arrays["targets"] == row["target"])[0])
    indices, maps, curve = arrays["frame_indices"], arrays["maps"][k], arrays["temporal"][k]
    scale = ColourScale.robust([maps], signed=settings.get("method") in SIGNED_METHODS)
    fps = row["fps"]
    frames_truth = None
    if truth is not None and fps:
        inside = indices[frames_in_segment(indices, fps, (truth["gt_start"], truth["gt_end"]))]
        frames_truth = (int(inside.min()), int(inside.max())) if inside.size else None
    with tempfile.TemporaryDirectory() as folder:
        plot = Path(folder) / "evidence.png"
        evidence_plot(plot, indices, curve, probs=arrays["probs"][k], segment=tuple(arrays["segments"][k]),
                      truth=frames_truth, fps=fps, title=f"{row['id']} · {row['target_label'] or row['target']}",
                      maps=maps, scale=scale)
        out = _png(plot.read_bytes(), f"evidence of {row['id']}")
    try:
        out += _png(_grid(path, indices, maps, curve, arrays, settings, scale), f"overlays of {row['id']}")
    except (EbrError, OSError) as error:
        out += f"<p class='note'>overlays unavailable: {_e(error)}</p>"
    return out


def _grid(path: str | None, indices: np.ndarray, maps: np.ndarray, curve: np.ndarray, arrays: dict,
          settings: dict, scale: ColourScale) -> np.ndarray:
    """Overlays of :data:`GRID_FRAMES` evenly spaced explained frames, decoded again from the video."""
    if path is None:
        raise EbrError("the video's file is not in this dataset")
    chosen = np.unique(np.linspace(0, len(indices) - 1, min(GRID_FRAMES, len(indices))).round().astype(int))
    wanted = {int(indices[c]): c for c in chosen}
    source = VideoSource(path, every=settings.get("every", 1), target_fps=settings.get("fps"),
                         fps=settings.get("source_fps"))
    frames = {}
    for index, frame in source:
        if index in wanted:
            frames[index] = frame
        if len(frames) == len(wanted):
            break
    if len(frames) != len(wanted):
        raise EbrError("the video gave other frames on a second read")
    order = sorted(wanted)
    crop = CropBox(*arrays["crop_box"].tolist(), frame_size=tuple(int(v) for v in arrays["frame_size"]))
    pictures = overlays(np.stack([frames[i] for i in order]), maps[[wanted[i] for i in order]], crop, scale)
    return contact_sheet(pictures, order, curve[[wanted[i] for i in order]], scale, tile=112, columns=GRID_FRAMES)
