"""``convert_caffe``: a Caffe prototxt (+ caffemodel) to an ONNX model, layer by layer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from . import layers, lstm  # noqa: F401  (importing them registers their converters)
from .errors import CaffeConversionError
from .graph import GraphBuilder
from .naming import BlobNames
from .netspec import test_phase, upgrade_inputs, with_frames
from .parse import read_caffemodel, read_prototxt
from .registry import DROPPED_TYPES, LayerContext, Options, lookup
from .weights import CaffemodelWeights, NoWeights, RandomWeights, WeightSource

METADATA_PREFIX = "ebr_onnx."


def _weights(caffemodel: str | Path | None, random_weights: int | None) -> WeightSource:
    if caffemodel is not None and random_weights is not None:
        raise CaffeConversionError("give either a caffemodel or random_weights, not both")
    if caffemodel is not None:
        return CaffemodelWeights(read_caffemodel(caffemodel), Path(caffemodel))
    return RandomWeights(random_weights) if random_weights is not None else NoWeights()


def _clip_marker_defaults(graph: GraphBuilder) -> dict[str, list]:
    """The release's clip markers (0 at the first step, 1 after it) for each graph input an LSTM reads as cont."""
    defaults = {}
    for cont in graph.clip_markers:
        source = graph.trace_input(cont)
        if source is not None:
            markers = np.ones(graph.shapes[source], np.float32)
            markers[0] = 0
            defaults[source] = markers.tolist()
    return defaults


def convert_caffe(
    prototxt: str | Path,
    caffemodel: str | Path | None = None,
    *,
    random_weights: int | None = None,
    frames: int | None = None,
    lstm_activation: str = "relu",
    clip_markers_default: bool = True,
) -> onnx.ModelProto:
    """Convert a Caffe deploy net to an ONNX model (opset 17) with the TEST-phase forward pass.

    Args:
        prototxt: the text net definition.
        caffemodel: trained weights (binary ``NetParameter``), matched to layers by name and shape-checked.
        random_weights: instead of a caffemodel, fill every parameter blob from this seed with the prototxt's
            fillers (structure-only models for tests).
        frames: replace the hard-coded time/batch size T (first dim of the first input) everywhere it appears.
        lstm_activation: ``"relu"`` (the release's modified LSTMUnit) or ``"tanh"`` (upstream Caffe).
        clip_markers_default: record the release's clip markers (0, 1, 1, …) as the default of the graph
            input feeding each LSTM's ``cont``, in metadata ``ebr_onnx.input_defaults``.

    Every Caffe blob is a tensor of the same name (see ``naming`` for in-place layers), every node is named
    after its Caffe layer, and blobs no converted layer reads become graph outputs.

    Raises:
        CaffeConversionError: unreadable files, unsupported layers, missing or mis-shaped weight blobs.
    """
    if lstm_activation not in lstm.ACTIVATIONS:
        choices = sorted(lstm.ACTIVATIONS)
        raise CaffeConversionError(f"lstm_activation must be one of {choices}, not {lstm_activation!r}")
    if frames is not None and frames < 1:
        raise CaffeConversionError(f"frames must be positive, not {frames}")
    net = test_phase(upgrade_inputs(read_prototxt(prototxt)))
    if frames is not None:
        net = with_frames(net, frames)
    weights = _weights(caffemodel, random_weights)
    kept = [layer for layer in net.layer if layer.type not in DROPPED_TYPES]
    converters = [lookup(layer) for layer in kept]
    names = BlobNames(kept)
    graph = GraphBuilder(names.all_versions())
    options = Options(lstm_activation=lstm_activation)
    consumed: set[str] = set()
    for index, (layer, convert_layer) in enumerate(zip(kept, converters)):
        inputs = [names.read(blob) for blob in layer.bottom]
        if None in inputs:
            missing = layer.bottom[inputs.index(None)]
            raise CaffeConversionError(f"layer '{layer.name}' reads blob '{missing}', which no earlier layer produces")
        consumed.update(inputs)
        outputs = [names.write(index, top) for top in layer.top]
        convert_layer(LayerContext(layer, inputs, outputs, graph, weights, options))
        graph.infer_shapes(layer.name)
    if not graph.inputs:
        raise CaffeConversionError(f"{prototxt}: the net declares no inputs (Input, DummyData or input/input_shape)")
    outputs = [t for t in names.final().values() if t not in consumed and t not in graph.inputs]
    metadata = {
        f"{METADATA_PREFIX}source": "caffe",
        f"{METADATA_PREFIX}lstm_activation": lstm_activation,
        f"{METADATA_PREFIX}frames": str(graph.shapes[graph.inputs[0]][0]),
    }
    if clip_markers_default and graph.clip_markers:
        metadata[f"{METADATA_PREFIX}input_defaults"] = json.dumps(_clip_marker_defaults(graph))
    return graph.model(outputs, metadata, net.name or Path(prototxt).stem)
