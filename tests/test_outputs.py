import json

import numpy as np
import pytest
from PIL import Image

import ebr_onnx.app.outputs as outputs
from ebr_onnx import EbrError
from ebr_onnx.app.outputs import ClipResults, atomic_path, progress, write_results
from ebr_onnx.app.preprocess import CropBox
from ebr_onnx.app.video import VideoSource

BOX = CropBox(48.0, 8.0, 272.0, 232.0, frame_size=(240, 320))


def results(T: int = 3) -> dict:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(T, 14, 14)).astype(np.float32)
    return {
        "maps": maps,
        "temporal": maps.sum(axis=(1, 2)),
        "frame_indices": np.arange(10, 10 + 2 * T, 2),
        "settings": {"method": "cEB-R", "layer": "conv5_1", "T": np.int64(T)},
        "frames": rng.integers(0, 256, (T, 240, 320, 3), dtype=np.uint8),
        "crop_box": BOX,
        "probs": np.linspace(0.2, 0.9, T),
        "segment": (0, 1),
    }


def test_write_results_layout_and_contents(tmp_path):
    r = results()
    files = write_results(tmp_path, ClipResults(**r, summary={"class": "CliffDiving", "score": np.float32(0.5)},
                                                fps=10), animations=("gif", "mp4"))
    expected = ["maps.npz", "evidence.png", "overlays/frame_00010.png", "overlays/frame_00012.png",
                "overlays/frame_00014.png", "overlay.gif", "overlay.mp4", "summary.json"]
    assert files == expected
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(expected)

    with np.load(tmp_path / "maps.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["maps"], r["maps"])
        np.testing.assert_array_equal(npz["frame_indices"], [10, 12, 14])
        np.testing.assert_array_equal(npz["segment"], [0, 1])
        np.testing.assert_array_equal(npz["crop_box"], [48, 8, 272, 232])
        assert json.loads(str(npz["settings"])) == {"method": "cEB-R", "layer": "conv5_1", "T": 3}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"class": "CliffDiving", "score": 0.5, "files": expected}
    with Image.open(tmp_path / "overlays/frame_00012.png") as png:
        assert png.size == (320, 240)
    with Image.open(tmp_path / "overlay.gif") as gif:
        assert gif.n_frames == 3
    assert VideoSource(tmp_path / "overlay.mp4").frame_count == 3


def test_without_frames_only_maps_plot_and_summary(tmp_path):
    r = results()
    del r["frames"], r["crop_box"]
    assert write_results(tmp_path, ClipResults(**r)) == ["maps.npz", "evidence.png", "summary.json"]


def test_a_later_failure_keeps_the_files_already_written(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "overlay", broken)
    with pytest.raises(RuntimeError):
        write_results(tmp_path, ClipResults(**results()))
    with np.load(tmp_path / "maps.npz", allow_pickle=False) as npz:
        assert npz["maps"].shape == (3, 14, 14)
    assert (tmp_path / "evidence.png").is_file() and not (tmp_path / "summary.json").exists()
    assert not list(tmp_path.rglob("*partial*"))


def test_atomic_path_leaves_the_old_file_on_failure(tmp_path):
    target = tmp_path / "summary.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError
    assert target.read_text() == "old" and list(tmp_path.iterdir()) == [target]


def test_inconsistent_inputs_raise(tmp_path):
    r = results()
    with pytest.raises(EbrError, match="same T"):
        write_results(tmp_path, ClipResults(**{**r, "temporal": r["temporal"][:2]}))
    with pytest.raises(EbrError, match="crop box"):
        write_results(tmp_path, ClipResults(**{**r, "crop_box": None}))
    with pytest.raises(EbrError, match="avi"):
        write_results(tmp_path, ClipResults(**r), animations=("avi",))


def test_progress_quiet_and_bar(capsys):
    items = [1, 2, 3]
    assert progress(items, "maps", quiet=True) is items
    assert capsys.readouterr().err == ""
    assert list(progress(items, "maps")) == items
    err = capsys.readouterr().err
    assert "maps: 100%" in err and "3/3" in err
