"""The execution backends: the array module (the same rule code runs on NumPy on the CPU or CuPy on a CUDA GPU), and
onnxruntime — its execution providers, the one place that builds session options, and the opset of the graphs
ebr_onnx builds itself."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .errors import EbrError

try:
    import onnxruntime as ort
except ImportError:  # installed by the 'cpu' or the 'gpu' extra; a session asks for it by name (require_onnxruntime)
    ort = None

DEVICES = ("cpu", "cuda")
#: The opset of the graphs ebr_onnx writes itself (lowered walks, one-node kernels).
OPSET = 17


def array_module(device: str) -> ModuleType:
    """Return ``numpy`` for ``device="cpu"`` and ``cupy`` for ``device="cuda"`` when CuPy sees a GPU."""
    if device == "cpu":
        return np
    if device == "cuda":
        try:
            import cupy
        except ImportError as exc:
            raise EbrError("device='cuda' needs CuPy: install the 'gpu' extra (pip install -e '.[gpu]')") from exc
        if not cupy.cuda.is_available():
            raise EbrError("device='cuda' was asked for, but CuPy sees no CUDA GPU; use device='cpu'")
        return cupy
    raise EbrError(f"unknown device {device!r}; supported: {', '.join(DEVICES)}")


def to_numpy(array: Any) -> np.ndarray:
    """Copy a NumPy or CuPy array to host memory as a NumPy array."""
    get = getattr(array, "get", None)
    return np.asarray(get() if callable(get) else array)


#: The lowest onnxruntime(-gpu) that knows every CUDA provider option below (``use_tf32`` came in 1.18); the ``gpu``
#: extra of pyproject.toml requires it.
MIN_ORT_GPU = (1, 18)


def cuda_provider_options(device_id: int = 0) -> dict[str, str]:
    """The CUDA provider's options (https://onnxruntime.ai/docs/execution-providers/CUDA-ExecutionProvider.html):

    * ``use_tf32 = 0`` (#use_tf32, onnxruntime ≥ 1.18; microsoft/onnxruntime#19357 for GEMMs, #19426 for cuDNN
      convolutions): fp32 MatMul/Gemm and convolutions in full fp32, as the CPU and the rules (CuPy's matmul does not
      use TF32 unless ``CUPY_TF32=1``). By default onnxruntime computes them in TF32 on Ampere and later GPUs
      (10-bit mantissa): captures and logits would differ from the CPU's by ~1e-3 relative and a near-tie could
      change the predicted class.
    * ``cudnn_conv_algo_search = DEFAULT`` (#cudnn_conv_algo_search: "default algorithm using
      CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM"): one fixed algorithm, the same on every run and every chunk
      size, with no benchmarking per input shape (EXHAUSTIVE, the default, times every algorithm on each new shape,
      and may pick FFT or Winograd kernels whose rounding is coarser than the direct GEMM's).
    * ``arena_extend_strategy = kSameAsRequested`` (#arena_extend_strategy): the arena grows by what is asked, not
      by powers of two, and is shrunk after each run (:func:`run_options`).
    """
    return {"device_id": str(device_id), "use_tf32": "0", "cudnn_conv_algo_search": "DEFAULT",
            "arena_extend_strategy": "kSameAsRequested"}


def ort_providers(device: str, device_id: int = 0) -> list[Any]:
    """onnxruntime execution providers for a device, CPU always last as the fallback (CUDA with
    :func:`cuda_provider_options`)."""
    if device == "cuda":
        return [("CUDAExecutionProvider", cuda_provider_options(device_id)), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def run_options(providers: list[str], device_id: int = 0) -> Any:
    """Run options that shrink the memory arenas of the session's providers after each run (the CPU's, and the
    device's where the CUDA provider runs), so that no session holds its largest buffers between runs."""
    options = require_onnxruntime().RunOptions()
    arenas = "cpu:0" + (f";gpu:{device_id}" if "CUDAExecutionProvider" in providers else "")
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", arenas)
    return options


def require_onnxruntime() -> ModuleType:
    """The onnxruntime module, or a clear error naming the extra that installs it."""
    if ort is None:
        raise EbrError("onnxruntime is not installed: pip install -e '.[cpu]' (or '.[gpu]')")
    return ort


def session_options(threads: int | None, *, optimize_all: bool, arena: bool, spinning: bool = True,
                    listed_order: bool = False) -> Any:
    """onnxruntime session options: ``threads`` intra-op threads (None: onnxruntime's default), all graph
    optimizations (NCHWc layouts included) or the extended level, a CPU memory arena or none, whether idle
    threads spin between runs, and whether the nodes run in the order the graph lists them where their inputs allow
    (onnxruntime's priority-based order, whose ties go by node index; its default order may run a node long before
    its output is needed).

    No session keeps a memory pattern: with one, every run after the first allocates all of its planned buffers
    as one block, which an arena keeps apart from the blocks it reuses, and the sessions of one explain call held
    their blocks at once (R(2+1)D-18, ``eb`` to the input, one clip: a peak of 776 MB with patterns, 706 MB
    without; VGG-16 and R(2+1)D-18 ran as fast, timed in turn)."""
    options = require_onnxruntime().SessionOptions()
    options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if listed_order:
        options.execution_order = ort.ExecutionOrder.PRIORITY_BASED
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize_all
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    return options
