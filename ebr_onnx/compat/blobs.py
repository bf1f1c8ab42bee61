"""pycaffe's blob and layer objects: ``net.blobs[name]`` (data and diff), ``net.params[name][i]`` and
``net.layers[i]``."""
from __future__ import annotations

import numpy as np

from .errors import NotOffered


class _Shaped:
    """Caffe's shape accessors, read from ``data``."""

    data: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    @property
    def count(self) -> int:
        return int(self.data.size)

    def _legacy(self, index: int) -> int:
        """``Blob::LegacyShape``: 1 for an axis a blob of fewer than 4 axes does not have."""
        return self.shape[index] if index < len(self.shape) else 1

    @property
    def num(self) -> int:
        return self._legacy(0)

    @property
    def channels(self) -> int:
        return self._legacy(1)

    @property
    def height(self) -> int:
        return self._legacy(2)

    @property
    def width(self) -> int:
        return self._legacy(3)


class Blob(_Shaped):
    """A Caffe blob: ``data`` and ``diff``, float32 NumPy arrays of Caffe's shape, read and written in place (as
    pycaffe's arrays are views of the blob's memory). The top of a Reshape or Flatten views its bottom's data and
    diff, the tops of a Split view its bottom's data (``ShareData``/``ShareDiff``)."""

    def __init__(self, shape: tuple[int, ...]) -> None:
        self._data = np.zeros(shape, np.float32)
        self._diff = np.zeros(shape, np.float32)

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        return self._diff

    def reshape(self, *shape: int) -> None:
        """``Blob::Reshape``: new zero data and diff of ``shape``; the next ``forward()`` (or ``net.reshape()``)
        reshapes the layers above an input blob."""
        dims = tuple(int(d) for d in shape)
        if any(d < 0 for d in dims):
            raise ValueError(f"Blob.reshape{dims}: dimensions must not be negative")
        self._data = np.zeros(dims, np.float32)
        self._diff = np.zeros(dims, np.float32)

    def view(self, source: Blob, diff: bool) -> None:
        """Share ``source``'s data (and diff) memory in this blob's shape."""
        self._data = source._data.reshape(self.shape)
        if diff:
            self._diff = source._diff.reshape(self.shape)


class ParamBlob(_Shaped):
    """A layer's parameter blob (``net.params[layer][i]``): ``data`` of Caffe's shape, a view of the weight the
    engine reads, so a write (the release's ``*= -1`` on the classifier) changes the next forward and backward.
    Where the model holds a value computed from the blob (BatchNorm's scaled statistics), ``data`` is read-only."""

    def __init__(self, data: np.ndarray) -> None:
        self._data = data

    @property
    def data(self) -> np.ndarray:
        return self._data

    @property
    def diff(self) -> np.ndarray:
        raise NotOffered("net.params[...][i].diff", "parameter gradients (training)")

    def replace(self, array: np.ndarray) -> None:
        """Hold a new read-only value (a derived blob's, from ``Net.copy_from``; the net is converted again)."""
        self._data = np.array(array, np.float32)
        self._data.flags.writeable = False

    def reshape(self, *shape: int) -> None:
        raise NotOffered("Blob.reshape on a parameter blob", "changing a layer's parameter shapes")


class Layer:
    """A layer of the net (``net.layers[i]``): its ``type`` and its parameter ``blobs``."""

    def __init__(self, layer_type: str, blobs: list[ParamBlob]) -> None:
        self.type = layer_type
        self.blobs = blobs

    def reshape(self, *args, **kwargs) -> None:
        raise NotOffered("Layer.reshape", "running single layers (use net.reshape())")

    def setup(self, *args, **kwargs) -> None:
        raise NotOffered("Layer.setup", "running single layers")
