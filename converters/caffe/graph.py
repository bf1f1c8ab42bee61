"""Accumulates the ONNX graph while layers are converted, and knows every tensor's static shape."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import CaffeConversionError

OPSET = 17
#: Ops that only move values: a clip-marker input may reach an LSTM through them.
_ROUTING_OPS = {"Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze"}


@dataclass(frozen=True)
class LstmState:
    """The tensors of an LSTM layer's hidden state: the initial ``h``/``c`` (zero initializers) and the last step's
    ``h``/``c`` (what Caffe copies into the initial state on the next forward)."""

    h0: str
    c0: str
    h_last: str
    c_last: str


class GraphBuilder:
    """Nodes, initializers and graph inputs in creation order, plus the shape and type of every tensor."""

    def __init__(self, reserved: set[str]) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.inputs: list[str] = []
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._types: dict[str, int] = {}
        self._taken = set(reserved)
        self._producers: dict[str, onnx.NodeProto] = {}
        self._inferred_upto = 0
        #: Tensors an LSTM reads as clip markers (the converter records defaults for the inputs behind them).
        self.clip_markers: list[str] = []
        #: Each LSTM layer's step count T (the first dim of its input).
        self.lstm_steps: dict[str, int] = {}
        #: Each LSTM layer's state tensors.
        self.lstm_states: dict[str, LstmState] = {}

    def fresh(self, name: str) -> str:
        """``name``, or ``name_1``, ``name_2`` … if a Caffe blob or an earlier tensor already uses it."""
        candidate, k = name, 0
        while candidate in self._taken:
            k += 1
            candidate = f"{name}_{k}"
        self._taken.add(candidate)
        return candidate

    def add_input(self, name: str, shape: tuple[int, ...]) -> None:
        self.inputs.append(name)
        self.shapes[name] = tuple(shape)
        self._types[name] = TensorProto.FLOAT

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        name = self.fresh(name)
        self.initializers[name] = array
        self.shapes[name] = tuple(array.shape)
        self._types[name] = helper.np_dtype_to_tensor_dtype(array.dtype)
        return name

    def add_node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> list[str]:
        node = helper.make_node(op, inputs, outputs, name=name, **attrs)
        self.nodes.append(node)
        self._producers.update((out, node) for out in outputs)
        return outputs

    def infer_shapes(self, layer: str) -> None:
        """Run ONNX shape inference over the nodes added since the last call (one Caffe layer)."""
        nodes = self.nodes[self._inferred_upto :]
        self._inferred_upto = len(self.nodes)
        if not nodes:
            return
        produced = {out for node in nodes for out in node.output}
        needed = list(dict.fromkeys(i for node in nodes for i in node.input if i and i not in produced))
        consts = [n for n in needed if n in self.initializers and self.initializers[n].dtype == np.int64]
        inputs = [self._value_info(n) for n in needed if n not in consts]
        graph = helper.make_graph(
            nodes, layer, inputs, [], initializer=[numpy_helper.from_array(self.initializers[n], n) for n in consts]
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
        try:
            inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        except onnx.shape_inference.InferenceError as exc:
            raise CaffeConversionError(f"layer '{layer}': inconsistent shapes: {exc}") from exc
        for info in inferred.graph.value_info:
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = tuple(d.dim_value for d in dims)
            self._types[info.name] = info.type.tensor_type.elem_type
            if any(not d.HasField("dim_value") for d in dims):
                raise CaffeConversionError(f"layer '{layer}': the shape of '{info.name}' is not static")
        missing = produced - set(self.shapes)
        if missing:
            raise CaffeConversionError(f"layer '{layer}': no shape could be inferred for {sorted(missing)}")

    def trace_input(self, name: str) -> str | None:
        """The graph input that ``name`` is a reshaped copy of, if it is one."""
        while name not in self.inputs:
            node = self._producers.get(name)
            if node is None or node.op_type not in _ROUTING_OPS:
                return None
            name = node.input[0]
        return name

    def _value_info(self, name: str) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, self._types[name], self.shapes[name])

    def model(self, outputs: list[str], metadata: dict[str, str], graph_name: str) -> onnx.ModelProto:
        """Assemble the ModelProto; every intermediate tensor's shape is recorded in ``value_info``."""
        listed = set(self.inputs) | set(outputs) | set(self.initializers)
        produced = [out for node in self.nodes for out in node.output]
        graph = helper.make_graph(
            self.nodes,
            graph_name,
            [self._value_info(n) for n in self.inputs],
            [self._value_info(n) for n in outputs],
            initializer=[numpy_helper.from_array(a, n) for n, a in self.initializers.items()],
            value_info=[self._value_info(n) for n in produced if n not in listed],
        )
        opsets = [helper.make_opsetid("", OPSET)]
        model = helper.make_model(
            graph, opset_imports=opsets, producer_name="ebr_onnx", ir_version=helper.find_min_ir_version_for(opsets)
        )
        helper.set_model_props(model, metadata)
        return model
