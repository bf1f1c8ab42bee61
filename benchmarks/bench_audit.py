"""``ebr-onnx audit`` at dataset scale on the bundled model: one process against a Dask LocalCluster, and ``ground``.

``python benchmarks/bench_audit.py`` generates ``--videos`` (default 200) rand+GT videos of 32 frames (two clips of the
model's 16; mp4, 8 fps, 64×64) with their ground-truth segments and boxes, then audits them from scratch with the
command as a user runs it (a child process each): in one process (``--workers 0``, no Dask), on a LocalCluster of 1
worker and of 2 workers. It prints each run's wall time, videos per second, the worker time per video and the
driver's share (cluster start and model shipping, writing results, metrics and report), ``ground``'s time per
video for comparison (in this process, on a sample of the same videos, with and without its pictures), and the
scaling model for a larger cluster fitted on these numbers.
"""
from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebr_onnx.app.demo import bundled_model
from ebr_onnx.app.pipeline import GroundOptions, ground
from ebr_onnx.app.synthetic import CLASS_NAMES, edge_boxes, make_concatenated
from ebr_onnx.app.video import write_video

FPS, FRAMES = 8.0, 32


def make_dataset(root: Path, count: int) -> Path:
    """``count`` videos with segments (crossing clip boundaries) and boxes, and their manifest."""
    (root / "clips").mkdir(parents=True)
    rows = []
    for k in range(count):
        clip = make_concatenated(k, "rand+GT", frames=FRAMES, gt_length=6 + (5 * k) % 21)
        name = f"clips/v{k:04d}.mp4"
        write_video(root / name, clip.frames, FPS)
        boxes = [{"frame": t, "x0": int(b[0]), "y0": int(b[1]), "x1": int(b[2]), "y1": int(b[3])}
                 for t, b in enumerate(edge_boxes(clip.boxes))]
        (root / f"{name}.boxes.json").write_text(json.dumps(boxes))
        start, end = clip.gt_segment
        rows.append({"video": name, "label": CLASS_NAMES[clip.gt_class], "start": start / FPS,
                     "end": (end + 1) / FPS, "boxes": f"{name}.boxes.json"})
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def run_audit(manifest: Path, out: Path, workers: int) -> dict:
    """One audit from scratch as a child process: its wall time and its metrics.json."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ebr_onnx.app.cli", "audit", str(bundled_model()), str(manifest),
                    "--out", str(out), "--workers", str(workers), "--quiet"], check=True, capture_output=True)
    wall = time.perf_counter() - start
    return {"wall": wall, **json.loads((out / "metrics.json").read_text())}


def ground_seconds(manifest: Path, sample: int, pictures: bool) -> float:
    """``ground``'s mean total seconds per video over the first ``sample`` videos (after one warm-up)."""
    root = manifest.parent
    videos = sorted((root / "clips").glob("*.mp4"))[:sample + 1]
    options = GroundOptions(quiet=True, pictures=pictures)
    times = []
    with tempfile.TemporaryDirectory() as folder:
        for k, video in enumerate(videos):
            summary = ground(bundled_model(), video, Path(folder) / str(k), options)
            times.append(summary["seconds"]["total"])
    return sum(times[1:]) / len(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--sample", type=int, default=10, help="videos grounded for ground's time per video")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        t0 = time.perf_counter()
        manifest = make_dataset(root / "data", args.videos)
        print(f"{args.videos} videos generated in {time.perf_counter() - t0:.1f} s")
        runs = {name: run_audit(manifest, root / name, workers)
                for name, workers in (("one process (--workers 0)", 0), ("LocalCluster, 1 worker", 1),
                                      ("LocalCluster, 2 workers", 2))}
        with_pictures = ground_seconds(manifest, args.sample, True)
        without_pictures = ground_seconds(manifest, args.sample, False)

    n = args.videos
    print(f"\n{'run':28} {'wall s':>7} {'videos/s':>8} {'worker s/video':>14} {'startup s':>9} {'writing s':>9} "
          f"{'report s':>8}")
    for name, m in runs.items():
        s = m["run"]["seconds"]
        print(f"{name:28} {m['wall']:7.1f} {n / m['wall']:8.2f} {m['timing']['seconds_per_video']:14.3f} "
              f"{s['startup']:9.2f} {s['writing']:9.2f} {s['report']:8.2f}")
    print(f"{'ground, all pictures':28} {'':7} {1 / with_pictures:8.2f} {with_pictures:14.3f}")
    print(f"{'ground --no-overlays':28} {'':7} {1 / without_pictures:8.2f} {without_pictures:14.3f}")
    one = runs["one process (--workers 0)"]
    t = one["timing"]
    parts = [t[f"{part}_per_video"] for part in ("prediction", "explanation", "faithfulness")]
    print(f"\nper video in one process: prediction {parts[0]:.3f} s, explanation {parts[1]:.3f} s, "
          f"deletion/insertion {parts[2]:.3f} s, decoding and the rest {t['seconds_per_video'] - sum(parts):.3f} s")

    two = runs["LocalCluster, 2 workers"]
    s_video = two["timing"]["seconds_per_video"]
    fixed = two["run"]["seconds"]["startup"] + two["run"]["seconds"]["report"]
    process = one["wall"] - one["run"]["seconds"]["total"]   # Python's start and the imports
    overhead = max(0.0, (two["wall"] - process - fixed - n * s_video / 2) / n)
    write = two["run"]["seconds"]["writing"] / n
    print("\nscaling model (fitted on the 2-worker run): wall ≈ startup + N × (s / W + o) + report, with "
          f"s = {s_video:.3f} s per video on a worker, o = {overhead * 1000:.1f} ms per video of driver and scheduler "
          f"overhead (writing alone {write * 1000:.1f} ms), startup {two['run']['seconds']['startup']:.1f} s "
          f"(the cluster, and the model shipped once per worker: {bundled_model().stat().st_size / 1e6:.1f} MB), "
          f"report {two['run']['seconds']['report']:.1f} s.")
    print(f"The driver writes one video per {write * 1000:.1f} ms, so it bounds the throughput at "
          f"~{1 / max(write + overhead / 2, 1e-6):.0f} videos/s whatever W; workers run in parallel as long as the "
          "videos are on storage they all read at speed.")
    for workers, videos in ((8, 10_000), (64, 10_000), (64, 100_000)):
        wall = two["run"]["seconds"]["startup"] + videos * max(s_video / workers + overhead, write) + \
            two["run"]["seconds"]["report"]
        print(f"  W = {workers:3d}, N = {videos:7d}: ≈ {wall / 60:6.1f} min")


if __name__ == "__main__":
    main()
