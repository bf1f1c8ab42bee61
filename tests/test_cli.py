"""The ``ebr-onnx`` command driven as a user would: a subprocess, real files in a temporary folder."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from ebr_onnx.app.cli import build_parser
from ebr_onnx.app.demo import BUNDLED_MODEL, demo_video
from ebr_onnx.app.preprocess import Preprocess, preprocess
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


def _check_outputs(out: Path, frames: int, clips: int = 1) -> dict:
    """The whole video's files at the top, each clip's below; returns the video's summary."""
    with np.load(out / "maps.npz", allow_pickle=False) as data:
        assert data["maps"].shape[0] == frames and data["maps"].ndim == 3
        assert data["temporal"].shape == (frames,)
        assert np.isfinite(data["maps"]).all()
        settings = json.loads(str(data["settings"]))
        assert settings["method"] in ("cebr", "ebr", "gradr", "eb", "ceb", "grad")
        assert len(settings["model_sha256"]) == 64 and settings["versions"]["onnxruntime"]
    summary = json.loads((out / "summary.json").read_text())
    assert 1 <= len(summary["top5"]) <= 5 and summary["settings"] == settings
    start, end = summary["segment_frames"]
    assert 0 <= start <= end < frames
    assert len(summary["clips"]) == clips
    with Image.open(out / "evidence.png") as img:
        assert img.size[0] > 0
    for k in range(clips):
        clip = json.loads((out / f"clip_{k:03d}" / "summary.json").read_text())
        assert sorted(clip["files"]) == sorted(str(p.relative_to(out / f"clip_{k:03d}"))
                                               for p in (out / f"clip_{k:03d}").rglob("*") if p.is_file())
        assert len(clip["peaks_yx"]) == len(list((out / f"clip_{k:03d}" / "overlays").glob("frame_*.jpg")))
    with Image.open(out / "clip_000" / "overlay.gif") as gif:
        assert gif.n_frames == len(json.loads((out / "clip_000" / "summary.json").read_text())["peaks_yx"])
    pictures = sorted((out / "clip_000" / "overlays").glob("frame_*.jpg"))
    with Image.open(pictures[0]) as img:
        assert min(img.size) >= 256
    return summary


def test_ground_video_file(tmp_path, video, clip):
    label = CLASS_NAMES[clip.gt_class]
    proc = run("ground", str(BUNDLED_MODEL), str(video), "--target", label, "--frames", "16", "--out",
               str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = _check_outputs(tmp_path / "out", 16)
    assert summary["target"]["label"] == label
    assert summary["segment_seconds"] is not None     # the file's frame rate
    assert "localized in frames" in proc.stdout


def test_ground_frame_folder_defaults(tmp_path, clip):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"img_{i:04d}.png")
    proc = run("ground", str(BUNDLED_MODEL), str(folder), "--out", str(tmp_path / "out"), "--quiet",
               "--method", "ebr", "--source-fps", "4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = _check_outputs(tmp_path / "out", 16)
    assert summary["target"]["index"] == summary["top5"][0]["index"]   # default target: the predicted class
    start, end = summary["segment_frames"]
    assert summary["segment_seconds"] == [start / 4, (end + 1) / 4]


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
    ("out is a file", "exists and is not a folder"),
    ("object npy", "not a plain array"),
    ("empty npy", "non-empty uint8"),
    ("float npy", "uint8 (T, H, W, 3)"),
    ("resample a folder", "declare it: --source-fps"),
    ("boundary on a CNN method", "apply to the recurrent methods"),
    ("convert: missing prototxt", "cannot read"),
    ("convert: bad prototxt", "does not parse"),
    ("not onnx", "ONNX"),
])
def test_bad_input_gives_one_line_and_exit_2(tmp_path, video, clip, case, message):
    """Every error is one line on stderr, prefixed ``ebr-onnx: error:``, exit status 2, convert included."""
    args = ["ground", str(BUNDLED_MODEL), str(video), "--frames", "16", "--out", str(tmp_path / "out")]
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
    elif case == "out is a file":
        (tmp_path / "out").write_text("not a folder")
    elif case == "object npy":
        np.save(tmp_path / "v.npy", np.array([{"frames": 1}], dtype=object), allow_pickle=True)
        args[2] = str(tmp_path / "v.npy")
    elif case == "empty npy":
        np.save(tmp_path / "v.npy", np.zeros((0, 64, 64, 3), np.uint8))
        args[2] = str(tmp_path / "v.npy")
    elif case == "float npy":
        np.save(tmp_path / "v.npy", clip.frames.astype(np.float32))
        args[2] = str(tmp_path / "v.npy")
    elif case == "resample a folder":
        (tmp_path / "frames").mkdir()
        for i, frame in enumerate(clip.frames):
            Image.fromarray(frame).save(tmp_path / "frames" / f"{i:03d}.png")
        args[2] = str(tmp_path / "frames")
        args += ["--fps", "4"]
    elif case == "boundary on a CNN method":
        args += ["--method", "eb", "--boundary", "features"]
    elif case == "convert: missing prototxt":
        args = ["convert", "caffe", str(tmp_path / "none.prototxt"), "-o", str(tmp_path / "m.onnx")]
    elif case == "convert: bad prototxt":
        (tmp_path / "bad.prototxt").write_text("layer {\n")
        args = ["convert", "caffe", str(tmp_path / "bad.prototxt"), "-o", str(tmp_path / "m.onnx"),
                "--random-weights", "0"]
    elif case == "not onnx":
        (tmp_path / "model.onnx").write_bytes(b"not a model")
        args = ["inspect", str(tmp_path / "model.onnx")]
    proc = run(*args, cwd=tmp_path)   # no --quiet: progress bars are off when stderr is not a terminal
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ebr-onnx: error:"), proc.stderr
    assert message in lines[0]


@pytest.mark.parametrize("head", ["Softmax", "Sigmoid"])
def test_cnn_with_a_1x1_conv_classifier_is_grounded_with_eb_ceb_grad(tmp_path, head):
    """A CNN whose output is (N, C, 1, 1) (a 1×1-conv classifier, then Softmax, or Sigmoid as the release's
    multi-label GoogleNet-COCO): each frame is explained; the per-frame probability is the head's output."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((6, 8, 1, 1)).astype(np.float32), "cw")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Conv", ["g", "cw"], ["logits"], name="classifier"),
             helper.make_node(head, ["logits"], ["prob"], name="prob", **({"axis": 1} if head == "Softmax" else {}))]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["N", 6, 1, 1])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "cnn.onnx")
    x = rng.integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    expected = onnxruntime.InferenceSession(str(tmp_path / "cnn.onnx")).run(None, {"x": preprocess(
        x, Preprocess(size=(16, 16), crop=None))[0]})[0][:, 2, 0, 0]
    np.save(tmp_path / "v.npy", x)
    for method in ("eb", "ceb", "grad"):
        out = tmp_path / method
        proc = run("ground", str(tmp_path / "cnn.onnx"), str(tmp_path / "v.npy"), "--method", method, "--frames",
                   "4", "--size", "16", "16", "--target", "2", "--out", str(out), cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        summary = _check_outputs(out, 8, clips=2)
        with np.load(out / "maps.npz", allow_pickle=False) as data:
            assert data["maps"].shape == (8, 16, 16)
            np.testing.assert_allclose(data["probs"], expected, rtol=1e-5)
        assert summary["target"]["index"] == 2 and summary["warnings"] == []   # the prior sits below the head


def test_whole_video_from_overlapping_clips(tmp_path):
    """Clips of 16 frames every 8 over 32 frames: the video's curve is each frame's mean over the clips that hold it,
    the segment is in video frames and seconds (--source-fps), and every clip has its folder."""
    frames = make_concatenated(5, "rand+GT", frames=32, gt_length=16).frames
    np.save(tmp_path / "v.npy", frames)
    out = tmp_path / "out"
    proc = run("ground", str(BUNDLED_MODEL), str(tmp_path / "v.npy"), "--stride", "8", "--source-fps", "8",
               "--target", "growing", "--no-gif", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert [c["frames"] for c in summary["clips"]] == [[0, 15], [8, 23], [16, 31]]
    curves = {}
    for k in range(3):
        with np.load(out / f"clip_{k:03d}" / "maps.npz", allow_pickle=False) as data:
            curves.update({(k, int(i)): v for i, v in zip(data["frame_indices"], data["temporal"])})
        assert not (out / f"clip_{k:03d}" / "overlay.gif").exists()
    with np.load(out / "maps.npz", allow_pickle=False) as data:
        np.testing.assert_array_equal(data["frame_indices"], np.arange(32))
        for i, value in zip(data["frame_indices"], data["temporal"]):
            held = [v for (k, j), v in curves.items() if j == i]
            assert value == pytest.approx(np.mean(held), rel=1e-6)
    start, end = summary["segment_frames"]
    assert summary["segment_seconds"] == [start / 8, (end + 1) / 8]
    assert summary["settings"]["stride"] == 8 and summary["colour_scale"]["signed"]
    assert "growing: localized in frames" in proc.stdout and "explanation" in proc.stdout


def test_no_overlays_writes_maps_and_summaries_only(tmp_path, video):
    out = tmp_path / "out"
    proc = run("ground", str(BUNDLED_MODEL), str(video), "--no-overlays", "--quiet", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()) == [
        "clip_000/maps.npz", "clip_000/summary.json", "maps.npz", "summary.json"]


def test_version_and_help_on_every_option(tmp_path):
    proc = run("--version", cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.startswith("ebr-onnx ")
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name, command in commands.items():
        for action in command._actions:
            if not isinstance(action, argparse._HelpAction):
                assert action.help, f"ebr-onnx {name} {action.option_strings or action.dest} has no help"
    for flag in ("--classifier", "--boundary", "--time-axis", "--source-fps", "--no-gif", "--no-overlays"):
        assert any(flag in a.option_strings for a in commands["ground"]._actions)


def test_results_already_written_are_kept(tmp_path, clip):
    """The second clip of a folder fails (its later frames have another size): the first clip's maps and summary,
    written as soon as it was explained, stay."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(clip.frames):
        Image.fromarray(frame).save(folder / f"img_{i:04d}.png")
    for i in range(16, 24):
        Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(folder / f"img_{i:04d}.png")
    out = tmp_path / "out"
    proc = run("ground", str(BUNDLED_MODEL), str(folder), "--frames", "16", "--stride", "8", "--quiet",
               "--target", "growing", "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "img_0016.png" in proc.stderr
    with np.load(out / "clip_000" / "maps.npz", allow_pickle=False) as data:
        assert data["maps"].shape[0] == 16
    assert json.loads((out / "clip_000" / "summary.json").read_text())["files"] == ["maps.npz", "summary.json"]
    assert not (out / "clip_001").exists()


def test_demo(tmp_path):
    """The demo's default video is the first seed the model classifies correctly (checked here with onnxruntime
    alone), it says so, and it prints where the pictures are."""
    proc = run("demo", "--out", str(tmp_path / "demo"), "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "demo" / "demo.json").read_text())
    seed = report["truth"]["seed"]
    session = onnxruntime.InferenceSession(str(BUNDLED_MODEL), providers=["CPUExecutionProvider"])
    for s in range(seed + 1):
        video = demo_video(s, 16)
        probs = session.run(None, {"frames": preprocess(video.frames, "synthetic")[0]})[0]
        assert (int(np.argmax(probs[-1])) == video.gt_class) == (s == seed)
    assert "the model is right" in proc.stdout and f"p({report['truth']['label']!r})" in proc.stdout
    assert "grounds" in proc.stdout and "truth" in proc.stdout and "sheet.png" in proc.stdout
    assert 0.0 <= report["truth"]["iou"] <= 1.0
    summary = _check_outputs(tmp_path / "demo", 16)
    assert summary["segment_seconds"] is not None
    wrong = run("demo", "--seed", "0", "--out", str(tmp_path / "seed0"), "--quiet", cwd=tmp_path)
    assert wrong.returncode == 0 and ("the model is right" in wrong.stdout) == (seed == 0)


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
