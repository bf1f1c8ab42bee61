"""Shared fixtures: building tiny ONNX graphs and running the backward walk on them with a chosen top signal."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx.core.backend import to_numpy
from ebr_onnx.core.context import RuleContext
from ebr_onnx.core.forward import ForwardRunner
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.core.kernels import KernelCache
from ebr_onnx.core.options import RuleOptions
from ebr_onnx.core.walk import required_values, walk
from ebr_onnx.lowering import Lowering


def build_model(nodes: list[onnx.NodeProto], inputs: dict[str, list], outputs: list[str],
                initializers: dict[str, np.ndarray] | None = None, opset: int = 17) -> onnx.ModelProto:
    """A float32 model of ``nodes``; ``inputs`` maps names to shapes (strings for free dimensions); the outputs'
    types and shapes are inferred."""
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(k, onnx.TensorProto.FLOAT, shape) for k, shape in inputs.items()],
        [helper.make_tensor_value_info(k, onnx.TensorProto.UNDEFINED, None) for k in outputs],
        [onnx.numpy_helper.from_array(np.asarray(v), k) for k, v in (initializers or {}).items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def run_backprop(model: onnx.ModelProto, feeds: dict[str, np.ndarray], seed: np.ndarray | dict[str, np.ndarray],
                 mode: str = "eb", sources: list[str] | None = None, lowered: bool = False, xp: Any = np,
                 **options: Any) -> tuple[dict[str, np.ndarray], RuleContext]:
    """Walk ``seed`` (a signal at the first graph output, or signals by output name) down to ``sources`` (default:
    every fed input) in float64 rule by rule; with ``lowered``, in float32 on the CPU path, whose lowerable bottom
    part runs as one onnxruntime graph (:mod:`ebr_onnx.lowering`); ``xp``: the array module of the walk (a CuPy
    stand-in runs the device path; the signals come back as NumPy arrays).

    Returns the signal at each source (zeros where none arrived) and the rule context (its ``warnings``)."""
    graph = ModelGraph(model)
    sources = list(sources or feeds)
    seeds = seed if isinstance(seed, dict) else {graph.outputs[0]: seed}
    nodes = graph.nodes_between(sources, list(seeds))
    shapes = graph.concrete_shapes({k: np.shape(v) for k, v in feeds.items()})
    wanted = sorted(n for n in required_values(nodes, mode) if n and not graph.is_constant(n))
    values = ForwardRunner(graph).run(feeds, wanted)
    dtype = np.float32 if lowered else np.float64
    ctx = RuleContext(graph, xp, mode, values, shapes, graph.signal_tensors(sources), dtype=dtype,
                      options=RuleOptions(**options), kernels=KernelCache() if lowered else None,
                      lowerer=Lowering() if lowered else None)
    got = walk(ctx, nodes, {k: xp.asarray(np.asarray(v, dtype)) for k, v in seeds.items()}, keep=set(sources))
    return {s: to_numpy(got[s]) if s in got else np.zeros(np.shape(feeds[s])) for s in sources}, ctx


@pytest.fixture(scope="session")
def make_model() -> Callable[..., onnx.ModelProto]:
    return build_model


@pytest.fixture(scope="session")
def backprop() -> Callable[..., tuple[dict[str, np.ndarray], RuleContext]]:
    return run_backprop



@pytest.fixture(scope="session")
def tiny_cnn() -> onnx.ModelProto:
    """Conv(3→4, 3×3) → Relu ``r`` → Flatten → MatMul classifier ``fc`` (5 classes) on (N, 3, 4, 4), N free."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((64, 5)).astype(np.float32), "fw")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fw"], ["y"], name="fc")]
    graph = helper.make_graph(nodes, "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


_STUBS = Path(__file__).parent / "stubs"


@pytest.fixture(scope="module")
def zennit():
    """zennit imports torchvision at import time: a stub of the two names it reads is put on the path here."""
    sys.path.insert(0, str(_STUBS))
    try:
        return pytest.importorskip("zennit")
    finally:
        sys.path.remove(str(_STUBS))
        for name, module in list(sys.modules.items()):
            if name.split(".")[0] == "torchvision" and str(_STUBS) in str(getattr(module, "__file__", "")):
                del sys.modules[name]
