"""What an explanation returns: :class:`ExplainResult` and the typed parts it carries."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import EbrError
from .receptive import AxisField


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
    the ``passes`` before normalisation, and the ``layer_tensors`` (a layer's per-frame copies in time order); for a
    3-D CNN's layer that keeps time, the receptive fields of its maps' axes over the input's time, height and width
    (``map_fields``, :mod:`ebr_onnx.core.receptive`); for a captioner, the ``caption``'s word at each output step
    (the words it was fed to predict, or those it emitted; :mod:`ebr_onnx.recurrent.words`)."""

    logits: str
    boundary: str | None = None
    frames: str | None = None
    time_axis: int | None = None
    time_steps: list[int] = field(default_factory=list)
    recurrent_rules: str | None = None
    boundary_signal: np.ndarray | None = None
    passes: Passes | None = None
    layer_tensors: list[str] = field(default_factory=list)
    map_fields: tuple[AxisField, ...] = ()
    caption: list[str] | None = None


@dataclass
class ExplainResult:
    """Maps and what produced them.

    ``maps`` is the signal at ``layer`` summed over channels ((N, h, w) for a 4-D layer; the signal itself for a 2-D
    one; recurrent methods: (T, h, w), summing the axis the graph feeds to Conv as channels, channels-last too, over
    all per-frame copies of the layer; a 3-D CNN's layer (N, C, T', H', W'): (N, T', h, w), time first whatever the
    layer's layout); ``signal`` the full signal; ``temporal`` the per-frame sums of the maps (recurrent methods:
    (T,); a 3-D CNN: (N, T') per layer time slice); ``output`` the forward values of the target tensor; ``mass``
    the totals of the conservation check; ``info`` where the method found what it used. :meth:`frame_maps` and
    :meth:`frame_temporal` put a 3-D CNN's maps and curve on the input's frames.
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

    def frame_index(self) -> np.ndarray:
        """For each frame of a 3-D CNN's input clip, the time slice of the layer whose map it gets: the slice whose
        temporal receptive field has its centre nearest to the frame (the earlier one on a tie) — the slice whose
        field covers the frame, wherever the fields leave no gaps between them (a layer without time strides: frame
        ``t`` gets slice ``t``; after strides of 2 in all: frames 2k and 2k + 1 share slice k, shifted by the
        fields' padding)."""
        return self._fields()[0].nearest()

    def frame_maps(self, pixels: bool = True) -> np.ndarray:
        """A 3-D CNN's maps (N, T', h, w) on the input's T frames: (N, T, H, W), each frame the map of its time
        slice (:meth:`frame_index`; copied, not divided: a frame shows its slice's map), each pixel the value of the
        map cell whose spatial receptive field has its centre nearest (the same rule per axis); ``pixels=False``
        keeps the layer's resolution: (N, T, h, w)."""
        time, height, width = self._fields()
        maps = self.maps[:, time.nearest()]
        if pixels:
            maps = maps[:, :, height.nearest()][:, :, :, width.nearest()]
        return maps

    def frame_temporal(self) -> np.ndarray:
        """A 3-D CNN's evidence curve on the input's frames: (N, T), each frame the evidence of its time slice
        (``temporal`` indexed by :meth:`frame_index`)."""
        if self.temporal is None:
            raise EbrError(f"the maps at {self.layer!r} keep no time axis")
        return self.temporal[:, self._fields()[0].nearest()]

    def _fields(self) -> tuple[AxisField, ...]:
        if len(self.info.map_fields) != 3 or self.maps.ndim != 4:
            raise EbrError(f"the maps at {self.layer!r} have shape {self.maps.shape}, not a 3-D CNN layer's "
                           "(N, T', h, w) with its time and pixel axes traced to the input")
        return self.info.map_fields


def check_finite(signal: np.ndarray, method: str, layer: str) -> None:
    """Never hand out a map with NaN or inf: raise instead (the rules guard every division; this would be a bug)."""
    if not np.isfinite(signal).all():
        raise EbrError(f"the {method} signal at {layer!r} is not finite; please report this model")
