"""The CNN methods (paper Table 1): ``eb`` (Excitation Backprop, Eq. 8 from a one-hot prior on the target's
pre-softmax logit), ``ceb`` (contrastive EB: minus the pass of the dual unit whose classifier weights are negated,
Eq. 2, subtracted at the classifier's input as the CNN release does, then continued once), ``grad`` (the gradient of
the target logit, BP) and ``grad_x_input`` (gradient × activation at the layer)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.backend import to_numpy
from ..core.engine import Engine
from ..core.errors import EbrError
from ..core.graph import Node
from ..core.request import ExplainRequest
from ..core.result import ExplainInfo, ExplainResult, Mass, channel_sum, check_finite
from ..core.targets import Target, cnn_prior, cnn_scores, find_classifier, logits_tensor, target_classes
from ..core.walk import walk

CNN_METHODS = ("eb", "ceb", "grad", "grad_x_input")


@dataclass(frozen=True)
class _Walk:
    """The nodes of one explanation: from ``logits`` down to ``layer``; for ``ceb`` the classifier and its signal
    input, the nodes above that input (walked twice: the target and the dual unit) and the rest below it."""

    logits: str
    layer: str
    nodes: list[Node]
    reach: set[str]
    classifier: Node | None = None
    classifier_input: str = ""
    top: tuple[Node, ...] = ()
    rest: tuple[Node, ...] = ()


class CnnMethod:
    """``eb``, ``ceb``, ``grad`` and ``grad_x_input`` on a model's examples, in chunks of ``engine.batch_size``."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def explain(self, request: ExplainRequest) -> ExplainResult:
        engine = self.engine
        plan = self._plan(request)
        feeds = engine.feeds(request.inputs, request.extra_inputs)
        examples = len(feeds[engine.input_name])
        target = request.target
        per_example = target is not None and not isinstance(target, (str, int, np.integer))
        if per_example and len(list(target)) != examples:
            raise EbrError(f"{len(list(target))} targets given for {examples} examples")
        priors = np.asarray(request.prior) if request.prior is not None else None
        chunks = engine.batches(feeds)
        results = []
        with engine.blas():
            for i, (rows, batch) in enumerate(chunks):
                results.append(self._chunk(request, plan, batch, list(target)[rows] if per_example else target,
                                           priors[rows] if priors is not None and priors.ndim == 2 else priors))
                request.report((i + 1) / len(chunks))
        return ExplainResult(
            maps=np.concatenate([r.maps for r in results]),
            signal=np.concatenate([r.signal for r in results]),
            method=request.method, layer=plan.layer,
            target=[k for r in results for k in r.target],
            output=np.concatenate([r.output for r in results]),
            mass=Mass(top=np.concatenate([r.mass.top for r in results]),
                      layer=np.concatenate([r.mass.layer for r in results])),
            info=ExplainInfo(logits=plan.logits),
            warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
        )

    def _plan(self, request: ExplainRequest) -> _Walk:
        engine, graph = self.engine, self.engine.graph
        logits = logits_tensor(graph, request.output)
        layer = engine.input_name if request.layer in (None, "input") else graph.resolve_tensor(request.layer, "layer")
        nodes = graph.nodes_between([layer], [logits])
        if layer != logits and not nodes:
            raise EbrError(f"layer {layer!r} is not below the output {logits!r} on a signal path")
        reach = graph.signal_tensors([layer])
        if request.method != "ceb":
            return _Walk(logits, layer, nodes, reach)
        cls = find_classifier(graph, engine.signal, logits, request.classifier)
        cls_input = next(t for t in cls.inputs if t in engine.signal)
        top = graph.nodes_between([cls_input], [logits])
        return _Walk(logits, layer, nodes, reach, cls, cls_input, tuple(top), tuple(n for n in nodes if n not in top))

    def _chunk(self, request: ExplainRequest, plan: _Walk, feeds: dict[str, np.ndarray], target: Target,
               prior: np.ndarray | None) -> ExplainResult:
        engine, mode, layer = self.engine, request.mode, plan.layer
        shapes = engine.shapes_for(feeds)
        extra = [plan.logits] + ([layer] if request.method == "grad_x_input" else [])
        values = engine.runner.run(feeds, engine.capture_plan(plan.nodes, mode, shapes, extra))
        out = values[plan.logits]
        n = out.shape[0]
        targets = target_classes(engine.labels, target, cnn_scores(out))
        top = cnn_prior(out, targets, prior, engine.dtype)
        ctx = engine.context(mode, values, shapes, owns_values=True)
        xp = engine.xp
        seeds = {plan.logits: xp.asarray(top)}
        if plan.classifier is None:
            signal = walk(ctx, plan.nodes, seeds, keep={layer}, reach=plan.reach, release=True).get(layer)
        else:
            cls_input = plan.classifier_input
            pos = walk(ctx, list(plan.top), seeds, keep={cls_input}).get(cls_input)
            dual_ctx = engine.context(mode, values, shapes, negated=frozenset({plan.classifier.name}))
            neg = walk(dual_ctx, list(plan.top), seeds, keep={cls_input}).get(cls_input)
            ctx.warnings.extend(w for w in dual_ctx.warnings if w not in ctx.warnings)
            start = _difference(xp, pos, neg, ctx.shape(cls_input), engine.dtype)
            signal = start if cls_input == layer else walk(
                ctx, list(plan.rest), {cls_input: start}, keep={layer}, reach=plan.reach, release=True).get(layer)
        signal = to_numpy(signal) if signal is not None else np.zeros(ctx.shape(layer), engine.dtype)
        if request.method == "grad_x_input":
            signal = signal * np.asarray(values[layer] if layer in values else feeds[layer], engine.dtype)
        check_finite(signal, request.method, layer)
        return ExplainResult(
            maps=channel_sum(signal), signal=signal, method=request.method, layer=layer, target=targets, output=out,
            mass=Mass(top=top.reshape(n, -1).sum(axis=1), layer=signal.reshape(n, -1).sum(axis=1)),
            info=ExplainInfo(logits=plan.logits), warnings=ctx.warnings,
        )


def _difference(xp: Any, pos: Any, neg: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``pos − neg`` where either pass may have delivered no signal (then it counts as zeros)."""
    zero = xp.zeros(shape, dtype=dtype)
    return (zero if pos is None else pos) - (zero if neg is None else neg)
