"""pycaffe's ``caffe.io`` as the release ships it (LRCN's ``io.py``, spec §1.2): ``load_image``, ``resize_image`` and
``Transformer``, with Caffe's numerics (float32 throughout; a float64 mean is subtracted in float64 and rounded)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image

from ..app.preprocess import unit_range
from .errors import NotOffered, not_offered_attributes


def load_image(filename: str | Path, color: bool = True) -> np.ndarray:
    """An image as float32 RGB in [0, 1], ``(H, W, 3)`` (``(H, W, 1)`` for a grey image with ``color=False``):
    ``skimage.img_as_float(imread(filename)).astype(float32)``; an alpha channel is dropped."""
    with Image.open(filename) as image:
        if image.mode not in ("L", "RGB", "RGBA", "I;16"):
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        pixels = np.asarray(image)
    if pixels.dtype == np.uint8:
        img = unit_range(pixels)
    else:
        img = (pixels / float(np.iinfo(pixels.dtype).max)).astype(np.float32)
    if img.ndim == 2:
        img = img[:, :, np.newaxis]
        if color:
            img = np.tile(img, (1, 1, 3))
    elif img.shape[2] == 4:
        img = img[:, :, :3]
    return img


def resize_image(im: np.ndarray, new_dims: Sequence[int], interp_order: int = 1) -> np.ndarray:
    """An ``(H, W, K)`` image (K = 1 or 3) resized to ``new_dims`` = (height, width), as the release does: scaled to
    [0, 1] by its range, ``skimage.transform.resize(…, order, mode='nearest')`` of its day (pixel centres aligned,
    edges extended, no anti-aliasing), scaled back; a constant image stays constant. Orders 0 (nearest) and 1
    (bilinear)."""
    if im.shape[-1] not in (1, 3):
        raise NotOffered("caffe.io.resize_image", f"images of {im.shape[-1]} channels (scipy's zoom); 1 or 3 are")
    if interp_order not in (0, 1):
        raise NotOffered("caffe.io.resize_image", f"interp_order={interp_order}; 0 and 1 are")
    rows, cols = int(new_dims[0]), int(new_dims[1])
    im_min, im_max = im.min(), im.max()
    if not im_max > im_min:
        return np.full((rows, cols, im.shape[-1]), im_min, np.float32)
    im_std = (im - im_min) / (im_max - im_min)
    resized = _resample(np.asarray(im_std, np.float64), rows, cols, interp_order)
    return (resized * (im_max - im_min) + im_min).astype(np.float32)


def _coordinates(size_in: int, size_out: int) -> np.ndarray:
    """The input coordinate of each output pixel centre: ``(i + 0.5) · in / out − 0.5``."""
    return (np.arange(size_out) + 0.5) * (size_in / size_out) - 0.5


def _resample(image: np.ndarray, rows: int, cols: int, order: int) -> np.ndarray:
    """skimage's ``warp`` of the scaling transform with ``mode='nearest'`` (indices clamped to the image), in
    float64, per channel: nearest (``round``) or bilinear (``(1−dr)·((1−dc)·TL + dc·TR) + dr·((1−dc)·BL + dc·BR)``)."""
    r, c = _coordinates(image.shape[0], rows), _coordinates(image.shape[1], cols)
    h, w = image.shape[0] - 1, image.shape[1] - 1
    if order == 0:
        ri = np.clip(np.where(r >= 0, np.floor(r + 0.5), np.ceil(r - 0.5)), 0, h).astype(int)
        ci = np.clip(np.where(c >= 0, np.floor(c + 0.5), np.ceil(c - 0.5)), 0, w).astype(int)
        return image[ri[:, None], ci[None, :]]
    r0, c0 = np.floor(r), np.floor(c)
    dr, dc = (r - r0)[:, None, None], (c - c0)[None, :, None]
    r0i, r1i = np.clip(r0, 0, h).astype(int), np.clip(np.ceil(r), 0, h).astype(int)
    c0i, c1i = np.clip(c0, 0, w).astype(int), np.clip(np.ceil(c), 0, w).astype(int)
    top = (1 - dc) * image[r0i[:, None], c0i[None, :]] + dc * image[r0i[:, None], c1i[None, :]]
    bottom = (1 - dc) * image[r1i[:, None], c0i[None, :]] + dc * image[r1i[:, None], c1i[None, :]]
    return (1 - dr) * top + dr * bottom


def _scalar(value: Any) -> Any:
    """A scale factor as the release's NumPy applied it to float32 data: a scalar in float32, an array as given."""
    return np.float32(value) if np.ndim(value) == 0 else value


class Transformer:
    """``caffe.io.Transformer({name: blob shape})``: per input, the steps ``preprocess`` applies in this order —
    float32, resize to the blob's H×W when the image differs, ``set_transpose`` (HWC→CHW), ``set_channel_swap``
    (RGB→BGR), ``set_raw_scale`` (×255), ``set_mean`` (subtracted: a float64 mean in float64, rounded to float32),
    ``set_input_scale``."""

    def __init__(self, inputs: dict[str, Sequence[int]]) -> None:
        self.inputs = {name: tuple(int(d) for d in shape) for name, shape in inputs.items()}
        self.transpose: dict[str, tuple[int, ...]] = {}
        self.channel_swap: dict[str, tuple[int, ...]] = {}
        self.raw_scale: dict[str, Any] = {}
        self.mean: dict[str, np.ndarray] = {}
        self.input_scale: dict[str, Any] = {}
        self.is_flow: dict[str, bool] = {}

    def _check_input(self, in_: str) -> None:
        if in_ not in self.inputs:
            raise Exception(f"{in_} is not one of the net inputs: {self.inputs}")

    def preprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """An ``(H', W', K)`` image as the input blob's ``(K, H, W)`` (the caller's array is left as it is)."""
        self._check_input(in_)
        caffe_in = np.array(data, dtype=np.float32)
        in_dims = self.inputs[in_][2:]
        if tuple(caffe_in.shape[:2]) != in_dims:
            caffe_in = resize_image(caffe_in, in_dims)
        if in_ in self.transpose:
            caffe_in = caffe_in.transpose(self.transpose[in_])
        if in_ in self.channel_swap:
            caffe_in = caffe_in[list(self.channel_swap[in_]), :, :]
        if in_ in self.raw_scale:
            caffe_in *= _scalar(self.raw_scale[in_])
        if in_ in self.mean:
            caffe_in -= self.mean[in_]
        if in_ in self.input_scale:
            caffe_in *= _scalar(self.input_scale[in_])
        return caffe_in

    def deprocess(self, in_: str, data: np.ndarray) -> np.ndarray:
        """``preprocess`` undone, step by step in reverse, as the release's ``io.py`` writes it."""
        self._check_input(in_)
        decaf_in = np.array(data).squeeze()
        if in_ in self.input_scale:
            decaf_in /= _scalar(self.input_scale[in_])
        if in_ in self.mean:
            decaf_in += self.mean[in_]
        if in_ in self.raw_scale:
            decaf_in /= _scalar(self.raw_scale[in_])
        if in_ in self.channel_swap:
            decaf_in = decaf_in[list(self.channel_swap[in_]), :, :]
        if in_ in self.transpose:
            order = self.transpose[in_]
            decaf_in = decaf_in.transpose([order[t] for t in order])
        return decaf_in

    def set_transpose(self, in_: str, order: Sequence[int]) -> None:
        self._check_input(in_)
        if len(order) != len(self.inputs[in_]) - 1:
            raise Exception("Transpose order needs to have the same number of dimensions as the input.")
        self.transpose[in_] = tuple(order)

    def set_channel_swap(self, in_: str, order: Sequence[int]) -> None:
        self._check_input(in_)
        if len(order) != self.inputs[in_][1]:
            raise Exception("Channel swap needs to have the same number of dimensions as the input channels.")
        self.channel_swap[in_] = tuple(order)

    def set_raw_scale(self, in_: str, scale: float) -> None:
        self._check_input(in_)
        self.raw_scale[in_] = scale

    def set_mean(self, in_: str, mean: np.ndarray) -> None:
        """A per-channel mean ``(K,)`` or an elementwise one ``(K, H, W)`` (``(H, W)`` for one channel)."""
        self._check_input(in_)
        ms = mean.shape
        if mean.ndim == 1:
            if ms[0] != self.inputs[in_][1]:
                raise ValueError("Mean channels incompatible with input.")
            mean = mean[:, np.newaxis, np.newaxis]
        else:
            if len(ms) == 2:
                ms = (1,) + ms
            if len(ms) != 3:
                raise ValueError("Mean shape invalid")
            if ms != self.inputs[in_][1:]:
                raise ValueError("Mean shape incompatible with input shape.")
        self.mean[in_] = mean

    def set_input_scale(self, in_: str, scale: float) -> None:
        self._check_input(in_)
        self.input_scale[in_] = scale

    def set_is_flow(self, in_: str, is_flow: bool) -> None:
        self._check_input(in_)
        self.is_flow[in_] = is_flow


_NOT_OFFERED = {
    "oversample": "ten-crop oversampling",
    "flip_image": "flipping images (use im[:, ::-1])",
    "blobproto_to_array": "Caffe's protobuf blobs (caffe.proto)",
    "array_to_blobproto": "Caffe's protobuf blobs (caffe.proto)",
    "arraylist_to_blobprotovecor_str": "Caffe's protobuf blobs (caffe.proto)",
    "blobprotovector_str_to_arraylist": "Caffe's protobuf blobs (caffe.proto)",
    "array_to_datum": "Caffe's Datum records (data layers)",
    "datum_to_array": "Caffe's Datum records (data layers)",
}

__getattr__ = not_offered_attributes("caffe.io", "ebr_onnx.compat.caffe_io", _NOT_OFFERED)
