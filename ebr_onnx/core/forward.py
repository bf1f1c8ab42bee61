"""The forward pass: one onnxruntime session per set of captured tensors, created once and reused.

Only the tensors the rules read are exposed as extra outputs (exposing every intermediate of VGG-16 costs about
115 MB per frame); with extra outputs the session is built at ``ORT_ENABLE_EXTENDED``, which keeps memory close to the
plain forward's (see ``shared/notes/environment.md``). Each session has a memory arena, shrunk after every run.

Sessions are built from the model without its weights (:attr:`ModelGraph.light`, which declares them as inputs), and
the weights are fed on every run: on the CPU from the graph's NumPy arrays, which onnxruntime reads in place, so the
process holds one copy of the weights instead of three (ours, the serialized payload's, the session's); on CUDA from
the explainer's device copies (:class:`~ebr_onnx.core.device.DeviceArrays`), bound in place, so the device holds one
copy however many sessions and sub-models there are. This forgoes onnxruntime's weight prepacking and NCHWc layout,
which capture sessions (``ORT_ENABLE_EXTENDED``) do not use anyway.

On CUDA the inputs and outputs are bound to device memory (:meth:`DeviceArrays.run`), and :meth:`ForwardRunner.run`
with ``keep_on_device`` hands the captures to the walk as CuPy arrays without a host copy. At most
:data:`DEVICE_SESSIONS` sessions are kept per runner there (the least recently used goes), so that explaining
ever more layers does not keep ever more CUDA sessions.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from typing import Any, Mapping, Sequence

import numpy as np
import onnx

from .backend import array_module, ort_providers, require_onnxruntime, run_options, session_options, to_numpy
from .device import DeviceArrays
from .errors import EbrError, ForwardRejected
from .graph import ModelGraph

#: The sessions a runner keeps on CUDA (one per set of captured tensors; each holds a CUDA provider of its own).
DEVICE_SESSIONS = 4


class ForwardRunner:
    """Runs the model in onnxruntime and returns the requested tensors (graph outputs or intermediates)."""

    def __init__(self, graph: ModelGraph, device: str = "cpu", threads: int | None = None,
                 arrays: DeviceArrays | None = None) -> None:
        """``arrays``: the explainer's device arrays (``device="cuda"``; made here where none is given), which
        hold the one device copy of the weights every runner of the explainer binds."""
        self._ort = require_onnxruntime()
        self.graph = graph
        self.device = device
        self.threads = threads
        self.arrays = None if device == "cpu" else (arrays or DeviceArrays(array_module(device)))
        self._sessions: OrderedDict[tuple[str, ...], Any] = OrderedDict()
        self._run_options: dict[tuple[str, ...], Any] = {}

    @property
    def device_id(self) -> int:
        return 0 if self.arrays is None else self.arrays.device_id

    def _session(self, outputs: tuple[str, ...]):
        if outputs in self._sessions:
            self._sessions.move_to_end(outputs)
            return self._sessions[outputs]
        # Extra outputs go on a copy: the weightless model is shared (copied: it holds no weights).
        model = self.graph.light
        declared = {o.name for o in model.graph.output}
        extra = [name for name in outputs if name not in declared]
        if extra:
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
                                                 providers=ort_providers(self.device, self.device_id))
        except Exception as exc:
            raise EbrError(f"onnxruntime cannot load the model: {str(exc).splitlines()[0]}") from exc
        if self.device == "cuda" and "CUDAExecutionProvider" not in session.get_providers():
            warnings.warn("onnxruntime has no CUDA provider here: the forward pass runs on the CPU", stacklevel=3)
        self._sessions[outputs] = session
        if self.arrays is not None and len(self._sessions) > DEVICE_SESSIONS:
            self._sessions.popitem(last=False)
        return session

    def _options(self, session) -> Any:
        providers = tuple(session.get_providers())
        if providers not in self._run_options:
            self._run_options[providers] = run_options(list(providers), self.device_id)
        return self._run_options[providers]

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str], keep_on_device: bool = False
            ) -> dict[str, Any]:
        """Forward ``feeds`` and return ``outputs`` by name; inputs and constants among them are returned directly.

        On the CPU the values are NumPy arrays. On CUDA they are NumPy arrays too, unless ``keep_on_device``: then
        every value is a device array (captures in onnxruntime's buffers, inputs and constants uploaded), for the
        walk."""
        if self.arrays is None:
            return self._run_host(feeds, outputs)
        arrays = self.arrays
        feeds = {k: arrays.upload(v) for k, v in feeds.items()}  # each input crosses the bus once per run
        direct = {name: feeds[name] for name in outputs if name in feeds}
        direct.update({name: arrays.constant(name, self.graph.constant(name)) for name in outputs
                       if name not in direct and self.graph.is_constant(name)})
        wanted = tuple(sorted({name for name in outputs if name not in direct}))
        if wanted:
            session = self._session(wanted)
            self._check_feeds(session, feeds)
            device = arrays.binding_device(session)
            try:
                if device is None:  # onnxruntime without its CUDA provider (warned): through host memory
                    got = self._run_on_host(session, feeds, wanted)
                else:
                    taken = {spec.name for spec in session.get_inputs()}
                    weights = {name: arrays.constant(name, host) for name, host in self.graph.fed_weights().items()
                               if name in taken}
                    got = arrays.run(session, device, {**weights, **{k: v for k, v in feeds.items() if k in taken}},
                                     wanted, self._options(session))
            except EbrError:
                raise
            except Exception as exc:
                raise ForwardRejected(f"onnxruntime failed on this input: {str(exc).splitlines()[0]}") from exc
            direct.update(got)
        return direct if keep_on_device else {k: to_numpy(v) for k, v in direct.items()}

    def _run_on_host(self, session, feeds: Mapping[str, Any], wanted: tuple[str, ...]) -> dict[str, Any]:
        host = {k: to_numpy(v) for k, v in feeds.items()}
        values = session.run(list(wanted), {**self.graph.fed_weights(), **host}, self._options(session))
        return {name: self.arrays.upload(v) for name, v in zip(wanted, values)}

    def _run_host(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        direct = {name: feeds[name] for name in outputs if name in feeds}
        direct.update({name: self.graph.constant(name) for name in outputs
                       if name not in direct and self.graph.is_constant(name)})
        wanted = tuple(sorted({name for name in outputs if name not in direct}))
        if not wanted:
            return direct
        session = self._session(wanted)
        self._check_feeds(session, feeds)
        fed = {**self.graph.fed_weights(), **feeds}
        try:
            values = self._run_into_arrays(session, fed, wanted)
        except Exception:  # an inferred shape onnxruntime does not produce: its own outputs (or its error)
            try:
                values = session.run(list(wanted), fed, self._options(session))
            except Exception as exc:
                raise ForwardRejected(f"onnxruntime failed on this input: {str(exc).splitlines()[0]}") from exc
        direct.update(zip(wanted, values))
        return direct

    def _run_into_arrays(self, session, feeds: Mapping[str, np.ndarray], wanted: tuple[str, ...]
                         ) -> list[np.ndarray]:
        """The ``wanted`` outputs of one run, written by onnxruntime into NumPy arrays allocated here where their
        shapes are known (onnxruntime allocates the others). Outputs taken from the session's arena would keep it
        as large as the captures after the run (its shrink frees only what nothing uses), while the walk allocates
        its own working set: R(2+1)D-18, ``eb`` to the input, one clip, peaked 14 MB higher and held 130 MB more
        between calls."""
        shapes = self.graph.concrete_shapes({k: tuple(np.shape(v)) for k, v in feeds.items()
                                             if k in self.graph.inputs})
        binding = session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        arrays: dict[str, np.ndarray] = {}
        for name in wanted:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(self.graph.elem_types.get(name) or onnx.TensorProto.FLOAT)
            if name in shapes and dtype.kind == "f":
                arrays[name] = out = np.empty(shapes[name], dtype)
                binding.bind_output(name, "cpu", 0, dtype, list(out.shape), out.ctypes.data)
            else:
                binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding, self._options(session))
        allocated = binding.get_outputs()
        return [arrays[name] if name in arrays else allocated[i].numpy() for i, name in enumerate(wanted)]

    def _check_feeds(self, session, feeds: Mapping[str, Any]) -> None:
        for spec in session.get_inputs():
            if spec.name in self.graph.weights:
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
