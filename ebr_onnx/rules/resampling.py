"""Rules of the ops that pad, repeat or resample a tensor: Pad, Tile, Resize, Upsample.

* Pad and Tile only move values, so the signal is routed back, identically in both modes (the release routes
  Concat/Slice so, ``shared/spec/caffe-reference.md`` §2.6): Pad's ``p'`` is ``p`` at the copied positions, summed
  where the ``reflect``, ``edge`` and ``wrap`` modes read one value several times (constant pads take none); Tile's
  ``p'`` is ``p`` summed over the tiles.
* Resize and Upsample are linear maps ``y = (⊗_a A_a) x``: one interpolation matrix ``A_a`` (output × input) per
  resized axis, built from ONNX's coordinate transformation and the nearest, linear or cubic taps (edge clamping,
  ``exclude_outside``), as onnxruntime computes the forward. EB is Eq. 8 with the positive part of the N-D weights,
  ``W⁺ = (⊗_a A_a)⁺ = Σ_{s: an even number of A⁻} ⊗_a A_a^{s_a}`` (cubic taps are negative, and a product of two
  negative taps is positive); ``W⁻`` sums the odd sign patterns. grad: ``p' = (⊗_a A_aᵀ) p``.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from ..core.context import RuleContext
from ..core.errors import EbrError
from ..core.geometry import weight_part
from ..core.graph import Node
from ..core.registry import needs_inputs, rule
from .linear import linear_rule


def _parameters(node: Node) -> list[str]:
    """The parameter inputs (pads, repeats, scales, sizes …), read as values when they are computed tensors."""
    return [t for t in node.inputs[1:] if t]


def _host(ctx: RuleContext, name: str) -> np.ndarray:
    return ctx.host(name)


# -- Pad ----------------------------------------------------------------------------------------------------------
#: Pad mode → the input index each output index reads (``i = o − before`` moved into range; −1: a constant).
_PAD_SOURCES: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    "constant": lambda i, n: np.where((i >= 0) & (i < n), i, -1),
    "edge": lambda i, n: np.clip(i, 0, n - 1),
    "reflect": lambda i, n: np.zeros_like(i) if n == 1 else (n - 1) - np.abs((n - 1) - np.mod(i, 2 * n - 2)),
    "wrap": lambda i, n: np.mod(i, n),
}


def _runs(src: np.ndarray) -> Iterator[tuple[int, int]]:
    """Maximal runs ``[start, stop)`` of outputs whose sources are valid and step by the same ±1 (no repeats)."""
    start = 0
    while start < len(src):
        if src[start] < 0:
            start += 1
            continue
        stop = start + 1
        step = int(src[stop] - src[start]) if stop < len(src) else 0
        if abs(step) == 1 and src[stop] >= 0:
            while stop + 1 < len(src) and src[stop + 1] >= 0 and src[stop + 1] - src[stop] == step:
                stop += 1
            stop += 1
        yield start, stop
        start = stop


def route_back(xp, p: Any, axis: int, src: np.ndarray, size: int) -> Any:
    """``p'_i = Σ_{o: src[o] = i} p_o`` along ``axis`` (``src[o] = −1``: none), in slices of runs of sources."""
    out = xp.zeros(p.shape[:axis] + (size,) + p.shape[axis + 1:], dtype=p.dtype)
    lead = (slice(None),) * axis
    for start, stop in _runs(src):
        targets = src[start:stop]
        step = 1 if stop - start == 1 else int(targets[1] - targets[0])
        last = int(targets[-1]) + step
        out[lead + (slice(int(targets[0]), None if last < 0 else last, step),)] += p[lead + (slice(start, stop),)]
    return out


@rule("Pad", needs=_parameters)
def pad(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = Σ_{o: src(o) = i} p_o`` per padded axis, ``src`` by the mode: constant (pads take none), edge
    (clamped), reflect (mirrored without the edge), wrap (cyclic); pads from input 1 (opset ≥ 11) or the attribute,
    ``axes`` from input 3 (opset ≥ 18); negative pads crop."""
    p = signals[0]
    shape = ctx.shape(node.inputs[0])
    mode = node.attr("mode", "constant")
    if mode not in _PAD_SOURCES:
        raise EbrError(f"Pad node {node.name!r} has mode {mode!r}; supported: {', '.join(_PAD_SOURCES)}")
    pads = ctx.ints(node, 1, "pads") or []
    axes = [a % len(shape) for a in (ctx.ints(node, 3, "axes") or range(len(shape)))]
    for k, axis in enumerate(axes):
        before, after = pads[k], pads[k + len(axes)]
        if before or after:
            src = _PAD_SOURCES[mode](np.arange(p.shape[axis]) - before, shape[axis])
            p = route_back(ctx.xp, p, axis, src, shape[axis])
    return [p] + [None] * (len(node.inputs) - 1)


# -- Tile ---------------------------------------------------------------------------------------------------------
@rule("Tile", needs=_parameters)
def tile(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``p'_i = Σ_t p_{t·n + i}`` per axis: the output, viewed as (repeats₀, n₀, repeats₁, n₁, …), summed over the
    repeats."""
    p = signals[0]
    shape = ctx.shape(node.inputs[0])
    repeats = ctx.ints(node, 1, "repeats")
    split = tuple(v for r, n in zip(repeats, shape) for v in (r, n))
    return [p.reshape(split).sum(axis=tuple(range(0, 2 * len(shape), 2))), None]


# -- Resize / Upsample --------------------------------------------------------------------------------------------
class SeparableLinear:
    """``f(x, W) = (⊗_a A_a) x``: matrix ``A_a`` (out × in) along axis ``a``, for the EB identity of
    :mod:`ebr_onnx.rules.linear` (``forward``/``transpose`` by part: ``"all"``, ``"pos"``, ``"neg"``; the parts of
    the product are sums over the sign patterns of the factors, see the module docstring)."""

    def __init__(self, xp, matrices: dict[int, np.ndarray], dtype: Any) -> None:
        self.xp, self.matrices, self.dtype = xp, matrices, dtype
        self._terms: dict[str, list[dict[int, Any]]] = {}

    def terms(self, which: str) -> list[dict[int, Any]]:
        """The separable products whose sum is the part ``which`` of ``⊗_a A_a`` (as device arrays)."""
        if which not in self._terms:
            axes = list(self.matrices)
            patterns = [("all",) * len(axes)] if which == "all" else [
                s for s in itertools.product(("pos", "neg"), repeat=len(axes))
                if s.count("neg") % 2 == (which == "neg")]
            terms = []
            for signs in patterns:
                parts = {a: weight_part(np, self.matrices[a], s) for a, s in zip(axes, signs)}
                if all(m.any() for m in parts.values()):
                    terms.append({a: self.xp.asarray(m.astype(self.dtype)) for a, m in parts.items()})
            self._terms[which] = terms
        return self._terms[which]

    def _apply(self, v: Any, which: str, transpose: bool) -> Any:
        xp = self.xp
        shape = list(v.shape)
        for a, m in self.matrices.items():
            shape[a] = m.shape[1] if transpose else m.shape[0]
        total = xp.zeros(tuple(shape), dtype=v.dtype)
        for term in self.terms(which):
            u = v
            for a, m in term.items():
                u = xp.moveaxis(xp.tensordot(m.T if transpose else m, u, axes=([1], [a])), 0, a)
            total += u
        return total

    def forward(self, x: Any, which: str) -> Any:
        return self._apply(x, which, False)

    def transpose(self, q: Any, which: str) -> Any:
        return self._apply(q, which, True)

    def blocks(self, p: Any) -> Iterator[tuple["SeparableLinear", Any]]:
        yield self, p


@dataclass(frozen=True)
class Interpolation:
    """A Resize/Upsample node's interpolation attributes, with the defaults of its version (Upsample and Resize-10:
    ``asymmetric`` coordinates and onnxruntime's ``simple`` nearest rounding)."""

    mode: str
    coordinates: str
    nearest: str
    cubic_a: float
    exclude_outside: bool

    @classmethod
    def of(cls, node: Node, opset: int) -> "Interpolation":
        mode = node.attr("mode", "nearest")
        mode = "linear" if mode == "bilinear" else mode
        modern = node.op_type == "Resize" and opset >= 11
        made = cls(mode, node.attr("coordinate_transformation_mode", "half_pixel") if modern else "asymmetric",
                   node.attr("nearest_mode", "round_prefer_floor") if modern else "simple",
                   float(node.attr("cubic_coeff_a", -0.75)), bool(node.attr("exclude_outside", 0)))
        problems = []
        if mode not in _TAPS:
            problems.append(f"mode {mode!r} (supported: {', '.join(_TAPS)})")
        if made.coordinates not in _COORDINATES:
            problems.append(f"coordinate_transformation_mode {made.coordinates!r} (supported: "
                            f"{', '.join(_COORDINATES)})")
        if made.nearest not in _ROUNDING:
            problems.append(f"nearest_mode {made.nearest!r}")
        if int(node.attr("antialias", 0)):
            problems.append("antialias=1 (supported: 0)")
        if problems:
            raise EbrError(f"{node.op_type} node {node.name!r} has {', '.join(problems)}, which ebr_onnx does not "
                           "support")
        return made

    def matrix(self, n: int, m: int, scale: float) -> np.ndarray:
        """``A`` (m × n): output index ``o`` of the axis reads ``Σ_i A[o, i] x_i``."""
        f32 = np.float32  # onnxruntime computes the coordinates in float32: rounding at .5 depends on it
        x = _COORDINATES[self.coordinates](np.arange(m, dtype=f32), f32(n), f32(m), f32(scale)).astype(np.float64)
        rows, cols, weights = _TAPS[self.mode](self, x, n, scale < 1)
        out = np.zeros((m, n))
        np.add.at(out, (rows.ravel(), np.clip(cols, 0, n - 1).ravel()), weights.ravel())
        return out


#: coordinate_transformation_mode → x_original(o, n, m, scale) (as onnxruntime computes it, in float32).
_COORDINATES: dict[str, Callable[[np.ndarray, int, int, float], np.ndarray]] = {
    "half_pixel": lambda o, n, m, s: (o + 0.5) / s - 0.5,
    "half_pixel_symmetric": lambda o, n, m, s: (n / 2 * (1 - m / (s * n)) + ((o.astype(np.float64) + 0.5) / s - 0.5)
                                               ).astype(np.float32),
    "pytorch_half_pixel": lambda o, n, m, s: (o + 0.5) / s - 0.5 if m > 1 else 0 * o,
    "align_corners": lambda o, n, m, s: o * (n - 1) / (m - 1) if m > 1 else 0 * o,
    "asymmetric": lambda o, n, m, s: o / s,
    "tf_half_pixel_for_nn": lambda o, n, m, s: (o + 0.5) / s,
}
#: nearest_mode → the rounding of x_original (``down``: the axis shrinks).
_ROUNDING: dict[str, Callable[[np.ndarray, bool], np.ndarray]] = {
    "round_prefer_floor": lambda x, down: np.ceil(x - 0.5),
    "round_prefer_ceil": lambda x, down: np.floor(x + 0.5),
    "floor": lambda x, down: np.floor(x),
    "ceil": lambda x, down: np.ceil(x),
    "simple": lambda x, down: np.ceil(x) if down else np.trunc(x),
}


def _nearest_taps(it: Interpolation, x: np.ndarray, n: int, down: bool) -> tuple[np.ndarray, ...]:
    """One tap of weight 1 at the rounded coordinate (clamped into the axis)."""
    return np.arange(len(x)), _ROUNDING[it.nearest](x, down).astype(np.int64), np.ones(len(x))


def _linear_taps(it: Interpolation, x: np.ndarray, n: int, down: bool) -> tuple[np.ndarray, ...]:
    """Two taps at ⌊x⌋ and ⌊x⌋ + 1 of weights 1 − r and r (``x`` clamped into [0, n − 1])."""
    x = np.clip(x, 0, n - 1)
    low = np.floor(x)
    r = x - low
    rows = np.repeat(np.arange(len(x))[:, None], 2, axis=1)
    return rows, low.astype(np.int64)[:, None] + np.arange(2), np.stack([1 - r, r], axis=1)


def _cubic_taps(it: Interpolation, x: np.ndarray, n: int, down: bool) -> tuple[np.ndarray, ...]:
    """Four taps at ⌊x⌋ − 1 … ⌊x⌋ + 2 of Keys' cubic weights with ``a = cubic_coeff_a``; with ``exclude_outside``
    the taps outside the axis get 0 and the rest are renormalised (otherwise they read the edge)."""
    a = it.cubic_a
    low = np.floor(x)
    r = x - low
    distance = np.stack([1 + r, r, 1 - r, 2 - r], axis=1)
    near = ((a + 2) * distance - (a + 3)) * distance * distance + 1
    far = ((a * distance - 5 * a) * distance + 8 * a) * distance - 4 * a
    weights = np.where(distance <= 1, near, far)
    cols = low.astype(np.int64)[:, None] + np.arange(-1, 3)
    if it.exclude_outside:
        weights = np.where((cols < 0) | (cols >= n), 0.0, weights)
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.repeat(np.arange(len(x))[:, None], 4, axis=1), cols, weights


_TAPS = {"nearest": _nearest_taps, "linear": _linear_taps, "cubic": _cubic_taps}


def _scales(node: Node, ctx: RuleContext, in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[float]:
    """The scale of every axis: from ``scales`` (attribute of Upsample-7, input 1 of Upsample-9 and Resize-10, input
    2 of Resize ≥ 11) or else from ``sizes`` (input 3) as ``out/in``, one shared scale under
    ``keep_aspect_ratio_policy`` not_larger / not_smaller; ``axes`` (Resize ≥ 18) names the axes they give."""
    rank = len(in_shape)
    axes = [a % rank for a in node.attr("axes", range(rank))]
    index = 2 if node.op_type == "Resize" and ctx.graph.opset >= 11 else 1
    given = node.inputs[index] if len(node.inputs) > index else ""
    values = _host(ctx, given).ravel() if given else np.asarray(node.attr("scales", []), np.float64)
    scales = [1.0] * rank
    if values.size:
        for a, s in zip(axes, values):
            scales[a] = float(s)
        return scales
    sizes = node.inputs[3] if len(node.inputs) > 3 else ""
    wanted = _host(ctx, sizes).ravel() if sizes else [out_shape[a] for a in axes]
    ratios = {a: float(size) / in_shape[a] for a, size in zip(axes, wanted)}
    policy = node.attr("keep_aspect_ratio_policy", "stretch")
    if policy != "stretch":
        shared = (min if policy == "not_larger" else max)(ratios.values())
        ratios = {a: shared for a in axes}
    for a, s in ratios.items():
        scales[a] = s
    return scales


def resize(node: Node, ctx: RuleContext, signals: Sequence[Any]) -> list[Any]:
    """``y = (⊗_a A_a) x`` (see the module docstring): Eq. 8 with ``(⊗ A_a)⁺`` in EB, ``(⊗ A_aᵀ) p`` in grad."""
    p = signals[0]
    in_shape = ctx.shape(node.inputs[0])
    interpolation = Interpolation.of(node, ctx.graph.opset)
    scales = _scales(node, ctx, in_shape, p.shape)
    matrices = {a: interpolation.matrix(n, m, s) for a, (n, m, s) in enumerate(zip(in_shape, p.shape, scales))
                if not (n == m and s == 1.0)}
    op = SeparableLinear(ctx.xp, matrices, p.dtype)
    x = ctx.value(node.inputs[0]) if ctx.mode == "eb" else None
    return [linear_rule(ctx, node, x, p, op)] + [None] * (len(node.inputs) - 1)


rule(["Resize", "Upsample"], modes=("eb",), needs=needs_inputs)(resize)
rule(["Resize", "Upsample"], modes=("grad",), needs=_parameters)(resize)
