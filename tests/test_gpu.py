"""The CuPy backend: the same rules on the GPU give the CPU's maps. Skipped where CuPy sees no CUDA GPU; the
error paths of ``device="cuda"`` are checked everywhere."""
import importlib.util

import numpy as np
import pytest

from ebr_onnx import EbrError, Explainer
from ebr_onnx.backend import array_module
from ebr_onnx.demo import BUNDLED_MODEL


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
    from ebr_onnx.synthetic import make_clip

    clip = make_clip(0)
    x = (clip.frames.transpose(0, 3, 1, 2) / 255.0).astype(np.float32)
    options = {"output": "fc"} if method in ("eb", "ceb", "grad") else {}
    cpu = Explainer(BUNDLED_MODEL).explain(x, target=clip.label if not options else 3, method=method, layer=layer,
                                           **options)
    gpu = Explainer(BUNDLED_MODEL, device="cuda").explain(x, target=clip.label if not options else 3, method=method,
                                                          layer=layer, **options)
    assert isinstance(gpu.maps, np.ndarray)
    np.testing.assert_allclose(gpu.maps, cpu.maps, rtol=1e-4, atol=1e-6 * np.abs(cpu.maps).max())
