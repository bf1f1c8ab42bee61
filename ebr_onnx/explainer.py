"""The public API: ``Explainer(model).explain(inputs, target=…, method=…, layer=…)``.

Methods (paper Table 1):

* ``eb`` — Excitation Backprop: a one-hot prior on the target's pre-softmax logit (or a user prior) propagated with
  Eq. 8 down to ``layer``;
* ``ceb`` — contrastive EB: the same, minus the pass of the dual unit whose classifier weights are negated (Eq. 2),
  subtracted at the classifier's input as the CNN release does, then continued once with Eq. 8;
* ``grad`` — the plain gradient of the target logit (BP); ``grad_x_input`` — gradient × activation at ``layer``;
* ``ebr``, ``cebr``, ``gradr`` — the recurrent methods (EB-R, cEB-R, BP-R; see :mod:`ebr_onnx.recurrent.method`).

``target`` is a class index, a label name, or one of those per example; ``None`` explains the predicted class.
The explainer loads the model (unrolling Loop/Scan), makes the :class:`~ebr_onnx.core.engine.Engine` every method
shares, and dispatches each call to its method's class (:data:`ebr_onnx.methods.METHOD_TABLE`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .core.engine import Engine
from .core.errors import EbrError
from .core.graph import ModelGraph, Node, load_onnx
from .core.options import RuleOptions
from .core.request import ExplainRequest, Progress
from .core.result import ExplainResult
from .core.targets import Target, class_index, find_classifier, logits_tensor, read_labels
from .lowering import Lowering
from .methods import METHOD_TABLE, METHODS, RECURRENT_METHODS, Method
from .methods.volume import check_clip
from .passes.unroll import DataDependentLoop, loop_nodes, unroll_loops
from .recurrent.decoding import DecodedLoops

#: The keyword options of :meth:`Explainer.explain` that only the recurrent methods take.
RECURRENT_OPTIONS = ("time_step", "recurrent_rules", "boundary", "time_axis")


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
        """``device``: ``"cpu"`` or ``"cuda"`` (CuPy); ``labels``: class names (a list or a file, default the model's
        metadata); ``batch_size``: examples (frames) per chunk; ``add_rule``: ``"proportional"`` or the release's
        ``"caffe"``; ``lowering``: whether the CPU walk runs its lowerable bottom part as one onnxruntime graph."""
        proto = load_onnx(model)
        #: The Loop/Scan nodes of the model as given, unrolled into per-step ops on load.
        self.unrolled_loops = [(n.name or n.op_type, n.op_type) for n in loop_nodes(proto)]
        #: A greedy decoder's Loops, which stop on their own output: unrolled per input to the steps they make.
        self.decoding: DecodedLoops | None = None
        try:
            graph = ModelGraph(unroll_loops(proto) if self.unrolled_loops else proto)
        except DataDependentLoop:
            self.decoding = DecodedLoops(proto, threads)
            graph = ModelGraph(self.decoding.unrolled(dict.fromkeys(self.decoding.lengths, 1)))
        options = RuleOptions(add_rule=add_rule, lowering=lowering)
        labels = read_labels(graph, labels)

        def engine(g: ModelGraph) -> Engine:
            return Engine(g, device=device, input_name=input_name, labels=labels, batch_size=batch_size, dtype=dtype,
                          threads=threads, options=options, lowerer=Lowering())

        self._engine = engine
        self.engine = engine(graph)
        self._methods: dict[type[Method], Method] = {}
        self._decoded: dict[tuple, tuple[Engine, dict[type[Method], Method]]] = {}

    @property
    def graph(self) -> ModelGraph:
        return self.engine.graph

    @property
    def input_name(self) -> str:
        return self.engine.input_name

    @property
    def labels(self) -> list[str] | None:
        return self.engine.labels

    # -- names ----------------------------------------------------------------------------------------------------
    def logits_tensor(self, output: str | None = None) -> str:
        """The tensor the prior is set on: ``output`` (default the first model output), moved below a final softmax."""
        return logits_tensor(self.graph, output)

    def class_index(self, target: int | str, classes: int) -> int:
        """A class index from an index or a label name, checked against the number of classes."""
        return class_index(self.labels, target, classes)

    def find_classifier(self, logits: str, name: str | None = None) -> Node:
        """The classifier: ``name`` if given, else the last Gemm/MatMul/Conv before ``logits``."""
        return find_classifier(self.graph, self.engine.signal, logits, name)

    def method(self, name: str) -> Method:
        """The object that explains with method ``name`` (made once per explainer)."""
        if name not in METHOD_TABLE:
            raise EbrError(f"unknown method {name!r}; supported: {', '.join(METHODS)}")
        kind = METHOD_TABLE[name]
        if kind not in self._methods:
            self._methods[kind] = kind(self.engine)
        return self._methods[kind]

    def _decode(self, inputs: np.ndarray | Mapping[str, np.ndarray], extra_inputs: Mapping[str, Any] | None) -> None:
        """A greedy decoder: switch to the graph unrolled to the steps its Loops make on these inputs (one run of the
        model as given; :mod:`ebr_onnx.recurrent.decoding`), made once per set of lengths."""
        if self.decoding is None:
            return
        steps = self.decoding.steps(self.engine.feeds(inputs, extra_inputs))
        key = tuple(sorted(steps.items()))
        if key not in self._decoded:
            self._decoded[key] = (self._engine(ModelGraph(self.decoding.unrolled(steps))), {})
        self.engine, self._methods = self._decoded[key]

    # -- the verbs ------------------------------------------------------------------------------------------------
    def predict(self, inputs: np.ndarray | Mapping[str, np.ndarray], output: str | None = None,
                extra_inputs: Mapping[str, Any] | None = None) -> np.ndarray:
        """The forward pass only: the values of the tensor :meth:`explain` sets its prior on (the logits below a
        final softmax; ``output`` names another output)."""
        self._decode(inputs, extra_inputs)
        engine = self.engine
        logits = self.logits_tensor(output)
        feeds = engine.feeds(inputs, extra_inputs)
        layout = self.method("eb").volume()  # a 3-D CNN: the clip is checked against the model first
        if layout is not None:
            check_clip(self.graph, layout, np.shape(feeds[engine.input_name]))
        return np.asarray(engine.runner.run(feeds, [logits])[logits])

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
        progress: Progress | None = None,
        **recurrent: Any,
    ) -> ExplainResult:
        """Explain ``target`` at ``layer`` (default: the model input) with ``method``.

        ``target``: an int class index, a label name, a list of one of those per example, or ``None`` (the predicted
        class). ``prior``: a vector over classes used instead of the one-hot. ``output``: the output tensor to explain
        (default the first; a final Softmax is skipped). ``classifier``: the node whose weights ``ceb``/``cebr``
        negate. Recurrent methods also take ``time_step`` (int, list of ints or ``"all"``; default the last; for a
        captioner also ``"first"``, ``"last"`` or a word: the target word's step in the caption, and a list of
        several words as ``target`` gives one map set per word, :mod:`ebr_onnx.recurrent.words`),
        ``recurrent_rules`` (``"caffe"``, the release, or ``"excitation"``), ``boundary`` (the RNN→CNN tensor where
        Eqs. 5–7 apply) and ``time_axis`` (of the output); see :mod:`ebr_onnx.recurrent.method`. ``progress`` is
        called with the fraction of the call done (0–1) after each chunk of examples or frames.
        """
        self._decode(inputs, extra_inputs)
        explainer = self.method(method)
        if recurrent and method not in RECURRENT_METHODS:
            raise EbrError(f"options {sorted(recurrent)} apply to the recurrent methods {RECURRENT_METHODS} only")
        unknown = sorted(set(recurrent) - set(RECURRENT_OPTIONS))
        if unknown:
            raise TypeError(f"explain() got unexpected keyword arguments {unknown}")
        request = ExplainRequest(inputs=inputs, method=method, target=target, layer=layer, prior=prior,
                                 output=output, classifier=classifier, extra_inputs=extra_inputs, progress=progress,
                                 **recurrent)
        try:
            return explainer.explain(request)
        finally:
            self.engine.release()
