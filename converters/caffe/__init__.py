"""Caffe → ONNX converter for ebr_onnx (no Caffe needed): ``convert_caffe`` and the ``convert caffe`` CLI."""

from .convert import ConvertedLayer, ConvertedNet, convert_caffe, convert_net
from .errors import CaffeConversionError, CaffeConversionWarning

__all__ = [
    "CaffeConversionError", "CaffeConversionWarning", "ConvertedLayer", "ConvertedNet", "convert_caffe", "convert_net",
]
