"""An audit's results folder: what is finished, written atomically one video at a time, read back whole.

Layout of ``DIR``:

- ``results.parquet/`` — a Parquet dataset (read it whole with ``pyarrow.parquet.read_table(DIR / "results.parquet")``
  or any Parquet reader), one file per video: that video's rows in :data:`SCHEMA`. A video is finished when its file
  exists, so a run killed at any moment loses only the videos in flight, and a re-run audits only the others;
- ``maps/<id>.npz`` — each finished video's maps (``id`` URL-quoted into one file name), written before its rows;
- ``run.json`` — the settings of the run that made the folder; a re-run with other settings is refused;
- ``metrics.json`` and ``report.html`` — the whole dataset's metrics and report, rewritten at the end of each run.

Every file is written under a temporary name in its folder and renamed (:func:`~ebr_onnx.app.outputs.atomic_path`).
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..core.errors import EbrError
from .outputs import atomic_path, to_json, write_json

_DETECTION = pa.struct([("start", pa.float64()), ("end", pa.float64()), ("start_frame", pa.int64()),
                        ("end_frame", pa.int64()), ("score", pa.float64())])
_CURVE = pa.list_(pa.float64())

#: The columns of ``results.parquet``. ``kind`` is ``video`` (one row per explained target of a video: usually
#: one) or ``segment`` (one per ground-truth segment); a video that failed has one ``video`` row with
#: ``status="error"`` and its ``error``. Times are seconds, frames are numbers in the original video.
SCHEMA = pa.schema([
    ("kind", pa.string()),
    ("id", pa.string()),
    ("status", pa.string()),
    ("error", pa.string()),
    ("target", pa.int64()),                 # the class explained
    ("target_label", pa.string()),
    ("labelled", pa.bool_()),               # the target came from the dataset (not the prediction)
    ("predicted", pa.int64()),              # the class of highest mean probability over the clips
    ("predicted_label", pa.string()),
    ("probability", pa.float64()),          # the predicted class's mean probability
    ("target_probability", pa.float64()),
    ("segment_start", pa.float64()),        # the whole video's localized segment (§4.1)
    ("segment_end", pa.float64()),
    ("segment_start_frame", pa.int64()),
    ("segment_end_frame", pa.int64()),
    ("detections", pa.list_(_DETECTION)),   # each clip's localized segment, scored by the target's probability
    ("evidence_peak_frame", pa.int64()),
    ("evidence_peak_seconds", pa.float64()),
    ("evidence_peak", pa.float64()),
    ("spatial_hits", pa.int64()),           # the spatial pointing game (Table 1) over the frames with boxes
    ("spatial_frames", pa.int64()),
    ("deletion_auc", pa.float64()),         # deletion/insertion in time, evidence order and a random order
    ("insertion_auc", pa.float64()),
    ("deletion_random_auc", pa.float64()),
    ("insertion_random_auc", pa.float64()),
    ("deletion_curve", _CURVE),
    ("insertion_curve", _CURVE),
    ("deletion_random_curve", _CURVE),
    ("insertion_random_curve", _CURVE),
    ("gt_start", pa.float64()),             # segment rows: the ground truth
    ("gt_end", pa.float64()),
    ("ambiguous", pa.bool_()),
    ("pointer_evidence", pa.int64()),       # the temporal pointing game (Table 3): the frames pointed at
    ("pointer_probability", pa.int64()),
    ("pointer_combined", pa.int64()),
    ("hit_evidence", pa.bool_()),
    ("hit_probability", pa.bool_()),
    ("hit_combined", pa.bool_()),
    ("hit_either", pa.bool_()),
    ("random_hit_rate", pa.float64()),
    ("best_tiou", pa.float64()),            # the best tIoU of the video's detections of the segment's class
    ("fps", pa.float64()),
    ("clips", pa.int64()),
    ("frames", pa.int64()),                 # explained frames
    ("warnings", pa.list_(pa.string())),
    ("worker", pa.string()),
    ("seconds_prediction", pa.float64()),
    ("seconds_explanation", pa.float64()),
    ("seconds_faithfulness", pa.float64()),
    ("seconds_total", pa.float64()),        # on the worker, decoding included
])

RESULTS = "results.parquet"
MAPS = "maps"
RUN = "run.json"
#: Settings a re-run may change: where the model file lies (its SHA-256 is checked) and the packages' versions.
_UNCHECKED = ("model", "versions")


def file_stem(video_id: str) -> str:
    """A file name for a video id: the id URL-quoted (``/`` too), shortened with a hash when too long."""
    quoted = quote(video_id, safe="")
    if len(quoted) <= 200:
        return quoted
    return f"{quoted[:180]}-{hashlib.sha1(video_id.encode()).hexdigest()[:16]}"


class ResultStore:
    """The results folder of one audit (see the module docstring)."""

    def __init__(self, out: str | Path) -> None:
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise EbrError(f"--out {str(self.out)!r} exists and is not a folder")
        self.parts = self.out / RESULTS
        self.maps = self.out / MAPS

    def claim(self, settings: dict[str, Any]) -> None:
        """Make the folder, or check that it holds results of the same ``settings`` (``run.json``)."""
        run = self.out / RUN
        settings = json.loads(to_json(settings))   # as run.json holds them (tuples become lists)
        if run.exists():
            before = json.loads(run.read_text())
            changed = sorted(k for k in set(before) | set(settings)
                             if k not in _UNCHECKED and before.get(k) != settings.get(k))
            if changed:
                detail = "; ".join(f"{k}: {before.get(k)!r} → {settings.get(k)!r}" for k in changed[:3])
                raise EbrError(f"{self.out} holds an audit with other settings ({detail}): resume it with the same "
                               "command, or choose another --out")
        self.parts.mkdir(parents=True, exist_ok=True)
        self.maps.mkdir(parents=True, exist_ok=True)
        if not run.exists():
            write_json(run, settings)

    def part_path(self, video_id: str) -> Path:
        return self.parts / f"part-{file_stem(video_id)}.parquet"   # never hidden: an id may start with '.'

    def map_path(self, video_id: str) -> Path:
        return self.maps / f"{file_stem(video_id)}.npz"

    def finished(self) -> dict[str, str]:
        """The finished videos: id → status (``ok`` or ``error``), read from the parts' rows."""
        done: dict[str, str] = {}
        if not self.parts.is_dir():
            return done
        for part in sorted(self.parts.glob("*.parquet")):
            if part.name.startswith("."):
                continue
            table = pq.read_table(part, columns=["id", "kind", "status"])
            for row in table.to_pylist():
                if row["kind"] == "video":
                    done[row["id"]] = row["status"]
        return done

    def write(self, video_id: str, rows: list[dict[str, Any]], arrays: dict[str, np.ndarray] | None) -> None:
        """Write a finished video: its maps first (if any), then its rows, each atomically; the rows' file marks
        the video finished."""
        if arrays is not None:
            with atomic_path(self.map_path(video_id)) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)
        else:
            self.map_path(video_id).unlink(missing_ok=True)
        table = pa.Table.from_pylist([_known(row) for row in rows], schema=SCHEMA)
        with atomic_path(self.part_path(video_id)) as tmp:
            pq.write_table(table, tmp)

    def rows(self, ids: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """All rows of the finished videos (only those of ``ids`` when given), in the order of their files."""
        wanted = None if ids is None else {self.part_path(i).name for i in ids}
        tables = [pq.read_table(part, schema=SCHEMA) for part in sorted(self.parts.glob("*.parquet"))
                  if not part.name.startswith(".") and (wanted is None or part.name in wanted)]
        return pa.concat_tables(tables).to_pylist() if tables else []


def _known(row: dict[str, Any]) -> dict[str, Any]:
    unknown = set(row) - set(SCHEMA.names)
    if unknown:
        raise EbrError(f"result columns {sorted(unknown)} are not in the results schema")   # a bug, not the user's
    return row
