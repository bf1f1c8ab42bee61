"""``convert_caffe``: a Caffe prototxt (+ caffemodel) to an ONNX model, layer by layer."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from . import layers, lstm  # noqa: F401  (importing them registers their converters)
from .errors import CaffeConversionError, CaffeConversionWarning
from .graph import GraphBuilder, LstmState
from .naming import BlobNames
from .netspec import drop_output_layers, test_phase, upgrade_inputs, with_frames
from .parse import read_caffemodel, read_prototxt
from .registry import DROPPED_TYPES, OUTPUT_ONLY_TYPES, LayerContext, Options, lookup
from .schema import NetParameter
from .weights import CaffemodelWeights, NoWeights, RandomWeights, WeightSource, ZeroWeights

METADATA_PREFIX = "ebr_onnx."


def _weights(caffemodel: str | Path | None, random_weights: int | None) -> WeightSource:
    if caffemodel is not None and random_weights is not None:
        raise CaffeConversionError("give either a caffemodel or random_weights, not both")
    if caffemodel is not None:
        return CaffemodelWeights(read_caffemodel(caffemodel), Path(caffemodel))
    return RandomWeights(random_weights) if random_weights is not None else NoWeights()


def _clip_marker_defaults(graph: GraphBuilder) -> dict[str, list]:
    """The release's clip markers for each graph input an LSTM reads as cont (T, N): 0 at t = 0, 1 after it, in
    every stream; laid out in the input's shape (the input reaches cont through order-keeping reshapes)."""
    defaults = {}
    for cont in graph.clip_markers:
        source = graph.trace_input(cont)
        if source is not None:
            markers = np.ones(graph.shapes[cont], np.float32)
            markers[0] = 0
            defaults[source] = markers.reshape(graph.shapes[source]).tolist()
    return defaults


@dataclass(frozen=True)
class ConvertedLayer:
    """One Caffe layer in the ONNX graph: the tensor of each bottom and top (Caffe's order; an in-place top is the
    version this layer writes, see ``naming``) and the indices of the nodes it emitted, in graph order."""

    name: str
    type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[int, ...]


@dataclass(frozen=True)
class ConvertedNet:
    """``convert_net``'s result: the model, its layers in net order (training-only layers left out) and the state
    tensors of each LSTM layer."""

    model: onnx.ModelProto
    layers: tuple[ConvertedLayer, ...]
    lstm_states: dict[str, LstmState]


@dataclass
class _Built:
    """A converted net: the graph, its output tensors, the notes its layers recorded and the layers."""

    graph: GraphBuilder
    outputs: list[str]
    notes: list[str]
    layers: list[ConvertedLayer]


def _build(net: NetParameter, weights: WeightSource, options: Options, source: str) -> _Built:
    """Convert the layers of ``net`` in order (training-only layers dropped)."""
    kept = [layer for layer in net.layer if layer.type not in DROPPED_TYPES]
    converters = [lookup(layer) for layer in kept]
    names = BlobNames(kept)
    graph = GraphBuilder(names.all_versions())
    notes: list[str] = []
    consumed: set[str] = set()
    built: list[ConvertedLayer] = []
    for index, (layer, convert_layer) in enumerate(zip(kept, converters)):
        inputs = [names.read(blob) for blob in layer.bottom]
        if None in inputs:
            missing = layer.bottom[inputs.index(None)]
            raise CaffeConversionError(f"layer '{layer.name}' reads blob '{missing}', which no earlier layer produces")
        consumed.update(inputs)
        outputs = [names.write(index, top) for top in layer.top]
        first = len(graph.nodes)
        convert_layer(LayerContext(layer, inputs, outputs, graph, weights, options, notes))
        graph.infer_shapes(layer.name)
        built.append(ConvertedLayer(layer.name, layer.type, tuple(inputs), tuple(outputs),
                                    tuple(range(first, len(graph.nodes)))))
    if not graph.inputs:
        raise CaffeConversionError(f"{source}: the net declares no inputs (Input, DummyData or input/input_shape)")
    outputs = [t for t in names.final().values() if t not in consumed and t not in graph.inputs]
    return _Built(graph, outputs, notes, built)


def _lstm_steps(net: NetParameter, options: Options, source: str) -> int | None:
    """T, the step count of the net's LSTMs as written (found by a shapes-only conversion); None without an LSTM."""
    if not any(layer.type == "LSTM" for layer in net.layer):
        return None
    steps = _build(net, ZeroWeights(), options, source).graph.lstm_steps
    if len(set(steps.values())) > 1:
        found = ", ".join(f"'{name}' {t}" for name, t in steps.items())
        raise CaffeConversionError(f"{source}: the LSTMs run different step counts ({found}); --frames needs one")
    return next(iter(steps.values()))


def _streams(graph: GraphBuilder) -> int | None:
    """N, the streams the first input's F = T·N frames interleave (T the LSTMs' steps); None if there is no LSTM."""
    steps = set(graph.lstm_steps.values())
    frames = graph.shapes[graph.inputs[0]][0]
    if len(steps) != 1 or frames % next(iter(steps)):
        return None
    return frames // next(iter(steps))


def convert_net(net: NetParameter, weights: WeightSource, *, lstm_activation: str = "relu",
                source: str = "net") -> ConvertedNet:
    """Convert ``net`` as given (the caller has chosen its phase, upgraded legacy inputs and rewritten it: pycaffe's
    interface in ``ebr_onnx.compat`` adds Caffe's Split layers) layer by layer, with parameter blobs from ``weights``;
    the model carries no metadata. Raises ``CaffeConversionError`` as :func:`convert_caffe` does."""
    if lstm_activation not in lstm.ACTIVATIONS:
        raise CaffeConversionError(f"lstm_activation must be one of {sorted(lstm.ACTIVATIONS)}")
    built = _build(net, weights, Options(lstm_activation=lstm_activation), source)
    for note in built.notes:
        warnings.warn(note, CaffeConversionWarning, stacklevel=2)
    model = built.graph.model(built.outputs, {f"{METADATA_PREFIX}source": "caffe"}, net.name or "net")
    return ConvertedNet(model, tuple(built.layers), dict(built.graph.lstm_states))


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
        frames: the clip length T. The first input's first dim F is T·N frames, T the LSTMs' steps and N the
            streams (N = 1 without an LSTM): N is kept, the inputs take ``frames``·N frames and a Reshape to
            (T, N, …) becomes (``frames``, N, …) (see ``netspec.with_frames``).
        lstm_activation: ``"relu"`` (the release's modified LSTMUnit) or ``"tanh"`` (upstream Caffe).
        clip_markers_default: record the release's clip markers (0, 1, 1, …) as the default of the graph
            input feeding each LSTM's ``cont`` (0 at t = 0 and 1 after it, in every stream), in metadata
            ``ebr_onnx.input_defaults``.

    Metadata also records ``ebr_onnx.frames`` (F, the first input's first dim), ``ebr_onnx.streams`` (N, with an
    LSTM) and ``ebr_onnx.conversion_notes`` (a JSON list, when a layer was approximated or dropped; each note is
    also issued as a ``CaffeConversionWarning``): an ArgMax at the output is dropped (the scores it reads are the
    output), BatchNorm with ``use_global_stats: false`` uses its stored statistics.

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
    source = str(prototxt)
    net = test_phase(upgrade_inputs(read_prototxt(prototxt)))
    weights = _weights(caffemodel, random_weights)
    net, notes = drop_output_layers(net, OUTPUT_ONLY_TYPES, DROPPED_TYPES)
    options = Options(lstm_activation=lstm_activation)
    if frames is not None:
        net = with_frames(net, frames, _lstm_steps(net, options, source))
    built = _build(net, weights, options, source)
    graph, notes = built.graph, notes + built.notes
    metadata = {
        f"{METADATA_PREFIX}source": "caffe",
        f"{METADATA_PREFIX}lstm_activation": lstm_activation,
        f"{METADATA_PREFIX}frames": str(graph.shapes[graph.inputs[0]][0]),
    }
    streams = _streams(graph)
    if streams is not None:
        metadata[f"{METADATA_PREFIX}streams"] = str(streams)
    if clip_markers_default and graph.clip_markers:
        metadata[f"{METADATA_PREFIX}input_defaults"] = json.dumps(_clip_marker_defaults(graph))
    if notes:
        metadata[f"{METADATA_PREFIX}conversion_notes"] = json.dumps(notes)
    for note in notes:
        warnings.warn(note, CaffeConversionWarning, stacklevel=2)
    return graph.model(built.outputs, metadata, net.name or Path(prototxt).stem)
