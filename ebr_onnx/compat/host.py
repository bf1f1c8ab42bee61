"""The layers this interface runs itself, in NumPy, because the converter emits no nodes for them: the data layers'
filling (``DummyDataLayer``), the release's dummy ``EuclideanLoss`` and ``Silence``."""
from __future__ import annotations

import numpy as np

from converters.caffe.fillers import fill
from converters.caffe.schema import FillerParameter, LayerParameter

from .blobs import Blob


def _dummy_fillers(layer: LayerParameter) -> list[FillerParameter]:
    """One filler for all tops, or one per top; none given: the constant 0."""
    given = list(layer.dummy_data_param.data_filler)
    return given or [FillerParameter(type="constant", value=0.0)]


def fill_dummy_data(layer: LayerParameter, tops: list[Blob], rng: np.random.Generator, setup: bool) -> None:
    """``DummyDataLayer``: the tops with a constant filler are filled once, at setup; the others on every forward.
    Data the user writes into a constant-filled top (the release's ``data`` and ``clip_markers``) survives
    (spec §1.2)."""
    fillers = _dummy_fillers(layer)
    for i, blob in enumerate(tops):
        filler = fillers[i] if len(fillers) > 1 else fillers[0]
        if (filler.type == "constant") == setup:
            blob.data[...] = fill(rng, blob.shape, filler)


def euclidean_loss_forward(bottoms: list[Blob], top: Blob) -> np.ndarray:
    """``EuclideanLossLayer::Forward``: ``Σ (a − b)² / num / 2``; returns ``a − b`` (kept for the backward)."""
    diff = bottoms[0].data - bottoms[1].data
    top.data[...] = np.dot(diff.ravel(), diff.ravel()) / bottoms[0].num / np.float32(2)
    return diff


def euclidean_loss_backward(diff: np.ndarray, bottoms: list[Blob], top: Blob, propagate: tuple[bool, ...]) -> None:
    """``EuclideanLossLayer::Backward``: bottom i gets ``± top.diff · (a − b) / num`` (+ for a, − for b)."""
    for i, blob in enumerate(bottoms):
        if propagate[i]:
            alpha = (1.0 if i == 0 else -1.0) * float(top.diff.reshape(-1)[0]) / blob.num
            blob.diff[...] = np.float32(alpha) * diff


def silence_backward(bottoms: list[Blob], propagate: tuple[bool, ...]) -> None:
    """``SilenceLayer::Backward``: zero diffs."""
    for blob, flag in zip(bottoms, propagate):
        if flag:
            blob.diff[...] = 0
