"""The recurrent methods EB-R, cEB-R and BP-R (paper Alg. 1, Eqs. 1–9; ``shared/spec/caffe-reference.md`` §1.4–1.8).

A video model is read as three parts: a per-frame CNN from the *frames* tensor (the explained input, or its in-graph
reshape whose leading axis is frames) up to the RNN→CNN *boundary* (the lowest recurrent op's per-frame input, traced
down through reshapes; ``boundary=`` overrides), and the recurrent part from the boundary to the logits.

1. **RNN backward.** A prior — a one-hot 1.0 on the target's pre-softmax logit at ``time_step`` (default the last;
   several steps or ``"all"`` sum their one-hots) — is propagated to the boundary: ``P`` (Eqs. 1, 3). The recurrent
   ops use :mod:`ebr_onnx.rules.recurrent` (unrolled cells: :mod:`ebr_onnx.cells`) with ``recurrent_rules``.
   ``cebr`` repeats the pass with the classifier's weights negated (bias untouched): ``P̄`` (Eqs. 2, 4).
2. **Temporal normalisation** (Eqs. 5–7, spec §1.6): ``ebr``: ``M = P / ΣP``; ``cebr``: ``M = P / ΣP − P̄ / ΣP̄``,
   each total over all frames and units. A zero total sets that term to 0 with a warning. ``gradr`` skips this.
3. **CNN backward** (Eqs. 8–9): ``M`` continues once (the rules are linear) down to ``layer``, in chunks of
   ``explainer.batch_size`` frames; each chunk re-runs the CNN sub-model capturing only what its rules read (the
   chunks' captures are kept from the first pass instead when they fit in :data:`KEEP_BYTES`).

The time axis of the logits is traced from the recurrent op's Y, through per-step classifier copies stacked again
(``time_axis=`` overrides); the layer's frames (stacked, on a time axis, or one CNN copy per frame) and channel axis
are traced by :func:`ebr_onnx.frames.frame_layout`. ``res.temporal`` holds the per-frame sums of the maps, the
evidence curve of the paper's temporal localisation (Sec. 4.1).
"""
from __future__ import annotations

import warnings
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np
import onnx

from .core.backend import to_numpy
from .core.errors import EbrError
from .core.forward import ForwardRunner
from .frames import UNTRACED, FrameLayout, UntracedLayer, frame_layout, input_time_axis, trace_time_axis
from .core.graph import VALUE_FREE_OPS, ModelGraph, Node
from .core.options import RuleOptions
from .core.walk import walk

if TYPE_CHECKING:
    from .explainer import ExplainResult, Explainer

RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN"})
#: Ops traced through between the boundary and a recurrent op's X, and between the input and the frames tensor.
RESHAPE_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Dropout"})
#: Unrolled cells read x_t through these as well.
_STEP_OPS = RESHAPE_OPS | {"Gather", "Slice", "Split"}
#: The CNN captures of all chunks are kept between the two CNN passes when they take at most this many bytes (a
#: 16-frame VGG-16 clip's captures down to the input take ~860 MB: kept, the CNN runs once instead of twice; the
#: walk of that chunk would hold them anyway).
KEEP_BYTES = 1 << 30
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


# -- the parts of the model ---------------------------------------------------------------------------------------
class SubModel:
    """The nodes that compute ``outputs`` from ``inputs`` (and the model inputs they also read), as a model of its
    own with a forward runner; tensor names are those of the full graph, and the weights are the full graph's arrays
    (shared, not copied)."""

    def __init__(self, graph: ModelGraph, inputs: Sequence[str], outputs: Sequence[str], device: str,
                 threads: int | None) -> None:
        stop, needed, stack = set(inputs), set(), list(outputs)
        while stack:
            name = stack.pop()
            node = graph.producer.get(name)
            if name in stop or node is None or node.name in needed:
                continue
            needed.add(node.name)
            stack.extend(t for t in node.inputs if t)
        self.nodes = [n for n in graph.topological if n.name in needed]
        read = {t for n in self.nodes for t in n.inputs if t} | set(outputs)
        self.inputs = list(inputs) + [t for t in graph.inputs if t in read and t not in stop]
        model = graph.light
        weights = {t: graph.weights[t] for t in sorted(read) if t in graph.weights}  # shared, not copied
        proto = onnx.helper.make_graph(
            [model.graph.node[n.index] for n in self.nodes], f"{model.graph.name}_part",
            [_value_info(graph, t, free_leading=t in stop) for t in self.inputs + list(weights)],
            [onnx.helper.make_tensor_value_info(t, graph.elem_types.get(t) or onnx.TensorProto.FLOAT, None)
             for t in outputs],
            [init for init in model.graph.initializer if init.name in read],
        )
        sub = onnx.helper.make_model(proto, opset_imports=model.opset_import, ir_version=model.ir_version)
        sub.functions.extend(model.functions)
        self.graph = ModelGraph(sub, check=False, weights=weights)
        self.runner = ForwardRunner(self.graph, device, threads)

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return self.runner.run({k: feeds[k] for k in self.inputs}, outputs)


def _value_info(graph: ModelGraph, name: str, free_leading: bool) -> onnx.ValueInfoProto:
    """An input's declaration: its type and rank, with the leading (frames) axis free where the part is fed chunks."""
    shape = graph.shapes.get(name)
    dims = None if shape is None else [f"{name}_d{i}" if (free_leading and i == 0) or not isinstance(d, int) else d
                                       for i, d in enumerate(shape)]
    return onnx.helper.make_tensor_value_info(name, graph.elem_types.get(name) or onnx.TensorProto.FLOAT, dims)


def _find_cells(graph: ModelGraph) -> list:
    """Unrolled LSTM cells, when :mod:`ebr_onnx.cells` is available."""
    try:
        from .cells import find_cells
    except ImportError:
        return []
    return list(find_cells(graph))


def _trace_down(graph: ModelGraph, tensor: str, through: frozenset[str]) -> str:
    """Follow ``tensor`` down through ``through`` ops (their first input) to the tensor a compute op produced."""
    while tensor in graph.producer and graph.producer[tensor].op_type in through:
        tensor = graph.producer[tensor].inputs[0]
    return tensor


def _trace_up(graph: ModelGraph, tensor: str, stop: str) -> str:
    """Follow ``tensor`` up through reshapes while it has exactly one consumer: the frames tensor."""
    while tensor != stop:
        users = [u for u in graph.consumers.get(tensor, []) if u.op_type not in VALUE_FREE_OPS]
        if len(users) != 1 or users[0].op_type not in RESHAPE_OPS or users[0].inputs[0] != tensor:
            break
        tensor = users[0].outputs[0]
    return tensor


@dataclass
class Plan:
    """Where the parts of a video model meet, and the sub-models that run them (built once per model/output)."""

    logits: str
    boundary: str
    frames: str
    recurrent: list[Node]
    cells: list
    rnn_nodes: list[Node]
    cnn: SubModel | None
    rnn: SubModel | None
    to_frames: SubModel | None


def plan(explainer: "Explainer", logits: str, boundary: str | None) -> Plan:
    """The parts of the model for these logits (cached per explainer)."""
    cache = _PLANS.setdefault(explainer, {})
    key = (logits, boundary)
    if key in cache:
        return cache[key]
    graph = explainer.graph
    path = graph.nodes_between([explainer.input_name], [logits])
    recurrent = [n for n in path if n.op_type in RECURRENT_OPS]
    cells = _find_cells(graph)
    if boundary is not None:
        bound = graph.resolve_tensor(boundary, "boundary")
    elif recurrent or cells:
        candidates = [_trace_down(graph, n.inputs[0], RESHAPE_OPS) for n in recurrent]
        candidates += [_trace_down(graph, t, _STEP_OPS) for c in cells for t in c.x_inputs]
        bound = min(candidates, key=lambda t: graph.producer[t].index if t in graph.producer else -1)
    else:
        raise EbrError(f"no recurrent layer (LSTM/GRU/RNN op or unrolled LSTM cells) between the input and {logits!r}; "
                       "name the RNN→CNN boundary with boundary=…")
    if bound not in graph.signal_tensors([explainer.input_name]):
        raise EbrError(f"boundary {bound!r} does not depend on the input {explainer.input_name!r}")
    frames = _trace_up(graph, explainer.input_name, bound)
    device, threads = explainer.device, explainer.runner.threads
    cnn = SubModel(graph, [frames], [bound], device, threads) if frames != bound else None
    rnn = SubModel(graph, [bound], [logits], device, threads)
    cnn_side = {n.name for n in cnn.nodes} if cnn else set()
    signal = explainer.signal
    if any(n.name in cnn_side and any(o in signal for o in n.outputs) for n in rnn.nodes):
        rnn = None  # the recurrent part reads the CNN elsewhere than at the boundary: run the whole model instead
    to_frames = SubModel(graph, [explainer.input_name], [frames], device, threads) \
        if frames != explainer.input_name else None
    result = Plan(logits, bound, frames, recurrent, cells, graph.nodes_between([bound], [logits]), cnn, rnn,
                  to_frames)
    cache[key] = result
    return result


# -- time -----------------------------------------------------------------------------------------------------------
def _time_axis(graph: ModelGraph, shapes: Mapping[str, tuple], p: Plan, out: np.ndarray, frames: int,
               given: int | None) -> int | None:
    """The logits' time axis: ``given``, else traced from the last recurrent op's Y (:func:`frames.trace_time_axis`:
    through per-step classifier copies too), else the only non-class axis of the frames' length."""
    if given is not None:
        if not -out.ndim <= given < out.ndim or given % out.ndim == out.ndim - 1:
            raise EbrError(f"time_axis {given} is not a non-class axis of the output of shape {out.shape}")
        return given % out.ndim
    shapes = {**shapes, p.logits: out.shape}
    if p.recurrent:
        last = p.recurrent[-1]
        traced = trace_time_axis(graph, shapes, last.outputs[0], int(last.attr("layout", 0)), p.logits)
        if traced is not UNTRACED:
            return traced
    candidates = [a for a in range(out.ndim - 1) if out.shape[a] == frames]
    if len(candidates) > 1:
        raise EbrError(f"cannot tell the time axis of the output of shape {out.shape}; pass time_axis=…")
    return candidates[0] if candidates else None


def _steps(time_step: int | str | Sequence[int], length: int | None) -> list[int]:
    if length is None:
        if time_step in ("all", -1) or (isinstance(time_step, Sequence) and list(time_step) == [-1]):
            return [0]
        raise EbrError(f"the output has no time axis (the classifier sees one step), so time_step={time_step!r} "
                       "cannot be chosen; use -1")
    if time_step == "all":
        return list(range(length))
    if isinstance(time_step, str):
        raise EbrError(f"time_step must be an int, a list of ints or 'all', not {time_step!r}")
    steps = [time_step] if isinstance(time_step, (int, np.integer)) else list(time_step)
    for s in steps:
        if not -length <= int(s) < length:
            raise EbrError(f"time_step {s} is out of range: the output has {length} time steps")
    return sorted({int(s) % length for s in steps})


# -- the method ---------------------------------------------------------------------------------------------------
def explain_recurrent(
    explainer: "Explainer",
    inputs: np.ndarray | Mapping[str, np.ndarray],
    target: Any,
    method: str,
    layer: str | None,
    *,
    prior: np.ndarray | None = None,
    output: str | None = None,
    classifier: str | None = None,
    extra_inputs: Mapping[str, Any] | None = None,
    time_step: int | str | Sequence[int] = -1,
    recurrent_rules: str = "caffe",
    boundary: str | None = None,
    time_axis: int | None = None,
) -> "ExplainResult":
    """EB-R (``ebr``), cEB-R (``cebr``) or BP-R (``gradr``) of one clip; see the module docstring.

    ``time_step``: the step(s) of the output whose target logit is explained (int, list of ints, or ``"all"``).
    ``recurrent_rules``: ``"caffe"`` (the release) or ``"excitation"`` (mass-conserving), see
    :mod:`ebr_onnx.rules.recurrent`. ``boundary``: the RNN→CNN tensor where Eqs. 5–7 apply. ``time_axis``: the time
    axis of the output. ``layer``: a CNN layer (default the input); where the CNN is copied once per frame (tf2onnx's
    ``TimeDistributed``) the name of any one copy — the first copy's is the layer's base name, e.g. ``…/Relu``, the
    others ``…/Relu_3`` — selects them all: ``signal`` stacks theirs in time order, ``info["layer_tensors"]`` names
    them. Returns maps ``(T, h, w)`` (the layer's channel axis, the one fed to Conv, summed; channels-last too) and
    ``temporal`` ``(T,)``.
    """
    from .explainer import ExplainResult, check_finite

    RuleOptions(recurrent_rules=recurrent_rules)
    graph, xp = explainer.graph, explainer.xp
    mode = "grad" if method == "gradr" else "eb"
    logits = explainer.logits_tensor(output)
    p = plan(explainer, logits, boundary)
    layer_t = explainer.layer_tensor(layer)
    if layer_t != p.boundary and layer_t not in _upstream(graph, p.boundary):
        raise EbrError(f"layer {layer_t!r} is not below the RNN→CNN boundary {p.boundary!r}; recurrent methods map "
                       "CNN layers (or the boundary itself)")
    feeds = explainer.feeds(inputs, extra_inputs)
    frames = feeds[p.frames] if p.to_frames is None else p.to_frames.run(feeds, [p.frames])[p.frames]
    layout = _layer_layout(explainer, p, layer_t, feeds)
    cnn = _CnnPass(explainer, p, layout.tensors, mode, frames, feeds)

    # 1. the recurrent part, on the boundary values
    shapes = explainer.shapes_for(feeds)
    overrides, needs = _cell_rules(graph, p, mode, recurrent_rules)
    captures = explainer.capture_plan(p.rnn_nodes, mode, shapes, [logits], needs)
    if p.rnn is None:
        values = explainer.runner.run(feeds, captures + [p.boundary])
    else:
        bound = cnn.boundary_values()
        values = {p.boundary: bound, **p.rnn.run({**feeds, p.boundary: bound}, captures)}
    out = np.asarray(values[logits])
    n_frames = cnn.count
    axis = _time_axis(graph, shapes, p, out, n_frames, time_axis)
    top, k, steps = _top_signal(explainer, out, axis, target, prior, time_step, logits)

    # 2. the RNN backward, the dual pass and the time normalisation
    warns: list[str] = []
    reach = graph.signal_tensors([p.boundary])

    def rnn_pass(negated: frozenset[str]) -> np.ndarray:
        ctx = explainer.context(mode, values, shapes, negated=negated, overrides=overrides,
                                recurrent_rules=recurrent_rules)
        got = walk(ctx, p.rnn_nodes, {logits: xp.asarray(top)}, keep={p.boundary}, reach=reach).get(p.boundary)
        warns.extend(ctx.warnings)
        return np.zeros(ctx.shape(p.boundary), explainer.dtype) if got is None else to_numpy(got)

    pos = rnn_pass(frozenset())
    passes = {"pos": pos}
    if method == "gradr":
        start = pos
    else:
        start = _normalised(pos, "", p.boundary, warns)
        if method == "cebr":
            passes["neg"] = rnn_pass(dual_nodes(explainer, logits, classifier))
            start = start - _normalised(passes["neg"], " of the dual unit", p.boundary, warns)
    if start.shape[0] != n_frames:
        raise EbrError(f"the boundary {p.boundary!r} has shape {start.shape}, whose leading axis is not the "
                       f"{n_frames} frames; name the per-frame tensor with boundary=…")

    # 3. the CNN backward, chunk by chunk
    signal = cnn.backward(start, warns)
    check_finite(signal, method, layer_t)
    maps = layout.maps(signal)
    temporal = maps.reshape(n_frames, -1).sum(axis=1)
    return ExplainResult(
        maps=maps, signal=signal, method=method, layer=layer_t, target=[k], output=out, temporal=temporal,
        mass={"top": np.array([top.sum()]), "boundary": start.reshape(n_frames, -1).sum(axis=1), "layer": temporal},
        warnings=list(dict.fromkeys(warns)),
        info={"logits": logits, "boundary": p.boundary, "frames": p.frames, "time_axis": axis, "time_steps": steps,
              "recurrent_rules": recurrent_rules if mode == "eb" else None, "boundary_signal": start,
              "passes": passes, "layer_tensors": layout.tensors},
    )


def _layer_layout(explainer: "Explainer", p: Plan, layer_t: str, feeds: Mapping[str, np.ndarray]) -> FrameLayout:
    """How ``layer_t`` holds the clip's frames (:func:`frames.frame_layout`; a layer of a CNN copied once per frame
    gives all its copies); one the tracing cannot follow is read as frames on axis 0, channels on axis 1. A clip is
    (N, T, …) when the frames tensor holds its axis 1, else (T, …)."""
    name, graph = explainer.input_name, explainer.graph
    shape = np.shape(feeds[name])
    axis = input_time_axis(graph, name, p.frames, shape)
    if axis is not None:
        try:
            return frame_layout(graph, name, layer_t, time_axis=axis, input_shape=shape,
                                batch_axis=0 if axis > 0 else None)
        except UntracedLayer:
            pass
    rank = len(explainer.shapes_for(feeds).get(layer_t, ()))
    return FrameLayout([layer_t], 0, 1 if rank >= 3 else None, stacked=True)


def _top_signal(explainer: "Explainer", out: np.ndarray, axis: int | None, target: Any, prior: np.ndarray | None,
                time_step: int | str | Sequence[int], logits: str) -> tuple[np.ndarray, int, list[int]]:
    """The prior (Alg. 1): a one-hot 1.0 (or the user's ``prior`` vector) on the class axis at each chosen step."""
    steps = _steps(time_step, None if axis is None else out.shape[axis])
    if int(np.prod([out.shape[a] for a in range(out.ndim - 1) if a != axis])) != 1:
        raise EbrError(f"the output {logits!r} has shape {out.shape}: recurrent methods explain one clip per call")
    moved = out[None] if axis is None else np.moveaxis(out, axis, 0)  # (steps, 1…, classes)
    per_step = moved.reshape(moved.shape[0], -1)
    classes = per_step.shape[1]
    if prior is not None and np.shape(prior)[-1] != classes:
        raise EbrError(f"prior has {np.shape(prior)[-1]} entries, the output has {classes} classes")
    k = _target(explainer, target, per_step[-1], classes)
    top = np.zeros(per_step.shape, explainer.dtype)
    top[steps] = np.asarray(prior, explainer.dtype) if prior is not None else np.eye(classes, dtype=explainer.dtype)[k]
    top = top.reshape(moved.shape)
    return (top[0] if axis is None else np.moveaxis(top, 0, axis)), k, steps


def dual_nodes(explainer: "Explainer", logits: str, classifier: str | None) -> frozenset[str]:
    """The nodes whose weights the dual unit negates (Eq. 2): the classifier, or one per step where the logits are
    (a reshape of) a ``Concat`` of per-step classifiers (unrolled models, tf2onnx's ``TimeDistributed(Dense)``), and
    every linear node that shares their weights."""
    from .explainer import LINEAR_OPS

    graph = explainer.graph
    producer = graph.producer.get(_trace_down(graph, logits, RESHAPE_OPS))
    if classifier is None and producer is not None and producer.op_type == "Concat":
        found = [explainer.find_classifier(t) for t in producer.inputs if t in explainer.signal]
    else:
        found = [explainer.find_classifier(logits, classifier)]
    weights = {t for n in found for t in n.inputs[:2] if graph.is_constant(t)}
    shared = {n.name for n in graph.nodes if n.op_type in LINEAR_OPS and weights & set(n.inputs[:2])}
    return frozenset({n.name for n in found} | shared)


def _upstream(graph: ModelGraph, tensor: str) -> set[str]:
    """Tensors ``tensor`` is computed from."""
    import networkx as nx

    if tensor not in graph.producer:
        return set()
    names = {graph.producer[tensor].name} | nx.ancestors(graph.nx, graph.producer[tensor].name)
    return {t for name in names for t in graph.node_by_name[name].inputs if t}


def _cell_rules(graph: ModelGraph, p: Plan, mode: str, rules: str):
    """The overrides and capture hook of the unrolled cells' rule set (EB mode only)."""
    if mode != "eb" or not p.cells:
        return {}, None
    from .cells import cell_needs, cell_overrides

    return cell_overrides(graph, p.cells, rules), cell_needs(graph, p.cells, rules)


def _target(explainer: "Explainer", target: Any, last: np.ndarray, classes: int) -> int:
    """The class: given by index or name (one per clip), else the one predicted at the last step."""
    if target is None:
        return int(np.argmax(last))
    if isinstance(target, (list, tuple)):
        if len(target) != 1:
            raise EbrError(f"{len(target)} targets given; recurrent methods explain one clip per call")
        target = target[0]
    return explainer.class_index(target, classes)


def _normalised(signal: np.ndarray, which: str, boundary: str, warns: list[str]) -> np.ndarray:
    """Eq. 5/6: ``P / ΣP`` over all frames and units; a zero total gives zeros and a warning."""
    total = float(signal.sum(dtype=np.float64))
    if total == 0.0:
        message = (f"[zero-total] the EB-R pass{which} delivers no signal at the boundary {boundary!r} (total 0: no "
                   "positive classifier weight meets an active unit); its normalised map is set to 0")
        warns.append(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        return np.zeros_like(signal)
    return signal / np.asarray(total, signal.dtype)


class _CnnPass:
    """The CNN part in frame chunks: the boundary values (first pass) and the walk from the boundary to the layer
    (second pass, reusing the first pass's captures when they fit in :data:`KEEP_BYTES`)."""

    def __init__(self, explainer: "Explainer", p: Plan, layers: Sequence[str], mode: str, frames: np.ndarray,
                 feeds: Mapping[str, np.ndarray]) -> None:
        """``layers``: the layer's tensor, or its copies in a CNN run once per frame (their signals are stacked in
        time order on a new leading axis)."""
        self.explainer, self.p, self.layer, self.mode, self.frames, self.feeds = explainer, p, layers[0], mode, \
            frames, feeds
        self.count = int(frames.shape[0])
        graph = explainer.graph
        if p.cnn is None:
            self.targets = [p.boundary]
        else:
            self.targets = list(layers) if set(layers) <= _part_tensors(p.cnn) else [p.frames]
        self.nodes = [] if self.targets == [p.boundary] else graph.nodes_between(self.targets, [p.boundary])
        self.below = [] if self.targets == list(layers) else graph.nodes_between([self.layer], [p.frames])
        self.kept: list[dict[str, np.ndarray]] | None = None
        self._boundary: np.ndarray | None = None
        # set when the CNN part only runs on all frames at once (a batch size fixed at export, one copy per frame)
        self.whole = len(self.targets) > 1

    def chunks(self) -> list[slice]:
        size = self.count if self.whole else self.explainer.batch_size
        return [slice(s, min(s + size, self.count)) for s in range(0, self.count, size)]

    def _chunk_feeds(self, chunk: slice) -> dict[str, np.ndarray]:
        return {**self.feeds, self.p.frames: self.frames[chunk]}

    def _shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        part = self.p.cnn.graph
        return part.concrete_shapes({k: tuple(np.shape(feeds[k])) for k in self.p.cnn.inputs})

    def _captures(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """What the CNN rules read."""
        return self.explainer.capture_plan(self.nodes, self.mode, shapes)

    def boundary_values(self) -> np.ndarray:
        """The boundary for all frames, computed chunk by chunk (keeping the CNN rules' captures if small)."""
        if self._boundary is not None:
            return self._boundary
        if self.p.cnn is None:
            self._boundary = np.asarray(self.frames)
            return self._boundary
        try:
            self._run_chunks()
        except EbrError:
            if self.whole or len(self.chunks()) == 1:
                raise
            self.whole = True
            self._run_chunks()
        return self._boundary

    def _run_chunks(self) -> None:
        parts, kept, size = [], [], 0
        for chunk in self.chunks():
            feeds = self._chunk_feeds(chunk)
            captures = self._captures(self._shapes(feeds))
            values = self.p.cnn.run(feeds, [self.p.boundary] + captures)
            parts.append(values[self.p.boundary] if self.p.boundary in captures else values.pop(self.p.boundary))
            size += sum(np.asarray(v).nbytes for v in values.values())
            if size <= KEEP_BYTES:
                kept.append(values)
            else:
                kept.clear()  # they do not all fit: none is kept (the walk re-runs each chunk)
        self.kept = kept if len(kept) == len(parts) else None
        self._boundary = np.concatenate(parts)

    def _walk(self, i: int, chunk: slice, start: np.ndarray, warns: list[str]) -> np.ndarray:
        """Eq. 9 on one chunk of frames, with the first pass's captures or a new run of the CNN part."""
        explainer = self.explainer
        feeds = self._chunk_feeds(chunk)
        shapes = self._shapes(feeds)
        captures = self._captures(shapes)
        if self.kept is not None:
            values, self.kept[i] = self.kept[i], {}  # each chunk is walked once: its captures go as the walk goes
        else:
            values = self.p.cnn.run(feeds, [self.p.boundary] + captures)  # the first pass's session
        ctx = explainer.context(self.mode, {**values, self.p.frames: feeds[self.p.frames]}, shapes,
                                owns_values=True)
        del values
        got = walk(ctx, self.nodes, {self.p.boundary: explainer.xp.asarray(start[chunk])}, keep=set(self.targets),
                   reach=explainer.graph.signal_tensors(self.targets), release=True)
        warns.extend(ctx.warnings)
        parts = [np.zeros(ctx.shape(t), explainer.dtype) if got.get(t) is None else to_numpy(got[t])
                 for t in self.targets]
        return parts[0] if len(parts) == 1 else np.stack(parts)

    def backward(self, start: np.ndarray, warns: list[str]) -> np.ndarray:
        """Eq. 9 from the boundary to the layer, per chunk of frames; then through the input's reshapes if needed."""
        explainer, xp = self.explainer, self.explainer.xp
        if not self.nodes:
            signal = start
        else:
            try:
                signal = np.concatenate([self._walk(i, chunk, start, warns) for i, chunk in enumerate(self.chunks())])
            except EbrError:
                if self.whole or len(self.chunks()) == 1:
                    raise
                self.whole, self.kept = True, None
                signal = self._walk(0, self.chunks()[0], start, warns)
        if self.below:
            shapes = explainer.shapes_for(self.feeds)
            ctx = explainer.context(self.mode, dict(self.feeds), shapes)
            got = walk(ctx, self.below, {self.p.frames: xp.asarray(signal)}, keep={self.layer}).get(self.layer)
            warns.extend(ctx.warnings)
            signal = to_numpy(got)
        return signal


def _part_tensors(part: SubModel) -> set[str]:
    return {t for n in part.nodes for t in (*n.inputs, *n.outputs) if t}
