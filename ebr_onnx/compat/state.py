"""Caffe's process-wide state as pycaffe sets it: the mode (``Caffe::mode()``: CPU or GPU, plain or the release's
EB mode), the GPU device id and the random seed of the weight fillers and DummyData fillers."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..core.backend import array_module
from ..core.errors import EbrError


@dataclass(frozen=True)
class Mode:
    """``eb``: backward runs the release's per-layer EB rules (``Layer::Backward_eb_*``), else the gradient;
    ``gpu``: the GPU path is asked for."""

    eb: bool = False
    gpu: bool = False


_mode = Mode()
_device_id = 0
_rng: np.random.Generator | None = None
_warned_no_gpu = False


def set_mode(eb: bool, gpu: bool) -> None:
    """Set the global mode; asking for the GPU where there is none says so once and runs on the CPU."""
    global _mode, _warned_no_gpu
    _mode = Mode(eb=eb, gpu=gpu)
    if gpu and not gpu_available() and not _warned_no_gpu:
        _warned_no_gpu = True
        warnings.warn("caffe GPU mode: no CUDA GPU (CuPy) here, so ebr_onnx.compat.caffe runs on the CPU",
                      RuntimeWarning, stacklevel=3)


def mode() -> Mode:
    return _mode


def gpu_available() -> bool:
    """Whether the engine's CUDA path (CuPy on a GPU) is there."""
    try:
        array_module("cuda")
    except EbrError:
        return False
    return True


def device() -> str:
    """The engine device of the current mode: ``"cuda"`` in a GPU mode where there is a GPU, else ``"cpu"``."""
    return "cuda" if _mode.gpu and gpu_available() else "cpu"


def set_device(device_id: int) -> None:
    """Caffe's GPU device id (recorded; the CUDA path uses CuPy's current device)."""
    global _device_id
    _device_id = int(device_id)


def set_random_seed(seed: int) -> None:
    """Seed Caffe's random generator: the fillers of nets made from here on and DummyData layers that refill on
    every forward draw from it in turn."""
    global _rng
    _rng = np.random.default_rng(int(seed))


def rng() -> np.random.Generator:
    """Caffe's random generator (seeded by :func:`set_random_seed`, else from fresh entropy)."""
    global _rng
    if _rng is None:
        _rng = np.random.default_rng()
    return _rng
