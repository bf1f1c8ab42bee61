"""``ebr-onnx audit`` driven as a user would: a manifest of generated videos with segments and boxes, a local Dask
cluster of 2 workers, re-runs that skip what is finished, a worker killed mid-way, a run interrupted and resumed,
bad videos as error rows, and THUMOS14-format folders."""
from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq
import pytest

from ebr_onnx.app.datasets import load_dataset, read_boxes
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.app.synthetic import CLASS_NAMES, edge_boxes, make_concatenated
from ebr_onnx.app.video import write_video
from ebr_onnx.core.errors import EbrError

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")

FPS = 8.0
FRAMES = 32
GOOD = 12
BAD = ("clips/corrupt.mp4", "clips/missing.mp4")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "ebr_onnx.app.cli", *args]


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_cli(*args), cwd=cwd, capture_output=True, text=True, timeout=300)


def make_videos(root: Path, count: int) -> list[dict]:
    """``count`` generated rand+GT videos (mp4, 8 fps) whose ground truth starts anywhere, so that it crosses clip
    boundaries; their boxes as JSON (the first video's as CSV); returns the manifest rows."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    rows = []
    for k in range(count):
        clip = make_concatenated(k, "rand+GT", frames=FRAMES, gt_length=6 + (5 * k) % 21)
        name = f"clips/v{k:02d}.mp4"
        write_video(root / name, clip.frames, FPS)
        boxes = [{"frame": t, "x0": int(b[0]), "y0": int(b[1]), "x1": int(b[2]), "y1": int(b[3])}
                 for t, b in enumerate(edge_boxes(clip.boxes))]
        if k == 0:
            boxes_file = f"clips/v{k:02d}.boxes.csv"
            with open(root / boxes_file, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["frame", "x0", "y0", "x1", "y1"])
                writer.writeheader()
                writer.writerows(boxes)
        else:
            boxes_file = f"clips/v{k:02d}.boxes.json"
            (root / boxes_file).write_text(json.dumps(boxes))
        start, end = clip.gt_segment
        rows.append({"video": name, "label": CLASS_NAMES[clip.gt_class], "start": start / FPS,
                     "end": (end + 1) / FPS, "boxes": boxes_file})
    return rows


def write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["video", "label", "start", "end", "boxes"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """12 good videos, a corrupt one and a missing one."""
    root = tmp_path_factory.mktemp("dataset")
    rows = make_videos(root, GOOD)
    (root / BAD[0]).write_bytes((root / "clips/v01.mp4").read_bytes()[:2000])
    rows += [{"video": BAD[0], "label": "growing", "start": 1.0, "end": 2.0},
             {"video": BAD[1], "label": "growing", "start": 1.0, "end": 2.0}]
    return write_manifest(root / "manifest.csv", rows)


def read_rows(out: Path) -> list[dict]:
    return pq.read_table(out / "results.parquet").to_pylist()


def video_counts(out: Path) -> Counter:
    return Counter(r["id"] for r in read_rows(out) if r["kind"] == "video")


def check_complete(out: Path) -> list[dict]:
    """Every video of the dataset exactly once: the good ones ok with their maps, the bad ones as error rows."""
    rows = read_rows(out)
    counts = Counter(r["id"] for r in rows if r["kind"] == "video")
    assert sorted(counts) == sorted([f"clips/v{k:02d}.mp4" for k in range(GOOD)] + list(BAD))
    assert set(counts.values()) == {1}
    status = {r["id"]: r for r in rows if r["kind"] == "video"}
    for video, row in status.items():
        if video in BAD:
            assert row["status"] == "error" and row["error"]
            assert not (out / "maps" / f"{video.replace('/', '%2F')}.npz").exists()
        else:
            assert row["status"] == "ok" and row["error"] is None
            assert (out / "maps" / f"{video.replace('/', '%2F')}.npz").is_file()
    assert "not found" in status[BAD[1]]["error"] and "cannot open" in status[BAD[0]]["error"]
    segments = [r for r in rows if r["kind"] == "segment"]
    assert len(segments) == GOOD
    return rows


def test_audit_on_a_local_cluster(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    proc = run("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", "2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"{GOOD + 2} video(s) audited (2 failed), 0 already done" in proc.stdout
    rows = check_complete(out)

    video = next(r for r in rows if r["id"] == "clips/v03.mp4" and r["kind"] == "video")
    assert video["labelled"] and video["target_label"] in CLASS_NAMES
    assert video["fps"] == FPS and video["clips"] == 2 and video["frames"] == FRAMES
    assert len(video["detections"]) == 2 and all(0 <= d["score"] <= 1 for d in video["detections"])
    assert video["spatial_frames"] == FRAMES and 0 <= video["spatial_hits"] <= FRAMES
    assert len(video["deletion_curve"]) == 9 and 0 <= video["deletion_auc"] <= 1
    assert video["worker"] and video["seconds_total"] > 0
    segment = next(r for r in rows if r["id"] == "clips/v03.mp4" and r["kind"] == "segment")
    assert segment["hit_evidence"] is not None and 0 < segment["random_hit_rate"] <= 1

    with np.load(out / "maps" / "clips%2Fv03.mp4.npz", allow_pickle=False) as maps:
        assert maps["maps"].shape[:2] == (1, FRAMES) and maps["temporal"].shape == (1, FRAMES)
        assert list(maps["targets"]) == [video["target"]]

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"] == {"total": GOOD + 2, "ok": GOOD, "error": 2, "explained_targets": GOOD,
                                 "segments": GOOD}
    assert set(metrics["detection"]["map"]) == {"0.1", "0.2", "0.3", "0.4", "0.5"}
    assert metrics["temporal_pointing_game"]["segments"] == GOOD
    assert metrics["spatial_pointing_game"]["frames"] == GOOD * FRAMES
    assert set(metrics["errors"]) == set(BAD)
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 5
    assert "http://" not in page and "https://" not in page and "<script" not in page
    assert "Failed videos" in page and "clips/corrupt.mp4" in page

    parts = {p: p.stat().st_mtime_ns for p in (out / "results.parquet").iterdir()}
    again = run("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", "2", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"0 video(s) audited (0 failed), {GOOD + 2} already done" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in (out / "results.parquet").iterdir()} == parts

    other = run("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--method", "ebr", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.count("\n") == 1 and "other settings" in other.stderr


def _wait_for_parts(out: Path, count: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        parts = out / "results.parquet"
        if parts.is_dir() and len([p for p in parts.iterdir() if not p.name.startswith(".")]) >= count:
            return
        time.sleep(0.01)


def _is_worker(process: psutil.Process) -> bool:
    """A Dask worker process of a LocalCluster (started by multiprocessing's spawn)."""
    try:
        return any("spawn_main" in part for part in process.cmdline())
    except psutil.Error:
        return False


def test_a_killed_worker_then_a_rerun_gives_every_video_once(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "audit"
    args = _cli("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", "2")
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_parts(out, 1, proc)
        workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if _is_worker(c)]
        assert workers, "no worker process found"
        workers[0].send_signal(signal.SIGKILL)
        proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    rerun = run("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", "2", cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    check_complete(out)


def test_an_interrupted_run_resumes_where_it_stopped(dataset: Path, tmp_path: Path) -> None:
    """Ctrl-C on a run of 2 workers, and a hard kill of a run in this process: the re-runs audit only the rest.
    The run gets SIGINT's default disposition: a harness that started the tests in the background (a shell without
    job control) has them ignore it, and the run would never see its Ctrl-C."""
    for workers, stop in (("2", signal.SIGINT), ("0", signal.SIGKILL)):
        out = tmp_path / f"audit-{workers}"
        args = _cli("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", workers)
        proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        try:
            _wait_for_parts(out, 3, proc)
            proc.send_signal(stop)
            proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        done = sum(video_counts(out).values())
        assert 0 < done < GOOD + 2
        rerun = run("audit", str(BUNDLED_MODEL), str(dataset), "--out", str(out), "--workers", workers, cwd=tmp_path)
        assert rerun.returncode == 0, rerun.stderr
        assert f"{GOOD + 2 - done} video(s) audited" in rerun.stdout
        check_complete(out)


def test_a_thumos_folder_parses(tmp_path: Path) -> None:
    annotations = tmp_path / "annotation"
    annotations.mkdir()
    (annotations / "BaseballPitch_test.txt").write_text("video_test_0000004  0.2  1.1\n"
                                                         "video_test_0000004 5.0 7.5\nvideo_test_0000007 3 4\n")
    (annotations / "CliffDiving_test.txt").write_text("video_test_0000007 10.0 12.0\n")
    (annotations / "Diving_test.txt").write_text("video_test_0000007 10.0 12.0\n")
    (annotations / "Ambiguous_test.txt").write_text("video_test_0000004 2.0 3.0\nvideo_test_0001292 1 2\n")
    (annotations / "Diving_val.txt").write_text("video_validation_0000001 1 2\n")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "video_test_0000004.mp4").write_bytes(b"")
    data = load_dataset(annotations)
    assert data.kind == "thumos14"
    assert [item.id for item in data.items] == ["video_test_0000004", "video_test_0000007"]   # 1292: only ambiguous
    first, second = data.items
    assert first.path == str(videos / "video_test_0000004.mp4") and first.labels == ("BaseballPitch",)
    assert sorted((s.start, s.end, s.label, s.ambiguous) for s in first.segments) == [
        (0.2, 1.1, "BaseballPitch", False), (2.0, 3.0, None, True), (5.0, 7.5, "BaseballPitch", False)]
    assert second.labels == ("BaseballPitch", "CliffDiving", "Diving") and len(second.segments) == 3
    assert second.path == str(videos / "video_test_0000007.mp4")   # missing: an error row when audited
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert load_dataset(annotations, elsewhere).items[0].path == str(elsewhere / "video_test_0000004.mp4")
    (annotations / "Diving_test.txt").write_text("video_test_0000007 10.0\n")
    with pytest.raises(EbrError, match="Diving_test.txt, line 1: expected 'video start end'"):
        load_dataset(annotations)


def test_a_thumos_dataset_is_audited_in_this_process(tmp_path: Path) -> None:
    """Generated videos under THUMOS's names and layout (classes named by the model's labels), no Dask."""
    annotations, videos = tmp_path / "annotation", tmp_path / "videos"
    annotations.mkdir()
    videos.mkdir()
    lines: dict[str, list[str]] = {}
    for k in range(3):
        clip = make_concatenated(20 + k, "rand+GT", frames=FRAMES, gt_length=12)
        write_video(videos / f"video_test_{k:07d}.mp4", clip.frames, FPS)
        start, end = clip.gt_segment
        lines.setdefault(CLASS_NAMES[clip.gt_class], []).append(
            f"video_test_{k:07d} {start / FPS:.3f} {(end + 1) / FPS:.3f}")
    for label, text in lines.items():
        (annotations / f"{label}_test.txt").write_text("\n".join(text) + "\n")
    (annotations / "Ambiguous_test.txt").write_text("video_test_0000000 0.0 0.5\n")
    out = tmp_path / "audit"
    proc = run("audit", str(BUNDLED_MODEL), str(annotations), "--out", str(out), "--workers", "0", "--steps", "2",
               cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = read_rows(out)
    assert Counter(r["id"] for r in rows if r["kind"] == "video") == {f"video_test_{k:07d}": 1 for k in range(3)}
    assert sum(r["kind"] == "segment" and r["ambiguous"] for r in rows) == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["videos"]["ok"] == 3 and metrics["temporal_pointing_game"]["segments"] == 3


def test_manifest_rows_gather_by_video(tmp_path: Path) -> None:
    rows = [{"video": "a.mp4", "label": "growing", "start": "1", "end": "2", "boxes": "a.json"},
            {"video": "a.mp4", "label": "shrinking", "start": "3", "end": "4.5", "boxes": ""},
            {"video": "sub/b.mp4", "label": "", "start": "", "end": "", "boxes": ""}]
    data = load_dataset(write_manifest(tmp_path / "m.csv", rows))
    a, b = data.items
    assert (a.id, a.labels, a.boxes) == ("a.mp4", ("growing", "shrinking"), str(tmp_path / "a.json"))
    assert [(s.start, s.end, s.label) for s in a.segments] == [(1.0, 2.0, "growing"), (3.0, 4.5, "shrinking")]
    assert (b.id, b.path, b.labels, b.segments) == ("sub/b.mp4", str(tmp_path / "sub/b.mp4"), (), ())
    for bad, message in (([{"video": "a.mp4", "start": "x", "end": "2"}], "line 2: start and end must be seconds"),
                         ([{"video": "a.mp4", "start": "3", "end": "2"}], "0 <= start <= end"),
                         ([{"video": "", "start": "", "end": ""}], "line 2: empty 'video'")):
        with pytest.raises(EbrError, match=message):
            load_dataset(write_manifest(tmp_path / "bad.csv", bad))
    (tmp_path / "nocol.csv").write_text("file\na.mp4\n")
    with pytest.raises(EbrError, match="no 'video' column"):
        load_dataset(tmp_path / "nocol.csv")


def test_a_folder_of_videos_and_boxes_files(tmp_path: Path) -> None:
    for name in ("b.mp4", "a.avi", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    data = load_dataset(tmp_path)
    assert data.kind == "folder" and [i.id for i in data.items] == ["a.avi", "b.mp4"]
    (tmp_path / "boxes.json").write_text(json.dumps([[3, 1, 2, 11, 12], {"frame": 3, "x0": 5, "y0": 5, "x1": 6,
                                                                          "y1": 6}]))
    assert read_boxes(tmp_path / "boxes.json") == {3: [(1.0, 2.0, 11.0, 12.0), (5.0, 5.0, 6.0, 6.0)]}
    (tmp_path / "boxes.csv").write_text("frame,x0,y0,x1,y1\n0,4,4,2,8\n")
    with pytest.raises(EbrError, match="needs x0 <= x1"):
        read_boxes(tmp_path / "boxes.csv")


def test_audit_errors_are_one_line(tmp_path: Path) -> None:
    proc = run("audit", str(BUNDLED_MODEL), str(tmp_path / "nothing.csv"), "--out", str(tmp_path / "o"), cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip() == f"ebr-onnx: error: dataset not found: {tmp_path}/nothing.csv"
    help_text = run("audit", "--help", cwd=tmp_path).stdout
    for option in ("--workers", "--scheduler", "--steps", "--retry-errors", "--videos", "--frames", "--preset"):
        assert option in help_text
