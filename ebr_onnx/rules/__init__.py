"""The op rules, one module per family; importing this package registers them all in
:mod:`ebr_onnx.core.registry`."""
from . import (  # noqa: F401
    activation,
    elementwise,
    linear,
    normalization,
    pointwise,
    pooling,
    recurrent,
    resampling,
    routing,
)
