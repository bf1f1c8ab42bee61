"""Where a layer's parameter blobs come from: a caffemodel (shape-checked) or seeded random fillers."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from .errors import CaffeConversionError
from .fillers import fill
from .schema import BlobProto, FillerParameter, LayerParameter, NetParameter


@dataclass(frozen=True)
class BlobSpec:
    """One parameter blob a layer needs: its shape and the prototxt's filler for it (None: the default)."""

    shape: tuple[int, ...]
    filler: FillerParameter | None = None


def prototxt_filler(param, field: str, default: FillerParameter | None = None) -> FillerParameter | None:
    """The layer parameter's filler ``field`` if the prototxt sets it, else ``default``."""
    return getattr(param, field) if param.HasField(field) else default


class WeightSource(Protocol):
    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        """The layer's parameter blobs in Caffe's order, one float32 array of each spec's shape."""


def _fmt(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _stored_shape(blob: BlobProto, expected: tuple[int, ...]) -> tuple[int, ...] | None:
    """The blob's shape as Caffe compares it (``Blob::ShapeEquals``); legacy 4-D blobs pad ``expected`` with 1s."""
    if blob.HasField("shape"):
        return tuple(blob.shape.dim)
    legacy = (blob.num, blob.channels, blob.height, blob.width)
    if len(expected) <= 4 and legacy == (1,) * (4 - len(expected)) + expected:
        return expected
    return legacy


class CaffemodelWeights:
    """Blobs copied by layer name from a caffemodel, as Caffe's ``CopyTrainedLayersFrom``."""

    def __init__(self, net: NetParameter, path: Path) -> None:
        self._path = path
        self._layers = {layer.name: layer for layer in net.layer}

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        stored = self._layers.get(layer.name)
        blobs = stored.blobs if stored is not None else []
        have = len(blobs)
        if have < len(specs):
            raise CaffeConversionError(
                f"layer '{layer.name}' ({layer.type}) needs {len(specs)} weight blobs, "
                f"{self._path} has {have}: weight blob {have} is missing"
            )
        if have > len(specs):
            raise CaffeConversionError(
                f"layer '{layer.name}' ({layer.type}) needs {len(specs)} weight blobs, {self._path} has {have}"
            )
        return [self._array(layer, i, blob, spec.shape) for i, (blob, spec) in enumerate(zip(blobs, specs))]

    def _array(self, layer: LayerParameter, index: int, blob: BlobProto, shape: tuple[int, ...]) -> np.ndarray:
        found = _stored_shape(blob, shape)
        data = np.asarray(blob.data if len(blob.data) else blob.double_data, dtype=np.float32)
        if found != shape or data.size != math.prod(shape):
            raise CaffeConversionError(
                f"layer '{layer.name}' ({layer.type}) weight blob {index} has shape {_fmt(found)} "
                f"({data.size} values) in {self._path}, but the prototxt needs {_fmt(shape)}"
            )
        return data.reshape(shape)


class RandomWeights:
    """Seeded random blobs drawn with the prototxt's fillers, layer by layer in net order."""

    def __init__(self, seed: int) -> None:
        self._rng = np.random.default_rng(seed)

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        return [fill(self._rng, spec.shape, spec.filler) for spec in specs]


class ZeroWeights:
    """Zero blobs of the right shapes: for a conversion that only needs the tensor shapes."""

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        return [np.zeros(spec.shape, np.float32) for spec in specs]


class NoWeights:
    """Used when neither a caffemodel nor a seed is given: any layer with parameters is an error."""

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        if not specs:
            return []
        raise CaffeConversionError(
            f"layer '{layer.name}' ({layer.type}) has weights: pass a caffemodel or random_weights=SEED"
        )
