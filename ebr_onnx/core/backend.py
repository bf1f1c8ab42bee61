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


def ort_providers(device: str) -> list[str]:
    """onnxruntime execution providers for a device, CPU always last as the fallback."""
    return ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]


def require_onnxruntime() -> ModuleType:
    """The onnxruntime module, or a clear error naming the extra that installs it."""
    if ort is None:
        raise EbrError("onnxruntime is not installed: pip install -e '.[cpu]' (or '.[gpu]')")
    return ort


def session_options(threads: int | None, *, optimize_all: bool, arena: bool, spinning: bool = True) -> Any:
    """onnxruntime session options: ``threads`` intra-op threads (None: onnxruntime's default), all graph
    optimizations (NCHWc layouts included) or the extended level, a CPU memory arena or none, and whether idle
    threads spin between runs."""
    options = require_onnxruntime().SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.enable_cpu_mem_arena = arena
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize_all
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
    return options
