"""The recurrent methods EB-R, cEB-R and BP-R (paper Alg. 1, Eqs. 1–9; ``shared/spec/caffe-reference.md`` §1.4–1.8).

A video model is read as three parts (:mod:`.plan`): a per-frame CNN from the *frames* tensor up to the RNN→CNN
*boundary*, and the recurrent part from the boundary to the logits.

1. **RNN backward.** A prior — a one-hot 1.0 on the target's pre-softmax logit at ``time_step`` (default the last;
   several steps or ``"all"`` sum their one-hots; :mod:`.steps`; a captioner's word steps ``"first"``, ``"last"`` or
   a word, and several words one pass each: :mod:`.words`) — is propagated to the boundary: ``P`` (Eqs. 1, 3).
   The recurrent ops use :mod:`ebr_onnx.rules.recurrent` (unrolled cells: :mod:`.cell_rules`) with
   ``recurrent_rules``. ``cebr`` repeats the pass with the classifier's weights negated (bias untouched): ``P̄``
   (Eqs. 2, 4).
2. **Temporal normalisation** (Eqs. 5–7, spec §1.6): ``ebr``: ``M = P / ΣP``; ``cebr``: ``M = P / ΣP − P̄ / ΣP̄``,
   each total over all frames and units. A zero total sets that term to 0 with a warning. ``gradr`` skips this.
   On a GPU the passes, the normalisation and the CNN walk stay on the device (:mod:`ebr_onnx.core.device` lists
   the host reads: the logits, one read of the totals per pass, the results).
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
from typing import Any, Callable, Mapping, Sequence

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
from .frames import FrameLayout, UntracedLayer, band_sums, frame_layout, input_time_axis, spatial_time_axis
from .plan import Plan, build_plan
from .sequences import sequence_axis, sequence_frames, sequence_priors
from .steps import recurrence_length, time_axis
from .words import caption_spec, caption_words, explain_words, several_words, word_time_step

RECURRENT_METHODS = ("ebr", "cebr", "gradr")


class RecurrentMethod:
    """``ebr``, ``cebr`` and ``gradr`` on one clip; the parts of the model (:class:`~.plan.Plan`) are built once per
    logits and boundary and kept with their forward sessions."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._plans: dict[tuple[str, str | None], Plan] = {}
        #: What the model's metadata says about a caption's words (a captioner's; :mod:`.words`).
        self.spec = caption_spec(engine.graph, engine.input_name, engine.labels)

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
            frames = engine.on_device(feeds[p.frames]) if p.to_frames is None else \
                p.to_frames.run(feeds, [p.frames], keep_on_device=True)[p.frames]
            layout = _layer_layout(engine, p, layer_t, feeds)
            cnn = CnnPass(engine, p, layout.tensors, mode, frames, feeds, request.progress)

            # 1. the recurrent part, on the boundary values
            shapes = engine.shapes_for(feeds)
            overrides, needs = _cell_rules(graph, p, mode, options)
            # every tensor of the recurrent part is captured: their run-time shapes trace time (declared ones lie)
            captures = sorted(set(engine.capture_plan(p.rnn_nodes, mode, shapes, [logits], needs))
                              | {o for n in p.rnn_nodes for o in n.outputs if o})
            if p.rnn is None:
                values = engine.runner.run(feeds, captures + [p.boundary], keep_on_device=True)
            else:
                bound = cnn.boundary_values()
                values = {p.boundary: bound, **p.rnn.run({**feeds, p.boundary: bound}, captures, keep_on_device=True)}
            shapes = {**shapes, **{k: tuple(np.shape(v)) for k, v in values.items()}}
            out = to_numpy(values[logits])
            n_frames = cnn.count
            length = recurrence_length(p, shapes)
            axis = time_axis(graph, shapes, p, out, length or n_frames, request.time_axis)
            seq_axis, count = sequence_axis(out, axis)
            words = caption_words(self.spec, engine.labels, out, axis, seq_axis, feeds)  # a captioner's, else None
            if words is not None and several_words(request.target):
                return explain_words(self.explain, request)  # several words of one caption: one pass each
            time_step = word_time_step(request.time_step, request.target, words, self.spec, engine.labels)
            groups = [np.arange(n_frames)] if count == 1 else \
                sequence_frames(engine, p, values[p.boundary], count, feeds)
            top, classes, steps = sequence_priors(engine.labels, out, axis, seq_axis, request.target, request.prior,
                                                  time_step, logits, engine.dtype)

            # 2. the RNN backward, the dual pass and the time normalisation
            warns: list[str] = []
            reach = graph.signal_tensors([p.boundary])

            def rnn_pass(negated: frozenset[str]) -> Any:
                ctx = engine.context(mode, values, shapes, negated=negated, overrides=overrides, options=options)
                got = walk(ctx, p.rnn_nodes, {logits: xp.asarray(top)}, keep={p.boundary}, reach=reach).get(p.boundary)
                warns.extend(ctx.warnings)
                return xp.zeros(ctx.shape(p.boundary), engine.dtype) if got is None else got

            pos, neg = rnn_pass(frozenset()), None
            if pos.shape[0] != n_frames:
                raise EbrError(f"the boundary {p.boundary!r} has shape {pos.shape}, whose leading axis is not "
                               f"the {n_frames} frames; name the per-frame tensor with boundary=…")
            if method == "gradr":
                start = pos
            else:
                start = _normalised(xp, pos, groups, "", p.boundary, warns)
                if method == "cebr":
                    neg = rnn_pass(dual_nodes(graph, engine.signal, logits, request.classifier))
                    start = start - _normalised(xp, neg, groups, " of the dual unit", p.boundary, warns)

            # 3. the CNN backward, chunk by chunk
            signal = to_numpy(cnn.backward(start))
            warns.extend(cnn.warnings)
            passes = Passes(pos=to_numpy(pos), neg=None if neg is None else to_numpy(neg))
            start = to_numpy(start)
        check_finite(signal, method, layer_t)
        all_maps = layout.maps(signal, len(groups))
        spatial = spatial_time_axis(graph, shapes, p.boundary, p.recurrent, length, len(groups[0]),
                                    engine.input_name)
        maps, temporal, boundary_mass = [], [], []
        for frames_of in groups:
            if spatial is None:
                maps.append(all_maps[frames_of])
                temporal.append(maps[-1].reshape(len(frames_of), -1).sum(axis=1))
                boundary_mass.append(start[frames_of].reshape(len(frames_of), -1).sum(axis=1))
            else:  # one image whose recurrence runs along a spatial axis (a CRNN): its map, evidence per band
                maps.append(all_maps[frames_of[0]])
                temporal.append(band_sums(maps[-1], spatial, length))
                boundary_mass.append(np.moveaxis(start[frames_of[0]], spatial, 0).reshape(length, -1).sum(axis=1))
        one = len(groups) == 1
        maps, temporal, boundary_mass = ((x[0] if one else np.stack(x)) for x in (maps, temporal, boundary_mass))
        return ExplainResult(
            maps=maps, signal=signal, method=method, layer=layer_t, target=classes, output=out, temporal=temporal,
            mass=Mass(top=top.reshape(len(groups), -1).sum(axis=1) if seq_axis is None else
                      np.moveaxis(top, seq_axis, 0).reshape(len(groups), -1).sum(axis=1),
                      layer=temporal, boundary=boundary_mass),
            info=ExplainInfo(logits=logits, boundary=p.boundary, frames=p.frames, time_axis=axis, time_steps=steps,
                             recurrent_rules=options.recurrent_rules if mode == "eb" else None,
                             boundary_signal=start, passes=passes, layer_tensors=layout.tensors, caption=words),
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


def _normalised(xp: Any, signal: Any, groups: Sequence[np.ndarray], which: str, boundary: str,
                warns: list[str]) -> Any:
    """Eq. 5/6 for each sequence: ``P / ΣP`` over its frames and all units, on the walk's device (one host read of
    the totals: a zero total gives zeros and a warning, added to ``warns`` and issued as a RuntimeWarning)."""
    whole = len(groups) == 1 and len(groups[0]) == signal.shape[0] and bool((groups[0] == np.arange(
        signal.shape[0])).all())
    index = [slice(None) if whole else xp.asarray(frames) for frames in groups]
    totals = xp.stack([signal[i].sum(dtype=np.float64) for i in index])
    out = xp.zeros_like(signal)
    for n, total in enumerate(to_numpy(totals)):
        if total == 0.0:
            which_sequence = f" (sequence {n})" if len(groups) > 1 else ""
            message = (f"[zero-total] the EB-R pass{which}{which_sequence} delivers no signal at the boundary "
                       f"{boundary!r} (total 0: no positive classifier weight meets an active unit); its normalised "
                       "map is set to 0")
            warnings.warn(message, RuntimeWarning, stacklevel=4)  # at the caller of Explainer.explain
            warns.append(message)
            continue
        out[index[n]] = signal[index[n]] / totals[n].astype(signal.dtype)
    return out
