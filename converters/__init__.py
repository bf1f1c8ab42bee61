"""Converters from other frameworks' model files to ONNX models that ebr_onnx explains."""
