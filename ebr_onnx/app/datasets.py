"""Datasets for ``ebr-onnx audit``: a CSV manifest, THUMOS14's temporal annotation folder, or a folder of videos.

Each becomes a list of :class:`VideoItem` — one per video, with its ground-truth segments (seconds) and, from a
manifest, the file of its boxes. Reading the videos, and the boxes, is left to the workers: a missing or unreadable
file becomes that video's error row, not a failure of the whole run. A malformed manifest or annotation file is a
failure of the whole run (an :class:`~ebr_onnx.core.errors.EbrError` naming the file and line).

- **Manifest** (``*.csv``, a header row): ``video`` (a path relative to the manifest's folder, or absolute; the
  video's ``id`` is the path as written), optional ``label`` (the class to explain; empty: the predicted class),
  ``start`` and ``end`` (seconds: one ground-truth segment of ``label``; several rows per video allowed), ``boxes``
  (a per-video CSV or JSON file of ``frame,x0,y0,x1,y1`` rows, see :func:`read_boxes`).
- **THUMOS14** (a folder of ``<Class>_test.txt`` / ``<Class>_val.txt`` files of ``video start end`` lines, as the
  challenge distributes them): one item per annotated video, its segments of every class; ``Ambiguous_*.txt``
  segments are kept as ``ambiguous`` (the detection protocol drops false positives that overlap them) and a video
  with only ambiguous segments is left out, as the challenge's evaluation does.
- **Folder of videos**: every file with a video suffix, sorted, no annotations (predictions and evidence only).
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import EbrError

VIDEO_SUFFIXES = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".mpg", ".mpeg", ".npy")
#: The file names of THUMOS14's temporal annotations: ``<Class>_<subset>.txt``.
THUMOS_FILE = re.compile(r"^(?P<label>.+)_(?P<subset>test|val|validation)\.txt$")
AMBIGUOUS = "Ambiguous"


@dataclass(frozen=True)
class Segment:
    """A ground-truth segment in seconds, ``start <= end``; ``label`` None: the class explained for the video
    (the predicted one); ``ambiguous``: THUMOS's Ambiguous segments (not scored, they only excuse detections)."""

    start: float
    end: float
    label: str | None = None
    ambiguous: bool = False


@dataclass(frozen=True)
class VideoItem:
    """One video of a dataset: its ``id`` (as the dataset names it; the results' key), the ``path`` to read, the
    classes to explain (``labels``; empty: the predicted class), its ground-truth ``segments`` and its ``boxes``
    file (or None)."""

    id: str
    path: str
    labels: tuple[str, ...] = ()
    segments: tuple[Segment, ...] = ()
    boxes: str | None = None


@dataclass(frozen=True)
class Dataset:
    """The videos of a dataset and what it was read from (``kind``: ``manifest``, ``thumos14`` or ``folder``)."""

    kind: str
    source: str
    items: tuple[VideoItem, ...] = field(default_factory=tuple)


def load_dataset(path: str | Path, videos: str | Path | None = None) -> Dataset:
    """Read the dataset at ``path``: a ``.csv`` manifest, a THUMOS14 annotation folder (``videos``: the folder of
    its videos; default the first of ``path/videos``, ``path/../videos`` and ``path`` that holds one of them) or a
    folder of videos."""
    path = Path(path)
    if not path.exists():
        raise EbrError(f"dataset not found: {path}")
    if path.is_file():
        if path.suffix.lower() != ".csv":
            raise EbrError(f"{path} is not a dataset: give a .csv manifest, a THUMOS14 annotation folder or a "
                           "folder of videos")
        if videos is not None:
            raise EbrError("--videos applies to THUMOS14 annotation folders only (a manifest names its videos)")
        return read_manifest(path)
    if any(THUMOS_FILE.match(p.name) for p in path.iterdir()):
        return read_thumos(path, videos)
    if videos is not None:
        raise EbrError("--videos applies to THUMOS14 annotation folders only")
    return read_folder(path)


def read_manifest(path: Path) -> Dataset:
    """A CSV manifest (see the module docstring); rows of one video are gathered in the order of its first row."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
            columns = set(rows[0]) if rows else set()
    except (csv.Error, UnicodeDecodeError) as error:
        raise EbrError(f"cannot read manifest {path}: {error}") from None
    if not rows:
        raise EbrError(f"manifest {path} has no rows (a header row with a 'video' column, then one row per video "
                       "or per ground-truth segment)")
    if "video" not in columns:
        raise EbrError(f"manifest {path} has no 'video' column (columns: {', '.join(sorted(c for c in columns if c))})")
    if ("start" in columns) != ("end" in columns):
        raise EbrError(f"manifest {path} needs both 'start' and 'end' columns, or neither")
    gathered: dict[str, dict] = {}
    for line, row in enumerate(rows, start=2):
        video = (row.get("video") or "").strip()
        if not video:
            raise EbrError(f"{path}, line {line}: empty 'video'")
        label = (row.get("label") or "").strip() or None
        entry = gathered.setdefault(video, {"labels": [], "segments": [], "boxes": None})
        if label is not None and label not in entry["labels"]:
            entry["labels"].append(label)
        segment = _segment(row, path, line, label)
        if segment is not None:
            entry["segments"].append(segment)
        boxes = (row.get("boxes") or "").strip() or None
        if boxes is not None:
            if entry["boxes"] not in (None, boxes):
                raise EbrError(f"{path}, line {line}: video {video!r} names two boxes files")
            entry["boxes"] = boxes
    root = path.parent
    items = tuple(
        VideoItem(id=video, path=str(root / video), labels=tuple(e["labels"]), segments=tuple(e["segments"]),
                  boxes=None if e["boxes"] is None else str(root / e["boxes"]))
        for video, e in gathered.items()
    )
    return Dataset("manifest", str(path), items)


def _segment(row: dict, path: Path, line: int, label: str | None) -> Segment | None:
    start, end = (row.get(key) or "" for key in ("start", "end"))
    if not start.strip() and not end.strip():
        return None
    try:
        s, e = float(start), float(end)
    except ValueError:
        raise EbrError(f"{path}, line {line}: start and end must be seconds, got {start!r} and {end!r}") from None
    if not (np.isfinite(s) and np.isfinite(e) and 0 <= s <= e):
        raise EbrError(f"{path}, line {line}: a segment needs 0 <= start <= end, got {s:g} and {e:g}")
    return Segment(s, e, label)


def read_thumos(folder: Path, videos: str | Path | None = None) -> Dataset:
    """THUMOS14's temporal annotations (see the module docstring); the subset whose files come first by name when
    a folder holds both (``test`` before ``val``)."""
    files = sorted(p for p in folder.iterdir() if THUMOS_FILE.match(p.name))
    subsets = sorted({THUMOS_FILE.match(p.name)["subset"] for p in files})
    subset = subsets[0]
    segments: dict[str, list[Segment]] = {}
    for file in (p for p in files if THUMOS_FILE.match(p.name)["subset"] == subset):
        label = THUMOS_FILE.match(file.name)["label"]
        for line, text in enumerate(file.read_text().splitlines(), start=1):
            fields = text.split()
            if not fields:
                continue
            if len(fields) != 3:
                raise EbrError(f"{file}, line {line}: expected 'video start end', got {text.strip()!r}")
            try:
                start, end = float(fields[1]), float(fields[2])
            except ValueError:
                raise EbrError(f"{file}, line {line}: start and end must be seconds, got {text.strip()!r}") from None
            ambiguous = label == AMBIGUOUS
            segment = Segment(min(start, end), max(start, end), None if ambiguous else label, ambiguous)
            segments.setdefault(fields[0], []).append(segment)
    scored = {name: segs for name, segs in sorted(segments.items()) if any(not s.ambiguous for s in segs)}
    if not scored:
        raise EbrError(f"no annotated videos in {folder} (only Ambiguous segments)")
    where = _thumos_videos(folder, videos, scored)
    items = tuple(
        VideoItem(id=name, path=str(_video_file(where, name)),
                  labels=tuple(dict.fromkeys(s.label for s in segs if not s.ambiguous)), segments=tuple(segs))
        for name, segs in scored.items()
    )
    return Dataset("thumos14", str(folder), items)


def _thumos_videos(folder: Path, videos: str | Path | None, names: dict) -> Path:
    if videos is not None:
        where = Path(videos)
        if not where.is_dir():
            raise EbrError(f"--videos {str(where)!r} is not a folder")
        return where
    for where in (folder / "videos", folder.parent / "videos", folder):
        if where.is_dir() and any(_video_file(where, name).exists() for name in names):
            return where
    raise EbrError(f"found none of the annotated videos in {folder}/videos, {folder.parent}/videos or {folder}: "
                   "name their folder with --videos DIR")


def _video_file(folder: Path, name: str) -> Path:
    """``folder/name`` with the first video suffix that exists (``.mp4`` when none does)."""
    for suffix in VIDEO_SUFFIXES:
        candidate = folder / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    return folder / f"{name}.mp4"


def read_folder(folder: Path) -> Dataset:
    """Every file with a video suffix in ``folder`` (not its subfolders), sorted by name, no annotations."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
    if not files:
        raise EbrError(f"no videos in {folder} (looked for {', '.join(VIDEO_SUFFIXES)}), no THUMOS14 annotation "
                       "files (<Class>_test.txt)")
    return Dataset("folder", str(folder), tuple(VideoItem(id=p.name, path=str(p)) for p in files))


def read_boxes(path: str | Path) -> dict[int, list[tuple[float, float, float, float]]]:
    """A video's ground-truth boxes by frame number (0-based, in the original video): a CSV with the header
    ``frame,x0,y0,x1,y1`` or a JSON list of such objects (or of ``[frame, x0, y0, x1, y1]`` lists). Coordinates are
    pixel edges of the original frame (a box of the pixels c0…c1 is ``x0 = c0, x1 = c1 + 1``); several boxes on one
    frame are all kept (a pointing-game hit on any of them counts)."""
    path = Path(path)
    if not path.is_file():
        raise EbrError(f"boxes file not found: {path}")
    try:
        if path.suffix.lower() == ".json":
            records = json.loads(path.read_text())
            if not isinstance(records, list):
                raise EbrError(f"{path}: expected a JSON list of boxes")
            rows = [r if isinstance(r, (list, tuple)) else [r[k] for k in ("frame", "x0", "y0", "x1", "y1")]
                    for r in records]
        else:
            with open(path, newline="") as handle:
                rows = [[r[k] for k in ("frame", "x0", "y0", "x1", "y1")] for r in csv.DictReader(handle)]
        boxes: dict[int, list[tuple[float, float, float, float]]] = {}
        for frame, *coords in rows:
            x0, y0, x1, y1 = (float(v) for v in coords)
            if not (x0 <= x1 and y0 <= y1):
                raise EbrError(f"{path}: box {coords} of frame {frame} needs x0 <= x1 and y0 <= y1")
            boxes.setdefault(int(frame), []).append((x0, y0, x1, y1))
    except (KeyError, TypeError, ValueError) as error:
        if isinstance(error, EbrError):
            raise
        raise EbrError(f"cannot read boxes {path}: {error!r} (expected frame,x0,y0,x1,y1)") from None
    return boxes
