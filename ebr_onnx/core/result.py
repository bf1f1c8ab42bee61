"""What an explanation returns: :class:`ExplainResult` and the typed parts it carries."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import EbrError


@dataclass(frozen=True)
class Mass:
    """The total signal at the top (the prior, per example or clip), at the RNN→CNN boundary (per frame; recurrent
    methods) and at the layer (per example; per frame for recurrent methods): the conservation check, as captum's
    convergence delta."""

    top: np.ndarray
    layer: np.ndarray
    boundary: np.ndarray | None = None


@dataclass(frozen=True)
class Passes:
    """The recurrent passes' signals at the boundary before normalisation: ``pos`` of the target (Eqs. 1, 3), ``neg``
    of the contrastive dual unit (Eqs. 2, 4; cEB-R only)."""

    pos: np.ndarray
    neg: np.ndarray | None = None


@dataclass(frozen=True)
class ExplainInfo:
    """Where the method found what it used: ``logits`` (the tensor the prior is set on); for the recurrent methods
    the RNN→CNN ``boundary`` and the ``frames`` tensor, the logits' ``time_axis`` and the explained ``time_steps``,
    the ``recurrent_rules`` (EB modes), the normalised ``boundary_signal`` the CNN walk starts from (Eqs. 5–7),
    the ``passes`` before normalisation, and the ``layer_tensors`` (a layer's per-frame copies in time order)."""

    logits: str
    boundary: str | None = None
    frames: str | None = None
    time_axis: int | None = None
    time_steps: list[int] = field(default_factory=list)
    recurrent_rules: str | None = None
    boundary_signal: np.ndarray | None = None
    passes: Passes | None = None
    layer_tensors: list[str] = field(default_factory=list)


@dataclass
class ExplainResult:
    """Maps and what produced them.

    ``maps`` is the signal at ``layer`` summed over channels ((N, h, w) for a 4-D layer; the signal itself for a 2-D
    one; recurrent methods: (T, h, w), summing the axis the graph feeds to Conv as channels, channels-last too, over
    all per-frame copies of the layer); ``signal`` the full signal; ``temporal`` the per-frame sums of the maps
    (recurrent methods); ``output`` the forward values of the target tensor; ``mass`` the totals of the
    conservation check; ``info`` where the method found what it used.
    """

    maps: np.ndarray
    signal: np.ndarray
    method: str
    layer: str
    target: list[int]
    output: np.ndarray
    mass: Mass
    info: ExplainInfo
    temporal: np.ndarray | None = None
    warnings: list[str] = field(default_factory=list)


def check_finite(signal: np.ndarray, method: str, layer: str) -> None:
    """Never hand out a map with NaN or inf: raise instead (the rules guard every division; this would be a bug)."""
    if not np.isfinite(signal).all():
        raise EbrError(f"the {method} signal at {layer!r} is not finite; please report this model")
