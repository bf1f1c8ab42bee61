"""The CuPy backend on a real GPU (marker ``gpu``; skipped where CuPy sees no CUDA GPU): onnxruntime's CUDA provider
is the one that runs, in full fp32; the forward's captures stay on the device; the weights are on the device once
and repeated calls do not grow device memory; the same rules on the GPU give the CPU's maps for every method and
every recurrent form; Gather's scatter is deterministic. ``python benchmarks/gpu_check.py`` runs all of them (every
``gpu`` test lives in this file) and the GPU benchmark tables.

Without a GPU, the error paths of ``device="cuda"`` are checked here, and the device path's array code runs in CI on
a strict host stand-in of CuPy (``device_shim.py``; ``test_device_rules.py``, ``test_device_path.py``).
"""
import importlib.util
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx import EbrError, Explainer
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.core.backend import array_module
from ebr_onnx.core.device import DeviceArrays
from ebr_onnx.core.forward import DEVICE_SESSIONS, ForwardRunner
from ebr_onnx.core.graph import ModelGraph

TESTS = Path(__file__).parent


def _gpu_available() -> bool:
    if importlib.util.find_spec("cupy") is None:
        return False
    import cupy

    return bool(cupy.cuda.is_available())


GPU = _gpu_available()
needs_model = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")


def on_gpu(test):
    """Marker ``gpu``, skipped where CuPy sees no CUDA GPU."""
    return pytest.mark.gpu(pytest.mark.skipif(not GPU, reason="needs CuPy and a CUDA GPU")(test))


def _clip():
    from ebr_onnx.app.synthetic import make_clip

    clip = make_clip(0)
    return (clip.frames.transpose(0, 3, 1, 2) / 255.0).astype(np.float32), clip.label


def _close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4) -> None:
    """``got`` is a host array and equals ``want`` to ``rtol`` (and 1e-6 of ``want``'s largest magnitude)."""
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6 * max(float(np.abs(want).max()), 1e-12))


# -- without a GPU --------------------------------------------------------------------------------------------------
def test_unknown_device_is_a_clear_error():
    with pytest.raises(EbrError, match="unknown device 'tpu'; supported: cpu, cuda"):
        array_module("tpu")


@pytest.mark.skipif(GPU, reason="a GPU is present")
def test_cuda_without_a_gpu_is_a_clear_error():
    with pytest.raises(EbrError, match="CuPy"):
        array_module("cuda")


def test_every_gpu_test_is_in_this_file():
    """``benchmarks/gpu_check.py`` runs the ``gpu`` tests of this file: none may live elsewhere."""
    elsewhere = [p.name for p in TESTS.glob("test_*.py")
                 if p.name != Path(__file__).name and re.search(r"mark\.gpu\b", p.read_text())]
    assert elsewhere == []


@pytest.fixture
def host_device(monkeypatch):
    """``device="cuda"`` served by the strict host stand-in of CuPy (``tests/device_shim.py``), the forward bound
    to its (host) memory."""
    sys.path.insert(0, str(TESTS))
    from device_shim import make_module

    monkeypatch.setitem(sys.modules, "cupy", make_module())
    monkeypatch.setattr(DeviceArrays, "host_addressable", True)  # the stand-in's device memory is host memory
    yield
    sys.path.remove(str(TESTS))


@pytest.mark.filterwarnings("ignore:onnxruntime has no CUDA provider")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
@needs_model
@pytest.mark.parametrize("method, layer", [("eb", "relu3"), ("ceb", None), ("grad", None), ("grad_x_input", None),
                                           ("cebr", "relu3"), ("ebr", None), ("gradr", "relu2")])
def test_device_path_keeps_arrays_on_the_device(host_device, method, layer):
    """The rules, the walk and the plumbing on device arrays that refuse any implicit host conversion: the CPU's
    maps (the CUDA path's array code, short of CuPy's own kernels)."""
    x, label = _clip()
    options = {"output": "fc"} if method in ("eb", "ceb", "grad", "grad_x_input") else {}
    target = 3 if options else label
    cpu = Explainer(BUNDLED_MODEL).explain(x, target=target, method=method, layer=layer, **options)
    device = Explainer(BUNDLED_MODEL, device="cuda")
    assert type(device.engine.xp).__name__ == "module" and device.engine.xp.__name__ == "cupy"
    got = device.explain(x, target=target, method=method, layer=layer, **options)
    _close(got.maps, cpu.maps)
    if got.temporal is not None:
        _close(got.temporal, cpu.temporal)


# -- on a GPU -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method, layer", [("eb", "relu3"), ("ceb", None), ("grad", None), ("grad_x_input", None),
                                           ("cebr", "relu3"), ("ebr", None), ("gradr", "relu2")])
@needs_model
@on_gpu
def test_cuda_matches_cpu(method, layer):
    x, label = _clip()
    options = {"output": "fc"} if method in ("eb", "ceb", "grad", "grad_x_input") else {}
    target = 3 if options else label
    cpu = Explainer(BUNDLED_MODEL).explain(x, target=target, method=method, layer=layer, **options)
    gpu = Explainer(BUNDLED_MODEL, device="cuda").explain(x, target=target, method=method, layer=layer, **options)
    _close(gpu.maps, cpu.maps)
    _close(gpu.output, cpu.output)
    assert gpu.target == cpu.target


@needs_model
@on_gpu
def test_the_cuda_provider_runs_in_full_fp32():
    """Every session of the explainer runs on the CUDA provider, with TF32 off and cuDNN's default algorithm."""
    x, label = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda")
    ex.explain(x, target=label, method="cebr", layer="relu2")
    sessions = list(ex.engine.runner._sessions.values())
    for plan in ex.method("cebr")._plans.values():
        sessions += [s for part in (plan.cnn, plan.rnn, plan.to_frames) if part for s in part.runner._sessions.values()]
    assert sessions
    for session in sessions:
        assert session.get_providers()[0] == "CUDAExecutionProvider"
        options = session.get_provider_options()["CUDAExecutionProvider"]
        assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "DEFAULT"


def _products(k: int = 1024):
    """A MatMul and a Conv of non-negative values (no cancellation: TF32's 10-bit mantissa shows as ~1e-4–1e-3
    relative error, full fp32 as ~1e-6)."""
    rng = np.random.default_rng(0)
    w, kernel = rng.random((k, 256), dtype=np.float32), rng.random((32, 64, 3, 3), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["a", "w"], ["m"]), helper.make_node("Conv", ["x", "k"], ["c"], pads=[1] * 4)]
    graph = helper.make_graph(nodes, "products",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, [128, k]),
                               helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 64, 16, 16])],
                              [helper.make_tensor_value_info("m", TensorProto.FLOAT, [128, 256]),
                               helper.make_tensor_value_info("c", TensorProto.FLOAT, [2, 32, 16, 16])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(kernel, "k")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    feeds = {"a": rng.random((128, k), dtype=np.float32), "x": rng.random((2, 64, 16, 16), dtype=np.float32)}
    return model, feeds, w, kernel


@on_gpu
def test_tf32_is_off_in_onnxruntime_and_cupy():
    import cupy

    model, feeds, w, kernel = _products()
    got = ForwardRunner(ModelGraph(model), "cuda").run(feeds, ["m", "c"])
    exact = feeds["a"].astype(np.float64) @ w.astype(np.float64)
    assert np.abs(got["m"] / exact - 1).max() < 2e-5
    cpu = ForwardRunner(ModelGraph(model)).run(feeds, ["c"])["c"]  # the CPU's fp32 convolution
    assert np.abs(got["c"] / cpu - 1).max() < 2e-5
    ours = cupy.asnumpy(cupy.asarray(feeds["a"]) @ cupy.asarray(w))
    assert np.abs(ours / exact - 1).max() < 2e-5


@needs_model
@on_gpu
def test_captures_stay_on_the_device(monkeypatch):
    import cupy

    bound = []
    run = DeviceArrays.run
    monkeypatch.setattr(DeviceArrays, "run", lambda self, *a, **k: bound.append(a[1]) or run(self, *a, **k))
    x, _ = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda")
    values = ex.engine.runner.run({ex.input_name: x}, ["relu3", "fc"], keep_on_device=True)
    assert bound == ["cuda"] and all(isinstance(v, cupy.ndarray) for v in values.values())
    host = Explainer(BUNDLED_MODEL).engine.runner.run({ex.input_name: x}, ["relu3", "fc"])
    for name, value in values.items():
        np.testing.assert_allclose(cupy.asnumpy(value), host[name], rtol=1e-5, atol=1e-6)


@needs_model
@on_gpu
def test_one_copy_of_the_weights_and_no_growth():
    """After the first calls, calls with other layers and methods upload no constant, and neither CuPy's pool nor
    the device's free memory moves beyond a few MB."""
    import cupy

    x, label = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda", batch_size=8)
    arrays = ex.engine.arrays
    calls = [("cebr", None, {}), ("gradr", None, {}), ("ceb", None, {"output": "fc", "target": 3}),
             ("grad_x_input", None, {"output": "fc", "target": 3})]
    for method, layer, options in calls:
        ex.explain(x, method=method, layer=layer, **({"target": label} | options))
    uploads, held = arrays.uploads, arrays.constant_bytes
    assert uploads == len(arrays._constants)
    pool = cupy.get_default_memory_pool()
    cupy.cuda.Device().synchronize()
    free, used = cupy.cuda.runtime.memGetInfo()[0], pool.total_bytes()
    for _ in range(3):
        for method, layer in (("cebr", "relu3"), ("ebr", "relu2"), ("gradr", "relu1"), ("cebr", "relu1")):
            ex.explain(x, target=label, method=method, layer=layer)
        for method, layer in (("eb", "relu3"), ("ceb", "relu2"), ("grad", "relu1")):
            ex.explain(x, target=3, method=method, layer=layer, output="fc")
    cupy.cuda.Device().synchronize()
    assert arrays.uploads == uploads and arrays.constant_bytes == held
    assert pool.total_bytes() <= used + (4 << 20)
    assert cupy.cuda.runtime.memGetInfo()[0] >= free - (64 << 20)
    assert len(ex.engine.runner._sessions) <= DEVICE_SESSIONS


@on_gpu
def test_gather_scatter_is_deterministic_on_the_gpu():
    import cupy

    from ebr_onnx.core import registry
    from ebr_onnx.core.context import RuleContext

    rng = np.random.default_rng(0)
    indices = rng.integers(0, 50, 4000).astype(np.int64)
    node = helper.make_node("Gather", ["x", "i"], ["y"], axis=0, name="g")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [50, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4000, 8])],
                              [numpy_helper.from_array(indices, "i")])
    model = ModelGraph(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    p = (rng.uniform(-1, 1, (4000, 8)) * 10.0 ** rng.integers(-4, 4, (4000, 1))).astype(np.float32)
    ctx = RuleContext(model, cupy, "grad", {"x": np.zeros((50, 8), np.float32)}, {"x": (50, 8)}, {"x", "y"},
                      dtype=np.float32)
    rule = registry.find_rule("Gather", "grad").fn
    runs = [cupy.asnumpy(rule(model.nodes[0], ctx, [cupy.asarray(p)])[0]) for _ in range(3)]
    want = np.zeros((50, 8), np.float32)
    np.add.at(want, indices, p)
    assert all(np.array_equal(r, want) for r in runs)


def _forms():
    sys.path.insert(0, str(TESTS))
    from test_device_path import FORMS

    return FORMS


@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("name", ["lstm-fused", "gru-fused", "lstm-pytorch", "lstm-keras", "lstm-concat",
                                  "lstm-peepholes-pytorch", "gru-pytorch", "gru-keras", "gru-concat",
                                  "lstm-hand-written"])
@on_gpu
def test_recurrent_forms_match_cpu(name, rules):
    frames = np.abs(np.random.default_rng(1).normal(size=(5, 1, 5))).astype(np.float32)
    build = _forms()[name]
    for act, method in (("Relu", "ebr"), ("Relu", "cebr"), ("Tanh", "gradr")):
        model = build(act)
        options = {} if method == "gradr" else {"recurrent_rules": rules}
        for target in range(3):
            cpu = Explainer(model).explain(frames, target=target, method=method, **options)
            gpu = Explainer(model, device="cuda").explain(frames, target=target, method=method, **options)
            _close(gpu.maps, cpu.maps)
