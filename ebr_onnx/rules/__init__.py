"""The op rules, one module per family; importing this package registers them all in
:mod:`ebr_onnx.core.registry`."""
from . import activation, elementwise, linear, pooling, recurrent, routing  # noqa: F401
