"""The method table: each method name (paper Table 1) → the class that explains with it. The CNN methods
(:mod:`.cnn`) and the recurrent methods (:mod:`ebr_onnx.recurrent.method`) are peers: each class is made once per
:class:`~ebr_onnx.Explainer` with its :class:`~ebr_onnx.core.engine.Engine` and answers
``explain(request) -> ExplainResult``."""
from __future__ import annotations

from typing import Protocol

from ..core.engine import Engine
from ..core.request import ExplainRequest
from ..core.result import ExplainResult
from ..recurrent.method import RECURRENT_METHODS, RecurrentMethod
from .cnn import CNN_METHODS, CnnMethod


class Method(Protocol):
    def __init__(self, engine: Engine) -> None: ...

    def explain(self, request: ExplainRequest) -> ExplainResult: ...


#: Method name → the class that explains with it.
METHOD_TABLE: dict[str, type[Method]] = {**{m: CnnMethod for m in CNN_METHODS},
                                         **{m: RecurrentMethod for m in RECURRENT_METHODS}}
METHODS = CNN_METHODS + RECURRENT_METHODS

__all__ = ["CNN_METHODS", "METHODS", "METHOD_TABLE", "Method", "RECURRENT_METHODS"]
