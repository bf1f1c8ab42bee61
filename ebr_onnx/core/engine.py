"""A model loaded for explanation: :class:`Engine` holds what every method uses — the graph, the forward runner, the
kernel cache, the array module, the rule options and the lowerer — and the plumbing of one walk (feeds, shapes,
captures, rule contexts). Methods receive the engine, never the :class:`~ebr_onnx.Explainer`."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Callable, ContextManager, Mapping, Sequence

import numpy as np
import onnx

from .backend import array_module
from .context import Lowerer, RuleContext, RuleFn
from .device import DeviceArrays
from .errors import EbrError
from .forward import ForwardRunner
from .graph import ModelGraph, Node
from .kernels import KernelCache, blas_threads
from .options import RuleOptions
from .walk import required_values


class Engine:
    """The loaded model and the machinery of its walks (on the CPU: onnxruntime kernels and the ``lowerer``)."""

    def __init__(self, graph: ModelGraph, *, device: str, input_name: str | None, labels: list[str] | None,
                 batch_size: int, dtype: Any, threads: int | None, options: RuleOptions,
                 lowerer: Lowerer | None, live_weights: bool = False) -> None:
        """``live_weights``: the weights (``graph.weights``) may change in place between calls (pycaffe's
        ``net.params``, :mod:`ebr_onnx.compat`): the forward feeds them on every run on every device, and no
        compiled kernel keeps a copy (the rules read them anew in each walk)."""
        if input_name is not None and input_name not in graph.inputs:
            raise EbrError(f"input {input_name!r} is not a model input; inputs: {', '.join(graph.inputs)}")
        if not graph.inputs:
            raise EbrError("the model has no inputs")
        if batch_size < 1:
            raise EbrError(f"batch_size must be at least 1, not {batch_size}")
        self.graph = graph
        self.device = device
        self.xp = array_module(device)
        self.threads = threads
        #: On a GPU: the one device copy of the weights (and other constants) that every forward session and every
        #: walk of this engine reads, and the bound forward (:mod:`ebr_onnx.core.device`); None on the CPU.
        self.arrays = None if device == "cpu" else DeviceArrays(self.xp, live=live_weights)
        self.runner = ForwardRunner(graph, device, threads, arrays=self.arrays)
        self.kernels = KernelCache(threads) if device == "cpu" and not live_weights else None
        self.lowerer = lowerer if self.kernels is not None else None
        self.input_name = input_name or graph.inputs[0]
        self.labels = labels
        self.batch_size = batch_size
        self.dtype = np.dtype(dtype)
        self.options = options
        #: The tensors that carry signal from the explained input.
        self.signal = graph.signal_tensors([self.input_name])

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
            elem = self.graph.elem_types.get(name) or onnx.TensorProto.FLOAT
            if name == self.input_name and array.size == 0:
                raise EbrError(f"input {name!r} has shape {array.shape}: an empty batch, nothing to explain")
            if name == self.input_name and elem in _FLOAT_TYPES and array.dtype.kind in "biu":
                raise EbrError(f"input {name!r} is {array.dtype}, the model expects {np.dtype(_onnx_float(elem))}: "
                               "preprocess the frames first (ebr_onnx.prepare(explainer, frames) applies the "
                               "model's recorded preprocessing, ebr_onnx.preprocess(frames, spec) a given one)")
            if array.dtype.kind == "f":
                if not np.isfinite(array).all():
                    raise EbrError(f"input {name!r} contains NaN or infinite values")
                array = array.astype(_onnx_float(self.graph.elem_types.get(name)), copy=False)
            feeds[name] = array
        return feeds

    def batches(self, feeds: dict[str, np.ndarray]) -> list[tuple[slice, dict[str, np.ndarray]]]:
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

    # -- one walk -------------------------------------------------------------------------------------------------
    def shapes_for(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        return self.graph.concrete_shapes({k: tuple(np.shape(v)) for k, v in feeds.items()})

    def capture_plan(self, nodes: Sequence[Node], mode: str, shapes: Mapping[str, tuple[int, ...]],
                     extra: Sequence[str] = (), overrides_needs: Callable[[Node], list[str] | None] | None = None
                     ) -> list[str]:
        """The tensors to capture: what the rules read, plus inputs whose shapes are not known statically (a rule
        may read the shape of any operand, e.g. Concat's)."""
        names = required_values(nodes, mode, overrides_needs) | set(extra)
        for node in nodes:
            names.update(t for t in node.inputs if t and t not in shapes)
        return sorted(n for n in names if n and not self.graph.is_constant(n))

    def context(self, mode: str, values: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]], *,
                negated: frozenset[str] = frozenset(), overrides: Mapping[str, RuleFn] | None = None,
                options: RuleOptions | None = None, owns_values: bool = False) -> RuleContext:
        """A rule context over these captures, with the engine's rule options unless a walk gives its own (a
        recurrent method's, with the call's ``recurrent_rules``)."""
        return RuleContext(self.graph, self.xp, mode, values, shapes, self.signal, dtype=self.dtype,
                           negated=negated, overrides=dict(overrides or {}), options=options or self.options,
                           kernels=self.kernels,
                           lowerer=self.lowerer, owns_values=owns_values, constants=self.arrays)

    def on_device(self, array: Any) -> Any:
        """A host array as an array of the engine's module (uploaded once on a GPU; as it is on the CPU)."""
        return array if self.arrays is None else self.arrays.upload(array)

    def release(self) -> None:
        """After a call: on a GPU, hand the array module's unused memory back to the device."""
        if self.arrays is not None:
            self.arrays.release()

    def blas(self) -> ContextManager[Any]:
        """On the CPU, NumPy's BLAS runs single-threaded during a walk: its busy-waiting workers would compete with
        onnxruntime's threads for the cores (see :func:`ebr_onnx.core.kernels.blas_threads`)."""
        return blas_threads(1) if self.kernels is not None else nullcontext()


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16)


def _onnx_float(elem_type: int | None) -> Any:
    return {onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16}.get(elem_type or 1, np.float32)
