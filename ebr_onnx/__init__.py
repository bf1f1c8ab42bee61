"""ebr_onnx: Excitation Backprop for RNNs (Bargal et al., CVPR 2018) on ONNX models from any framework."""
from . import rules  # noqa: F401  (registers the op rules)
from .core.errors import EbrError, UnsupportedOpError
from .core.result import ExplainResult
from .explainer import Explainer
from .methods import METHODS

__all__ = ["EbrError", "ExplainResult", "Explainer", "METHODS", "UnsupportedOpError"]
__version__ = "0.1.0"
