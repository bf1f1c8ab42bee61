"""The CNN methods (paper Table 1): ``eb`` (Excitation Backprop, Eq. 8 from a one-hot prior on the target's
pre-softmax logit), ``ceb`` (contrastive EB: minus the pass of the dual unit whose classifier weights are negated,
Eq. 2, subtracted at the classifier's input as the CNN release does, then continued once), ``grad`` (the gradient of
the target logit, BP) and ``grad_x_input`` (gradient × activation at the layer).

On a 3-D CNN (:mod:`.volume`) the clip is checked against the model before the forward, and a layer that keeps time
gives maps (N, T', h, w) and an evidence curve ``temporal`` (N, T') with their receptive fields over the input's
frames and pixels (``info.map_fields``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.engine import Engine
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.ops import RECURRENT_OPS
from ..core.receptive import FieldTrace
from ..core.request import ExplainRequest
from ..core.result import ExplainInfo, ExplainResult, Mass, check_finite
from ..core.targets import Target, cnn_prior, cnn_scores, dual_nodes, find_classifier, logits_tensor, target_classes
from ..core.walk import walk
from ..passes.cells import find_cells
from ..recurrent.frames import frame_layout, trace_time_axis
from .volume import VolumeLayout, check_clip, map_fields, volume_layout

CNN_METHODS = ("eb", "ceb", "grad", "grad_x_input")


@dataclass(frozen=True)
class _Walk:
    """The nodes of one explanation: from ``logits`` down to ``layer``; for ``ceb`` the nodes the dual unit negates
    (the classifier, or one copy per step, and the nodes sharing their weights), their signal inputs, the nodes
    above those inputs (walked twice: the target and the dual unit) and the rest below them."""

    logits: str
    layer: str
    nodes: list[Node]
    reach: set[str]
    recurrent: bool = False
    negated: frozenset[str] = frozenset()
    classifier_inputs: tuple[str, ...] = ()
    top: tuple[Node, ...] = ()
    rest: tuple[Node, ...] = ()


class CnnMethod:
    """``eb``, ``ceb``, ``grad`` and ``grad_x_input`` on a model's examples, in chunks of ``engine.batch_size``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._channels: dict[tuple[str, tuple[int, ...]], int] = {}
        self._volume: list[VolumeLayout | None] = []
        self._cells: bool | None = None

    def explain(self, request: ExplainRequest) -> ExplainResult:
        engine = self.engine
        plan = self._plan(request)
        feeds = engine.feeds(request.inputs, request.extra_inputs)
        layout = self.volume()
        fields = check_clip(engine.graph, layout, np.shape(feeds[engine.input_name])) if layout else None
        examples = len(feeds[engine.input_name])
        target = request.target
        per_example = target is not None and not isinstance(target, (str, int, np.integer))
        if per_example and len(list(target)) != examples:
            raise EbrError(f"{len(list(target))} targets given for {examples} examples")
        priors = np.asarray(request.prior) if request.prior is not None else None
        # a recurrence on the path reads the examples' axis as time: the batch is not cut into chunks
        chunks = [(slice(0, examples), feeds)] if plan.recurrent else engine.batches(feeds)
        results = []
        with engine.blas():
            for i, (rows, batch) in enumerate(chunks):
                results.append(self._chunk(request, plan, batch, list(target)[rows] if per_example else target,
                                           priors[rows] if priors is not None and priors.ndim == 2 else priors,
                                           fields))
                request.report((i + 1) / len(chunks))
        return ExplainResult(
            maps=np.concatenate([r.maps for r in results]),
            signal=np.concatenate([r.signal for r in results]),
            method=request.method, layer=plan.layer,
            target=[k for r in results for k in r.target],
            output=np.concatenate([r.output for r in results]),
            mass=Mass(top=np.concatenate([r.mass.top for r in results]),
                      layer=np.concatenate([r.mass.layer for r in results])),
            info=results[0].info,
            temporal=None if results[0].temporal is None else np.concatenate([r.temporal for r in results]),
            warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
        )

    def volume(self) -> VolumeLayout | None:
        """The clip layout of the model's input where it is a 3-D CNN (found once)."""
        if not self._volume:
            self._volume.append(volume_layout(self.engine.graph, self.engine.input_name))
        return self._volume[0]

    def _plan(self, request: ExplainRequest) -> _Walk:
        engine, graph = self.engine, self.engine.graph
        logits = logits_tensor(graph, request.output)
        layer = engine.input_name if request.layer in (None, "input") else graph.resolve_tensor(request.layer, "layer")
        nodes = graph.nodes_between([layer], [logits])
        if layer != logits and not nodes:
            raise EbrError(f"layer {layer!r} is not below the output {logits!r} on a signal path")
        reach = graph.signal_tensors([layer])
        recurrent = any(n.op_type in RECURRENT_OPS for n in nodes) or self._has_cells()
        if request.method != "ceb":
            return _Walk(logits, layer, nodes, reach, recurrent)
        negated = dual_nodes(graph, engine.signal, logits, request.classifier)
        inputs = tuple(dict.fromkeys(next(t for t in graph.node_by_name[name].inputs if t in engine.signal)
                                     for name in sorted(negated) if name in {n.name for n in nodes}))
        top = graph.nodes_between(list(inputs), [logits])
        return _Walk(logits, layer, nodes, reach, recurrent, negated, inputs, tuple(top),
                     tuple(n for n in nodes if n not in top))

    def _has_cells(self) -> bool:
        """Whether the model has unrolled recurrent cells (looked for once)."""
        if self._cells is None:
            self._cells = bool(find_cells(self.engine.graph, [self.engine.input_name]))
        return self._cells

    def _maps(self, signal: np.ndarray, layer: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """The signal summed over the layer's channel axis — the one the graph feeds to a Conv as channels, so
        channels-last layers are summed right (axis 1 where none can be told); 2-D signals as they are."""
        if signal.ndim < 3:
            return signal
        return signal.sum(axis=self._channel_axis(layer, feeds))

    def _channel_axis(self, layer: str, feeds: dict[str, np.ndarray]) -> int:
        shape = tuple(np.shape(feeds[self.engine.input_name]))
        key = (layer, shape)
        if key not in self._channels:
            try:
                axis = frame_layout(self.engine.graph, self.engine.input_name, layer, time_axis=0, input_shape=shape,
                                    batch_axis=None).channel_axis
            except EbrError:
                axis = None
            self._channels[key] = 1 if axis is None or axis == 0 else axis
        return self._channels[key]

    def _timed_maps(self, signal: np.ndarray, layer: str, feeds: dict[str, np.ndarray], fields: FieldTrace | None
                    ) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        """The maps, and for a 3-D CNN's layer that keeps time: the maps as (N, T', h, w), the evidence per time
        slice (N, T') and the receptive fields of the maps' axes."""
        maps = self._maps(signal, layer, feeds)
        layout = self.volume()
        placed = None if fields is None or layout is None else map_fields(
            fields, layout, layer, self._channel_axis(layer, feeds), signal.shape)
        if placed is None:
            return maps, None, ()
        order, axis_fields = placed
        maps = np.ascontiguousarray(maps.transpose(order))
        return maps, maps.sum(axis=(2, 3)), axis_fields

    def _chunk(self, request: ExplainRequest, plan: _Walk, feeds: dict[str, np.ndarray], target: Target,
               prior: np.ndarray | None, fields: FieldTrace | None) -> ExplainResult:
        engine, mode, layer = self.engine, request.mode, plan.layer
        shapes = engine.shapes_for(feeds)
        extra = [plan.logits] + ([layer] if request.method == "grad_x_input" else [])
        values = engine.runner.run(feeds, engine.capture_plan(plan.nodes, mode, shapes, extra), keep_on_device=True)
        out = to_numpy(values[plan.logits])
        n = out.shape[0]
        if n != len(feeds[engine.input_name]):
            raise EbrError(f"the output {plan.logits!r} {out.shape} does not hold one row per example on its axis 0 "
                           f"(the input has {len(feeds[engine.input_name])}): it is a recurrent output (time first, or "
                           "frames as time); explain it with ebr, cebr or gradr")
        axis = _class_axis(engine, plan.logits, request.classifier, shapes)
        targets = target_classes(engine.labels, target, cnn_scores(out, axis))
        top = cnn_prior(out, targets, prior, engine.dtype, axis)
        ctx = engine.context(mode, values, shapes, owns_values=True)
        xp = engine.xp
        seeds = {plan.logits: xp.asarray(top)}
        if not plan.negated:
            signal = walk(ctx, plan.nodes, seeds, keep={layer}, reach=plan.reach, release=True).get(layer)
        else:
            inputs = set(plan.classifier_inputs)
            pos = walk(ctx, list(plan.top), seeds, keep=inputs)
            dual_ctx = engine.context(mode, values, shapes, negated=plan.negated)
            neg = walk(dual_ctx, list(plan.top), seeds, keep=inputs)
            ctx.warnings.extend(w for w in dual_ctx.warnings if w not in ctx.warnings)
            starts = {t: _difference(xp, pos.get(t), neg.get(t), ctx.shape(t), engine.dtype) for t in inputs}
            signal = starts[layer] if layer in starts else walk(
                ctx, list(plan.rest), starts, keep={layer}, reach=plan.reach, release=True).get(layer)
        signal = to_numpy(signal) if signal is not None else np.zeros(ctx.shape(layer), engine.dtype)
        if request.method == "grad_x_input":
            signal = signal * np.asarray(to_numpy(values[layer] if layer in values else feeds[layer]), engine.dtype)
        check_finite(signal, request.method, layer)
        maps, temporal, axis_fields = self._timed_maps(signal, layer, feeds, fields)
        return ExplainResult(
            maps=maps, signal=signal, method=request.method, layer=layer, target=targets, output=out,
            mass=Mass(top=top.reshape(n, -1).sum(axis=1), layer=signal.reshape(n, -1).sum(axis=1)),
            info=ExplainInfo(logits=plan.logits, map_fields=axis_fields), temporal=temporal, warnings=ctx.warnings,
        )


def _class_axis(engine: Engine, logits: str, classifier: str | None, shapes: dict[str, tuple[int, ...]]
                ) -> int | None:
    """The logits' class axis, traced from the classifier's (a Conv's channels, a Gemm's or MatMul's last axis)
    through the layout ops above it (a channels-last segmenter's Transpose); None where no classifier is found or the
    trace stops (then :func:`~ebr_onnx.core.targets.class_axis` decides by rank)."""
    graph = engine.graph
    try:
        node = find_classifier(graph, engine.signal, logits, classifier)
    except EbrError:
        return None
    out = node.outputs[0]
    rank = len(shapes.get(out, ()))
    if not rank or logits not in shapes:
        return None
    axis = trace_time_axis(graph, shapes, out, 1 if node.op_type == "Conv" else rank - 1, logits)
    return axis if isinstance(axis, int) else None


def _difference(xp: Any, pos: Any, neg: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``pos − neg`` where either pass may have delivered no signal (then it counts as zeros)."""
    zero = xp.zeros(shape, dtype=dtype)
    return (zero if pos is None else pos) - (zero if neg is None else neg)
