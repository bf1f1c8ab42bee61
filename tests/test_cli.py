"""The ``ebr-onnx`` command driven as a user would: a subprocess, real files in a temporary folder."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.app.synthetic import CLASS_NAMES, make_concatenated
from ebr_onnx.app.video import write_video

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebr_onnx.app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def clip():
    return make_concatenated(3, "rand+GT", frames=16, gt_length=8)


@pytest.fixture(scope="module")
def video(tmp_path_factory, clip) -> Path:
    path = tmp_path_factory.mktemp("video") / "two_actions.mp4"
    write_video(path, clip.frames, 8.0)
    return path


def _check_outputs(out: Path, frames: int) -> dict:
    with np.load(out / "maps.npz", allow_pickle=False) as data:
        assert data["maps"].shape[0] == frames and data["maps"].ndim == 3
        assert data["temporal"].shape == (frames,)
        assert np.isfinite(data["maps"]).all()
        settings = json.loads(str(data["settings"]))
        assert settings["method"] in ("cebr", "ebr", "gradr")
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["top5"]) == 5
    start, end = summary["segment_frames"]
    assert 0 <= start <= end < frames
    assert len(summary["peaks_yx"]) == frames
    for name in ("evidence.png", "overlay.gif"):
        with Image.open(out / name) as img:
            assert img.size[0] > 0
    pngs = sorted((out / "overlays").glob("frame_*.png"))
    assert len(pngs) == frames
    with Image.open(pngs[0]) as img:
        assert img.size == (64, 64)
    return summary


def test_ground_video_file(tmp_path, video, clip):
    label = CLASS_NAMES[clip.gt_class]
    proc = run("ground", str(BUNDLED_MODEL), str(video), "--target", label, "--frames", "16", "--out",
               str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = _check_outputs(tmp_path / "out", 16)
    assert summary["target"]["label"] == label
    assert "localized in frames" in proc.stdout


def test_ground_frame_folder_defaults(tmp_path, clip):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"img_{i:04d}.png")
    proc = run("ground", str(BUNDLED_MODEL), str(folder), "--out", str(tmp_path / "out"), "--quiet",
               "--method", "ebr", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = _check_outputs(tmp_path / "out", 16)
    assert summary["target"]["index"] == summary["top5"][0]["index"]   # default target: the predicted class


def test_inspect(tmp_path):
    proc = run("inspect", str(BUNDLED_MODEL), "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["ops_without_rules"] == []
    assert report["recurrences"][0]["op_type"] == "LSTM"
    assert report["boundary"] and report["classifier"]
    assert report["map_layers"]


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("corrupt", "corrupt.mp4"),
    ("label", "not one of the model's"),
    ("layer", "neither a tensor nor a node"),
    ("short", "fewer than one clip"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(tmp_path, video, case, message):
    args = ["ground", str(BUNDLED_MODEL), str(video), "--frames", "16", "--quiet", "--out", str(tmp_path / "out")]
    if case == "missing":
        args[2] = str(tmp_path / "nope.mp4")
    elif case == "corrupt":
        bad = tmp_path / "corrupt.mp4"
        bad.write_bytes(b"\x00\x01not a video" * 100)
        args[2] = str(bad)
    elif case == "label":
        args += ["--target", "NotAClass"]
    elif case == "layer":
        args += ["--layer", "no_such_layer"]
    elif case == "short":
        args[4] = "64"
    proc = run(*args, cwd=tmp_path)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebr-onnx: error:"), proc.stderr
    assert message in lines[0]


def test_results_already_written_are_kept(tmp_path, clip):
    """The second clip of a folder fails (its later frames have another size): the first clip's files stay."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"img_{i:04d}.png")
    for i in range(16, 24):
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(folder / f"img_{i:04d}.png")
    out = tmp_path / "out"
    proc = run("ground", str(BUNDLED_MODEL), str(folder), "--frames", "16", "--stride", "8", "--quiet",
               "--out", str(out), cwd=tmp_path)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1
    _check_outputs(out, 16)
    assert not (out / "clip_001").exists()


def test_demo(tmp_path):
    proc = run("demo", "--out", str(tmp_path / "demo"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "grounds" in proc.stdout and "truth" in proc.stdout
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert 0.0 <= report["truth"]["iou"] <= 1.0
    _check_outputs(tmp_path / "demo", 16)


def test_custom_preprocessing_flags(tmp_path, video, clip):
    """Flags equal to the model's recorded preprocessing give its maps; another mean gives other maps."""
    label = CLASS_NAMES[clip.gt_class]
    base = ["ground", str(BUNDLED_MODEL), str(video), "--target", label, "--frames", "16", "--quiet"]
    same = ["--size", "64", "64", "--mean", "0.5", "0.5", "0.5", "--std", "0.25", "0.25", "0.25", "--scale", "1",
            "--channel-order", "RGB"]
    other = ["--mean", "0.2", "0.2", "0.2"]
    maps = {}
    for name, extra in (("default", []), ("same", same), ("other", other)):
        proc = run(*base, "--out", str(tmp_path / name), *extra, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / name / "maps.npz", allow_pickle=False) as data:
            maps[name] = data["maps"]
    np.testing.assert_array_equal(maps["same"], maps["default"])
    assert not np.allclose(maps["other"], maps["default"])
    bad = run(*base, "--out", str(tmp_path / "bad"), "--size", "1", "2", "3", cwd=tmp_path)
    assert bad.returncode != 0 and "--size takes one or two numbers" in bad.stderr
