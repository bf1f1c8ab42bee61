"""Caffe's weight fillers (``include/caffe/filler.hpp``), used to give a net seeded random weights."""

from __future__ import annotations

import math

import numpy as np

from .schema import FillerParameter

#: Used where the prototxt gives no filler, or a filler type Caffe has but this module does not.
DEFAULT_FILLER = FillerParameter(type="gaussian", std=0.01)


def constant(value: float) -> FillerParameter:
    """Caffe's default filler for biases (0) and for Scale/BatchNorm factors (1)."""
    return FillerParameter(type="constant", value=value)


def _fan(shape: tuple[int, ...], norm: int) -> float:
    count = math.prod(shape)
    fan_in = count / shape[0] if shape else 1.0
    fan_out = count / shape[1] if len(shape) > 1 else float(count)
    name = FillerParameter.VarianceNorm.Name(norm)
    return {"FAN_IN": fan_in, "FAN_OUT": fan_out, "AVERAGE": (fan_in + fan_out) / 2}[name]


def fill(rng: np.random.Generator, shape: tuple[int, ...], filler: FillerParameter | None) -> np.ndarray:
    """A float32 array of ``shape`` drawn as Caffe's filler would: constant, uniform, gaussian, xavier, msra or
    bilinear (4-D square kernels)."""
    filler = filler if filler is not None else DEFAULT_FILLER
    kind = filler.type
    if kind == "constant":
        return np.full(shape, filler.value, np.float32)
    if kind == "uniform":
        return _uniform(rng, shape, filler.min, filler.max)
    if kind == "gaussian":
        return _gaussian(rng, shape, filler.mean, filler.std)
    if kind == "xavier":
        scale = math.sqrt(3.0 / _fan(shape, filler.variance_norm))
        return _uniform(rng, shape, -scale, scale)
    if kind == "msra":
        return _gaussian(rng, shape, 0.0, math.sqrt(2.0 / _fan(shape, filler.variance_norm)))
    if kind == "bilinear" and len(shape) == 4 and shape[2] == shape[3]:
        return _bilinear(shape)
    return fill(rng, shape, DEFAULT_FILLER)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], low: float, high: float) -> np.ndarray:
    values = rng.random(shape, dtype=np.float32)
    values *= np.float32(high - low)
    values += np.float32(low)
    return values


def _gaussian(rng: np.random.Generator, shape: tuple[int, ...], mean: float, std: float) -> np.ndarray:
    values = rng.standard_normal(shape, dtype=np.float32)
    values *= np.float32(std)
    values += np.float32(mean)
    return values


def _bilinear(shape: tuple[int, ...]) -> np.ndarray:
    """Caffe's BilinearFiller (upsampling deconvolutions): (1 − |x/f − c|)(1 − |y/f − c|), f = ⌈K/2⌉, c = (K−1)/(2f)."""
    size = shape[-1]
    f = math.ceil(size / 2)
    ramp = 1 - np.abs(np.arange(size) / f - (size - 1) / (2 * f))
    return np.ascontiguousarray(np.broadcast_to(np.outer(ramp, ramp), shape), dtype=np.float32)
