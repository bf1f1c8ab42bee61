"""ebr_onnx: Excitation Backprop for RNNs (Bargal et al., CVPR 2018) on ONNX models from any framework."""
from . import rules  # noqa: F401  (registers the op rules)
from .app.preprocess import prepare, preprocess
from .app.video import VideoSource, clips
from .core.errors import EbrError, UnsupportedOpError
from .core.result import ExplainInfo, ExplainResult, Mass, Passes
from .explainer import Explainer
from .methods import METHODS

__all__ = ["EbrError", "ExplainInfo", "ExplainResult", "Explainer", "METHODS", "Mass", "Passes", "UnsupportedOpError",
           "VideoSource", "clips", "prepare", "preprocess"]
__version__ = "0.1.0"
