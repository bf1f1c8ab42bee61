"""ONNX tensor names for Caffe blobs, including blobs rewritten in place.

Caffe lets a layer write a blob it reads (``bottom: "conv5_1" top: "conv5_1"``); ONNX tensors are written
once. Every write gets its own tensor:

* the **last** write of a blob keeps the plain Caffe name, so ``conv5_1`` is, as in Caffe, the value after
  the in-place ``relu5_1``;
* an earlier write is named ``<blob>/pre_<layer>``, where ``<layer>`` is the layer that overwrites it next
  (``conv5_1/pre_relu5_1`` is the convolution output before ``relu5_1``; ``fc6/pre_relu6``, ``fc6/pre_drop6``).
"""

from __future__ import annotations

from collections import defaultdict

from .schema import LayerParameter


class BlobNames:
    """Which ONNX tensor holds each Caffe blob, as the layers are converted in order."""

    def __init__(self, layers: list[LayerParameter]) -> None:
        self._writers: dict[str, list[int]] = defaultdict(list)
        for index, layer in enumerate(layers):
            for top in layer.top:
                self._writers[top].append(index)
        self._layers = layers
        self._current: dict[str, str] = {}

    def version(self, index: int, blob: str) -> str:
        """The tensor name for ``blob`` as written by layer ``index``."""
        writers = self._writers[blob]
        later = [i for i in writers if i > index]
        return f"{blob}/pre_{self._layers[later[0]].name}" if later else blob

    def all_versions(self) -> set[str]:
        return {self.version(i, blob) for blob, writers in self._writers.items() for i in writers}

    def read(self, blob: str) -> str | None:
        """The tensor currently holding ``blob``, or None if no converted layer has written it yet."""
        return self._current.get(blob)

    def write(self, index: int, blob: str) -> str:
        name = self.version(index, blob)
        self._current[blob] = name
        return name

    def final(self) -> dict[str, str]:
        """Blob name → tensor holding its last value."""
        return dict(self._current)
