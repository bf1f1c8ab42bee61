"""The bundled 3-D CNN (``models/action_c3d.onnx``) through the application: ``ground`` writes the same outputs as for
the CNN-LSTM, ``inspect`` names the time axis and strides, ``prepare`` makes one clip, bad clips give one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from ebr_onnx import Explainer
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.app.preprocess import prepare
from ebr_onnx.app.synthetic import CLASS_NAMES, make_concatenated, make_dataset

C3D = BUNDLED_MODEL.with_name("action_c3d.onnx")
pytestmark = pytest.mark.skipif(not C3D.is_file(), reason="the bundled 3-D CNN is missing")


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ebr_onnx.app.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, object]:
    clip = make_concatenated(5, "rand+GT", frames=32, gt_length=16)
    path = tmp_path_factory.mktemp("video") / "two_actions.npy"
    np.save(path, clip.frames)
    return path, clip


def test_metadata_as_the_cnn_lstm():
    lstm, c3d = Explainer(BUNDLED_MODEL).graph, Explainer(C3D).graph
    keys = {k for k in lstm.metadata if k.startswith("ebr_onnx.")} - {"ebr_onnx.boundary", "ebr_onnx.per_step_accuracy"}
    assert keys <= set(c3d.metadata)
    assert c3d.metadata_json("ebr_onnx.labels") == CLASS_NAMES and c3d.metadata["ebr_onnx.map_layer"] == "relu3"
    assert c3d.metadata_json("ebr_onnx.test_accuracy") >= 0.95


def test_accuracy_on_fresh_clips():
    ex = Explainer(C3D)
    frames, labels, _ = make_dataset(48, np.random.default_rng([7, 7]))
    preds = [int(np.argmax(ex.predict(prepare(ex, f)[0]))) for f in frames]
    assert np.mean(np.asarray(preds) == labels) >= 0.9


def test_explain_a_prepared_clip():
    ex = Explainer(C3D)
    clip = make_concatenated(2, "rand+GT", frames=16, gt_length=8)
    x, crop = prepare(ex, clip.frames)
    assert x.shape == (1, 3, 16, 64, 64)
    res = ex.explain(x, target=clip.gt_class, method="ceb", layer="relu3")
    assert res.maps.shape == (1, 8, 16, 16) and res.temporal.shape == (1, 8)
    assert res.frame_maps().shape == (1, 16, 64, 64) and res.frame_temporal().shape == (1, 16)
    np.testing.assert_array_equal(res.frame_index(), np.repeat(np.arange(8), 2))


def test_ground(tmp_path, video):
    path, clip = video
    label = CLASS_NAMES[clip.gt_class]
    proc = run("ground", str(C3D), str(path), "--target", label, "--out", str(tmp_path / "out"), "--quiet",
               "--source-fps", "8", cwd=tmp_path)   # --method: the default cebr runs as ceb
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out"
    with np.load(out / "maps.npz", allow_pickle=False) as data:
        assert data["maps"].shape == (32, 16, 16) and data["temporal"].shape == (32,)
        settings = json.loads(str(data["settings"]))
    summary = json.loads((out / "summary.json").read_text())
    assert settings["method"] == "ceb" and summary["settings"] == settings and settings["layer"] == "relu3"
    assert any("3-D CNN" in w and "cebr runs as ceb" in w for w in summary["warnings"])
    assert summary["target"]["label"] == label and len(summary["clips"]) == 2
    assert summary["segment_seconds"] is not None
    for k in range(2):
        clip_summary = json.loads((out / f"clip_{k:03d}" / "summary.json").read_text())
        assert len(list((out / f"clip_{k:03d}" / "overlays").glob("frame_*.jpg"))) == 16
        assert len(clip_summary["peaks_yx"]) == 16
    with Image.open(out / "evidence.png") as img:
        assert img.size[0] > 0
    with np.load(out / "clip_000" / "maps.npz", allow_pickle=False) as data:
        curve = data["temporal"]
        np.testing.assert_allclose(curve[0::2], curve[1::2])   # relu3 keeps every 2nd frame: slices of 2 frames


def test_inspect(tmp_path):
    proc = run("inspect", str(C3D), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "3-D CNN, time axis 2 of input 'clip' (N, C, T, H, W)" in proc.stdout
    assert "pool2 x2" in proc.stdout and "test run on input (1, 3, 16, 64, 64)" in proc.stdout


def test_clip_too_short_is_one_line(tmp_path, video):
    path, _ = video
    proc = run("ground", str(C3D), str(path), "--frames", "3", "--out", str(tmp_path / "out"), "--quiet",
               cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "time strides" in lines[0] and "at least 4 frames" in lines[0], lines


def test_ground_channels_last(tmp_path, video):
    """The same model taking (N, T, H, W, C) (a Transpose in front): the clip is laid out as its input is traced,
    and the maps are the channels-first model's."""
    import onnx
    from onnx import TensorProto, helper

    proto = onnx.load(str(C3D))
    proto.graph.input[0].CopyFrom(helper.make_tensor_value_info("clip_last", TensorProto.FLOAT, ["N", "T", 64, 64, 3]))
    proto.graph.node.insert(0, helper.make_node("Transpose", ["clip_last"], ["clip"], perm=[0, 4, 1, 2, 3]))
    last = tmp_path / "c3d_last.onnx"
    onnx.save(proto, str(last))
    path, clip = video
    outs = {}
    for name, model in (("first", C3D), ("last", last)):
        proc = run("ground", str(model), str(path), "--target", CLASS_NAMES[clip.gt_class], "--method", "ceb",
                   "--no-overlays", "--out", str(tmp_path / name), "--quiet", cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        with np.load(tmp_path / name / "maps.npz", allow_pickle=False) as data:
            outs[name] = (data["maps"], data["temporal"])
    np.testing.assert_allclose(outs["last"][0], outs["first"][0], rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(outs["last"][1], outs["first"][1], rtol=1e-5, atol=1e-9)


def test_audit_lays_out_clips_as_ground(tmp_path, video):
    """``audit`` on a 3-D CNN: each clip goes in as one (1, C, T, H, W) input, the recurrent default runs as ceb,
    and the video's maps and curve are ``ground``'s for the same video and target."""
    path, clip = video
    label = CLASS_NAMES[clip.gt_class]
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(f"video,label,start,end\n{path},{label},{clip.gt_segment[0] / 8},"
                        f"{(clip.gt_segment[1] + 1) / 8}\n")
    proc = run("audit", str(C3D), str(manifest), "--out", str(tmp_path / "audit"), "--workers", "0",
               "--steps", "2", "--source-fps", "8", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    rows = pq.read_table(tmp_path / "audit" / "results.parquet").to_pylist()
    row = next(r for r in rows if r["kind"] == "video")
    assert row["status"] == "ok", row["error"]
    assert any("cebr runs as ceb" in w for w in row["warnings"])
    proc = run("ground", str(C3D), str(path), "--target", label, "--out", str(tmp_path / "ground"), "--quiet",
               "--source-fps", "8", "--no-overlays", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    with np.load(tmp_path / "ground" / "maps.npz", allow_pickle=False) as grounded, \
            np.load(next((tmp_path / "audit" / "maps").glob("*.npz")), allow_pickle=False) as audited:
        k = list(audited["targets"]).index(clip.gt_class)
        assert audited["maps"][k].shape == grounded["maps"].shape == (32, 16, 16)
        np.testing.assert_allclose(audited["maps"][k], grounded["maps"], rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(audited["temporal"][k], grounded["temporal"], rtol=1e-6, atol=1e-9)
