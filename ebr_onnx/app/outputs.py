"""Writing a run's results to a folder, each file atomically, the pictures on a pool of threads.

Layout of a ``ground`` run's folder (:func:`write_evidence` for the whole video and each clip folder,
:func:`write_pictures` for a clip's pictures):

- ``summary.json`` — the whole video: the run's settings, the target, top-5 classes, the localized segments in video
  frames and seconds, each clip's summary, timings;
- ``maps.npz`` — the whole video: ``maps`` ``(F, h, w)`` and the evidence curve ``temporal`` ``(F,)`` for the ``F``
  explained frames (``frame_indices``, their numbers in the video), ``probs``, ``segment``, ``settings`` as a JSON
  string (no pickles: ``np.load(path, allow_pickle=False)``);
- ``evidence.png`` — the evidence curve over the video;
- ``clip_NNN/`` — each clip: ``maps.npz``, ``summary.json``, ``sheet.png`` (all its frames in a grid),
  ``overlays/frame_NNNNN.jpg`` (NNNNN = the frame's number in the video) and ``overlay.gif`` / ``overlay.mp4``.

Every file is written to a temporary name in its folder and renamed, so a failure leaves the files already written
intact; a clip's maps and summary are written as soon as it is explained.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import EbrError
from .colour import ColourScale
from .overlay import contact_sheet, overlays
from .preprocess import CropBox
from .video import write_video

ANIMATIONS = ("gif", "mp4")


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


def write_json(path: Path, value: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(to_json(value) + "\n")


def write_png(path: Path, picture: np.ndarray) -> None:
    """A uint8 RGB picture as PNG (zlib level 1, Huffman coding only: 2–3 times faster than the default, and
    smaller than level 1's default strategy on noisy frames)."""
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", compress_level=1, compress_type=2)


def write_jpeg(path: Path, picture: np.ndarray) -> None:
    """A uint8 RGB picture as JPEG, quality 92 (a frame's overlay: ~15 times faster to write than a PNG)."""
    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="JPEG", quality=92)


@dataclass(frozen=True)
class Evidence:
    """The results of a clip or of the whole video: ``maps`` ``(F, h, w)``, the evidence curve ``temporal``
    ``(F,)``, the number in the video of each frame (``frame_indices``), the run's ``settings``; optionally the
    target's probability per frame (``probs``), the localized ``segment`` (inclusive, in video frame numbers) and
    the ``crop_box`` the network saw."""

    maps: np.ndarray
    temporal: np.ndarray
    frame_indices: np.ndarray
    settings: dict = field(default_factory=dict)
    probs: np.ndarray | None = None
    segment: Sequence[int] | None = None
    crop_box: CropBox | None = None

    def __post_init__(self) -> None:
        maps = np.asarray(self.maps)
        if maps.ndim != 3 or len(self.temporal) != len(maps) or len(self.frame_indices) != len(maps):
            raise EbrError(f"maps {maps.shape}, temporal ({len(self.temporal)},) and frame_indices "
                           f"({len(self.frame_indices)},) must describe the same frames")


def write_evidence(out_dir: Path, evidence: Evidence, summary: dict) -> list[str]:
    """Write ``maps.npz``, then ``summary.json`` (with the list of files) to ``out_dir``; returns the files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"maps": np.asarray(evidence.maps), "temporal": np.asarray(evidence.temporal),
              "frame_indices": np.asarray(evidence.frame_indices), "settings": np.array(to_json(evidence.settings))}
    if evidence.probs is not None:
        arrays["probs"] = np.asarray(evidence.probs)
    if evidence.segment is not None:
        arrays["segment"] = np.asarray(evidence.segment, dtype=np.int64)
    if evidence.crop_box is not None:
        box = evidence.crop_box
        arrays["crop_box"] = np.array([box.x0, box.y0, box.x1, box.y1])
        arrays["frame_size"] = np.array(box.frame_size, dtype=np.int64)
    with atomic_path(out_dir / "maps.npz") as tmp, open(tmp, "wb") as handle:
        np.savez_compressed(handle, **arrays)
    files = ["maps.npz", *summary.get("files", []), "summary.json"]
    write_json(out_dir / "summary.json", {**summary, "files": list(dict.fromkeys(files))})
    return files


class PictureWriter:
    """Runs picture jobs on a pool of threads (Pillow's resampling, compositing and encoders release the GIL), at
    most ``2 × threads`` queued so that the frames they hold stay few; :meth:`wait` re-raises the first failure."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads or min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=self.threads)
        self._pending: list[Future] = []

    def submit(self, function: Any, *args: Any, **kwargs: Any) -> Future:
        while len([job for job in self._pending if not job.done()]) >= 2 * self.threads:
            next(job for job in self._pending if not job.done()).result()
        job = self._pool.submit(function, *args, **kwargs)
        self._pending.append(job)
        return job

    def wait(self) -> None:
        pending, self._pending = self._pending, []
        for job in pending:
            job.result()

    def __enter__(self) -> PictureWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)


def picture_files(frame_indices: Sequence[int], animations: Sequence[str] = ("gif",)) -> list[str]:
    """The files :func:`write_pictures` writes for a clip, relative to its folder."""
    unknown = set(animations) - set(ANIMATIONS)
    if unknown:
        raise EbrError(f"unknown animation format(s) {sorted(unknown)}; supported: {', '.join(ANIMATIONS)}")
    return ["sheet.png", *(f"overlays/frame_{int(i):05d}.jpg" for i in frame_indices),
            *(f"overlay.{kind}" for kind in animations)]


def write_pictures(out_dir: Path, frames: np.ndarray, clip: Evidence, scale: ColourScale, *,
                   animations: Sequence[str] = ("gif",), fps: float | None = None) -> list[str]:
    """Render a clip's overlays on the video's colour ``scale`` and write ``sheet.png``, ``overlays/…`` and the
    animations (at ``fps``, or 12 fps, the release's, when it is unknown); returns the files, relative to
    ``out_dir`` (:func:`picture_files`)."""
    files = picture_files(clip.frame_indices, animations)
    if clip.crop_box is None or len(frames) != len(clip.maps):
        raise EbrError("overlays need a crop box and one frame per map")
    pictures = overlays(frames, clip.maps, clip.crop_box, scale)
    write_png(out_dir / "sheet.png", contact_sheet(pictures, clip.frame_indices, clip.temporal, scale))
    (out_dir / "overlays").mkdir(parents=True, exist_ok=True)
    for picture, name in zip(pictures, files[1:]):
        write_jpeg(out_dir / name, picture)
    for kind in animations:
        with atomic_path(out_dir / f"overlay.{kind}") as tmp:
            write_video(tmp, pictures, fps or 12.0)
    return files
