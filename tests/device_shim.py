"""A strict stand-in for CuPy on the host, to run the ``device="cuda"`` code path where no GPU is present.

Its arrays keep their data in NumPy but behave as device arrays do under CuPy: an implicit conversion to NumPy
(``np.asarray(a)``, a NumPy function or operator given one) raises ``TypeError``, and so does handing a NumPy array
(other than a scalar) to one of its functions or operators; ``asarray`` takes host data in, ``asnumpy`` / ``.get()``
take it out. What it catches: host/device mix-ups in the rules, the walk and the result plumbing. What it cannot:
kernels CuPy lacks or implements differently, and real device memory; those need a GPU (``tests/test_gpu.py``).
"""
from __future__ import annotations

import operator
import types
from typing import Any

import numpy as np

_TRANSFERS = {"asarray", "array", "asanyarray", "ascontiguousarray"}


def _unwrap(value: Any, allow_host: bool = False) -> Any:
    if isinstance(value, DeviceArray):
        return value.data
    if isinstance(value, np.ndarray) and value.ndim > 0 and not allow_host:
        raise TypeError("a NumPy array given to a device function (CuPy refuses implicit host data)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v, allow_host) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v, allow_host) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return DeviceArray(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        return DeviceArray(np.asarray(value))  # reductions give 0-d device arrays, as in CuPy
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(fn: Any, allow_host: bool = False) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if "out" in kwargs:
            out = kwargs.pop("out")
            fn(*_unwrap(args, allow_host), out=_unwrap(out), **_unwrap(kwargs, allow_host))
            return out
        return _wrap(fn(*_unwrap(args, allow_host), **_unwrap(kwargs, allow_host)))

    return call


class DeviceArray:
    """An array "on the device": NumPy data that refuses implicit conversion."""

    __array_ufunc__ = None  # NumPy operators defer to ours, which refuse host arrays
    __array_priority__ = 1000

    def __init__(self, data: np.ndarray) -> None:
        self.data = data

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (device array)")

    def get(self) -> np.ndarray:
        return self.data.copy()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):  # never the host buffer protocols (__array_interface__, __array_struct__ …)
            raise AttributeError(name)
        value = getattr(self.data, name)
        return _device_function(value) if callable(value) else _wrap(value) if name == "T" else value

    def __getitem__(self, index: Any) -> DeviceArray:
        return _wrap(self.data[_unwrap(index)])

    def __setitem__(self, index: Any, value: Any) -> None:
        self.data[_unwrap(index)] = _unwrap(value)

    def __len__(self) -> int:
        return len(self.data)

    def __iter__(self):
        return (_wrap(v) for v in self.data)

    def __bool__(self) -> bool:
        return bool(self.data)

    def __float__(self) -> float:
        return float(self.data)

    def __int__(self) -> int:
        return int(self.data)

    def __index__(self) -> int:
        return operator.index(self.data)

    def __repr__(self) -> str:
        return f"DeviceArray({self.data!r})"


def _operator(name: str) -> Any:
    fn = getattr(operator, f"__{name}__")

    def method(self: DeviceArray, *other: Any) -> Any:
        return _wrap(fn(self.data, *_unwrap(other)))

    def reflected(self: DeviceArray, other: Any) -> Any:
        return _wrap(fn(_unwrap(other), self.data))

    return method, reflected


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lt", "le",
              "eq", "ne", "gt", "ge"):
    _method, _reflected = _operator(_name)
    setattr(DeviceArray, f"__{_name}__", _method)
    if _name not in ("lt", "le", "eq", "ne", "gt", "ge"):
        setattr(DeviceArray, f"__r{_name}__", _reflected)
for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name)[0])
DeviceArray.__hash__ = None  # type: ignore[assignment]


def _in_place(name: str) -> Any:
    fn = getattr(operator, f"__{name}__")

    def method(self: DeviceArray, other: Any) -> DeviceArray:
        self.data = fn(self.data, _unwrap(other))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor"):
    setattr(DeviceArray, f"__i{_name}__", _in_place(f"i{_name}"))


def make_module() -> types.ModuleType:
    """A ``cupy``-like module over NumPy whose functions take and give :class:`DeviceArray`."""
    module = types.ModuleType("cupy")

    def attribute(name: str) -> Any:
        if name in _TRANSFERS:
            return _device_function(getattr(np, name), allow_host=True)
        value = getattr(np, name)
        if isinstance(value, type) or not callable(value):
            return value
        return _device_function(value)

    module.__getattr__ = attribute  # type: ignore[attr-defined]
    module.ndarray = DeviceArray
    module.asnumpy = lambda a: a.get() if isinstance(a, DeviceArray) else np.asarray(a)
    module.cuda = types.SimpleNamespace(is_available=lambda: True)
    return module
