"""Loading an ONNX model into a graph the backward walk can use.

The model is checked with the onnx checker, its shapes are inferred on a copy without the large weights, and its nodes
become a :mod:`networkx` DiGraph (one vertex per node, one edge per tensor from producer to consumer). Which tensors
carry *signal* is a property of a walk: the tensors computed from the explained input through ops that pass values on
(shape-computing side graphs — ``Shape``, ``Size`` and what is computed from them — and integer tensors carry none).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping

import networkx as nx
import numpy as np
import onnx
from onnx import numpy_helper

from .errors import EbrError
from .ops import VALUE_FREE_OPS

_FLOAT_TYPES = frozenset(
    {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16}
)
#: Initializers larger than this are left out of the copy used for shape inference.
_LIGHT_LIMIT = 1024


@dataclass(frozen=True)
class Node:
    """One ONNX node with its attributes parsed into Python values (tensors as NumPy arrays)."""

    name: str
    op_type: str
    domain: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict[str, Any] = field(hash=False, compare=False)
    index: int = 0

    def attr(self, key: str, default: Any = None) -> Any:
        return self.attrs.get(key, default)


def _parse_attrs(proto: onnx.NodeProto) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    for a in proto.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        attrs[a.name] = value
    return attrs


def load_onnx(model: str | Path | onnx.ModelProto) -> onnx.ModelProto:
    """Read a model from a path (or take a ModelProto), with a clear error for anything that is not ONNX."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise EbrError(f"model file {str(path)!r} does not exist")
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # protobuf raises DecodeError, RuntimeWarning-derived errors, etc.
        raise EbrError(f"{str(path)!r} is not an ONNX model ({type(exc).__name__}: {exc})") from exc
    if not proto.graph.node:
        raise EbrError(f"{str(path)!r} is not an ONNX model (no graph nodes found)")
    return proto


def _is_large(init: onnx.TensorProto) -> bool:
    """Whether an initializer is a weight (a float tensor above :data:`_LIGHT_LIMIT` elements)."""
    size = int(np.prod(init.dims)) if init.dims else 1
    return size > _LIGHT_LIMIT and init.data_type in _FLOAT_TYPES


def _light_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of the model whose large initializers are declared as typed graph inputs instead of stored.

    Shape inference on it costs milliseconds and no weight copies; small integer initializers (shape constants) keep
    their data so that data-propagating shape inference still resolves ``Reshape`` targets.
    """
    light = onnx.ModelProto()
    light.CopyFrom(onnx.ModelProto(ir_version=model.ir_version, opset_import=model.opset_import))
    light.functions.extend(model.functions)
    light.metadata_props.extend(model.metadata_props)
    graph = light.graph
    graph.name = model.graph.name
    graph.node.extend(model.graph.node)
    graph.input.extend(model.graph.input)
    graph.output.extend(model.graph.output)
    graph.value_info.extend(model.graph.value_info)
    declared = {i.name for i in model.graph.input}
    for init in model.graph.initializer:
        if not _is_large(init):
            graph.initializer.append(init)
        elif init.name not in declared:
            graph.input.append(onnx.helper.make_tensor_value_info(init.name, init.data_type, list(init.dims)))
    light.ir_version = max(model.ir_version, 4)
    return light


def _dims(value_info: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return None
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim)


def _drop_declared_shapes(model: onnx.ModelProto) -> None:
    """Forget the declared shapes of outputs and intermediates (exporters write wrong ones, and a wrong one makes
    onnx's inference fail): they are inferred anew from the inputs."""
    del model.graph.value_info[:]
    for vi in model.graph.output:
        vi.type.tensor_type.ClearField("shape")


class ModelGraph:
    """An ONNX model as nodes, tensors, constants and inferred shapes, with a networkx view for the walk."""

    def __init__(self, model: str | Path | onnx.ModelProto, *, check: bool = True,
                 weights: Mapping[str, np.ndarray] | None = None) -> None:
        """Read ``model``; ``weights`` gives the values of tensors the model declares as inputs but that are weights
        (the parts :mod:`ebr_onnx.recurrent` cuts out of a model share its weights this way)."""
        full = load_onnx(model)
        #: The model without its weights (they are declared as inputs): what sessions and sub-models are built from.
        self.light = _light_copy(full)
        if check:
            try:  # on the weightless copy: checking the full model would serialize a copy of its weights
                onnx.checker.check_model(self.light)
            except onnx.checker.ValidationError as exc:
                raise EbrError(f"the model fails the ONNX checker: {str(exc).splitlines()[0]}") from exc
        #: The weights as read-only NumPy arrays (views of one copy of the serialized data), shared with onnxruntime.
        self.weights: dict[str, np.ndarray] = dict(weights or {})
        try:
            self.weights.update((init.name, numpy_helper.to_array(init)) for init in full.graph.initializer
                                if _is_large(init))
        except ValueError as exc:
            raise EbrError(f"the model fails the ONNX checker: a weight's data does not match its shape ({exc})") \
                from exc
        self._fed = [i.name for i in self.light.graph.input if i.name in self.weights]
        del full
        self.opset = next(
            (o.version for o in self.light.opset_import if o.domain in ("", "ai.onnx")), 0
        )
        g = self.light.graph
        used: set[str] = set()
        nodes: list[Node] = []
        for i, proto in enumerate(g.node):
            name = proto.name or f"{proto.op_type}_{i}"
            while name in used:
                name = f"{name}_{i}"
            used.add(name)
            nodes.append(
                Node(name, proto.op_type, proto.domain, tuple(proto.input), tuple(proto.output), _parse_attrs(proto), i)
            )
        self.nodes = nodes
        self.node_by_name = {n.name: n for n in nodes}
        self.producer: dict[str, Node] = {o: n for n in nodes for o in n.outputs if o}
        self.consumers: dict[str, list[Node]] = {}
        for n in nodes:
            for t in n.inputs:
                if t:
                    self.consumers.setdefault(t, []).append(n)
        self._initializers = {init.name: init for init in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self._initializers and i.name not in self.weights]
        self.outputs = [o.name for o in g.output]
        self.metadata = {p.key: p.value for p in self.light.metadata_props}
        #: The shapes the file declares for its outputs and intermediates (not trusted: see ``shapes``).
        self.declared_shapes = {vi.name: _dims(vi) for vi in list(g.output) + list(g.value_info)}
        self._constants: dict[str, np.ndarray] = {}
        for n in nodes:
            if n.op_type == "Constant" and n.outputs:
                self._constants[n.outputs[0]] = self._constant_attr(n)
        self.shapes, self.elem_types = self._infer_shapes()
        #: What each node with subgraphs (If, Loop, Scan) reads from the outer scope without listing it as an input.
        self.implicit_inputs = {n.name: reads for n in nodes if (reads := self.subgraph_reads(n))}
        self.nx = nx.DiGraph()
        self.nx.add_nodes_from(n.name for n in nodes)
        for n in nodes:
            for t in (*n.inputs, *sorted(self.implicit_inputs.get(n.name, ()))):
                if t in self.producer:
                    self.nx.add_edge(self.producer[t].name, n.name, tensor=t)
        self.topological = [self.node_by_name[name] for name in nx.lexicographical_topological_sort(
            self.nx, key=lambda name: self.node_by_name[name].index)]

    # -- constants ------------------------------------------------------------------------------------------------
    @staticmethod
    def _constant_attr(node: Node) -> np.ndarray:
        for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
            if key in node.attrs:
                return np.asarray(node.attrs[key])
        raise EbrError(f"Constant node {node.name!r} has an attribute form ebr_onnx does not read: {list(node.attrs)}")

    @property
    def model(self) -> onnx.ModelProto:
        """The whole model, weights included (a new copy on every access)."""
        model = onnx.ModelProto()
        model.CopyFrom(self.light)
        fed = set(self._fed)
        kept = [i for i in model.graph.input if i.name not in fed or i.name in self.inputs]
        del model.graph.input[:]
        model.graph.input.extend(kept)
        model.graph.initializer.extend(numpy_helper.from_array(self.weights[name], name) for name in self._fed)
        return model

    def fed_weights(self) -> dict[str, np.ndarray]:
        """The weights a session built from :attr:`light` takes as inputs (by name; no copies)."""
        return {name: self.weights[name] for name in self._fed}

    def is_constant(self, name: str) -> bool:
        return name in self._initializers or name in self._constants or name in self.weights

    def constant(self, name: str) -> np.ndarray:
        """The value of an initializer or ``Constant`` output (converted once, then cached)."""
        if name in self.weights:
            return self.weights[name]
        if name not in self._constants:
            if name not in self._initializers:
                raise KeyError(name)
            self._constants[name] = numpy_helper.to_array(self._initializers[name])
        return self._constants[name]

    # -- shapes ---------------------------------------------------------------------------------------------------
    def _infer_shapes(self) -> tuple[dict[str, tuple | None], dict[str, int]]:
        light = onnx.ModelProto()
        light.CopyFrom(self.light)
        _drop_declared_shapes(light)
        try:
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        except Exception:  # a model that onnx cannot infer still runs in onnxruntime; shapes come from captures then
            inferred = light
        shapes: dict[str, tuple | None] = {}
        types: dict[str, int] = {}
        gi = inferred.graph
        for vi in list(gi.input) + list(gi.value_info) + list(gi.output):
            shapes[vi.name] = _dims(vi)
            types[vi.name] = vi.type.tensor_type.elem_type
        for init in self.light.graph.initializer:
            shapes[init.name] = tuple(init.dims)
            types[init.name] = init.data_type
        for name, array in self.weights.items():
            shapes[name] = tuple(array.shape)
            types.setdefault(name, onnx.helper.np_dtype_to_tensor_dtype(array.dtype))
        return shapes, types

    def concrete_shapes(self, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
        """Fully known tensor shapes for these input shapes (data-propagating inference on the weightless copy,
        declared shapes of outputs and intermediates ignored)."""
        key = tuple(sorted(input_shapes.items()))
        cache = self.__dict__.setdefault("_concrete_cache", {})
        if key in cache:
            return cache[key]
        light = onnx.ModelProto()
        light.CopyFrom(self.light)
        _drop_declared_shapes(light)
        for vi in light.graph.input:
            if vi.name in input_shapes:
                dims = vi.type.tensor_type.shape.dim
                for d, size in zip(dims, input_shapes[vi.name]):
                    d.Clear()
                    d.dim_value = int(size)
        try:
            inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
        except Exception:
            inferred = light
        out: dict[str, tuple[int, ...]] = {}
        g = inferred.graph
        for vi in list(g.input) + list(g.value_info) + list(g.output):
            dims = _dims(vi)
            if dims is not None and all(isinstance(d, int) and d > 0 for d in dims):
                out[vi.name] = tuple(dims)  # type: ignore[arg-type]
        out.update({k: tuple(v.shape) for k, v in self._constants.items()})
        cache[key] = out
        return out

    def is_float(self, name: str) -> bool:
        """Whether a tensor holds floating-point values (unknown types count as float)."""
        t = self.elem_types.get(name, 0)
        return t == 0 or t in _FLOAT_TYPES

    # -- signal paths ---------------------------------------------------------------------------------------------
    def signal_tensors(self, sources: Iterable[str]) -> set[str]:
        """Tensors whose values depend on the values of ``sources`` (forward, in topological order)."""
        signal = set(sources)
        for n in self.topological:
            if n.op_type in VALUE_FREE_OPS:
                continue
            if any(t in signal for t in (*n.inputs, *self.implicit_inputs.get(n.name, ())) if t):
                signal.update(o for o in n.outputs if o and self.is_float(o))
        return signal

    def nodes_between(self, sources: Iterable[str], targets: Iterable[str]) -> list[Node]:
        """Nodes on a signal path from any source tensor to any target tensor, in topological order."""
        signal = self.signal_tensors(sources)
        ends = {self.producer[t].name for t in targets if t in self.producer}
        upstream = set(ends)
        for name in ends:
            upstream |= nx.ancestors(self.nx, name)
        return [
            n for n in self.topological
            if n.name in upstream and n.op_type not in VALUE_FREE_OPS
            and any(t in signal for t in (*n.inputs, *self.implicit_inputs.get(n.name, ())) if t)
        ]

    def subgraph_reads(self, node: Node) -> set[str]:
        """The outer-scope tensors a node's subgraphs (If branches, Loop/Scan bodies) read without listing them as
        node inputs."""
        reads: set[str] = set()
        stack = [v for v in node.attrs.values() if isinstance(v, onnx.GraphProto)]
        while stack:
            body = stack.pop()
            local = {i.name for i in body.input} | {i.name for i in body.initializer} | {
                o for n in body.node for o in n.output}
            for inner in body.node:
                reads.update(t for t in inner.input if t and t not in local)
                stack.extend(a.g for a in inner.attribute if a.type == onnx.AttributeProto.GRAPH)
        return reads

    def trace_down(self, tensor: str, through: frozenset[str]) -> str:
        """Follow ``tensor`` down through ``through`` ops (their first input) to the tensor a compute op produced."""
        while tensor in self.producer and self.producer[tensor].op_type in through:
            tensor = self.producer[tensor].inputs[0]
        return tensor

    def upstream(self, tensor: str) -> set[str]:
        """The tensors ``tensor`` is computed from."""
        if tensor not in self.producer:
            return set()
        names = {self.producer[tensor].name} | nx.ancestors(self.nx, self.producer[tensor].name)
        return {t for name in names for t in self.node_by_name[name].inputs if t}

    # -- names ----------------------------------------------------------------------------------------------------
    @cached_property
    def tensor_names(self) -> set[str]:
        return set(self.producer) | set(self.inputs)

    def resolve_tensor(self, name: str, what: str = "layer") -> str:
        """A tensor name for a user-given tensor or node name, with a clear error listing candidates."""
        if name in self.tensor_names:
            return name
        if name in self.node_by_name and self.node_by_name[name].outputs:
            return self.node_by_name[name].outputs[0]
        candidates = [n.outputs[0] for n in self.nodes if n.op_type in ("Conv", "Relu", "MaxPool", "Gemm")][-12:]
        raise EbrError(
            f"{what} {name!r} is neither a tensor nor a node of the graph; candidate layers: {', '.join(candidates)}"
        )

    def metadata_json(self, key: str, default: Any = None) -> Any:
        """A metadata entry written by ebr_onnx's exporters (JSON-encoded), or ``default``."""
        if key not in self.metadata:
            return default
        try:
            return json.loads(self.metadata[key])
        except json.JSONDecodeError:
            return self.metadata[key]
