"""The net's parameter blobs: where their values come from (a caffemodel, Caffe's fillers, or the current values
when the net is reshaped), and how each is bound to the weight the engine reads, so that writing
``net.params[layer][i].data`` in place changes the next forward and backward as in Caffe."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from onnx import numpy_helper

from converters.caffe.convert import ConvertedNet
from converters.caffe.fillers import fill
from converters.caffe.parse import read_caffemodel
from converters.caffe.schema import LayerParameter, NetParameter
from converters.caffe.weights import BlobSpec, CaffemodelWeights, WeightSource

from .blobs import ParamBlob

#: The converter's initializer (``<layer>/<suffix>``) of each parameter blob, by layer type, in Caffe's blob order;
#: the LSTM's weights are stored transposed. Types not listed (BatchNorm: scaled statistics) hold derived values.
_INITIALIZERS = {
    "Convolution": ("weight", "bias"),
    "Deconvolution": ("weight", "bias"),
    "InnerProduct": ("weight", "bias"),
    "LSTM": ("W_xc_T", "b_c", "W_hc_T"),
    "Scale": ("scale", "bias"),
    "Bias": ("bias",),
    "PReLU": ("slope",),
}
_TRANSPOSED = frozenset({"W_xc_T", "W_hc_T"})


class FillerWeights:
    """Caffe's initialisation of a net made without weights: each blob drawn with the prototxt's filler from
    Caffe's random generator."""

    def __init__(self, rng: np.random.Generator) -> None:
        self._rng = rng

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        return [fill(self._rng, spec.shape, spec.filler) for spec in specs]


class TrainedWeights:
    """``Net::CopyTrainedLayersFrom``: the blobs of every layer the caffemodel names (counts and shapes checked),
    the fillers' for the others."""

    def __init__(self, caffemodel: str | Path, fallback: WeightSource) -> None:
        trained = read_caffemodel(caffemodel)
        self._names = {layer.name for layer in trained.layer}
        self._trained = CaffemodelWeights(trained, Path(caffemodel))
        self._fallback = fallback

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        source = self._trained if layer.name in self._names else self._fallback
        return source.arrays(layer, specs)


class CurrentWeights:
    """The blobs' current values (a net converted again for new input shapes keeps its parameters)."""

    def __init__(self, blobs: dict[str, list[ParamBlob]]) -> None:
        self._blobs = blobs

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        return [np.array(blob.data) for blob in self._blobs.get(layer.name, [])]


@dataclass
class Recording:
    """A weight source that keeps what it hands out, by layer name (Caffe's shapes and order)."""

    source: WeightSource
    arrays_by_layer: dict[str, list[np.ndarray]] = field(default_factory=dict)

    def arrays(self, layer: LayerParameter, specs: list[BlobSpec]) -> list[np.ndarray]:
        arrays = self.source.arrays(layer, specs)
        self.arrays_by_layer[layer.name] = arrays
        return arrays


@dataclass
class ParamSet:
    """The parameter blobs by layer (net order; layers without any are left out), and ``owners``: the arrays the
    engine reads, by initializer name, of which the bound blobs' ``data`` are views."""

    blobs: dict[str, list[ParamBlob]]
    owners: dict[str, np.ndarray]


def _suffixes(layer: LayerParameter) -> tuple[str, ...]:
    if layer.type == "Scale" and len(layer.bottom) > 1:
        return ("bias",)  # the second bottom takes the scale blob's place
    return _INITIALIZERS.get(layer.type, ())


def bind_params(net: NetParameter, converted: ConvertedNet, recorded: dict[str, list[np.ndarray]]) -> ParamSet:
    """Each recorded blob bound to its initializer: the initializer becomes a writable owner array and the blob's
    ``data`` a view of it in Caffe's shape (the transpose for the LSTM's weights). A blob whose initializer holds a
    derived value keeps a read-only copy."""
    initializers = {init.name: init for init in converted.model.graph.initializer}
    blobs: dict[str, list[ParamBlob]] = {}
    owners: dict[str, np.ndarray] = {}
    for layer in net.layer:
        arrays = recorded.get(layer.name, [])
        if not arrays:
            continue
        suffixes = _suffixes(layer)
        views = []
        for k, array in enumerate(arrays):
            name = f"{layer.name}/{suffixes[k]}" if k < len(suffixes) else None
            view = None
            if name in initializers:
                owner = np.array(numpy_helper.to_array(initializers[name]), np.float32)
                if owner.size == array.size:
                    view = owner.T if suffixes[k] in _TRANSPOSED else owner.reshape(array.shape)
                    if view.shape == array.shape and np.array_equal(view, array):
                        owners[name] = owner
                    else:
                        view = None
            if view is None:
                view = np.array(array, np.float32)
                view.flags.writeable = False
            views.append(ParamBlob(view))
        blobs[layer.name] = views
    return ParamSet(blobs, owners)
