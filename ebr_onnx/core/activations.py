"""The one table of activation functions: value and derivative by the input, with their ``alpha``/``beta``
parameters. The gradient rules of the smooth activation ops read it by ONNX op type (:data:`OP_ACTIVATIONS`), the
fused recurrent ops by the names of their ``activations`` attribute."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .numeric import sigmoid

Fn = Callable[[Any, Any, float, float], Any]  # (xp, x, alpha, beta) → array


@dataclass(frozen=True)
class ActivationFn:
    """``value`` (None where NumPy has no vectorised form, e.g. erf) and ``derivative`` of ``(xp, x, alpha, beta)``;
    ``alpha``/``beta`` are the defaults, None where the function takes no such parameter."""

    value: Fn | None
    derivative: Fn
    alpha: float | None = None
    beta: float | None = None


def _sigmoid_derivative(xp: Any, x: Any, a: float, b: float) -> Any:
    s = sigmoid(xp, x)
    return s * (1 - s)


def _mish_derivative(xp: Any, x: Any, a: float, b: float) -> Any:
    """``d/dx x·tanh(softplus(x)) = tanh(sp) + x (1 − tanh²(sp)) σ(x)``."""
    t = xp.tanh(xp.logaddexp(x, 0))
    return t + x * (1 - t * t) * sigmoid(xp, x)


#: Lower-case name (ONNX's recurrent activation names) → the function.
ACTIVATIONS: dict[str, ActivationFn] = {
    "relu": ActivationFn(lambda xp, x, a, b: xp.maximum(x, 0), lambda xp, x, a, b: (x > 0).astype(x.dtype)),
    "tanh": ActivationFn(lambda xp, x, a, b: xp.tanh(x), lambda xp, x, a, b: 1 - xp.tanh(x) ** 2),
    "sigmoid": ActivationFn(lambda xp, x, a, b: sigmoid(xp, x), _sigmoid_derivative),
    "affine": ActivationFn(lambda xp, x, a, b: a * x + b, lambda xp, x, a, b: xp.full_like(x, a), 1.0, 0.0),
    "leakyrelu": ActivationFn(lambda xp, x, a, b: xp.where(x > 0, x, a * x),
                              lambda xp, x, a, b: xp.where(x > 0, 1, a).astype(x.dtype), 0.01),
    "thresholdedrelu": ActivationFn(lambda xp, x, a, b: xp.where(x > a, x, 0),
                                    lambda xp, x, a, b: (x > a).astype(x.dtype), 1.0),
    "scaledtanh": ActivationFn(lambda xp, x, a, b: a * xp.tanh(b * x),
                               lambda xp, x, a, b: a * b * (1 - xp.tanh(b * x) ** 2), 1.0, 1.0),
    "hardsigmoid": ActivationFn(lambda xp, x, a, b: xp.clip(a * x + b, 0, 1),
                                lambda xp, x, a, b: ((a * x + b > 0) & (a * x + b < 1)).astype(x.dtype) * a, 0.2, 0.5),
    "elu": ActivationFn(lambda xp, x, a, b: xp.where(x > 0, x, a * (xp.exp(xp.minimum(x, 0)) - 1)),
                        lambda xp, x, a, b: xp.where(x > 0, 1, a * xp.exp(xp.minimum(x, 0))).astype(x.dtype), 1.0),
    "selu": ActivationFn(lambda xp, x, a, b: b * xp.where(x > 0, x, a * (xp.exp(xp.minimum(x, 0)) - 1)),
                         lambda xp, x, a, b: b * xp.where(x > 0, 1, a * xp.exp(xp.minimum(x, 0))).astype(x.dtype),
                         1.67326319217681884765625, 1.05070102214813232421875),
    "softsign": ActivationFn(lambda xp, x, a, b: x / (1 + xp.abs(x)), lambda xp, x, a, b: 1 / (1 + xp.abs(x)) ** 2),
    "softplus": ActivationFn(lambda xp, x, a, b: xp.logaddexp(x, 0), lambda xp, x, a, b: sigmoid(xp, x)),
    "hardswish": ActivationFn(lambda xp, x, a, b: x * xp.clip(x / 6 + 0.5, 0, 1),
                              lambda xp, x, a, b: xp.where(x < -3, 0.0, xp.where(x > 3, 1.0, x / 3 + 0.5))),
    "erf": ActivationFn(None, lambda xp, x, a, b: 2 / math.sqrt(math.pi) * xp.exp(-x * x)),
    "mish": ActivationFn(lambda xp, x, a, b: x * xp.tanh(xp.logaddexp(x, 0)), _mish_derivative),
}

#: ONNX op type → (its name in :data:`ACTIVATIONS`, the node attributes that give alpha and beta).
OP_ACTIVATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "Sigmoid": ("sigmoid", ()), "Tanh": ("tanh", ()), "Elu": ("elu", ("alpha",)), "Selu": ("selu", ("alpha", "gamma")),
    "Softplus": ("softplus", ()), "Softsign": ("softsign", ()), "HardSigmoid": ("hardsigmoid", ("alpha", "beta")),
    "HardSwish": ("hardswish", ()), "Erf": ("erf", ()), "Mish": ("mish", ()),
}
