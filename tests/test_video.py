from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from ebr_onnx import EbrError
from ebr_onnx.app.synthetic import make_clip
from ebr_onnx.app.video import VideoSource, clips, write_video

DEMO = Path("/work/shared/caffe-release/demo-frames/demo1")


def flat_frames(n: int, h: int = 48, w: int = 64) -> np.ndarray:
    """Frame k is a flat grey of 10 * k, which survives lossy codecs to within a few levels."""
    return np.stack([np.full((h, w, 3), 10 * k, dtype=np.uint8) for k in range(n)])


def write_with_codec(path: Path, frames: np.ndarray, codec: str, fps: int = 25) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def test_array_source_reports_and_samples():
    source = VideoSource(flat_frames(7), every=3, fps=30)
    assert (source.name, source.size, source.frame_count, source.fps) == ("<array>", (48, 64), 3, 10.0)
    assert [i for i, _ in source] == [0, 3, 6]
    assert [int(f[0, 0, 0]) for _, f in source] == [0, 30, 60]


def test_target_fps_keeps_the_first_frame_of_each_interval():
    source = VideoSource(flat_frames(25), target_fps=10, fps=25)
    # keep i when floor(0.4 i) increases: 0, 3 (1.2), 5 (2.0), 8 (3.2), 10, 13, 15, 18, 20, 23
    assert [i for i, _ in source] == [0, 3, 5, 8, 10, 13, 15, 18, 20, 23]
    assert source.frame_count == 10 and source.fps == 10


@pytest.mark.parametrize(("suffix", "codec"), [(".mp4", "libx264"), (".avi", "mpeg4"), (".webm", "libvpx-vp9")])
def test_video_files_decode(tmp_path, suffix, codec):
    path = tmp_path / f"clip{suffix}"
    write_with_codec(path, flat_frames(6), codec)
    source = VideoSource(path)
    assert source.size == (48, 64) and source.fps == pytest.approx(25)
    assert source.frame_count in (6, None)  # webm does not store a frame count
    decoded = list(source)
    assert [i for i, _ in decoded] == list(range(6))
    assert all(abs(int(f[24, 32, 1]) - 10 * i) <= 3 for i, f in decoded)


def test_folder_source_is_sorted_by_name(tmp_path):
    for k, name in enumerate(["b.png", "a.jpg", "c.PNG"]):
        Image.fromarray(np.full((8, 6, 3), 50 * k, dtype=np.uint8)).save(tmp_path / name)
    (tmp_path / "notes.txt").write_text("not a frame")
    source = VideoSource(tmp_path, fps=12)
    assert source.frame_count == 3 and source.size == (8, 6) and source.fps == 12
    assert [int(f[0, 0, 0]) for _, f in source] == [50, 0, 100]  # a.jpg, b.png, c.PNG


def test_demo_folder():
    if not DEMO.is_dir():
        pytest.skip("demo frames not available")
    source = VideoSource(DEMO)
    assert source.frame_count == 128 and source.size == (240, 320) and source.fps is None


def test_clips_with_stride_and_tail():
    source = VideoSource(flat_frames(10))
    assert [list(i) for i, _ in clips(source, 4, 3)] == [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
    # stride T: two full clips, then one clip ending at the last frame covers frames 8 and 9
    windows = list(clips(source, 4))
    assert [list(i) for i, _ in windows] == [[0, 1, 2, 3], [4, 5, 6, 7], [6, 7, 8, 9]]
    assert windows[2][1].shape == (4, 48, 64, 3) and int(windows[2][1][0, 0, 0, 0]) == 60


def test_clips_keep_original_indices_after_sampling():
    source = VideoSource(flat_frames(9), every=2)
    assert [list(i) for i, _ in clips(source, 2)] == [[0, 2], [4, 6], [6, 8]]


def test_clips_decode_lazily():
    class Counting:
        name = "counting"
        produced = 0

        def __iter__(self):
            for k in range(10_000):
                Counting.produced += 1
                yield k, np.zeros((2, 2, 3), dtype=np.uint8)

    first = next(clips(Counting(), 16))
    assert len(first[0]) == 16 and Counting.produced == 16


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(EbrError, match="not found"):
        VideoSource(tmp_path / "missing.mp4")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00not a video" * 100)
    with pytest.raises(EbrError, match="corrupt.mp4"):
        VideoSource(corrupt)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EbrError, match="no frames in folder"):
        VideoSource(empty)
    with pytest.raises(EbrError, match="uint8"):
        VideoSource(np.zeros((3, 4, 4, 3), dtype=np.float32))
    with pytest.raises(EbrError, match="frame rate is unknown"):
        VideoSource(flat_frames(3), target_fps=5)
    with pytest.raises(EbrError, match="target fps"):
        VideoSource(flat_frames(3), fps=10, target_fps=25)
    with pytest.raises(EbrError, match="not both"):
        VideoSource(flat_frames(3), fps=10, every=2, target_fps=5)


def test_short_video_names_file_count_and_T(tmp_path):
    path = tmp_path / "short.mp4"
    write_video(path, flat_frames(5), fps=25)
    with pytest.raises(EbrError, match=r"short\.mp4 has 5 frames.*T=16"):
        list(clips(VideoSource(path), 16))


def test_folder_with_mixed_sizes_raises(tmp_path):
    Image.fromarray(np.zeros((8, 6, 3), dtype=np.uint8)).save(tmp_path / "0.png")
    Image.fromarray(np.zeros((6, 8, 3), dtype=np.uint8)).save(tmp_path / "1.png")
    with pytest.raises(EbrError, match="1.png"):
        list(VideoSource(tmp_path))


def test_write_video_gif_and_odd_sized_mp4(tmp_path):
    frames = flat_frames(4, h=33, w=41)
    write_video(tmp_path / "a.gif", frames * 6, fps=10)   # greys 60 apart: distinct after the one-palette quantizer
    with Image.open(tmp_path / "a.gif") as gif:
        assert gif.n_frames == 4 and gif.info["duration"] == 100
    write_video(tmp_path / "a.mp4", frames, fps=12.5)
    source = VideoSource(tmp_path / "a.mp4")
    assert source.size == (34, 42) and source.fps == 12.5 and len(list(source)) == 4  # padded to even sizes
    with pytest.raises(EbrError, match="no frames"):
        write_video(tmp_path / "b.gif", [], fps=10)


def test_gif_colours_stay_close_with_one_palette_for_all_frames(tmp_path):
    """The GIF's shared palette (fast octree over all frames) keeps generated action frames (textured, noisy,
    coloured) within a few levels of the originals, as close as Pillow's per-frame median cut within 2 levels."""
    frames = make_clip(0, frames=8).frames
    write_video(tmp_path / "c.gif", frames, fps=10)
    with Image.open(tmp_path / "c.gif") as gif:
        decoded = []
        for k in range(gif.n_frames):
            gif.seek(k)
            decoded.append(np.asarray(gif.convert("RGB"), dtype=np.int64))
    assert len(decoded) == 8
    error = np.abs(np.stack(decoded) - frames).mean()
    per_frame = np.mean([np.abs(np.asarray(Image.fromarray(f).quantize(256).convert("RGB"), dtype=np.int64) - f
                                ).mean() for f in frames])
    assert error < 6 and error < per_frame + 2
