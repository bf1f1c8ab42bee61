"""One explain call as the API received it: :class:`ExplainRequest`, what every method reads."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .targets import Target

#: A time step of a recurrent output: an index, several, or ``"all"``.
TimeStep = int | str | Sequence[int]
#: Told the fraction (0–1) of an explain call done, after each chunk of examples or frames.
Progress = Callable[[float], None]


@dataclass(frozen=True)
class ExplainRequest:
    """What to explain (``inputs``, ``target``, ``prior``, ``output``, ``extra_inputs``), how (``method``, the
    ``classifier`` the contrastive dual negates) and where (``layer``); the recurrent methods also read
    ``time_step``, ``recurrent_rules``, ``boundary`` and ``time_axis`` (see :class:`ebr_onnx.Explainer`);
    ``progress`` is told how far the call is."""

    inputs: np.ndarray | Mapping[str, np.ndarray]
    method: str
    target: Target = None
    layer: str | None = None
    prior: np.ndarray | None = None
    output: str | None = None
    classifier: str | None = None
    extra_inputs: Mapping[str, Any] | None = None
    time_step: TimeStep = -1
    recurrent_rules: str = "caffe"
    boundary: str | None = None
    time_axis: int | None = None
    progress: Progress | None = None

    def report(self, fraction: float) -> None:
        if self.progress is not None:
            self.progress(fraction)

    @property
    def mode(self) -> str:
        """The rules' mode: ``"grad"`` for the gradient methods, else ``"eb"``."""
        return "grad" if self.method in ("grad", "grad_x_input", "gradr") else "eb"
