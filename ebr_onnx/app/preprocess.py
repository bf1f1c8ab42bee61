"""Frame preprocessing: resize, centre crop, channel order, range and normalisation, as data.

A :class:`Preprocess` describes the whole transform; :data:`PRESETS` holds the named ones. ``caffe-ucf101`` is the
authors' release (``util_preprocess_data.py`` + ``caffe.io.Transformer``; spec §1.2): resize to 240×320 (H×W) only
when the frame has another size, centre crop 224 with floor offsets (rows 8:232, cols 48:272), RGB→BGR, ×255,
subtract the BGR mean (103.939, 116.779, 128.68). :func:`preprocess` also returns the :class:`CropBox`, the region of
the original frame the network saw, so maps can be drawn back where they belong (the release stretched them over the
whole frame, spec §1.9; we do not).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..core.errors import EbrError
from ..core.graph import ModelGraph
from ..methods.volume import model_input, volume_layout

# float32(x / 255) computed in float64, as caffe.io.load_image does (skimage.img_as_float, then astype(float32)).
_UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)


def unit_range(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels as float32 in [0, 1]: ``float32(x / 255)`` computed in float64, as ``caffe.io.load_image`` does
    (``skimage.img_as_float``, then ``astype(float32)``)."""
    return _UNIT[pixels]


@dataclass(frozen=True)
class Preprocess:
    """A frame transform.

    size: ``(H, W)`` resizes to exactly that size when the frame differs; an ``int`` resizes the shorter side to it
    (aspect kept, long side rounded); ``None`` keeps the frame. Resizing is Pillow bilinear on uint8 (the release
    used skimage's bilinear on floats, so frames that need resizing differ slightly from it; 240×320 frames do not).
    crop: centre crop side (``int``) or ``(h, w)``, offsets ``(H - h) // 2`` and ``(W - w) // 2``; ``None`` keeps all.
    mean, std: per output channel, in ``channel_order`` and in the scaled range: ``(x / 255 * scale - mean) / std``.
    """

    size: tuple[int, int] | int | None
    crop: tuple[int, int] | int | None
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    channel_order: str = "RGB"
    scale: float = 1.0

    def __post_init__(self) -> None:
        if self.channel_order not in ("RGB", "BGR"):
            raise EbrError(f"channel_order must be 'RGB' or 'BGR', not {self.channel_order!r}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise EbrError(f"mean and std need 3 values each, got mean={self.mean!r} std={self.std!r}")
        if any(s == 0 for s in self.std):
            raise EbrError(f"std must be non-zero, got {self.std!r}")
        for name, value in (("size", self.size), ("crop", self.crop)):
            _check_sides(name, value)


def _check_sides(name: str, value: object) -> None:
    """``value`` must be None, a positive int, or a pair of positive ints."""
    pair = isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)
    if not (value is None or pair or (isinstance(value, int) and value > 0)):
        raise EbrError(f"{name} must be None, a positive int or (h, w), got {value!r}")


PRESETS: dict[str, Preprocess] = {
    "caffe-ucf101": Preprocess(
        size=(240, 320), crop=224, mean=(103.939, 116.779, 128.68), channel_order="BGR", scale=255.0
    ),
    "imagenet": Preprocess(
        size=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order="RGB", scale=1.0
    ),
    # the generated videos of ebr_onnx.app.synthetic, as the bundled model was trained on them
    "synthetic": Preprocess(size=(64, 64), crop=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)),
}
_FIELDS = ("size", "crop", "mean", "std", "channel_order", "scale")


def get_preset(name: str) -> Preprocess:
    """The named preset; an :class:`EbrError` lists the available names otherwise."""
    try:
        return PRESETS[name]
    except KeyError:
        raise EbrError(f"unknown preprocessing preset {name!r}; available: {', '.join(sorted(PRESETS))}") from None


@dataclass(frozen=True)
class CropBox:
    """The region of the ORIGINAL frame the network saw, in continuous pixel-edge coordinates: pixel (r, c) covers
    ``[c, c+1) × [r, r+1)``, so ``x1 - x0`` is the width in original pixels (fractional when the frame was resized)."""

    x0: float
    y0: float
    x1: float
    y1: float
    frame_size: tuple[int, int]  # (H, W) of the original frame

    def pixels(self) -> tuple[int, int, int, int]:
        """The box rounded to whole pixels ``(x0, y0, x1, y1)``, clipped to the frame."""
        h, w = self.frame_size
        return (
            max(0, round(self.x0)),
            max(0, round(self.y0)),
            min(w, round(self.x1)),
            min(h, round(self.y1)),
        )


def _resized_size(spec: Preprocess, h: int, w: int) -> tuple[int, int]:
    if spec.size is None:
        return h, w
    if isinstance(spec.size, int):
        ratio = spec.size / min(h, w)
        return (spec.size, round(w * ratio)) if h <= w else (round(h * ratio), spec.size)
    return int(spec.size[0]), int(spec.size[1])


def preprocess(frames: np.ndarray, spec: Preprocess | str = "caffe-ucf101") -> tuple[np.ndarray, CropBox]:
    """Transform uint8 RGB frames ``(T, H, W, 3)`` into the network input ``(T, 3, h, w)`` float32.

    Per value: ``(float32(x / 255) * scale - mean) / std`` with the subtraction and division done in float64 and
    rounded to float32, which reproduces the release bit for bit on 240×320 frames (spec §1.2).
    """
    if isinstance(spec, str):
        spec = get_preset(spec)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] == 0:
        raise EbrError(f"frames must be a non-empty uint8 array (T, H, W, 3), got {frames.dtype} {frames.shape}")
    _, h, w, _ = frames.shape
    rh, rw = _resized_size(spec, h, w)
    if (rh, rw) != (h, w):
        frames = np.stack([np.asarray(Image.fromarray(f).resize((rw, rh), Image.BILINEAR)) for f in frames])
    ch, cw = (rh, rw) if spec.crop is None else (spec.crop, spec.crop) if isinstance(spec.crop, int) else spec.crop
    if ch > rh or cw > rw:
        raise EbrError(f"crop {ch}x{cw} is larger than the resized frame {rh}x{rw}")
    top, left = (rh - ch) // 2, (rw - cw) // 2
    x = unit_range(frames[:, top : top + ch, left : left + cw]).transpose(0, 3, 1, 2)
    if spec.channel_order == "BGR":
        x = x[:, ::-1]
    x = np.ascontiguousarray(x)
    x *= np.float32(spec.scale)
    for c in range(3):
        np.subtract(x[:, c], np.float64(spec.mean[c]), out=x[:, c], casting="unsafe")
        np.divide(x[:, c], np.float64(spec.std[c]), out=x[:, c], casting="unsafe")
    sy, sx = rh / h, rw / w
    box = CropBox(left / sx, top / sy, (left + cw) / sx, (top + ch) / sy, frame_size=(h, w))
    return x, box


def model_preprocess(graph: ModelGraph, preset: str | None = None, overrides: dict[str, Any] | None = None
                     ) -> Preprocess:
    """The preprocessing of a model: a named ``preset``, else the one recorded in its metadata
    (``ebr_onnx.preprocess``: a preset name, or ``{"preset": …}``, or the :class:`Preprocess` fields), with the
    fields in ``overrides`` (size, crop, mean, std, channel_order, scale) replaced; custom ``overrides`` on a model
    that records nothing start from the identity transform."""
    if overrides:
        unknown = sorted(set(overrides) - set(_FIELDS))
        if unknown:
            raise EbrError(f"unknown preprocessing field(s) {unknown}; supported: {', '.join(_FIELDS)}")
        try:
            base = model_preprocess(graph, preset)
        except EbrError:
            base = Preprocess(size=None, crop=None)
        return replace(base, **overrides)
    if preset is not None:
        return get_preset(preset)
    meta = graph.metadata_json("ebr_onnx.preprocess")
    if isinstance(meta, str):
        return get_preset(meta)
    if isinstance(meta, dict):
        if "preset" in meta:
            return get_preset(meta["preset"])
        fields = {k: tuple(meta[k]) if isinstance(meta[k], list) else meta[k] for k in _FIELDS if k in meta}
        return Preprocess(**fields)
    raise EbrError(f"the model records no preprocessing: name a preset ({', '.join(sorted(PRESETS))}) or the fields")


def prepare(model: Any, frames: np.ndarray, preset: str | None = None, **overrides: Any
            ) -> tuple[np.ndarray, CropBox]:
    """Frames as ``model`` expects them: uint8 RGB ``(T, H, W, 3)`` → its input ``(T, 3, h, w)`` float32 with the
    model's recorded preprocessing (or ``preset``, with ``overrides`` of its fields), and the :class:`CropBox` the
    network sees; a 3-D CNN's input is one clip in its layout, e.g. ``(1, 3, T, h, w)``. ``model``: an
    :class:`~ebr_onnx.Explainer`, a :class:`ModelGraph` or an ONNX file."""
    graph = model if isinstance(model, ModelGraph) else getattr(model, "graph", None)
    if graph is None:
        if not isinstance(model, (str, Path)):
            raise EbrError(f"prepare() takes an Explainer, a ModelGraph or an ONNX file, not {type(model).__name__}")
        graph = ModelGraph(model)
    x, crop = preprocess(frames, model_preprocess(graph, preset, overrides))
    layout = volume_layout(graph, getattr(model, "input_name", None) or graph.inputs[0])
    return model_input(layout, x), crop
