"""Unrolling ONNX ``Loop`` and ``Scan`` into a flat graph of per-step primitive ops (a pure ModelProto pass).

The backward walk cannot see inside subgraphs (onnxruntime does not expose their tensors), so a recurrence written as
``Loop`` (tf2onnx's Keras RNNs) or ``Scan`` becomes one copy of its body per step:

* loop-carried state is made explicit: step ``t`` reads the tensors step ``t − 1`` wrote;
* ``Loop`` scan outputs and ``Scan`` outputs are stacked with ``Unsqueeze`` + ``Concat`` (reversed for
  ``scan_output_directions`` 1); ``Scan`` inputs are read one element per step with ``Gather`` (from the end for
  ``scan_input_directions`` 1);
* body initializers and inputless ``Constant`` nodes are lifted once per loop (weights stay shared across steps);
  outer-scope references keep their names; every per-step tensor is named ``<loop name>/t<step>/<body name>``;
* an ``If`` inside a body is inlined when its condition is known at unrolling time; other nested subgraphs are refused.

A ``Loop`` unrolls when its trip count and every step's condition are known without the input values: constants, or
computed from input *shapes* (``Shape``/``Size`` of tensors whose shapes inference fixes or whose values fold, such as
a ``Range``) and the iteration count; a ``Scan`` when the length of its scan inputs is known. Those values are folded
with :class:`onnx.reference.ReferenceEvaluator`, node by node, twice: with every free input dimension set to 2 and to
3; a value that differs between the two depends on a free dimension (pass ``input_shapes``).

A ``Loop`` that stops on its own outputs (a greedy decoder that stops after emitting ``<eos>``, or breaks out through
an ``If`` on them) raises :class:`DataDependentLoop`; run the model once and pass the number of steps each such Loop
made as ``steps`` (:mod:`ebr_onnx.recurrent.decoding` does): it is then unrolled to exactly that many steps, its trip
count and conditions left unread (the unrolled graph repeats that run's steps for any input). A sequence appended to
once per step (``SequenceEmpty``, ``SequenceInsert``) and stacked after the loop (``ConcatFromSequence``) becomes a
``Concat`` of the appended tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..core.errors import EbrError
from ..core.graph import ModelGraph
from ..core.ops import LOOP_OPS

#: A ``Loop`` without a trip count must stop by its condition within this many steps.
MAX_STEPS = 10_000
_FIX_SHAPES = "fix the shapes with ebr_onnx.passes.unroll.unroll_loops(model, input_shapes={input name: shape})"
_GRAPH_ATTRS = (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)


class _NotKnown(Exception):
    """A value that cannot be folded: it depends on input values (the message names the tensor)."""


class DataDependentLoop(EbrError):
    """A ``Loop`` whose trip count or condition depends on the input values: unroll it with ``steps``."""


def loop_key(node: onnx.NodeProto) -> str:
    """The name a ``Loop`` is known by in ``steps``: its node name, else ``Loop:<first output>``."""
    return node.name or f"{node.op_type}:{node.output[0]}"


def _is_control(node: onnx.NodeProto) -> bool:
    return node.op_type in LOOP_OPS and node.domain in ("", "ai.onnx")


def loop_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The ``Loop`` and ``Scan`` nodes of the main graph (what :func:`unroll_loops` unrolls)."""
    return [n for n in model.graph.node if _is_control(n)]


def has_loops(model: onnx.ModelProto) -> bool:
    """Whether the main graph holds a ``Loop`` or ``Scan`` node."""
    return bool(loop_nodes(model))


def unroll_loops(model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 steps: Mapping[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with every ``Loop`` and ``Scan`` of the main graph unrolled into per-step ops.

    ``input_shapes`` fixes the shapes of model inputs (the given inputs' declared dims are pinned in the result, since
    the unrolled graph holds one step per element of the sequence); without it the declared shapes are used.
    ``steps`` gives Loops (by :func:`loop_key`) the number of steps a run made: those are unrolled to it.
    Raises :class:`DataDependentLoop` naming the node for a ``Loop`` whose trip count or condition depends on input
    values, :class:`EbrError` for one that depends on a free input dimension, and for nested subgraphs other than an
    ``If`` with a known condition.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    shapes = {k: tuple(int(d) for d in v) for k, v in (input_shapes or {}).items()}
    _pin_inputs(out, shapes)
    opsets = {o.domain or "": o.version for o in out.opset_import}
    while has_loops(out):
        index = next(i for i, n in enumerate(out.graph.node) if _is_control(n))
        _Unroller(out, index, opsets, _shape_tables(out, shapes), dict(steps or {})).run()
    _stack_sequences(out)
    return out


def _stack_sequences(model: onnx.ModelProto) -> None:
    """Replace each ``ConcatFromSequence`` of a sequence built by appends (``SequenceEmpty`` then ``SequenceInsert``
    at the end, as an unrolled loop that appends one tensor per step leaves it: PyTorch's scripted list appends) by
    ``Unsqueeze`` + ``Concat`` (``new_axis`` 1) or ``Concat`` of the appended tensors, in order; the sequence ops
    left unused are dropped."""
    graph = model.graph
    producer = {o: n for n in graph.node for o in n.output if o}
    replaced: dict[int, list[onnx.NodeProto]] = {}
    for index, node in enumerate(graph.node):
        if node.op_type != "ConcatFromSequence":
            continue
        parts, name = [], node.input[0]
        while name in producer and producer[name].op_type in ("SequenceInsert", "Identity"):
            step = producer[name]
            if step.op_type == "SequenceInsert":
                if len(step.input) > 2 and step.input[2]:
                    break   # an insert at a position: not a plain append
                parts.append(step.input[1])
            name = step.input[0]
        if name not in producer or producer[name].op_type != "SequenceEmpty" or not parts:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, new_axis = int(attrs.get("axis", 0)), int(attrs.get("new_axis", 0))
        nodes = []
        if new_axis:
            stacked = []
            axes = f"{node.output[0]}/axes"
            nodes.append(helper.make_node("Constant", [], [axes], name=axes,
                                          value=numpy_helper.from_array(np.array([axis], np.int64), axes)))
            for k, part in enumerate(reversed(parts)):
                stacked.append(f"{node.output[0]}/t{k}")
                nodes.append(helper.make_node("Unsqueeze", [part, axes], [stacked[-1]], name=stacked[-1]))
        else:
            stacked = list(reversed(parts))
        nodes.append(helper.make_node("Concat", stacked, [node.output[0]], name=node.name or node.output[0],
                                      axis=axis))
        replaced[index] = nodes
    if not replaced:
        return
    nodes = [m for i, n in enumerate(graph.node) for m in replaced.get(i, [n])]
    live = {o.name for o in graph.output}
    kept = []
    for n in reversed(nodes):
        if any(o in live for o in n.output) or not n.output:
            kept.append(n)
            live.update(_all_inputs(n))
    del graph.node[:]
    graph.node.extend(kept[::-1])


def _pin_inputs(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> None:
    inputs = {vi.name: vi for vi in model.graph.input}
    for name, dims in shapes.items():
        if name not in inputs:
            raise EbrError(f"input_shapes names {name!r}, which is not a model input; inputs: {', '.join(inputs)}")
        shape = inputs[name].type.tensor_type.shape
        if len(shape.dim) != len(dims):
            raise EbrError(f"input_shapes gives {name!r} {len(dims)} dims; the model declares {len(shape.dim)}")
        for d, size in zip(shape.dim, dims):
            d.Clear()
            d.dim_value = size


def _shape_tables(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> tuple[dict, dict]:
    """Concrete tensor shapes with every free input dimension set to 2, and set to 3."""
    graph = ModelGraph(model, check=False)
    tables = []
    for fill in (2, 3):
        fixed = {name: tuple(d if isinstance(d, int) and d > 0 else fill for d in (graph.shapes.get(name) or ()))
                 for name in graph.inputs}
        fixed.update(shapes)
        tables.append(graph.concrete_shapes(fixed))
    return tables[0], tables[1]


@dataclass
class _Folder:
    """Values of tensors that do not depend on input values, computed node by node on demand."""

    producers: dict[str, onnx.NodeProto]
    initializers: dict[str, onnx.TensorProto]
    shapes: Mapping[str, tuple[int, ...]]
    inputs: frozenset[str]
    opsets: dict[str, int]
    values: dict[str, np.ndarray] = field(default_factory=dict)

    def fold(self, name: str) -> np.ndarray:
        if name in self.values:
            return self.values[name]
        if name in self.initializers:
            self.values[name] = numpy_helper.to_array(self.initializers[name])
            return self.values[name]
        if name in self.inputs or name not in self.producers:
            raise _NotKnown(f"it depends on the values of {name!r}")
        node = self.producers[name]
        if node.op_type in ("Shape", "Size"):
            dims = np.asarray(self.shape(node.input[0]), dtype=np.int64)
            attrs = {a.name: a.i for a in node.attribute}
            result = [dims[attrs.get("start", 0):attrs.get("end", len(dims))] if node.op_type == "Shape"
                      else np.asarray(dims.prod(), dtype=np.int64)]
        elif any(a.type in _GRAPH_ATTRS for a in node.attribute):
            raise _NotKnown(f"it comes from the subgraph of node {node.name!r}")
        else:
            # imported here, not with this module: it holds 12 MB, and only models with a Loop or Scan fold values
            from onnx.reference import ReferenceEvaluator

            feeds = {t: self.fold(t) for t in node.input if t}
            result = ReferenceEvaluator(node, opsets=self.opsets).run(None, feeds)
        for o, v in zip(node.output, result):
            if o:
                self.values[o] = np.asarray(v)
        return self.values[name]


    def shape(self, name: str) -> tuple[int, ...]:
        """The inferred shape of ``name``, or the shape of its folded value (``Range`` outputs and the like)."""
        if name in self.shapes:
            return self.shapes[name]
        try:
            return np.shape(self.fold(name))
        except _NotKnown as exc:
            raise _NotKnown(f"the shape of {name!r} is not known") from exc


class _Unroller:
    """Replaces the ``Loop``/``Scan`` at ``index`` of the main graph by its per-step copies."""

    def __init__(self, model: onnx.ModelProto, index: int, opsets: dict[str, int], shapes: tuple[dict, dict],
                 steps: Mapping[str, int] | None = None):
        g = model.graph
        self.given = (steps or {}).get(loop_key(g.node[index]))
        self.graph = g
        self.index = index
        self.node = g.node[index]
        self.name = self.node.name or f"{self.node.op_type}_{index}"
        self.opset = opsets.get("", 0)
        self.emitted: list[onnx.NodeProto] = []
        self.lifted: set[str] = set()
        producers = {o: n for n in g.node for o in n.output if o}
        initializers = {i.name: i for i in g.initializer}
        inputs = frozenset(i.name for i in g.input) - set(initializers)
        self.folders = [_Folder(dict(producers), dict(initializers), s, inputs, opsets) for s in shapes]
        self.used = {t for n in g.node for t in _all_inputs(n)} | {o.name for o in g.output}

    # -- folding --------------------------------------------------------------------------------------------------
    def known(self, name: str, what: str, control: bool = False) -> np.ndarray:
        """The value of ``name`` independent of input values and free dimensions, or an :class:`EbrError`
        (:class:`DataDependentLoop` for a Loop's own trip count or condition, ``control``)."""
        try:
            a, b = (f.fold(name) for f in self.folders)
        except _NotKnown as exc:
            raise (DataDependentLoop if control else EbrError)(
                f"{self.node.op_type} node {self.name!r} cannot be unrolled: its {what} is not known before running "
                f"({exc}); supported: trip counts and conditions that are constants or computed from input shapes "
                "and the iteration count"
            ) from exc
        if a.shape != b.shape or not np.array_equal(a, b):
            raise EbrError(
                f"{self.node.op_type} node {self.name!r} cannot be unrolled: its {what} depends on a free input "
                f"dimension; {_FIX_SHAPES}"
            )
        return a

    # -- emitting -------------------------------------------------------------------------------------------------
    def emit(self, node: onnx.NodeProto) -> None:
        self.emitted.append(node)
        for f in self.folders:
            f.producers.update({o: node for o in node.output if o})

    def constant(self, name: str, value: np.ndarray) -> str:
        self.emit(helper.make_node("Constant", [], [name], name=name, value=numpy_helper.from_array(value, name)))
        return name

    def lift(self, body: onnx.GraphProto, env: dict[str, str]) -> None:
        """Body initializers and inputless ``Constant`` nodes, once for all steps."""
        for init in body.initializer:
            lifted = onnx.TensorProto()
            lifted.CopyFrom(init)
            lifted.name = f"{self.name}/{init.name}"
            self.graph.initializer.append(lifted)
            self.lifted.add(lifted.name)
            for f in self.folders:
                f.initializers[lifted.name] = lifted
            env[init.name] = lifted.name
        for i, node in enumerate(body.node):
            if node.op_type == "Constant" and not node.input:
                self.emit(self._renamed(node, env, self.name, i))

    def _renamed(self, node: onnx.NodeProto, env: dict[str, str], prefix: str, i: int) -> onnx.NodeProto:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"{prefix}/{node.name or f'{node.op_type}_{i}'}"
        copy.input[:] = [env.get(t, t) if t else "" for t in node.input]
        for j, o in enumerate(node.output):
            if o:
                env[o] = f"{prefix}/{o}"
                copy.output[j] = env[o]
        return copy

    def step(self, body: onnx.GraphProto, env: dict[str, str], prefix: str) -> None:
        """One copy of ``body``'s nodes, reading and extending ``env`` (body name → outer name)."""
        for i, node in enumerate(body.node):
            if node.op_type == "Constant" and not node.input:
                continue  # lifted
            if node.op_type == "If" and node.domain in ("", "ai.onnx"):
                self.inline_if(node, env, prefix, i)
            elif any(a.type in _GRAPH_ATTRS for a in node.attribute):
                raise EbrError(
                    f"{self.node.op_type} node {self.name!r} has a {node.op_type} node with its own subgraph in its "
                    "body; supported inside a body: primitive ops and If with a condition known before running"
                )
            else:
                self.emit(self._renamed(node, env, prefix, i))

    def inline_if(self, node: onnx.NodeProto, env: dict[str, str], prefix: str, i: int) -> None:
        name, what = env.get(node.input[0], node.input[0]), f"If {node.name!r} condition"
        loop = self.node.op_type == "Loop"
        if self.given is not None and loop:
            try:
                self.known(name, what, True)
            except DataDependentLoop:   # a data-dependent break: it only steers the stop, which a run has told
                self.emit(self._renamed(node, env, prefix, i))   # (dropped as dead, unless the If computes values)
                return
        cond = bool(np.asarray(self.known(name, what, loop)).all())
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if cond else "else_branch"))
        sub = f"{prefix}/{node.name or f'If_{i}'}"
        local = dict(env)
        self.lift_branch(branch, local, sub)
        self.step(branch, local, sub)
        for o, b in zip(node.output, branch.output):
            if o:
                env[o] = f"{prefix}/{o}"
                self.emit(helper.make_node("Identity", [local.get(b.name, b.name)], [env[o]], name=env[o]))

    def lift_branch(self, branch: onnx.GraphProto, env: dict[str, str], prefix: str) -> None:
        for init in branch.initializer:
            env[init.name] = self.constant(f"{prefix}/{init.name}", numpy_helper.to_array(init))
        for i, node in enumerate(branch.node):
            if node.op_type == "Constant" and not node.input:
                self.emit(self._renamed(node, env, prefix, i))

    def stack(self, parts: list[str], axis: int, out: str) -> None:
        """``out`` = the step tensors ``parts`` stacked along a new ``axis``."""
        unsqueezed = []
        for t, part in enumerate(parts):
            name = f"{self.name}/{out}/t{t}"
            if self.opset >= 13:
                axes = self.constant(f"{name}/axes", np.asarray([axis], dtype=np.int64))
                self.emit(helper.make_node("Unsqueeze", [part, axes], [name], name=name))
            else:
                self.emit(helper.make_node("Unsqueeze", [part], [name], name=name, axes=[axis]))
            unsqueezed.append(name)
        self.emit(helper.make_node("Concat", unsqueezed, [out], name=f"{self.name}/{out}", axis=axis))

    # -- the two ops ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        body = next(a.g for a in self.node.attribute if a.name == "body")
        if self.node.op_type == "Loop":
            self.unroll_loop(body)
        else:
            self.unroll_scan(body)
        self.replace()

    def unroll_loop(self, body: onnx.GraphProto) -> None:
        node = self.node
        trip, cond = (list(node.input) + ["", ""])[:2]
        if self.given is not None:   # a run made this many steps: trip count and conditions are not read
            limit, running = int(self.given), True
        else:
            limit = int(self.known(trip, "trip count", True)) if trip else None
            running = bool(self.known(cond, "initial condition", True)) if cond else True
        state = list(node.input[2:])
        n_state = len(state)
        it_name, cond_in = body.input[0].name, body.input[1].name
        v_in = [i.name for i in body.input[2:]]
        outs = [o.name for o in body.output]
        scans: list[list[str]] = [[] for _ in outs[1 + n_state:]]
        base: dict[str, str] = {}
        self.lift(body, base)
        t = 0
        while running and (limit is None or t < limit):
            if t >= MAX_STEPS:
                raise EbrError(f"Loop node {self.name!r} did not stop within {MAX_STEPS} steps; unrolling stops there")
            prefix = f"{self.name}/t{t}"
            env = {**base, **dict(zip(v_in, state))}
            env[it_name] = self.constant(f"{prefix}/{it_name}", np.asarray(t, dtype=np.int64))
            env[cond_in] = self.constant(f"{prefix}/{cond_in}", np.asarray(True))
            self.step(body, env, prefix)
            state = [env.get(o, o) for o in outs[1:1 + n_state]]
            for parts, o in zip(scans, outs[1 + n_state:]):
                parts.append(env.get(o, o))
            if self.given is None:
                running = bool(self.known(env.get(outs[0], outs[0]), f"condition at step {t}", True))
            t += 1
        if t == 0:
            raise EbrError(f"Loop node {self.name!r} runs zero times for these input shapes; nothing to unroll")
        self.finish(state, [(parts, 0) for parts in scans])

    def unroll_scan(self, body: onnx.GraphProto) -> None:
        node = self.node
        if self.opset < 9:
            raise EbrError(f"Scan node {self.name!r} uses opset {self.opset}; supported: Scan of opset 9 and later")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute if a.type not in _GRAPH_ATTRS}
        n_in = attrs["num_scan_inputs"]
        n_state = len(node.input) - n_in
        n_out = len(body.output) - n_state
        in_axes = list(attrs.get("scan_input_axes", [0] * n_in))
        in_dirs = list(attrs.get("scan_input_directions", [0] * n_in))
        out_axes = list(attrs.get("scan_output_axes", [0] * n_out))
        out_dirs = list(attrs.get("scan_output_directions", [0] * n_out))
        xs = list(node.input[n_state:])
        lengths = set()
        for x, axis in zip(xs, in_axes):
            try:
                a, b = (f.shape(x)[axis] for f in self.folders)
            except _NotKnown as exc:
                raise EbrError(f"Scan node {self.name!r}: the shape of its input {x!r} is not known; {_FIX_SHAPES}"
                               ) from exc
            if a != b:
                raise EbrError(f"Scan node {self.name!r}: the length of {x!r} is a free input dimension; {_FIX_SHAPES}")
            lengths.add(a)
        if len(lengths) != 1:
            raise EbrError(f"Scan node {self.name!r}: its scan inputs have different lengths {sorted(lengths)}")
        steps = lengths.pop()
        if steps == 0:
            raise EbrError(f"Scan node {self.name!r} runs zero times for these input shapes; nothing to unroll")
        state = list(node.input[:n_state])
        names = [i.name for i in body.input]
        outs = [o.name for o in body.output]
        scans: list[list[str]] = [[] for _ in range(n_out)]
        base: dict[str, str] = {}
        self.lift(body, base)
        for t in range(steps):
            prefix = f"{self.name}/t{t}"
            env = {**base, **dict(zip(names, state))}
            for x, elem, axis, rev in zip(xs, names[n_state:], in_axes, in_dirs):
                index = self.constant(f"{prefix}/{elem}/index", np.asarray(steps - 1 - t if rev else t, np.int64))
                env[elem] = f"{prefix}/{elem}"
                self.emit(helper.make_node("Gather", [x, index], [env[elem]], name=env[elem], axis=axis))
            self.step(body, env, prefix)
            state = [env.get(o, o) for o in outs[:n_state]]
            for parts, o in zip(scans, outs[n_state:]):
                parts.append(env.get(o, o))
        self.finish(state, [(parts[::-1] if rev else parts, axis)
                            for parts, rev, axis in zip(scans, out_dirs, out_axes)])

    def finish(self, state: list[str], scans: list[tuple[list[str], int]]) -> None:
        """The node's outputs: final states (``Identity``) then stacked scan outputs."""
        outputs = list(self.node.output)
        for value, out in zip(state, outputs):
            if out:
                self.emit(helper.make_node("Identity", [value], [out], name=f"{self.name}/{out}"))
        for (parts, axis), out in zip(scans, outputs[len(state):]):
            if out:
                self.stack(parts, axis, out)

    def replace(self) -> None:
        """Put the live emitted nodes where the loop node was (the graph stays topologically sorted)."""
        live = set(self.used)
        kept: list[onnx.NodeProto] = []
        for node in reversed(self.emitted):
            if any(o in live for o in node.output):
                kept.append(node)
                live.update(t for t in node.input if t)
        nodes = list(self.graph.node)
        nodes[self.index:self.index + 1] = kept[::-1]
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        used = {t for n in self.graph.node for t in _all_inputs(n)} | {o.name for o in self.graph.output}
        dropped = (self.lifted | set(self.node.input)) - used
        inits = [i for i in self.graph.initializer if i.name not in dropped]
        del self.graph.initializer[:]
        self.graph.initializer.extend(inits)


def _all_inputs(node: onnx.NodeProto) -> set[str]:
    """A node's inputs, including the outer-scope names its subgraphs read."""
    names = {t for t in node.input if t}
    for a in node.attribute:
        for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            for n in g.node:
                names |= _all_inputs(n)
    return names
