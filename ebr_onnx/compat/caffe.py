"""A pycaffe-compatible interface: ``from ebr_onnx.compat import caffe`` in place of ``import caffe`` runs the
authors' release scripts (its patched pycaffe, ``shared/spec/caffe-reference.md`` §1) on the converter and the
engine, with no Caffe.

Offered: ``Net`` (:class:`~ebr_onnx.compat.net.Net`), ``TRAIN``/``TEST``, ``set_mode_cpu``/``set_mode_gpu``,
the release's ``set_mode_eb_cpu``/``set_mode_eb_gpu`` (a GPU mode runs the engine's CUDA path where CuPy sees a GPU,
else says so once and runs on the CPU), ``set_device``, ``set_random_seed``, and ``io`` (``load_image``,
``resize_image``, ``Transformer``). What is not offered (training, solvers, the net-building Python API, data layers
other than Input/DummyData, …) raises :class:`~ebr_onnx.compat.errors.NotOffered`, one line naming the call.
"""
from __future__ import annotations

from . import caffe_io as io
from . import state
from .errors import NotOffered, not_offered, not_offered_attributes
from .net import Net, Phase

TRAIN = Phase.TRAIN
TEST = Phase.TEST


def set_mode_cpu() -> None:
    """``Caffe::set_mode(CPU)``: backward runs the gradient."""
    state.set_mode(eb=False, gpu=False)


def set_mode_gpu() -> None:
    """``Caffe::set_mode(GPU)``: the gradient, on the GPU where there is one."""
    state.set_mode(eb=False, gpu=True)


def set_mode_eb_cpu() -> None:
    """The release's ``Caffe::set_mode(EB_CPU)``: backward runs each layer's EB rule."""
    state.set_mode(eb=True, gpu=False)


def set_mode_eb_gpu() -> None:
    """The release's ``Caffe::set_mode(EB_GPU)``: the EB rules, on the GPU where there is one."""
    state.set_mode(eb=True, gpu=True)


def set_device(device_id: int) -> None:
    """``Caffe::SetDevice`` (recorded; the CUDA path runs on CuPy's current device)."""
    state.set_device(device_id)


def set_random_seed(seed: int) -> None:
    """``Caffe::set_random_seed``: the fillers of nets made without weights and of refilling DummyData layers."""
    state.set_random_seed(seed)


_TRAINING = "training (solvers, parameter updates)"
set_mode_dc_cpu = not_offered("caffe.set_mode_dc_cpu", "the EB release's deconvnet (DC) mode")
set_mode_dc_gpu = not_offered("caffe.set_mode_dc_gpu", "the EB release's deconvnet (DC) mode")
SGDSolver = not_offered("caffe.SGDSolver", _TRAINING)
NesterovSolver = not_offered("caffe.NesterovSolver", _TRAINING)
AdaGradSolver = not_offered("caffe.AdaGradSolver", _TRAINING)
RMSPropSolver = not_offered("caffe.RMSPropSolver", _TRAINING)
AdaDeltaSolver = not_offered("caffe.AdaDeltaSolver", _TRAINING)
AdamSolver = not_offered("caffe.AdamSolver", _TRAINING)
get_solver = not_offered("caffe.get_solver", _TRAINING)
Classifier = not_offered("caffe.Classifier", "pycaffe's Classifier helper (use Net and caffe.io.Transformer)")
Detector = not_offered("caffe.Detector", "pycaffe's Detector helper (window data)")
set_multiprocess = not_offered("caffe.set_multiprocess", _TRAINING)
set_solver_count = not_offered("caffe.set_solver_count", _TRAINING)
set_solver_rank = not_offered("caffe.set_solver_rank", _TRAINING)
to_proto = not_offered("caffe.to_proto", "building nets in Python (NetSpec); write the prototxt")
NetSpec = not_offered("caffe.NetSpec", "building nets in Python (NetSpec); write the prototxt")

#: Modules of pycaffe that are not offered: reading one raises NotOffered.
_MODULES = {
    "layers": "building nets in Python (caffe.layers / NetSpec); write the prototxt",
    "params": "building nets in Python (caffe.params / NetSpec); write the prototxt",
    "proto": "Caffe's protobuf classes (caffe.proto.caffe_pb2); the converter reads prototxt and caffemodel itself",
    "draw": "drawing nets (caffe.draw)",
}

__getattr__ = not_offered_attributes("caffe", "ebr_onnx.compat.caffe", _MODULES)


__all__ = ["Net", "NotOffered", "TEST", "TRAIN", "io", "set_device", "set_mode_cpu", "set_mode_eb_cpu",
           "set_mode_eb_gpu", "set_mode_gpu", "set_random_seed"]
