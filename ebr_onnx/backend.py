"""Array-module switch: the same rule code runs on NumPy (CPU) or CuPy (CUDA GPU)."""
from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from .errors import EbrError

DEVICES = ("cpu", "cuda")


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
