"""The recurrent methods EB-R, cEB-R and BP-R (paper Alg. 1, Eqs. 1–9; ``shared/spec/caffe-reference.md`` §1.4–1.8).

A video model is read as three parts (:mod:`.plan`): a per-frame CNN from the *frames* tensor up to the RNN→CNN
*boundary*, and the recurrent part from the boundary to the logits.

1. **RNN backward.** A prior — a one-hot 1.0 on the target's pre-softmax logit at ``time_step`` (default the last;
   several steps or ``"all"`` sum their one-hots; :mod:`.steps`) — is propagated to the boundary: ``P`` (Eqs. 1, 3).
   The recurrent ops use :mod:`ebr_onnx.rules.recurrent` (unrolled cells: :mod:`.cell_rules`) with
   ``recurrent_rules``. ``cebr`` repeats the pass with the classifier's weights negated (bias untouched): ``P̄``
   (Eqs. 2, 4).
2. **Temporal normalisation** (Eqs. 5–7, spec §1.6): ``ebr``: ``M = P / ΣP``; ``cebr``: ``M = P / ΣP − P̄ / ΣP̄``,
   each total over all frames and units. A zero total sets that term to 0 with a warning. ``gradr`` skips this.
3. **CNN backward** (Eqs. 8–9): ``M`` continues once (the rules are linear) down to ``layer``, in chunks of
   ``batch_size`` frames (:mod:`.cnn_pass`).

The time axis of the logits is traced from the recurrent op's Y, through per-step classifier copies stacked again
(``time_axis=`` overrides); the layer's frames (stacked, on a time axis, or one CNN copy per frame) and channel axis
are traced by :func:`.frames.frame_layout`. ``res.temporal`` holds the per-frame sums of the maps, the evidence curve
of the paper's temporal localisation (Sec. 4.1).
"""
from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Callable, Mapping

import numpy as np

from ..core.backend import to_numpy
from ..core.context import RuleFn
from ..core.engine import Engine
from ..core.errors import EbrError
from ..core.graph import ModelGraph, Node
from ..core.options import RuleOptions
from ..core.request import ExplainRequest
from ..core.result import ExplainInfo, ExplainResult, Mass, Passes, check_finite
from ..core.targets import dual_nodes, logits_tensor
from ..core.walk import walk
from .cell_rules import cell_needs, cell_overrides
from .cnn_pass import CnnPass
from .frames import FrameLayout, UntracedLayer, frame_layout, input_time_axis
from .plan import Plan, build_plan
from .steps import time_axis, top_signal

RECURRENT_METHODS = ("ebr", "cebr", "gradr")


class RecurrentMethod:
    """``ebr``, ``cebr`` and ``gradr`` on one clip; the parts of the model (:class:`~.plan.Plan`) are built once per
    logits and boundary and kept with their forward sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._plans: dict[tuple[str, str | None], Plan] = {}

    def plan(self, logits: str, boundary: str | None) -> Plan:
        key = (logits, boundary)
        if key not in self._plans:
            self._plans[key] = build_plan(self.engine, logits, boundary)
        return self._plans[key]

    def explain(self, request: ExplainRequest) -> ExplainResult:
        """EB-R (``ebr``), cEB-R (``cebr``) or BP-R (``gradr``) of one clip; see the module docstring. Returns maps
        ``(T, h, w)`` (the layer's channel axis, the one fed to Conv, summed; channels-last too) and ``temporal``
        ``(T,)``; where the CNN is copied once per frame, the layer names any one copy and ``signal`` stacks all of
        theirs in time order (``info.layer_tensors`` names them)."""
        engine = self.engine
        graph, xp, mode, method = engine.graph, engine.xp, request.mode, request.method
        options = replace(engine.options, recurrent_rules=request.recurrent_rules)
        logits = logits_tensor(graph, request.output)
        p = self.plan(logits, request.boundary)
        layer_t = engine.input_name if request.layer in (None, "input") else graph.resolve_tensor(request.layer,
                                                                                                     "layer")
        if layer_t != p.boundary and layer_t not in graph.upstream(p.boundary):
            raise EbrError(f"layer {layer_t!r} is not below the RNN→CNN boundary {p.boundary!r}; recurrent methods "
                           "map CNN layers (or the boundary itself)")
        with engine.blas():
            feeds = engine.feeds(request.inputs, request.extra_inputs)
            frames = feeds[p.frames] if p.to_frames is None else p.to_frames.run(feeds, [p.frames])[p.frames]
            layout = _layer_layout(engine, p, layer_t, feeds)
            cnn = CnnPass(engine, p, layout.tensors, mode, frames, feeds, request.progress)

            # 1. the recurrent part, on the boundary values
            shapes = engine.shapes_for(feeds)
            overrides, needs = _cell_rules(graph, p, mode, options)
            captures = engine.capture_plan(p.rnn_nodes, mode, shapes, [logits], needs)
            if p.rnn is None:
                values = engine.runner.run(feeds, captures + [p.boundary])
            else:
                bound = cnn.boundary_values()
                values = {p.boundary: bound, **p.rnn.run({**feeds, p.boundary: bound}, captures)}
            out = np.asarray(values[logits])
            n_frames = cnn.count
            axis = time_axis(graph, shapes, p, out, n_frames, request.time_axis)
            top, k, steps = top_signal(engine.labels, out, axis, request.target, request.prior, request.time_step,
                                       logits, engine.dtype)

            # 2. the RNN backward, the dual pass and the time normalisation
            warns: list[str] = []
            reach = graph.signal_tensors([p.boundary])

            def rnn_pass(negated: frozenset[str]) -> np.ndarray:
                ctx = engine.context(mode, values, shapes, negated=negated, overrides=overrides, options=options)
                got = walk(ctx, p.rnn_nodes, {logits: xp.asarray(top)}, keep={p.boundary}, reach=reach).get(p.boundary)
                warns.extend(ctx.warnings)
                return np.zeros(ctx.shape(p.boundary), engine.dtype) if got is None else to_numpy(got)

            passes = Passes(pos=rnn_pass(frozenset()))
            if method == "gradr":
                start = passes.pos
            else:
                start, warning = _normalised(passes.pos, "", p.boundary)
                warns.extend([warning] if warning else [])
                if method == "cebr":
                    passes = replace(passes, neg=rnn_pass(dual_nodes(graph, engine.signal, logits,
                                                                     request.classifier)))
                    dual, warning = _normalised(passes.neg, " of the dual unit", p.boundary)
                    warns.extend([warning] if warning else [])
                    start = start - dual
            if start.shape[0] != n_frames:
                raise EbrError(f"the boundary {p.boundary!r} has shape {start.shape}, whose leading axis is not the "
                               f"{n_frames} frames; name the per-frame tensor with boundary=…")

            # 3. the CNN backward, chunk by chunk
            signal = cnn.backward(start)
            warns.extend(cnn.warnings)
        check_finite(signal, method, layer_t)
        maps = layout.maps(signal)
        temporal = maps.reshape(n_frames, -1).sum(axis=1)
        return ExplainResult(
            maps=maps, signal=signal, method=method, layer=layer_t, target=[k], output=out, temporal=temporal,
            mass=Mass(top=np.array([top.sum()]), layer=temporal, boundary=start.reshape(n_frames, -1).sum(axis=1)),
            info=ExplainInfo(logits=logits, boundary=p.boundary, frames=p.frames, time_axis=axis, time_steps=steps,
                             recurrent_rules=options.recurrent_rules if mode == "eb" else None,
                             boundary_signal=start, passes=passes, layer_tensors=layout.tensors),
            warnings=list(dict.fromkeys(warns)),
        )


def _layer_layout(engine: Engine, p: Plan, layer_t: str, feeds: Mapping[str, np.ndarray]) -> FrameLayout:
    """How ``layer_t`` holds the clip's frames (:func:`.frames.frame_layout`; a layer of a CNN copied once per frame
    gives all its copies); one the tracing cannot follow is read as frames on axis 0, channels on axis 1. A clip is
    (N, T, …) when the frames tensor holds its axis 1, else (T, …)."""
    name, graph = engine.input_name, engine.graph
    shape = np.shape(feeds[name])
    axis = input_time_axis(graph, name, p.frames, shape)
    if axis is not None:
        try:
            return frame_layout(graph, name, layer_t, time_axis=axis, input_shape=shape,
                                batch_axis=0 if axis > 0 else None)
        except UntracedLayer:
            pass
    rank = len(engine.shapes_for(feeds).get(layer_t, ()))
    return FrameLayout([layer_t], 0, 1 if rank >= 3 else None, stacked=True)


def _cell_rules(graph: ModelGraph, p: Plan, mode: str, options: RuleOptions
                ) -> tuple[dict[str, RuleFn], Callable[[Node], list[str] | None] | None]:
    """The overrides and capture hook of the unrolled cells' rule set (EB mode only)."""
    if mode != "eb" or not p.cells:
        return {}, None
    return cell_overrides(graph, p.cells, options.recurrent_rules), cell_needs(graph, p.cells, options.recurrent_rules)


def _normalised(signal: np.ndarray, which: str, boundary: str) -> tuple[np.ndarray, str | None]:
    """Eq. 5/6: ``P / ΣP`` over all frames and units; a zero total gives zeros and a warning (returned, and issued
    as a RuntimeWarning)."""
    total = float(signal.sum(dtype=np.float64))
    if total == 0.0:
        message = (f"[zero-total] the EB-R pass{which} delivers no signal at the boundary {boundary!r} (total 0: no "
                   "positive classifier weight meets an active unit); its normalised map is set to 0")
        warnings.warn(message, RuntimeWarning, stacklevel=4)  # at the caller of Explainer.explain
        return np.zeros_like(signal), message
    return signal / np.asarray(total, signal.dtype), None
