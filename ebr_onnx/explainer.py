"""The public API: ``Explainer(model).explain(inputs, target=…, method=…, layer=…)``.

Methods (paper Table 1):

* ``eb`` — Excitation Backprop: a one-hot prior on the target's pre-softmax logit (or a user prior) propagated with
  Eq. 8 down to ``layer``;
* ``ceb`` — contrastive EB: the same, minus the pass of the dual unit whose classifier weights are negated (Eq. 2),
  subtracted at the classifier's input as the CNN release does, then continued once with Eq. 8;
* ``grad`` — the plain gradient of the target logit (BP); ``grad_x_input`` — gradient × activation at ``layer``;
* ``ebr``, ``cebr``, ``gradr`` — the recurrent methods (EB-R, cEB-R, BP-R; see :mod:`ebr_onnx.temporal`).

``target`` is a class index, a label name, or one of those per example; ``None`` explains the predicted class.
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .core.backend import array_module, to_numpy
from .core.errors import EbrError
from .core.forward import ForwardRunner
from .core.graph import ModelGraph, Node, load_onnx
from .core.kernels import KernelCache, blas_threads
from .unroll import has_loops, unroll_loops
from .core.context import RuleContext
from .core.options import RuleOptions
from .core.walk import required_values, walk
from .lowering import Lowering

CNN_METHODS = ("eb", "ceb", "grad", "grad_x_input")
RECURRENT_METHODS = ("ebr", "cebr", "gradr")
METHODS = CNN_METHODS + RECURRENT_METHODS
LINEAR_OPS = ("Gemm", "MatMul", "Conv")
#: Ops between a classifier and the logits that do not change which unit is which.
_PASS_THROUGH = ("Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Dropout", "Transpose", "Add", "Sub", "Gather",
                 "Slice")
_SOFTMAX = ("Softmax", "LogSoftmax")

Target = int | str | Sequence[int | str] | None


@dataclass
class ExplainResult:
    """Maps and what produced them.

    ``maps`` is the signal at ``layer`` summed over channels ((N, h, w) for a 4-D layer; the signal itself for a 2-D
    one; recurrent methods: (T, h, w), summing the axis the graph feeds to Conv as channels, channels-last too, over
    all per-frame copies of the layer); ``signal`` the full signal; ``temporal`` the per-frame sums of the maps
    (recurrent methods); ``output`` the forward values of the target tensor; ``mass`` the total signal per example at
    the top and at ``layer`` (conservation check, as captum's convergence delta).
    """

    maps: np.ndarray
    signal: np.ndarray
    method: str
    layer: str
    target: list[int]
    output: np.ndarray
    temporal: np.ndarray | None = None
    mass: dict[str, np.ndarray] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)


def channel_sum(signal: np.ndarray) -> np.ndarray:
    """The map of a signal: the sum over the channel axis (axis 1) of an (N, C, …) tensor."""
    return signal.sum(axis=1) if signal.ndim >= 3 else signal


class Explainer:
    """Excitation Backprop (and its gradient baselines) on an ONNX model, on NumPy or CuPy."""

    def __init__(
        self,
        model: str | Path | onnx.ModelProto,
        *,
        device: str = "cpu",
        input_name: str | None = None,
        labels: Sequence[str] | str | Path | None = None,
        batch_size: int = 16,
        dtype: Any = np.float32,
        threads: int | None = None,
        add_rule: str = "proportional",
        lowering: bool = True,
    ) -> None:
        proto = load_onnx(model)
        #: The Loop/Scan nodes of the model as given, unrolled into per-step ops on load.
        self.unrolled_loops = [(n.name or n.op_type, n.op_type) for n in proto.graph.node
                               if n.op_type in ("Loop", "Scan")]
        self.graph = ModelGraph(unroll_loops(proto) if has_loops(proto) else proto)
        self.device = device
        self.xp = array_module(device)
        self.runner = ForwardRunner(self.graph, device, threads)
        self.kernels = KernelCache(threads) if device == "cpu" else None
        if input_name is not None and input_name not in self.graph.inputs:
            raise EbrError(f"input {input_name!r} is not a model input; inputs: {', '.join(self.graph.inputs)}")
        if not self.graph.inputs:
            raise EbrError("the model has no inputs")
        self.input_name = input_name or self.graph.inputs[0]
        self.labels = self._labels(labels)
        if batch_size < 1:
            raise EbrError(f"batch_size must be at least 1, not {batch_size}")
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        if add_rule not in ("proportional", "caffe"):
            raise EbrError(f"add_rule {add_rule!r} is not one of: proportional, caffe")
        self.add_rule = add_rule
        #: Whether the CPU walk runs its lowerable bottom part as one onnxruntime graph (:mod:`ebr_onnx.lowering`).
        self.lowering = lowering
        self.signal = self.graph.signal_tensors([self.input_name])

    # -- names ----------------------------------------------------------------------------------------------------
    def _labels(self, labels: Sequence[str] | str | Path | None) -> list[str] | None:
        if labels is None:
            found = self.graph.metadata_json("ebr_onnx.labels")
            return list(found) if isinstance(found, list) else None
        if isinstance(labels, (str, Path)):
            path = Path(labels)
            if not path.is_file():
                raise EbrError(f"labels file {str(path)!r} does not exist")
            return [line.strip() for line in path.read_text().splitlines() if line.strip()]
        return list(labels)

    def logits_tensor(self, output: str | None = None) -> str:
        """The tensor the prior is set on: ``output`` (default the first model output), moved below a final softmax."""
        name = self.graph.resolve_tensor(output, "output") if output else self.graph.outputs[0]
        node = self.graph.producer.get(name)
        if node is not None and node.op_type in _SOFTMAX:
            return node.inputs[0]
        return name

    def class_index(self, target: int | str, classes: int) -> int:
        """A class index from an index or a label name, checked against the number of classes."""
        if isinstance(target, str):
            if self.labels is None:
                raise EbrError(f"target {target!r} is a name, but the model has no labels (pass labels=…)")
            if target not in self.labels:
                close = [lab for lab in self.labels if lab.lower() == target.lower()]
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise EbrError(f"target {target!r} is not one of the model's {len(self.labels)} labels{hint}")
            target = self.labels.index(target)
        index = int(target)
        if not 0 <= index < classes:
            raise EbrError(f"target {index} is out of range: the output has {classes} classes (0…{classes - 1})")
        return index

    def find_classifier(self, logits: str, name: str | None = None) -> Node:
        """The classifier: ``name`` if given, else the last Gemm/MatMul/Conv before ``logits`` (through reshapes and
        bias adds)."""
        if name is not None:
            if name in self.graph.node_by_name:
                node = self.graph.node_by_name[name]
            else:
                node = self.graph.producer.get(self.graph.resolve_tensor(name, "classifier"))
            if node is None or node.op_type not in LINEAR_OPS:
                raise EbrError(f"classifier {name!r} is not a Gemm, MatMul or Conv node")
            return node
        tensor = logits
        while tensor in self.graph.producer:
            node = self.graph.producer[tensor]
            if node.op_type in LINEAR_OPS:
                return node
            if node.op_type not in _PASS_THROUGH:
                break
            tensor = next((t for t in node.inputs if t in self.signal), "")
        raise EbrError(
            f"no classifier (Gemm/MatMul/Conv) found directly below {logits!r}; name it with classifier=…"
        )

    def layer_tensor(self, layer: str | None) -> str:
        return self.input_name if layer in (None, "input") else self.graph.resolve_tensor(layer, "layer")

    # -- inputs ---------------------------------------------------------------------------------------------------
    def feeds(self, inputs: np.ndarray | Mapping[str, np.ndarray], extra_inputs: Mapping[str, Any] | None = None
              ) -> dict[str, np.ndarray]:
        """The forward feeds: the explained input, user extras, and defaults recorded in the model's metadata."""
        feeds = dict(inputs) if isinstance(inputs, Mapping) else {self.input_name: inputs}
        feeds.update(extra_inputs or {})
        if self.input_name not in feeds:
            raise EbrError(f"no array given for the model input {self.input_name!r}")
        defaults = self.graph.metadata_json("ebr_onnx.input_defaults", {}) or {}
        for name in self.graph.inputs:
            if name not in feeds and name in defaults:
                feeds[name] = np.asarray(defaults[name])
        for name, value in list(feeds.items()):
            if name not in self.graph.inputs:
                raise EbrError(f"{name!r} is not a model input; inputs: {', '.join(self.graph.inputs)}")
            array = np.asarray(value)
            if array.dtype.kind == "f":
                if not np.isfinite(array).all():
                    raise EbrError(f"input {name!r} contains NaN or infinite values")
                array = array.astype(_onnx_float(self.graph.elem_types.get(name)), copy=False)
            feeds[name] = array
        return feeds

    def _batches(self, feeds: dict[str, np.ndarray]) -> list[tuple[slice, dict[str, np.ndarray]]]:
        """The examples of each chunk and its feeds: the explained input split along axis 0 into ``batch_size``
        chunks where the model's batch axis is free (one chunk otherwise)."""
        shape = self.graph.shapes.get(self.input_name) or ()
        x = feeds[self.input_name]
        free = bool(shape) and not isinstance(shape[0], int)
        if not free or x.shape[0] <= self.batch_size or any(
            k != self.input_name and np.ndim(v) and np.shape(v)[0] == x.shape[0] for k, v in feeds.items()
        ):
            return [(slice(0, x.shape[0]), feeds)]
        return [(slice(i, i + self.batch_size), {**feeds, self.input_name: x[i:i + self.batch_size]})
                for i in range(0, x.shape[0], self.batch_size)]

    # -- walk plumbing --------------------------------------------------------------------------------------------
    def shapes_for(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        return self.graph.concrete_shapes({k: tuple(np.shape(v)) for k, v in feeds.items()})

    def capture_plan(self, nodes: Sequence[Node], mode: str, shapes: Mapping[str, tuple[int, ...]],
                     extra: Sequence[str] = (), overrides_needs=None) -> list[str]:
        """The tensors to capture: what the rules read, plus signal inputs whose shapes are not known statically."""
        names = required_values(nodes, mode, overrides_needs) | set(extra)
        for node in nodes:
            names.update(t for t in node.inputs if t in self.signal and t not in shapes)
        return sorted(n for n in names if n and not self.graph.is_constant(n))

    def context(self, mode: str, values: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], **kw: Any
                ) -> RuleContext:
        options = RuleOptions(self.add_rule, kw.pop("recurrent_rules", "caffe"), self.lowering)
        return RuleContext(self.graph, self.xp, mode, values, shapes, self.signal, dtype=self.dtype,
                           options=options, kernels=self.kernels,
                           lowerer=Lowering() if self.kernels is not None else None, **kw)

    def prior(self, logits: np.ndarray, targets: Sequence[int], prior: np.ndarray | None) -> np.ndarray:
        """The top signal: a one-hot on each example's target logit (over a spatial map: the release's spatial
        softmax of that channel), or the user's prior vector placed on the class axis."""
        class_axis = 1 if logits.ndim == 4 else logits.ndim - 1
        out = np.zeros_like(logits, dtype=self.dtype)
        if prior is not None:
            vec = np.asarray(prior, dtype=self.dtype)
            if vec.shape[-1] != logits.shape[class_axis]:
                raise EbrError(f"prior has {vec.shape[-1]} entries, the output has {logits.shape[class_axis]} classes")
            vec = np.broadcast_to(vec, (logits.shape[0], vec.shape[-1]))
            shape = [logits.shape[0]] + [1] * (logits.ndim - 1)
            shape[class_axis] = vec.shape[-1]
            return np.broadcast_to(vec.reshape(shape), logits.shape).astype(self.dtype) / max(
                1, int(np.prod(logits.shape[2:])) if class_axis == 1 else 1)
        for n, k in enumerate(targets):
            if class_axis == 1 and logits.ndim == 4:
                score = logits[n, k].astype(np.float64)
                weights = np.exp(score - score.max())
                out[n, k] = weights / weights.sum()
            else:
                out[n, ..., k] = 1.0
        return out

    def summary(self) -> dict[str, Any]:
        """What the engine finds in the model: ops and their rules, recurrences, boundary, classifier, map layers
        (:func:`ebr_onnx.inspect.describe`)."""
        from .inspect import describe

        return describe(self)

    # -- the verb -------------------------------------------------------------------------------------------------
    def explain(
        self,
        inputs: np.ndarray | Mapping[str, np.ndarray],
        target: Target = None,
        method: str = "eb",
        layer: str | None = None,
        *,
        prior: np.ndarray | None = None,
        output: str | None = None,
        classifier: str | None = None,
        extra_inputs: Mapping[str, Any] | None = None,
        **recurrent: Any,
    ) -> ExplainResult:
        """Explain ``target`` at ``layer`` (default: the model input) with ``method``.

        ``target``: an int class index, a label name, a list of one of those per example, or ``None`` (the predicted
        class). ``prior``: a vector over classes used instead of the one-hot. ``output``: the output tensor to explain
        (default the first; a final Softmax is skipped). ``classifier``: the node whose weights ``ceb`` negates.
        Recurrent methods take ``time_step``, ``recurrent_rules``, ``boundary``, ``time_axis`` (see
        :func:`ebr_onnx.temporal.explain_recurrent`).
        """
        if method not in METHODS:
            raise EbrError(f"unknown method {method!r}; supported: {', '.join(METHODS)}")
        if method in RECURRENT_METHODS:
            from .temporal import explain_recurrent

            with self._blas():
                return explain_recurrent(self, inputs, target, method, layer, prior=prior, output=output,
                                         classifier=classifier, extra_inputs=extra_inputs, **recurrent)
        if recurrent:
            raise EbrError(f"options {sorted(recurrent)} apply to the recurrent methods {RECURRENT_METHODS} only")
        logits = self.logits_tensor(output)
        layer_t = self.layer_tensor(layer)
        mode = "grad" if method in ("grad", "grad_x_input") else "eb"
        nodes = self.graph.nodes_between([layer_t], [logits])
        if layer_t != logits and not nodes:
            raise EbrError(f"layer {layer_t!r} is not below the output {logits!r} on a signal path")
        split = None
        if method == "ceb":
            cls = self.find_classifier(logits, classifier)
            cls_input = next(t for t in cls.inputs if t in self.signal)
            top = self.graph.nodes_between([cls_input], [logits])
            split = (cls, cls_input, top, [n for n in nodes if n not in top])
        feeds = self.feeds(inputs, extra_inputs)
        examples = len(feeds[self.input_name])
        per_example = target is not None and not isinstance(target, (str, int, np.integer))
        if per_example and len(list(target)) != examples:
            raise EbrError(f"{len(list(target))} targets given for {examples} examples")
        priors = np.asarray(prior) if prior is not None else None
        reach = self.graph.signal_tensors([layer_t])
        with self._blas():
            results = [
                self._explain_batch(batch, list(target)[rows] if per_example else target, method, mode, layer_t,
                                    logits, nodes, split,
                                    priors[rows] if priors is not None and priors.ndim == 2 else priors, reach)
                for rows, batch in self._batches(feeds)
            ]
        first = results[0]
        return ExplainResult(
            maps=np.concatenate([r.maps for r in results]),
            signal=np.concatenate([r.signal for r in results]),
            method=method, layer=layer_t,
            target=[k for r in results for k in r.target],
            output=np.concatenate([r.output for r in results]),
            mass={k: np.concatenate([r.mass[k] for r in results]) for k in first.mass},
            warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
            info={"logits": logits, **first.info},
        )

    def _blas(self):
        """On the CPU, NumPy's BLAS runs single-threaded during a walk: its busy-waiting workers would compete with
        onnxruntime's threads for the cores (see :func:`ebr_onnx.kernels.blas_threads`)."""
        return blas_threads(1) if self.kernels is not None else nullcontext()

    def _explain_batch(self, feeds, target, method, mode, layer_t, logits, nodes, split, prior, reach
                       ) -> ExplainResult:
        shapes = self.shapes_for(feeds)
        extra = [logits] + ([layer_t] if method == "grad_x_input" else [])
        captures = self.capture_plan(nodes, mode, shapes, extra)
        values = self.runner.run(feeds, captures)
        out = values[logits]
        n = out.shape[0]
        targets = self._targets(target, out, n)
        top = self.prior(out, targets, prior)
        ctx = self.context(mode, values, shapes, owns_values=True)
        xp = self.xp
        seeds = {logits: xp.asarray(top)}
        if split is None:
            signal = walk(ctx, nodes, seeds, keep={layer_t}, reach=reach, release=True).get(layer_t)
        else:
            cls, cls_input, top_nodes, rest = split
            pos = walk(ctx, top_nodes, seeds, keep={cls_input}).get(cls_input)
            dual_ctx = self.context(mode, values, shapes, negated=frozenset({cls.name}))
            neg = walk(dual_ctx, top_nodes, seeds, keep={cls_input}).get(cls_input)
            ctx.warnings.extend(w for w in dual_ctx.warnings if w not in ctx.warnings)
            start = _difference(xp, pos, neg, ctx.shape(cls_input), self.dtype)
            signal = start if cls_input == layer_t else walk(
                ctx, rest, {cls_input: start}, keep={layer_t}, reach=reach, release=True).get(layer_t)
        signal = to_numpy(signal) if signal is not None else np.zeros(ctx.shape(layer_t), self.dtype)
        if method == "grad_x_input":
            signal = signal * np.asarray(values[layer_t] if layer_t in values else feeds[layer_t], self.dtype)
        check_finite(signal, method, layer_t)
        return ExplainResult(
            maps=channel_sum(signal), signal=signal, method=method, layer=layer_t, target=targets, output=out,
            mass={"top": top.reshape(n, -1).sum(axis=1), "layer": signal.reshape(n, -1).sum(axis=1)},
            warnings=ctx.warnings,
        )

    def _targets(self, target: Target, out: np.ndarray, n: int) -> list[int]:
        class_axis = 1 if out.ndim == 4 else out.ndim - 1
        classes = out.shape[class_axis]
        if target is None:
            flat = np.moveaxis(out, class_axis, -1).reshape(n, -1, classes).max(axis=1)
            return [int(k) for k in flat.argmax(axis=1)]
        if isinstance(target, (str, int, np.integer)):
            return [self.class_index(target, classes)] * n
        targets = list(target)
        if len(targets) != n:
            raise EbrError(f"{len(targets)} targets given for {n} examples")
        return [self.class_index(t, classes) for t in targets]


def check_finite(signal: np.ndarray, method: str, layer: str) -> None:
    """Never hand out a map with NaN or inf: raise instead (the rules guard every division; this would be a bug)."""
    if not np.isfinite(signal).all():
        raise EbrError(f"the {method} signal at {layer!r} is not finite; please report this model")


def _difference(xp, pos: Any, neg: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    """``pos − neg`` where either pass may have delivered no signal (then it counts as zeros)."""
    zero = xp.zeros(shape, dtype=dtype)
    return (zero if pos is None else pos) - (zero if neg is None else neg)


def _onnx_float(elem_type: int | None) -> Any:
    return {onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}.get(elem_type or 1, np.float32)
