"""The converter registry (Caffe layer type → function) and the context a converter works in."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .errors import CaffeConversionError
from .graph import GraphBuilder
from .schema import LayerParameter
from .weights import BlobSpec, WeightSource

#: Layer types that only matter for training; they produce no ONNX nodes.
DROPPED_TYPES = frozenset(
    {
        "Accuracy",
        "ContrastiveLoss",
        "EuclideanLoss",
        "HingeLoss",
        "InfogainLoss",
        "MultinomialLogisticLoss",
        "SigmoidCrossEntropyLoss",
        "Silence",
        "SoftmaxWithLoss",
    }
)

#: Layer types that post-process the scores (the explanation needs the scores themselves): dropped, with a note,
#: when no converted layer reads their tops; refused otherwise (``netspec.drop_output_layers``).
OUTPUT_ONLY_TYPES = frozenset({"ArgMax"})


@dataclass(frozen=True)
class Options:
    """Converter settings that change what a layer computes."""

    lstm_activation: str


@dataclass
class LayerContext:
    """One Caffe layer being converted: its ONNX input/output tensor names and the graph to add to."""

    layer: LayerParameter
    inputs: list[str]
    outputs: list[str]
    graph: GraphBuilder
    weights: WeightSource
    options: Options
    #: Messages about approximations, shared by all layers of one conversion (see ``note``).
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.layer.name

    def shape(self, index: int = 0) -> tuple[int, ...]:
        return self.graph.shapes[self.inputs[index]]

    def params(self, *specs: BlobSpec) -> list[np.ndarray]:
        """The layer's parameter blobs, in Caffe's order."""
        return self.weights.arrays(self.layer, list(specs))

    def const(self, suffix: str, array) -> str:
        """Add an initializer named ``<layer>/<suffix>``."""
        return self.graph.add_initializer(f"{self.name}/{suffix}", np.asarray(array))

    def tensor(self, suffix: str) -> str:
        """A fresh intermediate tensor name ``<layer>/<suffix>``."""
        return self.graph.fresh(f"{self.name}/{suffix}")

    def emit(self, op: str, inputs: list[str], outputs: list[str], suffix: str | None = None, **attrs) -> list[str]:
        """Add a node named after the layer (``<layer>/<suffix>`` for the helper nodes of an expansion)."""
        name = self.name if suffix is None else f"{self.name}/{suffix}"
        return self.graph.add_node(op, inputs, outputs, name, **attrs)

    def node(self, op: str, inputs: list[str], suffix: str | None = None, out: str | None = None, **attrs) -> str:
        """Add a one-output node; without ``suffix`` it writes the layer's top, else ``<layer>/<suffix>``."""
        if out is None:
            out = self.outputs[0] if suffix is None else self.tensor(suffix)
        return self.emit(op, inputs, [out], suffix, **attrs)[0]

    def error(self, message: str) -> CaffeConversionError:
        return CaffeConversionError(f"layer '{self.name}' ({self.layer.type}): {message}")

    def note(self, message: str) -> None:
        """Record an approximation the converter made for this layer (reported as a warning and in metadata)."""
        self.notes.append(f"layer '{self.name}' ({self.layer.type}): {message}")


Converter = Callable[[LayerContext], None]
_CONVERTERS: dict[str, Converter] = {}


def converter(*types: str) -> Callable[[Converter], Converter]:
    """Register ``fn`` as the converter of the given Caffe layer types."""

    def register(fn: Converter) -> Converter:
        for layer_type in types:
            _CONVERTERS[layer_type] = fn
        return fn

    return register


def supported_types() -> list[str]:
    return sorted(_CONVERTERS) + sorted(OUTPUT_ONLY_TYPES) + sorted(DROPPED_TYPES)


def lookup(layer: LayerParameter) -> Converter:
    try:
        return _CONVERTERS[layer.type]
    except KeyError:
        raise CaffeConversionError(
            f"layer '{layer.name}' has unsupported type '{layer.type}'; "
            f"supported types: {', '.join(supported_types())}"
        ) from None
