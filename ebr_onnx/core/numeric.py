"""Numerically safe helpers: the one place for the Z == 0 convention of the EB rules, and a stable sigmoid."""
from __future__ import annotations

from typing import Any

import numpy as np


def safe_divide(xp: Any, numerator: Any, denominator: Any, *, overwrite: bool = False, vanishing: bool = False) -> Any:
    """``numerator ⊘₀ denominator``: elementwise division that gives 0 wherever the denominator is exactly 0.

    This is the release's guard (``shared/spec/caffe-reference.md`` §2.1 (b)): no epsilon, no NaN ever. ``xp`` is
    NumPy, CuPy, or the :class:`~ebr_onnx.lowering.builder.GraphBuilder` of a lowered walk, whose ``equal``,
    ``where`` and ``divide`` emit ONNX nodes: every rule, array or lowered, divides through this one function (but
    a lowered convolution on ``x ≥ 0``, whose bias guards it: :data:`ebr_onnx.lowering.ops.GUARD`). With
    ``overwrite`` the caller gives up ``denominator`` (a temporary of its own): on NumPy the quotient is written into
    it in one pass, where the shapes and dtypes allow. With ``vanishing`` the caller guarantees that every use of the
    quotient is multiplied by 0 wherever the denominator is 0 — true of Eq. 8, ``x ⊙ fᵀ(p ⊘₀ Z, W⁺)``: where
    ``Z_j = 0`` every term ``x_i w⁺_ij`` of it is 0 — so only the 0/0 needs avoiding (``p / (z or 1)``, one pass
    fewer).
    """
    if (overwrite and xp is np and numerator.shape == denominator.shape and numerator.dtype == denominator.dtype
            and denominator.flags.writeable):
        return np.divide(numerator, denominator, out=denominator, where=denominator != 0)
    zero = xp.equal(denominator, 0)
    quotient = xp.divide(numerator, xp.where(zero, 1, denominator))
    return quotient if vanishing else xp.where(zero, 0, quotient)


def sigmoid(xp: Any, x: Any) -> Any:
    """σ(x) = (1 + tanh(x/2)) / 2: equal to 1/(1+e⁻ˣ), without its overflow for large negative x."""
    return 0.5 * (1 + xp.tanh(0.5 * x))


def unbroadcast(xp: Any, grad: Any, shape: tuple[int, ...]) -> Any:
    """Sum ``grad`` over the axes that broadcasting added or stretched, back to ``shape``."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad
