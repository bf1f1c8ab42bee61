"""Interfaces that let code written for other tools run on ebr_onnx unchanged: :mod:`.caffe`, the authors' patched
pycaffe (``from ebr_onnx.compat import caffe`` in place of ``import caffe``)."""
from . import caffe

__all__ = ["caffe"]
