"""The CuPy backend: the same rules on the GPU give the CPU's maps. Skipped where CuPy sees no CUDA GPU; the
error paths of ``device="cuda"`` are checked everywhere, and so is the device path's array code, on a strict host
stand-in of CuPy (``device_shim.py``)."""
import importlib.util

import numpy as np
import pytest

from ebr_onnx import EbrError, Explainer
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.core.backend import array_module


def _gpu_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy

    return bool(cupy.cuda.is_available())


def test_unknown_device_is_a_clear_error():
    with pytest.raises(EbrError, match="unknown device 'tpu'; supported: cpu, cuda"):
        array_module("tpu")


@pytest.mark.skipif(_gpu_available(), reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(EbrError, match="CuPy"):
        array_module("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA GPU")
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
@pytest.mark.parametrize("method, layer", [("eb", "relu3"), ("ceb", None), ("grad", None),
                                           ("cebr", "relu3"), ("ebr", None), ("gradr", "relu2")])
def test_cuda_matches_cpu(method, layer):
    from ebr_onnx.app.synthetic import make_clip

    clip = make_clip(0)
    x = (clip.frames.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    options = {"output": "fc"} if method in ("eb", "ceb", "grad") else {}
    cpu = Explainer(BUNDLED_MODEL).explain(x, target=clip.label if not options else 3, method=method, layer=layer,
                                           **options)
    gpu = Explainer(BUNDLED_MODEL, device="cuda").explain(x, target=clip.label if not options else 3, method=method,
                                                          layer=layer, **options)
    assert isinstance(gpu.maps, np.ndarray)
    np.testing.assert_allclose(gpu.maps, cpu.maps, rtol=1e-4, atol=1e-6 * np.abs(cpu.maps).max())


@pytest.fixture
def host_device(monkeypatch):
    """``device="cuda"`` served by the strict host stand-in of CuPy (``tests/device_shim.py``)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from device_shim import make_module

    monkeypatch.setitem(sys.modules, "cupy", make_module())
    yield
    sys.path.remove(str(Path(__file__).parent))


@pytest.mark.filterwarnings("ignore:onnxruntime has no CUDA provider")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
@pytest.mark.parametrize("method, layer", [("eb", "relu3"), ("ceb", None), ("grad", None), ("grad_x_input", None),
                                           ("cebr", "relu3"), ("ebr", None), ("gradr", "relu2")])
def test_device_path_keeps_arrays_on_the_device(host_device, method, layer):
    """The rules, the walk and the plumbing on device arrays that refuse any implicit host conversion: the CPU's
    maps (the CUDA path's array code, short of CuPy's own kernels)."""
    from ebr_onnx.app.synthetic import make_clip

    clip = make_clip(0)
    x = (clip.frames.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    options = {"output": "fc"} if method in ("eb", "ceb", "grad", "grad_x_input") else {}
    target = 3 if options else clip.label
    cpu = Explainer(BUNDLED_MODEL).explain(x, target=target, method=method, layer=layer, **options)
    device = Explainer(BUNDLED_MODEL, device="cuda")
    assert type(device.engine.xp).__name__ == "module" and device.engine.xp.__name__ == "cupy"
    got = device.explain(x, target=target, method=method, layer=layer, **options)
    assert isinstance(got.maps, np.ndarray)
    np.testing.assert_allclose(got.maps, cpu.maps, rtol=1e-4, atol=1e-6 * np.abs(cpu.maps).max())
    if got.temporal is not None:
        np.testing.assert_allclose(got.temporal, cpu.temporal, rtol=1e-4, atol=1e-6 * np.abs(cpu.temporal).max())


def test_the_host_device_stand_in_is_strict(host_device):
    """The stand-in refuses what CuPy refuses: implicit conversion, NumPy arrays in device functions and operators."""
    import cupy

    a = cupy.asarray(np.ones(3, np.float32))
    for mix in (lambda: np.asarray(a), lambda: np.ones(3) * a, lambda: a + np.ones(3), lambda: cupy.maximum(a, np.ones(3)),
                lambda: np.maximum(a, 0)):
        with pytest.raises(TypeError):
            mix()
    assert isinstance(cupy.asnumpy(a * 2 + 1), np.ndarray) and float((a * 2).sum()) == 6.0
