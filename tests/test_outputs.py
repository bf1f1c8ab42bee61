import io
import json

import numpy as np
import pytest
from PIL import Image

import ebr_onnx.app.outputs as outputs
from ebr_onnx import EbrError
from ebr_onnx.app.colour import ColourScale
from ebr_onnx.app.outputs import Evidence, PictureWriter, atomic_path, picture_files, write_evidence, write_pictures
from ebr_onnx.app.preprocess import CropBox
from ebr_onnx.app.progress import ClipProgress
from ebr_onnx.app.video import VideoSource

BOX = CropBox(48.0, 8.0, 272.0, 232.0, frame_size=(240, 320))


def evidence(T: int = 3) -> tuple[Evidence, np.ndarray]:
    rng = np.random.default_rng(0)
    maps = rng.normal(size=(T, 14, 14)).astype(np.float32)
    clip = Evidence(maps=maps, temporal=maps.sum(axis=(1, 2)), frame_indices=np.arange(10, 10 + 2 * T, 2),
                    settings={"method": "cEB-R", "layer": "conv5_1", "T": np.int64(T)},
                    probs=np.linspace(0.2, 0.9, T), segment=(10, 12), crop_box=BOX)
    return clip, rng.integers(0, 256, (T, 240, 320, 3), dtype=np.uint8)


def test_write_evidence_then_pictures_layout_and_contents(tmp_path):
    clip, frames = evidence()
    assert write_evidence(tmp_path, clip, {"class": "CliffDiving", "score": np.float32(0.5)}) == \
        ["maps.npz", "summary.json"]
    with np.load(tmp_path / "maps.npz", allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["maps"], clip.maps)
        np.testing.assert_array_equal(npz["frame_indices"], [10, 12, 14])
        np.testing.assert_array_equal(npz["segment"], [10, 12])
        np.testing.assert_array_equal(npz["crop_box"], [48, 8, 272, 232])
        assert json.loads(str(npz["settings"])) == {"method": "cEB-R", "layer": "conv5_1", "T": 3}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary == {"class": "CliffDiving", "score": 0.5, "files": ["maps.npz", "summary.json"]}

    files = write_pictures(tmp_path, frames, clip, ColourScale.robust([clip.maps], True), animations=("gif", "mp4"),
                           fps=10)
    expected = ["sheet.png", "overlays/frame_00010.jpg", "overlays/frame_00012.jpg", "overlays/frame_00014.jpg",
                "overlay.gif", "overlay.mp4"]
    assert files == expected == picture_files(clip.frame_indices, ("gif", "mp4"))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(
        expected + ["maps.npz", "summary.json"])
    with Image.open(tmp_path / "overlays/frame_00012.jpg") as picture:
        assert picture.size == (341, 256)       # 240×320 shown with a short side of 256 px
    with Image.open(tmp_path / "overlay.gif") as gif:
        assert gif.n_frames == 3
    assert VideoSource(tmp_path / "overlay.mp4").frame_count == 3


def test_a_failing_picture_keeps_the_files_already_written(tmp_path, monkeypatch):
    clip, frames = evidence()
    write_evidence(tmp_path, clip, {})

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs, "write_video", broken)
    with pytest.raises(RuntimeError), PictureWriter() as writer:
        writer.submit(write_pictures, tmp_path, frames, clip, ColourScale(1.0, True))
    with np.load(tmp_path / "maps.npz", allow_pickle=False) as npz:
        assert npz["maps"].shape == (3, 14, 14)
    assert (tmp_path / "sheet.png").is_file() and not (tmp_path / "overlay.gif").exists()
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
    clip, frames = evidence()
    with pytest.raises(EbrError, match="same frames"):
        Evidence(clip.maps, clip.temporal[:2], clip.frame_indices)
    with pytest.raises(EbrError, match="crop box"):
        write_pictures(tmp_path, frames, Evidence(clip.maps, clip.temporal, clip.frame_indices), ColourScale(1, True))
    with pytest.raises(EbrError, match="avi"):
        write_pictures(tmp_path, frames, clip, ColourScale(1, True), animations=("avi",))


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_moves_within_a_clip_and_is_cleared_on_error(monkeypatch):
    err = _Terminal()
    monkeypatch.setattr("sys.stderr", err)
    with ClipProgress("explaining", 4) as bar:
        bar.within(0.5)
        assert "0.5/4" in err.getvalue()
        bar.clip_done()
        bar.within(0.25)
        bar.clip_done()
    assert "2/4" in err.getvalue()
    err.seek(0)
    err.truncate()
    with pytest.raises(EbrError), ClipProgress("explaining", 4) as bar:
        bar.clip_done()
        raise EbrError("boom")
    assert err.getvalue().split("\r")[-1].strip() == ""      # the line is left empty for the error


def test_progress_is_off_when_quiet_or_not_a_terminal(capsys):
    for quiet in (True, False):     # pytest's captured stderr is not a terminal
        with ClipProgress("explaining", 3, quiet=quiet) as bar:
            bar.within(0.5)
            bar.clip_done()
    assert capsys.readouterr().err == ""
