"""Building a lowered walk: :class:`GraphBuilder` collects the ONNX nodes, fed arrays and weights of the graph that
the per-op lowerings (:mod:`ebr_onnx.lowering.ops`, each registered with :func:`lowering`) write; see
:mod:`ebr_onnx.lowering` for what runs it and why."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.backend import OPSET
from ..core.context import RuleContext
from ..core.graph import Node

#: Weights up to this many elements are stored in the graph; larger ones are handed to the session as arrays.
SMALL = 1024


@dataclass(frozen=True)
class Lowered:
    """A signal inside the graph being built: its tensor name, and whether it vanishes wherever the tensor it
    belongs to is 0 (true of every EB linear rule's output, ``x ⊙ …``: a ReLU mask on it is then a no-op)."""

    name: str
    scaled: bool = False


LoweringFn = Callable[[Node, "GraphBuilder", Sequence["Lowered | None"]], list["Lowered | None"]]
Applies = Callable[[Node, RuleContext], bool]
#: (op type, mode) → (lowering, whether it applies to this node).
LOWERINGS: dict[tuple[str, str], tuple[LoweringFn, Applies]] = {}


def _always(node: Node, ctx: RuleContext) -> bool:
    return True


def lowering(op_types: str | Iterable[str], modes: Iterable[str] = ("eb", "grad"), applies: Applies = _always):
    """Register ``fn`` as the lowering of these op types in these modes (where ``applies(node, ctx)``)."""
    types = [op_types] if isinstance(op_types, str) else list(op_types)

    def register(fn: LoweringFn) -> LoweringFn:
        for op in types:
            for mode in modes:
                LOWERINGS[(op, mode)] = (fn, applies)
        return fn

    return register


class GraphBuilder:
    """Collects the nodes, inputs (fed arrays) and weights of a lowered walk."""

    def __init__(self, ctx: RuleContext, exact: bool = False) -> None:
        self.ctx = ctx
        #: Whether every ``⊘₀`` is guarded by ``Z == 0`` tests (else the convolutions' by a bias: see
        #: :data:`ebr_onnx.lowering.ops.GUARD`).
        self.exact = exact
        self.nodes: list[onnx.NodeProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        #: The model's weights the graph takes as inputs, fed whole with every run from the model's own arrays
        #: (onnxruntime reads them in place: the session holds no copy of them).
        self.fed: dict[str, np.ndarray] = {}
        self._weights: dict[str, Callable[[], np.ndarray]] = {}
        self._values: dict[str, str] = {}
        #: Whether the graph holds no batch size (every shape it states leaves axis 0 free): it then runs on any
        #: slice of examples along axis 0.
        self.per_example = True
        self._count = 0
        #: Outputs of ``equal(z, 0)``, by the tensor ``z`` they test.
        self._zero_tests: dict[str, str] = {}

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"_{hint}{self._count}"

    def op(self, op_type: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        """Append one node; its output name (a list of them with ``outputs`` > 1)."""
        names = [self.fresh(op_type.lower()) for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, list(inputs), names, **attrs))
        return names[0] if outputs == 1 else names

    def seed(self, name: str, array: Any) -> str:
        key = f"seed:{name}"
        self.feeds[key] = np.ascontiguousarray(array, dtype=np.float32)
        return key

    def value(self, name: str) -> str:
        """A forward activation (fed from the captures) or a constant."""
        if name not in self._values:
            ctx = self.ctx
            if name in ctx.values:
                self.feeds[name] = np.ascontiguousarray(ctx.values[name], dtype=np.float32)
                self._values[name] = name
            else:
                self._values[name] = self.constant(np.asarray(ctx.graph.constant(name), dtype=np.float32), name)
        return self._values[name]

    def has_negative(self, name: str) -> bool:
        """Whether the forward activation or constant ``name`` has a negative entry (read here, as the graph is
        built: the rules' branch between EB and its positive-contribution form, taken the same way)."""
        ctx = self.ctx
        return ctx.has_negative(np.asarray(ctx.values[name] if name in ctx.values else ctx.graph.constant(name)))

    def model_weight(self, name: str) -> str:
        """The model's weight ``name`` as an input of the graph (see :attr:`fed`)."""
        if name not in self.fed:
            self.fed[name] = np.ascontiguousarray(self.ctx.graph.constant(name), dtype=np.float32)
        return name

    def weight(self, key: str, make: Callable[[], np.ndarray]) -> str:
        """A weight derived from the model's (made only when the session is built); ``key`` names it uniquely."""
        self._weights.setdefault(key, make)
        return key

    def constant(self, array: np.ndarray, hint: str = "const") -> str:
        """A constant of the graph, named by its content (so that the graph's key identifies it)."""
        small = array.size <= 16
        content = array.tolist() if small else hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()
        key = f"{hint}:{array.dtype}:{array.shape}:{content}"
        return self.weight(key, lambda: array)

    def shape_of(self, name: str) -> str:
        """The shape of ``name``: read from its fed value where it is captured; else its static shape with the one
        free dimension as -1, or its concrete shape (a graph that holds no batch size serves every chunk)."""
        ctx = self.ctx
        if name in ctx.values:
            return self.op("Shape", [self.value(name)])
        shape = list(ctx.shape(name))
        static = ctx.graph.shapes.get(name)
        free = [i for i, d in enumerate(static or ()) if not isinstance(d, int)]
        if static is not None and len(static) == len(shape) and len(free) == 1:
            shape[free[0]] = -1
        self.per_example &= shape[0] == -1
        return self.constant(np.asarray(shape, dtype=np.int64), "shape")

    def add(self, a: Lowered, b: Lowered) -> Lowered:
        return Lowered(self.op("Add", [a.name, b.name]), a.scaled and b.scaled)

    # -- the array functions :func:`ebr_onnx.core.numeric.safe_divide` and :func:`ebr_onnx.core.geometry.weight_part`
    # call, as nodes (on tensor names) -----------------------------------------------------------------------------
    def _operand(self, value: str | float) -> str:
        return value if isinstance(value, str) else self.constant(np.asarray(value, np.float32), "scalar")

    def equal(self, a: str, b: str | float) -> str:
        out = self.op("Equal", [a, self._operand(b)])
        if isinstance(b, (int, float)) and b == 0:
            self._zero_tests[out] = a
        return out

    def where(self, condition: str, a: str | float, b: str | float) -> str:
        """``Where``; the guard ``where(z == 0, 1, z)`` of ``⊘₀`` as ``z + float(z == 0)``, the same values (z is 0
        wherever 1 is added) in passes that onnxruntime runs ~2× faster than a Where with a broadcast scalar."""
        if a == 1 and isinstance(b, str) and self._zero_tests.get(condition) == b:
            return self.op("Add", [b, self.op("Cast", [condition], to=onnx.TensorProto.FLOAT)])
        return self.op("Where", [condition, self._operand(a), self._operand(b)])

    def divide(self, a: str, b: str) -> str:
        return self.op("Div", [a, b])

    def maximum(self, a: str, b: str | float) -> str:
        """``max(a, b)``; ``max(a, 0)`` as a Relu (the same values; onnxruntime's Max with a broadcast scalar took
        ~20× as long on R(2+1)D-18's weights)."""
        if isinstance(b, (int, float)) and b == 0:
            return self.op("Relu", [a])
        return self.op("Max", [a, self._operand(b)])

    def minimum(self, a: str, b: str | float) -> str:
        return self.op("Min", [a, self._operand(b)])

    def key(self, outputs: Sequence[str]) -> tuple:
        """What identifies the built graph (its session is cached under it)."""
        return (tuple(n.SerializeToString() for n in self.nodes), tuple(sorted(self.feeds)), tuple(outputs),
                tuple(sorted(self._weights)), tuple(sorted(self.fed)))

    def model(self, outputs: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The graph, and the arrays of its large weights: those are declared external, and the session is handed
        these arrays (no serialized copy; onnxruntime 1.32 copies them into the session). The model's weights of
        :attr:`fed` are inputs."""
        inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in self.feeds]
        inputs += [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(a.shape))
                   for name, a in self.fed.items()]
        outs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in outputs]
        weights, external = [], {}
        for key, make in self._weights.items():
            array = np.ascontiguousarray(make())
            if array.size <= SMALL:
                weights.append(numpy_helper.from_array(array, key))
                continue
            external[key] = array
            tensor = onnx.TensorProto(name=key, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                                      dims=array.shape, data_location=onnx.TensorProto.EXTERNAL)
            tensor.external_data.add(key="location", value="memory")
            weights.append(tensor)
        graph = helper.make_graph(self.nodes, "lowered_walk", inputs, outs, weights)
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), external
