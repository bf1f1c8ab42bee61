"""The forward pass: one onnxruntime session per set of captured tensors, created once and reused.

Only the tensors the rules read are exposed as extra outputs (exposing every intermediate of VGG-16 costs about
115 MB per frame); with extra outputs the session is built at ``ORT_ENABLE_EXTENDED``, which keeps memory close to the
plain forward's (see ``shared/notes/environment.md``). Each session has a memory arena, shrunk after every run.

Sessions are built from the model without its weights (:attr:`ModelGraph.light`, which declares them as inputs), and
the weights are fed on every run from the graph's NumPy arrays: onnxruntime reads those buffers in place, so the
process holds one copy of the weights instead of three (ours, the serialized payload's, the session's). This forgoes
onnxruntime's weight prepacking and NCHWc layout, which capture sessions (``ORT_ENABLE_EXTENDED``) do not use anyway.
On CUDA the weights stay in the session (feeding them would copy them to the device on every run).
"""
from __future__ import annotations

import warnings
from typing import Mapping, Sequence

import numpy as np
import onnx

from .backend import ort_providers, require_onnxruntime, session_options
from .errors import EbrError, ForwardRejected
from .graph import ModelGraph


class ForwardRunner:
    """Runs the model in onnxruntime and returns the requested tensors (graph outputs or intermediates)."""

    def __init__(self, graph: ModelGraph, device: str = "cpu", threads: int | None = None) -> None:
        self._ort = require_onnxruntime()
        self.graph = graph
        self.device = device
        self.threads = threads
        self._sessions: dict[tuple[str, ...], object] = {}
        #: Whether sessions read the weights from the graph's arrays (CPU) instead of holding their own copy.
        self.shares_weights = device == "cpu"
        #: On the CPU a session's arena is handed back after each run (see :meth:`_session`).
        self._run_options = self._ort.RunOptions()
        if device == "cpu":
            self._run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def _session(self, outputs: tuple[str, ...]):
        if outputs in self._sessions:
            return self._sessions[outputs]
        # Extra outputs go on a copy: the weightless model on the CPU is shared (copied: it holds no weights), and
        # ModelGraph.model is a fresh copy on every access.
        model = self.graph.model if not self.shares_weights else self.graph.light
        declared = {o.name for o in model.graph.output}
        extra = [name for name in outputs if name not in declared]
        if extra and model is self.graph.light:
            model = onnx.ModelProto()
            model.CopyFrom(self.graph.light)
        model.graph.output.extend(
            onnx.helper.make_tensor_value_info(name, self.graph.elem_types.get(name) or onnx.TensorProto.FLOAT, None)
            for name in extra)
        # An arena reuses the buffers of one run (without, each is fresh memory to fault in: VGG-16's capturing
        # forward of 8 frames took 0.70 s instead of 0.63); it is shrunk after each run, so that no session holds
        # its largest buffers during the walk or between calls.
        options = session_options(self.threads, optimize_all=not extra, arena=True)
        try:
            session = self._ort.InferenceSession(model.SerializeToString(), options,
                                                 providers=ort_providers(self.device))
        except Exception as exc:
            raise EbrError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            warnings.warn("onnxruntime has no CUDA provider here: the forward pass runs on the CPU", stacklevel=3)
        self._sessions[outputs] = session
        return session

    def run(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        """Forward ``feeds`` and return ``outputs`` by name; inputs and constants among them are returned directly."""
        direct = {name: feeds[name] for name in outputs if name in feeds}
        direct.update({name: self.graph.constant(name) for name in outputs
                       if name not in direct and self.graph.is_constant(name)})
        wanted = tuple(sorted({name for name in outputs if name not in direct}))
        if not wanted:
            return direct
        session = self._session(wanted)
        self._check_feeds(session, feeds)
        try:
            weights = self.graph.fed_weights() if self.shares_weights else {}
            values = session.run(list(wanted), {**weights, **feeds}, self._run_options)
        except Exception as exc:
            raise ForwardRejected(f"onnxruntime failed on this input: {str(exc).splitlines()[0]}") from exc
        direct.update(zip(wanted, values))
        return direct

    def _check_feeds(self, session, feeds: Mapping[str, np.ndarray]) -> None:
        for spec in session.get_inputs():
            if spec.name in self.graph.weights and self.shares_weights:
                continue
            if spec.name not in feeds:
                raise EbrError(f"the model needs an input {spec.name!r} of shape {spec.shape}; none was given")
            shape = np.shape(feeds[spec.name])
            expected = spec.shape
            if len(shape) != len(expected) or any(
                isinstance(e, int) and e != s for e, s in zip(expected, shape)
            ):
                raise ForwardRejected(
                    f"input {spec.name!r} has shape {tuple(shape)}, but the model expects {tuple(expected)} "
                    "(strings are free dimensions)"
                )
