"""Writing a run's results to a folder, each file atomically, and a progress helper.

Layout of ``out_dir``: ``maps.npz`` (arrays and the settings as a JSON string; no pickles, load it with
``np.load(path, allow_pickle=False)``), ``evidence.png``, ``overlays/frame_NNNNN.png`` (NNNNN = the frame's index in
the original video), ``overlay.gif`` / ``overlay.mp4``, and ``summary.json`` last. Every file is written to a
temporary name in the same folder and renamed, so a failure leaves the files already written intact.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image
from tqdm import tqdm

from ..core.errors import EbrError
from .overlay import evidence_curve_plot, overlay
from .preprocess import CropBox
from .video import write_video

Item = TypeVar("Item")


def progress(iterable: Iterable[Item], desc: str = "", quiet: bool = False, total: int | None = None
             ) -> Iterable[Item]:
    """Wrap ``iterable`` in a tqdm progress bar on stderr (``total`` defaults to its length); as is if quiet."""
    return iterable if quiet else tqdm(iterable, desc=desc, total=total)


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (same suffix, so writers pick the same format) and move it onto
    ``path`` when the block succeeds; on failure the temporary file is removed and ``path`` is left as it was."""
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.partial{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def to_json(value: Any) -> str:
    """JSON text of ``value``, accepting NumPy scalars and arrays and paths."""
    return json.dumps(value, indent=2, default=_json_default)


@dataclass(frozen=True)
class ClipResults:
    """One clip's results: ``maps`` ``(T, h, w)``, the evidence curve ``temporal`` ``(T,)``, the original frame index
    of each map, the run's ``settings``; for overlays the ``frames`` (uint8 RGB ``(T, H, W, 3)``) and the
    ``crop_box`` the network saw; the target's probability per frame, the localized ``segment`` and a ground-truth
    one (``truth``) in clip frames, the ``summary`` for summary.json, the video's ``fps`` (None: unknown) and whether
    the maps are ``signed``."""

    maps: np.ndarray
    temporal: np.ndarray
    frame_indices: np.ndarray
    settings: dict
    frames: np.ndarray | None = None
    crop_box: CropBox | None = None
    probs: np.ndarray | None = None
    segment: Sequence[int] | None = None
    truth: Sequence[int] | None = None
    summary: dict | None = None
    fps: float | None = None
    signed: bool = True


def write_results(out_dir: str | Path, clip: ClipResults, *, animations: Sequence[str] = ("gif",),
                  quiet: bool = True) -> list[str]:
    """Write the results of one clip to ``out_dir`` (layout in the module docstring) and return the files written,
    relative to ``out_dir``. Animations (``"gif"``, ``"mp4"``) play at the clip's fps, or 12 fps (the release's)
    when it is unknown."""
    maps, temporal, frame_indices, frames, crop_box = (clip.maps, clip.temporal, clip.frame_indices, clip.frames,
                                                       clip.crop_box)
    probs, segment, fps = clip.probs, clip.segment, clip.fps
    out = Path(out_dir)
    maps = np.asarray(maps)
    if maps.ndim != 3 or len(temporal) != len(maps) or len(frame_indices) != len(maps):
        raise EbrError(f"maps {maps.shape}, temporal ({len(temporal)},) and frame_indices ({len(frame_indices)},) "
                       "must describe the same T frames")
    if frames is not None and (crop_box is None or len(frames) != len(maps)):
        raise EbrError("overlays need a crop box and one frame per map")
    unknown = set(animations) - {"gif", "mp4"}
    if unknown:
        raise EbrError(f"unknown animation format(s) {sorted(unknown)}; supported: gif, mp4")
    out.mkdir(parents=True, exist_ok=True)
    written: list[str] = []

    arrays = {"maps": maps, "temporal": np.asarray(temporal), "frame_indices": np.asarray(frame_indices),
              "settings": np.array(to_json(clip.settings))}
    if probs is not None:
        arrays["probs"] = np.asarray(probs)
    if segment is not None:
        arrays["segment"] = np.asarray(segment, dtype=np.int64)
    if crop_box is not None:
        arrays["crop_box"] = np.array([crop_box.x0, crop_box.y0, crop_box.x1, crop_box.y1])
        arrays["frame_size"] = np.array(crop_box.frame_size, dtype=np.int64)
    with atomic_path(out / "maps.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    written.append("maps.npz")

    with atomic_path(out / "evidence.png") as tmp:
        evidence_curve_plot(tmp, temporal, probs=probs, segment=segment, truth=clip.truth, fps=fps)
    written.append("evidence.png")

    if frames is not None:
        (out / "overlays").mkdir(exist_ok=True)
        pictures = []
        for k in progress(range(len(maps)), "overlays", quiet):
            picture = overlay(frames[k], maps[k], crop_box, signed=clip.signed)
            name = f"overlays/frame_{int(frame_indices[k]):05d}.png"
            with atomic_path(out / name) as tmp:
                Image.fromarray(picture).save(tmp, format="PNG")
            written.append(name)
            pictures.append(picture)
        for kind in animations:
            with atomic_path(out / f"overlay.{kind}") as tmp:
                write_video(tmp, pictures, fps or 12.0)
            written.append(f"overlay.{kind}")

    written.append("summary.json")
    with atomic_path(out / "summary.json") as tmp:
        tmp.write_text(to_json({**(clip.summary or {}), "files": written}) + "\n")
    return written
