"""Operators derived from constant weights, built once per explainer and kept across calls.

The EB rule of a convolution runs two convolutions by the weight's positive part per layer: ``Z = f(x, W⁺)`` and the
transpose ``fᵀ(q, W⁺)``. On the CPU these run as one-node onnxruntime sessions (MLAS reaches ~4× the GFLOP/s of NumPy's
matmul on this project's machines): the transpose is a ``Conv`` by the flipped, channel-swapped part where the
convolution has unit strides, a ``ConvTranspose`` otherwise. Each session holds its own part of the weight (the
convolutions' weights are small; VGG-16's 13 take 58 MB), keyed by weight name, sign (the contrastive dual negates the
classifier), part, direction and geometry.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper
from threadpoolctl import threadpool_limits

from .backend import OPSET, require_onnxruntime, session_options
from .geometry import ConvGeometry, weight_part


class KernelCache:
    """Compiled operators by key, for one explainer (``threads`` as its forward sessions)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads
        self._items: dict[tuple, Any] = {}

    def holds(self, kind: str) -> bool:
        """Whether an operator of this kind (the first element of its key) was built."""
        return any(key[0] == kind for key in self._items)

    def get(self, key: tuple, build: Callable[[], Any]) -> Any:
        if key not in self._items:
            self._items[key] = build()
        return self._items[key]

    def latest(self, slot: tuple, version: Any, build: Callable[[], Any]) -> Any:
        """One operator per ``slot``: the held one while its ``version`` matches, else a new build replacing it (a
        lowered walk holds its own copy of the weights: one per walk, not one per shape ever met)."""
        held = self._items.get(slot)
        if held is None or held[0] != version:
            self._items[slot] = held = (version, build())
        return held[1]

    def session(self, model: onnx.ModelProto, weights: dict[str, np.ndarray] | None = None, whole: bool = False,
                listed_order: bool = False):
        """An onnxruntime CPU session for a model holding its own weights, not spinning between calls.

        A one-node kernel runs without a memory arena (an arena per session would keep each layer's largest buffers
        for good) and without the NCHWc layout (its reordered copies of input and output raised the VGG-16 walk's
        peak by ~0.7 GB, for no speed). A ``whole`` lowered walk gets all optimizations, NCHWc included (the layout
        stays between its convolutions), and an arena: it runs on slices of a few frames
        (:meth:`ebr_onnx.lowering.Lowering.run`), so the arena stays small (~0.1 GB for VGG-16) and spares every
        slice after the first the faulting-in of fresh memory (VGG-16, 8 frames: 1.40 → 1.26 s); it is shrunk after
        the walk's last slice. With ``listed_order`` its nodes run in the order the walk lists them (the lowered
        walks of 3-D convolutions: onnxruntime's default order computed every layer's ``Z = f(x, W⁺)`` first and
        held them all, R(2+1)D-18, one clip: ~0.3 GB more; VGG-16's walk peaks ~0.15 GB lower in the default
        order). ``weights`` are the arrays of initializers the model declares external, handed to the session
        (which keeps them alive).
        """
        ort = require_onnxruntime()
        options = session_options(self.threads, optimize_all=whole, arena=whole, spinning=False,
                                  listed_order=listed_order)
        values = [ort.OrtValue.ortvalue_from_numpy(a) for a in (weights or {}).values()]
        if values:
            options.add_external_initializers(list(weights), values)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        session.held_weights = values  # the session reads these arrays' memory
        return session


def _one_node(op_type: str, w: np.ndarray, **attrs: Any) -> onnx.ModelProto:
    node = helper.make_node(op_type, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph([node], op_type, [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.ascontiguousarray(w), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])


def _flipped(w: np.ndarray, group: int) -> np.ndarray:
    """The weight of the transposed convolution as a convolution: channels swapped per group, kernel flipped along
    every spatial axis."""
    m, cg = w.shape[:2]
    kernel = tuple(w.shape[2:])
    swapped = w.reshape((group, m // group, cg) + kernel).transpose((0, 2, 1) + tuple(range(3, 3 + len(kernel))))
    return swapped.reshape((cg * group, m // group) + kernel)[(slice(None), slice(None)) + (slice(None, None, -1),)
                                                              * len(kernel)]


class OrtConv:
    """``f`` and ``fᵀ`` of one Conv node (2-D or 3-D; 1-D made 2-D) by its weight's parts, as cached onnxruntime
    sessions."""

    def __init__(self, cache: KernelCache, key: tuple, geo: ConvGeometry, weight: Callable[[], np.ndarray]) -> None:
        self.cache, self.key, self.geo, self._weight = cache, key, geo, weight

    def blocks(self, p: Any) -> Iterator[tuple[OrtConv, Any]]:
        yield self, p

    def _run(self, direction: str, which: str, a: np.ndarray) -> np.ndarray:
        build = self._forward_model if direction == "f" else self._transpose_model
        session = self.cache.get(self.key + (direction, which), lambda: self.cache.session(build(which)))
        return session.run(None, {"x": np.ascontiguousarray(a, dtype=np.float32)})[0]

    def forward(self, x: np.ndarray, which: str) -> np.ndarray:
        return self._run("f", which, x)

    def transpose(self, q: np.ndarray, which: str) -> np.ndarray:
        return self._run("t", which, q)

    def _forward_model(self, which: str) -> onnx.ModelProto:
        geo = self.geo
        return _one_node("Conv", weight_part(np, self._weight(), which), strides=geo.strides, pads=geo.pads,
                         dilations=geo.dilations, group=geo.group)

    def _transpose_model(self, which: str) -> onnx.ModelProto:
        op_type, weight, attrs = transpose_as_node(self.geo)
        return _one_node(op_type, weight(weight_part(np, self._weight(), which)), **attrs)


def transpose_as_node(geo: ConvGeometry, flip: bool = True
                      ) -> tuple[str, Callable[[np.ndarray], np.ndarray], dict[str, Any]]:
    """``fᵀ(q, W)`` of a 2-D or 3-D convolution as one ONNX node: (op type, how its weight is made from W, its
    attributes) — a ``Conv`` by the flipped, channel-swapped weight where the convolution has unit strides (and
    ``flip``), a ``ConvTranspose`` by W itself otherwise."""
    reach = [(k - 1) * d for k, d in zip(geo.kernel, geo.dilations)]
    pads = [r - b for r, b in zip(reach, geo.begins)] + [r - e for r, e in zip(reach, geo.ends)]
    if flip and all(s == 1 for s in geo.strides) and min(pads) >= 0:
        return ("Conv", lambda w: _flipped(w, geo.group),
                {"pads": pads, "dilations": geo.dilations, "group": geo.group})
    covered = [(o - 1) * s + r + 1 - b - e
               for o, s, r, b, e in zip(geo.out, geo.strides, reach, geo.begins, geo.ends)]
    return "ConvTranspose", lambda w: w, {"strides": geo.strides, "pads": geo.pads, "dilations": geo.dilations,
                                          "group": geo.group,
                                          "output_padding": [n - c for n, c in zip(geo.size, covered)]}


def blas_threads(count: int):
    """A context that limits NumPy's BLAS to ``count`` threads (restored after), through threadpoolctl.

    OpenBLAS's worker threads busy-wait after each call; between onnxruntime's threads they made the VGG-16 walk
    ~3× slower on a 2-core machine.
    """
    return threadpool_limits(limits=count, user_api="blas")
