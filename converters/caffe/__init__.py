"""Caffe → ONNX converter for ebr_onnx (no Caffe needed): ``convert_caffe`` and the ``convert caffe`` CLI."""

from .convert import convert_caffe
from .errors import CaffeConversionError, CaffeConversionWarning

__all__ = ["CaffeConversionError", "CaffeConversionWarning", "convert_caffe"]
