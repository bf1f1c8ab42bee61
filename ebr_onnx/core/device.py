"""The device side of an explainer on a CUDA GPU (``device="cuda"``, CuPy): the one device copy of the model's
constants, onnxruntime's forward bound to device memory, and onnxruntime's outputs read as CuPy arrays in place.

**Data stays on the device.** The forward is an onnxruntime session on the CUDA provider
(:func:`~ebr_onnx.core.backend.cuda_provider_options`) whose inputs and outputs are bound to device memory
(onnxruntime's I/O binding, :meth:`DeviceArrays.run`): inputs are read from the arrays' device pointers, outputs stay
where onnxruntime wrote them and are wrapped as CuPy arrays without a copy (``cupy.cuda.UnownedMemory`` owning the
``OrtValue``, its binding and its session, so the buffer lives as long as the array; the outputs of one run are
handed back to onnxruntime's arena together, once the walk has released the last of them). The sessions are built
without the weights (they are graph inputs, :attr:`~ebr_onnx.core.graph.ModelGraph.light`) and bound to the device
copies of :meth:`DeviceArrays.constant`, which the rules read too (:meth:`~ebr_onnx.core.context.RuleContext.value`):
each weight is uploaded once per explainer and is the only copy of it on the device, reused across frame chunks,
passes (the contrastive dual included), sessions and calls. ``W⁺`` is not cached on the device: a linear rule forms the
part it needs from the device copy (a device operation, no transfer) and drops it after its node. With
``live_weights`` (pycaffe's editable ``net.params``) every forward and every walk uploads the weights anew.

**Host syncs** — every place where the host waits for the device or reads a device value; each one is a decision
Python has to make, a result handed back, or the hand-over between CuPy's stream and onnxruntime's:

1. Before each onnxruntime run, CuPy's current stream is synchronized: onnxruntime computes on a stream of its own,
   so the inputs CuPy wrote must be complete, and the previous run's outputs that the walk has released (which
   onnxruntime may now reuse) must no longer be read by queued kernels. After the run, its outputs are synchronized
   (``IOBinding.synchronize_outputs``).
2. The logits are copied to the host once per forward: the target class (``target=None``), the time and sequence
   axes, the prior and the result's ``output`` are decided and returned in Python.
3. Once per rule context (one per walk; a contrastive walk has two), the signs of its captured activations, all
   read together
   (:meth:`~ebr_onnx.core.context.RuleContext.has_negative`): whether a linear rule applies EB or its
   positive-contribution form, and whether the excitation rules warn, are Python branches. Arrays that are not
   captures as such (a 1-D conv's reshaped input, a Gemm's transposed operand, a recurrent op's time-major input)
   are read one at a time.
4. Integer parameters that are computed tensors instead of constants (Gather's indices, which are range-checked on
   the host before any device ``take``; Slice, Pad and Tile parameters; Resize's scales and sizes;
   ReverseSequence's lengths): they set shapes and loops. Constant parameters are read from the model, never from
   the device.
5. The recurrent methods: one read of the totals of Eqs. 5–6 per pass (a zero total gives zero maps and a warning);
   with several sequences per call, the index codes that assign frames to sequences.
6. The results: the signal at the layer, and for the recurrent methods the passes and the normalised boundary
   signal, are returned as NumPy arrays, one copy each at the end of the call.

After each call CuPy's pool hands its unused blocks back to the device (:meth:`DeviceArrays.release`), and
onnxruntime's arena is shrunk after each run (:func:`~ebr_onnx.core.backend.run_options`), so neither keeps a call's
peak between calls.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

#: onnxruntime's tensor type names (``OrtValue.data_type()``) → NumPy dtypes.
ORT_DTYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int16)": np.int16, "tensor(int8)": np.int8,
    "tensor(uint64)": np.uint64, "tensor(uint32)": np.uint32, "tensor(uint16)": np.uint16,
    "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_,
}


class DeviceArrays:
    """One explainer's arrays on the device: its constants (uploaded once), its uploads, and the bound forward."""

    #: Whether the array module's "device" memory is host memory (only the test stand-in of CuPy,
    #: ``tests/device_shim.py``): onnxruntime's CPU provider may then read and write it in place, so the bound
    #: forward runs where there is no GPU. Real CuPy arrays are bound only to the CUDA provider.
    host_addressable = False

    def __init__(self, xp: Any, live: bool = False) -> None:
        """``xp``: the array module (CuPy); ``live``: the weights may change between calls, so no upload is kept."""
        self.xp = xp
        self.live = live
        self.device_id = int(xp.cuda.Device().id)
        self._constants: dict[tuple[str, str], Any] = {}
        #: Uploads of constants and the bytes they moved (the tests count them: one per weight per explainer).
        self.uploads = 0
        self.uploaded_bytes = 0

    def constant(self, name: str, host: np.ndarray, dtype: Any = None) -> Any:
        """The device copy of the constant ``name`` (a weight or another initializer), in ``dtype`` where it is a
        float and one is given: uploaded on first use and kept for the explainer's life (every use, unless
        ``live``)."""
        array = np.asarray(host)
        if dtype is not None and array.dtype.kind == "f":
            array = array.astype(dtype, copy=False)
        key = (name, array.dtype.str)
        held = self._constants.get(key)
        if held is None or self.live:
            held = self.xp.asarray(np.ascontiguousarray(array))
            self.uploads += 1
            self.uploaded_bytes += array.nbytes
            if not self.live:
                self._constants[key] = held
        return held

    @property
    def constant_bytes(self) -> int:
        """The device bytes the kept constants take."""
        return sum(int(a.nbytes) for a in self._constants.values())

    def upload(self, array: Any) -> Any:
        """A host array (an input) as a device array; a device array as it is."""
        if isinstance(array, self.xp.ndarray):
            return array
        return self.xp.asarray(np.ascontiguousarray(array))

    def binding_device(self, session: Any) -> str | None:
        """Where the session's inputs and outputs are bound: ``"cuda"`` where its CUDA provider runs, ``"cpu"`` for
        the host stand-in (:attr:`host_addressable`), None where onnxruntime fell back to the CPU (the forward then
        goes through host memory)."""
        if "CUDAExecutionProvider" in session.get_providers():
            return "cuda"
        return "cpu" if self.host_addressable else None

    def run(self, session: Any, device: str, inputs: Mapping[str, Any], outputs: Sequence[str],
            run_options: Any) -> dict[str, Any]:
        """One forward with ``inputs`` (device arrays; host arrays are uploaded first) and ``outputs`` bound to
        ``device`` memory; the outputs come back as the module's arrays, sharing onnxruntime's buffers."""
        xp = self.xp
        binding = session.io_binding()
        held = []  # the bound arrays stay alive until the run is over
        for name, value in inputs.items():
            array = xp.ascontiguousarray(self.upload(value))
            held.append(array)
            binding.bind_input(name, device, self.device_id, array.dtype.type, list(array.shape), array.data.ptr)
        for name in outputs:
            binding.bind_output(name, device, self.device_id)
        xp.cuda.get_current_stream().synchronize()  # host sync 1: the hand-over to onnxruntime's stream
        session.run_with_iobinding(binding, run_options)
        binding.synchronize_outputs()
        del held
        # each array keeps its OrtValue, and with it the binding and the session whose allocator holds its memory
        return {name: self.wrap(value, device, (value, binding, session))
                for name, value in zip(outputs, binding.get_outputs())}

    def wrap(self, value: Any, device: str, owner: Any = None) -> Any:
        """An onnxruntime output (``OrtValue``) as an array of the module, in place: the array's memory is the
        OrtValue's, which the array keeps alive (with ``owner``, where given). A value onnxruntime left elsewhere than
        ``device`` is uploaded."""
        xp = self.xp
        dtype = np.dtype(ORT_DTYPES[value.data_type()])
        shape = tuple(int(s) for s in value.shape())
        if value.device_name().lower() != device:
            return xp.asarray(value.numpy())
        nbytes = math.prod(shape) * dtype.itemsize
        if nbytes == 0:
            return xp.zeros(shape, dtype)
        memory = xp.cuda.UnownedMemory(value.data_ptr(), nbytes, value if owner is None else owner, self.device_id)
        return xp.ndarray(shape, dtype, memptr=xp.cuda.MemoryPointer(memory, 0))

    def release(self) -> None:
        """Hand CuPy's unused pool blocks back to the device (after each call; the kept constants stay)."""
        self.xp.get_default_memory_pool().free_all_blocks()
