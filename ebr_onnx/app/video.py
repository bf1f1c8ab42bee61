"""Video input and output: a lazy frame source over a file, a folder of frames or an array; sampling; clips; writing.

Files are decoded with PyAV (its wheels bundle ffmpeg), imported where a file is read or written: its libraries
take ~16 MB of memory that explaining arrays does not need. Frames are uint8 RGB ``(H, W, 3)`` and are decoded only as
they are consumed, so :func:`clips` holds one clip of ``T`` frames, never the whole video.
"""
from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..core.errors import EbrError

if TYPE_CHECKING:
    import av

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


class VideoSource:
    """Frames of a video file, a folder of images (sorted by name) or a ``(T, H, W, 3)`` uint8 RGB array.

    Iterating yields ``(index, frame)`` where ``index`` is the frame's position in the ORIGINAL video, so sampled
    frames keep their true indices. ``every`` keeps every k-th frame; ``target_fps`` keeps the first frame of each
    1/target_fps interval (a rate at most the video's; frames are never duplicated); not both. ``fps`` gives the
    rate of a folder or array, or of a file whose container reports none. Attributes: ``name``, ``fps`` (after
    sampling; None if unknown), ``source_fps`` (the rate of the original frame numbers), ``size`` ``(H, W)``,
    ``frame_count`` (frames yielded after sampling, from the container's header for files; None if it does not
    say).
    """

    def __init__(
        self,
        source: str | Path | np.ndarray,
        *,
        every: int = 1,
        target_fps: float | None = None,
        fps: float | None = None,
    ) -> None:
        if isinstance(source, np.ndarray):
            if source.ndim != 4 or source.shape[-1] != 3 or source.dtype != np.uint8 or len(source) == 0:
                raise EbrError(f"a video array must be non-empty uint8 (T, H, W, 3), got {source.dtype} {source.shape}")
            self.name = "<array>"
            self._array, self._files, self._path = source, None, None
            count, self.size = len(source), tuple(source.shape[1:3])
        else:
            path = Path(source)
            self.name = str(path)
            if not path.exists():
                raise EbrError(f"video not found: {path}")
            self._array = None
            if path.is_dir():
                self._files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                if not self._files:
                    raise EbrError(f"no frames in folder {path} (looked for {', '.join(IMAGE_SUFFIXES)})")
                self._path, count = None, len(self._files)
                self.size = _read_image(self._files[0]).shape[:2]
            else:
                self._files, self._path = None, path
                with _open_container(path) as container:
                    stream = container.streams.video[0]
                    count = stream.frames or None
                    rate = stream.average_rate or stream.guessed_rate
                    fps = float(rate) if rate else fps
                    self.size = (stream.codec_context.height, stream.codec_context.width)
        if fps is not None and not fps > 0:
            raise EbrError(f"the source frame rate must be positive, got {fps:g}")
        if every < 1:
            raise EbrError(f"every must be >= 1, got {every}")
        if every != 1 and target_fps is not None:
            raise EbrError("give either every or target_fps, not both")
        if target_fps is not None:
            if fps is None:
                raise EbrError(f"cannot resample {self.name} to {target_fps} fps: its frame rate is unknown "
                               "(declare it: --source-fps, or fps= in the API)")
            if not 0 < target_fps <= fps:
                raise EbrError(f"target fps must be in (0, {fps:g}] for {self.name}, got {target_fps:g}")
        self._keep = _sampler(every, None if target_fps is None else target_fps / fps)
        self.fps = target_fps if target_fps is not None else None if fps is None else fps / every
        self.source_fps = fps
        self.frame_count = None if count is None else sum(1 for i in range(count) if self._keep(i))

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for index, frame in enumerate(self._decode()):
            if self._keep(index):
                yield index, frame

    def _decode(self) -> Iterator[np.ndarray]:
        if self._array is not None:
            yield from self._array
        elif self._files is not None:
            for file in self._files:
                frame = _read_image(file)
                if frame.shape[:2] != self.size:
                    raise EbrError(f"frame {file} is {frame.shape[1]}x{frame.shape[0]}, the first frame "
                                   f"{self.size[1]}x{self.size[0]}: all frames of a folder must have one size")
                yield frame
        else:
            import av

            with _open_container(self._path) as container:
                try:
                    for frame in container.decode(container.streams.video[0]):
                        yield frame.to_ndarray(format="rgb24")
                except av.FFmpegError as error:
                    raise EbrError(f"cannot decode video {self._path}: {error}") from None


def _sampler(every: int, ratio: float | None):
    """Predicate on the original frame index: keep every ``every``-th frame, or, with ``ratio`` = target/source fps,
    the first frame of each output interval (floor(i * ratio) increases)."""
    if ratio is None:
        return lambda i: i % every == 0
    return lambda i: i == 0 or math.floor(i * ratio) > math.floor((i - 1) * ratio)


def _open_container(path: Path) -> av.container.InputContainer:
    import av

    try:
        container = av.open(str(path))
    except av.FFmpegError as error:
        raise EbrError(f"cannot open video {path}: {error}") from None
    if not container.streams.video:
        container.close()
        raise EbrError(f"{path} has no video stream")
    return container


def _read_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as error:
        raise EbrError(f"cannot read frame {path}: {error}") from None


def clips(source: VideoSource, T: int, stride: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Consecutive clips of ``T`` frames starting every ``stride`` frames (default ``T``: the paper's §5.2
    consecutive 128-frame clips), as ``(frame_indices (T,), frames (T, H, W, 3))``. Frames after the last full
    stride step are covered by one more clip that ends at the last frame. Only ``T`` frames are buffered.
    """
    stride = T if stride is None else stride
    if T < 1 or stride < 1:
        raise EbrError(f"clip length and stride must be >= 1, got T={T}, stride={stride}")
    buffer: collections.deque[tuple[int, np.ndarray]] = collections.deque(maxlen=T)
    seen = 0
    last_end = -1
    for item in source:
        buffer.append(item)
        seen += 1
        if seen >= T and (seen - T) % stride == 0:
            last_end = seen
            yield _stack(buffer)
    if seen < T:
        raise EbrError(f"{source.name} has {seen} frames (after sampling), fewer than one clip of T={T}")
    if last_end != seen:
        yield _stack(buffer)


def _stack(buffer: Iterable[tuple[int, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    indices, frames = zip(*buffer)
    return np.array(indices, dtype=np.int64), np.stack(frames)


def write_video(path: str | Path, frames: Iterable[np.ndarray], fps: float) -> None:
    """Write uint8 RGB frames as an animated GIF (Pillow, one palette for all frames, when the suffix is ``.gif``)
    or a video (PyAV, libx264 yuv420p for ``.mp4``; odd sizes are padded by one edge pixel since yuv420p needs even
    sizes)."""
    path = Path(path)
    if fps <= 0:
        raise EbrError(f"fps must be positive, got {fps}")
    frames = iter(frames)
    first = next(frames, None)
    if first is None:
        raise EbrError(f"no frames to write to {path}")
    if path.suffix.lower() == ".gif":
        # One palette for all frames, from the frames stacked into one image (fast octree): Pillow would otherwise
        # quantize every frame on its own, ~60 times slower.
        stack = np.concatenate([first, *frames])
        h = first.shape[0]
        palette = Image.fromarray(stack).quantize(256, method=Image.Quantize.FASTOCTREE)
        images = [palette.crop((0, y, first.shape[1], y + h)) for y in range(0, stack.shape[0], h)]
        images[0].save(path, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
        return
    import av

    h, w = first.shape[:2]
    pad = ((0, h % 2), (0, w % 2), (0, 0))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = w + w % 2, h + h % 2, "yuv420p"
        for frame in itertools.chain([first], frames):
            image = av.VideoFrame.from_ndarray(np.pad(frame, pad, mode="edge"), format="rgb24")
            container.mux(stream.encode(image))
        container.mux(stream.encode())

