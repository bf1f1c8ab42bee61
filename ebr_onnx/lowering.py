"""The lower part of a backward walk as one onnxruntime graph (CPU, float32).

On the CPU a convolutional network's walk is two convolutions per layer (``Z = f(x, W⁺)`` and ``fᵀ(q, W⁺)``, Eq. 8)
plus memory-bound elementwise work (the ``⊘₀`` guard, ``x ⊙ …``, max-pool routing). Run rule by rule, each step
allocates fresh buffers and crosses into Python; the walk of VGG-16 to its input took 6× the forward. Here the longest
run of nodes at the bottom of the walk whose ops all have a *lowering* (Conv, Relu, MaxPool, the reshapes,
BatchNormalization …) is written out as the ONNX graph of its backward rules, and onnxruntime runs it in one call:
the captured activations and the signals at its top are its inputs, the signals at the walk's ``keep`` tensors its
outputs. The upper part (classifiers, recurrent cells, anything without a lowering) runs rule by rule as before.
The graph runs on slices of a few examples (its working set grows with the slice; the speed does not), and where
onnxruntime refuses it, the walk falls back to the rules.

Each lowering is a small function per op type, registered with :func:`lowering`, that emits the same equation as
the op's rule in :mod:`ebr_onnx.rules`; the tests hold every lowered walk to the rule-by-rule walk.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import Node

#: Opset of the emitted graphs.
OPSET = 17
#: Weights up to this many elements are stored in the graph; larger ones are handed to the session as arrays.
SMALL = 1024
#: The largest slice of one fed tensor per run of a lowered graph (see :func:`_run_in_slices`).
SLICE_BYTES = 16 << 20


class LoweringFailed(Exception):
    """onnxruntime could not build or run a lowered walk (the caller walks those nodes rule by rule instead)."""


@dataclass(frozen=True)
class Lowered:
    """A signal inside the graph being built: its tensor name, and whether it vanishes wherever the tensor it
    belongs to is 0 (true of every EB linear rule's output, ``x ⊙ …``: a ReLU mask on it is then a no-op)."""

    name: str
    scaled: bool = False


LoweringFn = Callable[[Node, "GraphBuilder", Sequence["Lowered | None"]], list["Lowered | None"]]
#: (op type, mode) → (lowering, whether it applies to this node).
_LOWERINGS: dict[tuple[str, str], tuple[LoweringFn, Callable[[Node, Any], bool]]] = {}


def lowering(op_types: str | Iterable[str], modes: Iterable[str] = ("eb", "grad"),
             applies: Callable[[Node, Any], bool] = lambda node, ctx: True):
    """Register ``fn`` as the lowering of these op types in these modes (where ``applies(node, ctx)``)."""
    types = [op_types] if isinstance(op_types, str) else list(op_types)

    def register(fn: LoweringFn) -> LoweringFn:
        for op in types:
            for mode in modes:
                _LOWERINGS[(op, mode)] = (fn, applies)
        return fn

    return register


def _lowerable(node: Node, ctx) -> bool:
    from .rules import lowered  # noqa: F401  (registers the lowerings)

    found = _LOWERINGS.get((node.op_type, ctx.mode))
    return found is not None and node.name not in ctx.negated and found[1](node, ctx)


def split_lowered(ctx, nodes: list[Node]) -> tuple[list[Node], list[Node]]:
    """(the bottom run of ``nodes`` to lower, the rest), in topological order. Nothing is lowered off the CPU, in
    other dtypes, or under rule overrides (the recurrent rule sets)."""
    if (getattr(ctx, "kernels", None) is None or ctx.xp is not np or np.dtype(ctx.dtype) != np.float32
            or ctx.overrides or not ctx.options.get("lowering", True)):
        return [], nodes
    count = 0
    while count < len(nodes) and _lowerable(nodes[count], ctx):
        count += 1
    return nodes[:count], nodes[count:]


class GraphBuilder:
    """Collects the nodes, inputs (fed arrays) and weights of a lowered walk."""

    def __init__(self, ctx) -> None:
        self.ctx = ctx
        self.nodes: list[onnx.NodeProto] = []
        self.feeds: dict[str, np.ndarray] = {}
        self._weights: dict[str, Callable[[], np.ndarray]] = {}
        self._values: dict[str, str] = {}
        #: (node, name of its input's minimum) for linear nodes whose input may be negative.
        self.minima: list[tuple[Node, str]] = []
        #: Whether the graph holds no batch size (every shape it states leaves axis 0 free): it then runs on any
        #: slice of examples along axis 0.
        self.per_example = True
        self._count = 0

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

    def divide_or_zero(self, p: str, z: str) -> str:
        """``p ⊘₀ z`` for ``z ≥ 0``: ``p / (z + [z = 0])``. Where ``z = 0`` every term ``x_i w_ij`` of ``z`` is 0, so
        the quotient only meets zero factors on its way down and contributes exactly 0, as with ``safe_divide``."""
        zero = self.constant(np.zeros((), np.float32), "zero")
        guard = self.op("Cast", [self.op("Equal", [z, zero])], to=onnx.TensorProto.FLOAT)
        return self.op("Div", [p, self.op("Add", [z, guard])])

    def key(self, outputs: Sequence[str]) -> tuple:
        """What identifies the built graph (its session is cached under it)."""
        return (tuple(n.SerializeToString() for n in self.nodes), tuple(sorted(self.feeds)), tuple(outputs),
                tuple(sorted(self._weights)))

    def model(self, outputs: Sequence[str]) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
        """The graph, and the arrays of its large weights: those are declared external, and the session reads them
        from these arrays (no serialized copy, no copy in the session besides its own re-layout)."""
        inputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in self.feeds]
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


def run_lowered(ctx, nodes: list[Node], seeds: Mapping[str, Any], keep: set[str], reach: set[str] | None
                ) -> dict[str, np.ndarray]:
    """The walk of ``nodes`` from ``seeds`` (see :func:`ebr_onnx.walk.walk`) as one onnxruntime run; the signals at
    the ``keep`` tensors (seeds included) that received any."""
    from .rules import lowered  # noqa: F401  (registers the lowerings)
    from .rules.linear import warn_negative

    from .walk import propagate

    b = GraphBuilder(ctx)
    signals = propagate(nodes, {name: Lowered(b.seed(name, s)) for name, s in seeds.items()}, keep, reach,
                        ctx.is_signal, lambda node, outs: _LOWERINGS[(node.op_type, ctx.mode)][0](node, b, outs), b.add)
    wanted = [k for k in sorted(keep) if k in signals]
    outputs = [b.op("Identity", [signals[k].name]) for k in wanted] + [m for _, m in b.minima]
    if not wanted:
        return {}
    try:
        session = ctx.kernels.latest(("lowered", tuple(n.name for n in nodes)), b.key(outputs),
                                     lambda: ctx.kernels.session(*b.model(outputs), whole=True))
        values = _run_in_slices(session, outputs, b, len(wanted))
    except Exception as exc:  # onnxruntime's errors have no common base class
        raise LoweringFailed(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from exc
    for (node, _), minimum in zip(b.minima, values[len(wanted):]):
        if float(minimum) < 0:
            ctx.node_index = node.index
            warn_negative(ctx, node)
    return dict(zip(wanted, values))


def _run_in_slices(session, outputs: list[str], b: GraphBuilder, signals: int) -> list[np.ndarray]:
    """Run the graph on slices of the examples, each feed's slice at most :data:`SLICE_BYTES` (the graph's working
    set grows with the slice: VGG-16's walk of 8 frames peaks 0.55 GB lower one frame at a time, at the same speed,
    and 16 frames run 15 % faster); the signals are concatenated, the minima reduced. One run where the graph is not
    :attr:`GraphBuilder.per_example`."""
    sizes = {np.shape(v)[0] if np.ndim(v) else None for v in b.feeds.values()}
    if not b.per_example or len(sizes) != 1 or None in sizes:
        return session.run(outputs, b.feeds)
    (n,) = sizes
    rows = max(1, int(SLICE_BYTES // max(v.nbytes / n for v in b.feeds.values())))
    if rows >= n:
        return session.run(outputs, b.feeds)
    parts = [session.run(outputs, {k: v[i:i + rows] for k, v in b.feeds.items()}) for i in range(0, n, rows)]
    if any(np.shape(part[k])[:1] != (min(rows, n - i * rows),) for i, part in enumerate(parts) for k in range(signals)):
        return session.run(outputs, b.feeds)  # an output that is not per example: the slices do not apply
    return ([np.concatenate([part[k] for part in parts]) for k in range(signals)]
            + [min(part[k] for part in parts) for k in range(signals, len(outputs))])
