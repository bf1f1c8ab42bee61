"""pycaffe's ``caffe.Net`` on the converter and the engine: the blobs, parameters and layers of the net in Caffe's
order, ``forward`` (one onnxruntime run, its tensors copied into the blobs layer by layer) and ``backward`` (layer by
layer from ``start`` down to ``end``, each a walk of the layer's nodes from its top diffs to its bottom diffs, which
it overwrites — Caffe's blob semantics: an in-place layer reads and writes one diff)."""
from __future__ import annotations

import enum
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from converters.caffe.convert import ConvertedNet, convert_net
from converters.caffe.parse import read_caffemodel
from converters.caffe.schema import BlobProto, NetParameter
from converters.caffe.weights import BlobSpec, CaffemodelWeights, WeightSource

from ..core.errors import EbrError
from . import state
from .blobs import Blob, Layer, ParamBlob
from .dispatch import backward_kind
from .errors import NotOffered
from .host import euclidean_loss_backward, euclidean_loss_forward, fill_dummy_data, silence_backward
from .layout import SHARES_DATA_AND_DIFF, LayerSpec, NetLayout, net_layout
from .netspec import load_net
from .params import CurrentWeights, FillerWeights, ParamSet, Recording, TrainedWeights, bind_params
from .program import Program

_INPUT_LAYERS = ("Input", "DummyData")


class Phase(enum.IntEnum):
    """pycaffe's ``caffe.TRAIN`` and ``caffe.TEST``."""

    TRAIN = 0
    TEST = 1


class Net:
    """``caffe.Net(network_file, [weights,] phase, level=0, stages=None, weights=None)``.

    The net Caffe builds from the prototxt in that phase (Split layers inserted where a blob feeds several layers),
    with the caffemodel's weights (layers it does not name, and a net without weights, get the prototxt's fillers,
    drawn from ``caffe.set_random_seed``'s generator). ``lstm_activation`` (an ebr_onnx addition): ``"relu"``, the
    release's LSTM unit, or ``"tanh"``, upstream Caffe's.
    """

    def __init__(self, network_file: str | Path, *args: Any, level: int = 0, stages: Iterable[str] | None = None,
                 weights: str | Path | None = None, lstm_activation: str = "relu") -> None:
        phase, weights = _arguments(args, weights)
        self._source = str(network_file)
        self._lstm_activation = lstm_activation
        #: The net as defined (what ``save`` writes), and as last converted (its input shapes current).
        self._definition = self._param = load_net(network_file, phase.name, level, stages or ())
        fillers = FillerWeights(state.rng())
        recording = Recording(TrainedWeights(weights, fillers) if weights is not None else fillers)
        converted = self._convert(recording)
        self._params: ParamSet = bind_params(self._param, converted, recording.arrays_by_layer)
        self._layout: NetLayout = net_layout(self._param, {k: len(v) for k, v in self._params.blobs.items()})
        self._program = Program(converted, self._params.owners, self._source)
        self._blobs: OrderedDict[str, Blob] = OrderedDict((name, Blob(self._blob_shape(name)))
                                                          for name in self._layout.blobs)
        self._link_blobs()
        self._layers = [Layer(spec.type, self._params.blobs.get(spec.name, [])) for spec in self._layout.layers]
        for spec in self._layout.layers:
            if spec.type == "DummyData":
                fill_dummy_data(spec.param, [self._blobs[t] for t in spec.tops], state.rng(), setup=True)
            for top, weight in zip(spec.tops, spec.loss_weights):
                if weight:
                    self._blobs[top].diff[...] = weight  # Layer::SetLossWeights
        self._input_shapes = self._current_input_shapes()
        self._states = self._zero_states()
        #: The tensors of the last forward the rules read (Caffe's blobs hold these; internal ones too).
        self._values: dict[str, np.ndarray] = {}
        self._loss_diffs: dict[str, np.ndarray] = {}
        self._forwarded = False

    # -- what pycaffe exposes ---------------------------------------------------------------------------------------
    @property
    def blobs(self) -> OrderedDict[str, Blob]:
        """The blobs by name, in Caffe's order (inputs to outputs; in-place tops share their bottom's blob)."""
        return self._blobs

    @property
    def params(self) -> OrderedDict[str, list[ParamBlob]]:
        """The parameter blobs of each layer that has any, in layer order."""
        return OrderedDict(self._params.blobs)

    @property
    def layers(self) -> list[Layer]:
        return self._layers

    @property
    def layer_dict(self) -> OrderedDict[str, Layer]:
        return OrderedDict(zip(self._layer_names, self._layers))

    @property
    def _layer_names(self) -> list[str]:
        return [spec.name for spec in self._layout.layers]

    @property
    def _blob_names(self) -> list[str]:
        return list(self._layout.blobs)

    @property
    def inputs(self) -> list[str]:
        """The tops of Input layers (DummyData tops are not inputs, as in Caffe)."""
        return list(self._layout.inputs)

    @property
    def outputs(self) -> list[str]:
        """The blobs no layer reads, sorted by name (Caffe's order)."""
        return list(self._layout.outputs)

    @property
    def top_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((spec.name, list(spec.tops)) for spec in self._layout.layers)

    @property
    def bottom_names(self) -> OrderedDict[str, list[str]]:
        return OrderedDict((spec.name, list(spec.bottoms)) for spec in self._layout.layers)

    @property
    def blob_loss_weights(self) -> OrderedDict[str, float]:
        weights = {top: w for spec in self._layout.layers for top, w in zip(spec.tops, spec.loss_weights)}
        return OrderedDict((name, float(weights.get(name, 0.0))) for name in self._layout.blobs)

    # -- forward and backward ---------------------------------------------------------------------------------------
    def forward(self, blobs: list[str] | None = None, start: str | None = None, end: str | None = None,
                **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """``Net::ForwardFromTo``: the layers up to ``end`` (inclusive; default all) run; each top blob's data then
        holds what its last layer run wrote. DummyData tops with a constant filler keep the data written into them;
        an LSTM starts from the last forward's final state (only ``cont = 0`` at a step flushes it). ``kwargs`` fill
        the Input blobs. Returns ``{blob: data}`` for the outputs (or ``end``) and ``blobs``."""
        layers = self._layout.layers
        if start is not None and self._layout.index(start, "Net.forward") != 0:
            raise NotOffered("Net.forward(start=...)", "a forward from a middle layer (run the whole forward; end= "
                                                       "is offered)")
        last = len(layers) - 1 if end is None else self._layout.index(end, "Net.forward")
        outputs = self._returned(end, blobs, self.outputs)
        if kwargs:
            if set(kwargs) != set(self.inputs):
                raise Exception("Input blob arguments do not match net inputs.")
            for name, array in kwargs.items():
                if np.shape(array)[0] != self._blobs[name].shape[0]:
                    raise Exception("Input is not batch sized")
                self._blobs[name].data[...] = array
        self.reshape()
        for spec in layers[:last + 1]:
            if spec.type == "DummyData":
                fill_dummy_data(spec.param, [self._blobs[t] for t in spec.tops], state.rng(), setup=False)
        values = self._program.forward(self._feeds(), state.device())
        for spec in layers[:last + 1]:
            self._forward_layer(spec, values)
        self._forwarded = True
        return {name: self._blobs[name].data for name in outputs}

    def backward(self, diffs: list[str] | None = None, start: str | None = None, end: str | None = None,
                 **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        """``Net::BackwardFromTo``: the layers from ``start`` down to ``end`` (both included; default all) that need
        backward run in the net's layer order, each overwriting the diffs of its bottoms from its tops' diffs (diffs
        are never cleared otherwise). In EB mode (``set_mode_eb_cpu/gpu``) each layer runs the release's EB rule
        (:mod:`.dispatch`), else its gradient. ``kwargs`` set the outputs' diffs first. Returns ``{blob: diff}``
        for the inputs (or ``end``) and ``diffs``."""
        layers = self._layout.layers
        first = len(layers) - 1 if start is None else self._layout.index(start, "Net.backward")
        last = 0 if end is None else self._layout.index(end, "Net.backward")
        outputs = self._returned(end, diffs, self.inputs)
        if kwargs:
            if set(kwargs) != set(self.outputs):
                raise Exception("Top diff arguments do not match net outputs.")
            for name, array in kwargs.items():
                if np.shape(array)[0] != self._blobs[name].shape[0]:
                    raise Exception("Diff is not batch sized")
                self._blobs[name].diff[...] = array
        if not self._forwarded:
            raise EbrError("Net.backward() needs a Net.forward() first: the rules read the forward's activations")
        values = self._live_values()
        eb, device = state.mode().eb, state.device()
        run = [spec for spec in layers[last:first + 1][::-1] if spec.need_backward]
        if not run and first >= last:
            warnings.warn("Net.backward: no layer in the range needs backward (Caffe runs backward only below a loss "
                          "layer, or everywhere with force_backward: true)", RuntimeWarning, stacklevel=2)
        for spec in run:
            self._backward_layer(spec, eb, device, values)
        return {name: self._blobs[name].diff for name in outputs}

    def reshape(self) -> None:
        """``Net::Reshape``: after an input blob's ``reshape``, convert the net again for the new input shapes (the
        parameters kept); the other blobs take their new shapes with zero data and diff."""
        shapes = self._current_input_shapes()
        if shapes == self._input_shapes:
            return
        param = _with_input_shapes(self._param, shapes)
        converted = self._convert(CurrentWeights(self._params.blobs), param)
        self._program = Program(converted, self._params.owners, self._source)
        self._param, self._input_shapes = param, shapes
        for name, blob in self._blobs.items():
            if name not in shapes and blob.shape != self._blob_shape(name):
                blob.reshape(*self._blob_shape(name))
        self._link_blobs()
        self._states, self._values, self._loss_diffs, self._forwarded = self._zero_states(), {}, {}, False

    # -- weights ----------------------------------------------------------------------------------------------------
    def save(self, filename: str | Path) -> None:
        """``Net::ToProto`` + ``WriteProtoToBinaryFile``: the net's layers (Splits included) with their current
        parameter blobs (shape and float data), as a binary caffemodel."""
        out = NetParameter(name=self._definition.name)
        for layer in self._definition.layer:
            saved = out.layer.add()
            saved.CopyFrom(layer)
            del saved.blobs[:]
            for blob in self._params.blobs.get(layer.name, []):
                saved.blobs.add().CopyFrom(_blob_proto(blob.data))
        Path(filename).write_bytes(out.SerializeToString())

    def copy_from(self, filename: str | Path) -> None:
        """``Net::CopyTrainedLayersFrom``: the blobs of every layer the caffemodel names (counts and shapes
        checked); its other layers are ignored."""
        trained = read_caffemodel(filename)
        source = CaffemodelWeights(trained, Path(filename))
        layers = {layer.name: layer for layer in self._param.layer}
        derived = False
        for stored in trained.layer:
            blobs = self._params.blobs.get(stored.name)
            if stored.name not in layers or not blobs:
                continue
            arrays = source.arrays(layers[stored.name], [BlobSpec(b.shape) for b in blobs])
            for blob, array in zip(blobs, arrays):
                if blob.data.flags.writeable:
                    blob.data[...] = array
                else:
                    blob.replace(array)
                    derived = True
        if derived:  # a value the model derives from a blob (BatchNorm): convert again
            self._input_shapes = {}
            self.reshape()

    # -- not offered --------------------------------------------------------------------------------------------------
    def forward_all(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.forward_all", "batching helpers (call net.forward() per batch)")

    def backward_all(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.backward_all", "batching helpers (call net.backward() per batch)")

    def forward_backward_all(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.forward_backward_all", "batching helpers")

    def set_input_arrays(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.set_input_arrays", "MemoryData layers (write net.blobs[name].data)")

    def share_with(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.share_with", "sharing weights between nets (training)")

    def save_hdf5(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.save_hdf5", "HDF5 weights (use net.save)")

    def load_hdf5(self, *args: Any, **kwargs: Any) -> None:
        raise NotOffered("Net.load_hdf5", "HDF5 weights (use net.copy_from)")

    def clear_param_diffs(self) -> None:
        raise NotOffered("Net.clear_param_diffs", "parameter gradients (training)")

    # -- internals --------------------------------------------------------------------------------------------------
    def _returned(self, end: str | None, named: list[str] | None, default: list[str]) -> set[str]:
        """The blobs pycaffe returns: ``end`` (where a blob has its name; pycaffe raises KeyError otherwise) or
        ``default``, and ``named``."""
        ends = [] if end is None else [end] if end in self._blobs else []
        return set((ends if end is not None else default) + list(named or []))

    def _convert(self, weights: WeightSource, param: NetParameter | None = None) -> ConvertedNet:
        return convert_net(param or self._param, weights, lstm_activation=self._lstm_activation, source=self._source)

    def _blob_shape(self, name: str) -> tuple[int, ...]:
        """A blob's shape: its tensor's (the one named after it, its last writer's), or () for a loss."""
        return tuple(self._program.shapes.get(name, ()))

    def _link_blobs(self) -> None:
        """Point Reshape/Flatten tops at their bottom's data and diff, Split tops at their bottom's data."""
        for name, (source, diff) in self._layout.shares.items():
            self._blobs[name].view(self._blobs[source], diff)

    def _input_tensors(self) -> dict[str, str]:
        """Input blob → its graph input (Input and DummyData tops)."""
        out = {}
        for spec in self._layout.layers:
            if spec.type in _INPUT_LAYERS:
                out.update(zip(spec.tops, self._program.layers[spec.name].outputs))
        return out

    def _current_input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: self._blobs[name].shape for name in self._input_tensors()}

    def _zero_states(self) -> dict[str, np.ndarray]:
        shapes = self._program.graph.shapes
        return {name: np.zeros(shapes[name], np.float32)
                for s in self._program.states.values() for name in (s.h0, s.c0)}

    def _feeds(self) -> dict[str, np.ndarray]:
        feeds = {tensor: np.ascontiguousarray(self._blobs[name].data) for name, tensor in self._input_tensors().items()}
        return {**feeds, **self._states}

    def _forward_layer(self, spec: LayerSpec, values: dict[str, np.ndarray]) -> None:
        """What layer ``spec`` leaves in its tops after a forward, and the captures its backward will read."""
        bottoms = [self._blobs[b] for b in spec.bottoms]
        if spec.type == "EuclideanLoss":
            self._loss_diffs[spec.name] = euclidean_loss_forward(bottoms, self._blobs[spec.tops[0]])
            return
        if spec.name not in self._program.layers:
            return  # Silence
        converted = self._program.layers[spec.name]
        self._values.update((t, values[t]) for t in self._program.tensors[spec.name]
                            if t in values and t not in self._blobs)  # a blob's own tensor is its data
        if spec.type not in _INPUT_LAYERS:
            for name, tensor in zip(spec.tops, converted.outputs):
                if name not in self._layout.shares:
                    self._blobs[name].data[...] = values[tensor].reshape(self._blobs[name].shape)
                if tensor == name:
                    del values[tensor]  # copied into the blob: free onnxruntime's buffer as the copies are made
        lstm = self._program.states.get(spec.name)
        if lstm is not None:  # RecurrentLayer: the next forward starts from this one's last state
            self._states = {**self._states, lstm.h0: np.array(values[lstm.h_last]),
                            lstm.c0: np.array(values[lstm.c_last])}

    def _live_values(self) -> dict[str, np.ndarray]:
        """The forward's captures, with every blob's current data for the tensor named after it (the rules read
        the blobs as Caffe's layers do, edits included)."""
        live = dict(self._values)
        live.update((tensor, self._blobs[name].data) for name, tensor in self._input_tensors().items())
        live.update((name, blob.data) for name, blob in self._blobs.items() if name in self._program.tensor_names)
        return live

    def _backward_layer(self, spec: LayerSpec, eb: bool, device: str, values: dict[str, np.ndarray]) -> None:
        """One layer's backward: its bottoms that need one get their diff overwritten."""
        propagate = spec.bottom_need_backward
        bottoms = [self._blobs[b] for b in spec.bottoms]
        if not any(propagate) or spec.type in SHARES_DATA_AND_DIFF:
            return  # a Reshape's or Flatten's bottom shares the diff already
        if spec.type == "EuclideanLoss":
            diff = self._loss_diffs.get(spec.name)
            if diff is not None:
                euclidean_loss_backward(diff, bottoms, self._blobs[spec.tops[0]], propagate)
            return
        if spec.type == "Silence":
            silence_backward(bottoms, propagate)
            return
        kind = backward_kind(spec, eb)
        if kind == "copy":
            if propagate[0]:
                bottoms[0].diff[...] = self._blobs[spec.tops[0]].diff.reshape(bottoms[0].shape)
            return
        converted = self._program.layers[spec.name]
        seeds = {tensor: self._blobs[name].diff.copy() if name in spec.bottoms else self._blobs[name].diff
                 for name, tensor in zip(spec.tops, converted.outputs)}  # an in-place top's diff is overwritten
        keep = {converted.inputs[j] for j, flag in enumerate(propagate) if flag}
        got = self._program.backward(spec.name, kind, device, seeds, keep, values)
        for j, flag in enumerate(propagate):
            if flag:
                signal = got.get(converted.inputs[j])
                bottoms[j].diff[...] = 0 if signal is None else signal.reshape(bottoms[j].shape)


def _arguments(args: tuple[Any, ...], weights: str | Path | None) -> tuple[Phase, str | Path | None]:
    """pycaffe's ``Net(file, phase)`` and ``Net(file, weights, phase)``."""
    if len(args) == 2 and weights is None:
        weights, phase = args
    elif len(args) == 1:
        (phase,) = args
    else:
        raise TypeError("caffe.Net(network_file, [weights,] phase, level=0, stages=None, weights=None)")
    if phase not in (Phase.TRAIN, Phase.TEST) or isinstance(phase, bool):
        raise TypeError(f"caffe.Net: phase must be caffe.TRAIN or caffe.TEST, not {phase!r}")
    return Phase(phase), weights


def _with_input_shapes(net: NetParameter, shapes: dict[str, tuple[int, ...]]) -> NetParameter:
    """``net`` with its Input and DummyData tops of these shapes."""
    out = NetParameter()
    out.CopyFrom(net)
    for layer in out.layer:
        if layer.type == "Input":
            field = layer.input_param.shape
        elif layer.type == "DummyData":
            p = layer.dummy_data_param
            del p.num[:], p.channels[:], p.height[:], p.width[:]
            field = p.shape
        else:
            continue
        del field[:]
        for top in layer.top:
            field.add().dim.extend(shapes[top])
    return out


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _blob_proto(array: np.ndarray) -> BlobProto:
    """A ``BlobProto`` with ``shape`` and packed float ``data`` (written as bytes: a large weight would be slow as a
    Python sequence)."""
    blob = BlobProto()
    blob.shape.dim.extend(array.shape)
    payload = np.ascontiguousarray(array, dtype="<f4").tobytes()
    blob.MergeFromString(b"\x2a" + _varint(len(payload)) + payload)  # field 5 (data), wire type 2 (packed)
    return blob
