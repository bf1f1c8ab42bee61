"""A strict stand-in for CuPy on the host, to run the ``device="cuda"`` code path where no GPU is present.

* **Exactly CuPy's names.** The module, ``ndarray``, ``ufunc``, ``cuda`` and the ``cuda`` classes offer the names
  listed in ``cupy_namespace.json`` (``dir()`` of CuPy itself, written by ``tools/cupy_namespace.py``) and no other:
  a name CuPy lacks raises ``AttributeError``, as it would on a GPU; a CuPy name the stand-in cannot emulate on NumPy
  (kernels, fusion, profilers …) exists but raises ``NotImplementedError`` when used.
* **Host and device kept apart.** Arrays keep their data in NumPy but behave as CuPy's: NumPy refuses them
  (``np.asarray(a)``, a NumPy function or operator given one raises ``TypeError``; CuPy would dispatch some NumPy
  functions to itself, ebr_onnx calls the array module's instead), and every function, method and operator refuses a
  NumPy array, index arrays included; only ``array``/``asarray``/``asanyarray`` (and ``ndarray.set``) take host data
  in, and only ``asnumpy``/``.get()`` (and the scalar conversions) bring it out.
* **CuPy's semantics where they differ from NumPy's.** Integer-array indices and ``take`` wrap out-of-range values
  (NumPy raises); an integer-array assignment that writes one place twice raises (CuPy stores an undefined one of the
  values); a ufunc's ``at`` is refused for repeated indices (CuPy adds them in no fixed order); ``flags`` has CuPy's
  fields only.
* **Counted.** :data:`COUNTS` counts host→device transfers (and their bytes) and device→host reads (syncs);
  ``get_default_memory_pool().used_bytes()`` is the bytes of the live arrays that own their memory.
* **Device memory is host memory.** ``a.data.ptr`` is the host address of the array's data, and
  ``cuda.UnownedMemory`` / ``cuda.MemoryPointer`` / ``ndarray(shape, dtype, memptr=…)`` wrap foreign memory in place,
  so onnxruntime's CPU provider can read and write the stand-in's arrays as the CUDA provider does CuPy's
  (``ebr_onnx.core.device.DeviceArrays.host_addressable``).

What it cannot show: CuPy's kernels themselves (numerics, speed), streams and real device memory; those need a GPU
(``tests/test_gpu.py``, ``benchmarks/gpu_check.py``).
"""
from __future__ import annotations

import ctypes
import json
import operator
import types
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: CuPy's names (``tools/cupy_namespace.py``).
NAMES: dict[str, Any] = json.loads((Path(__file__).with_name("cupy_namespace.json")).read_text())


@dataclass
class Counts:
    """Host→device transfers (count, bytes) and device→host reads."""

    transfers: int = 0
    transfer_bytes: int = 0
    syncs: int = 0
    live_bytes: int = 0

    def reset(self) -> None:
        self.transfers = self.transfer_bytes = self.syncs = 0


COUNTS = Counts()
_OWNED: set[int] = set()


class NotEmulated:
    """A CuPy name the stand-in has no NumPy emulation for."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"the CuPy stand-in does not emulate cupy.{self._name}")

    def __getattr__(self, attr: str) -> Any:
        raise NotImplementedError(f"the CuPy stand-in does not emulate cupy.{self._name}.{attr}")


def _unwrap(value: Any) -> Any:
    if isinstance(value, DeviceArray):
        return value._a
    if isinstance(value, np.ndarray):
        raise TypeError("a NumPy array given to a device function (CuPy refuses host data outside cupy.asarray)")
    if isinstance(value, (list, tuple)):
        return type(value)(_unwrap(v) for v in value)
    if isinstance(value, dict):
        return {k: _unwrap(v) for k, v in value.items()}
    return value


def _wrap(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return DeviceArray._of(value)
    if isinstance(value, np.generic) and not isinstance(value, (np.str_, np.bytes_)):
        return DeviceArray._of(np.asarray(value))  # reductions give 0-d device arrays, as in CuPy
    if isinstance(value, tuple):
        return tuple(_wrap(v) for v in value)
    if isinstance(value, list):
        return [_wrap(v) for v in value]
    return value


def _device_function(fn: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("out") is not None:
            out = kwargs.pop("out")
            fn(*_unwrap(args), out=_unwrap(out), **_unwrap(kwargs))
            return out
        return _wrap(fn(*_unwrap(args), **_unwrap(kwargs)))

    return call


def _to_device(obj: Any, dtype: Any, copy: Any, ndmin: int = 0) -> DeviceArray:
    """A device array from host data (always a copy, counted) or from a device array (a copy where ``copy`` or the
    dtype asks for one)."""
    if isinstance(obj, DeviceArray):
        data = obj._a if dtype is None else obj._a.astype(dtype, copy=False)
        if data is obj._a and not copy and data.ndim >= ndmin:
            return obj
        return DeviceArray._of(np.array(data, copy=True, ndmin=ndmin))
    host = np.array(obj, dtype=dtype, copy=True, order="C", ndmin=ndmin)
    if host.dtype == object:
        raise TypeError("a device array of Python objects (CuPy has none)")
    COUNTS.transfers += 1
    COUNTS.transfer_bytes += host.nbytes
    return DeviceArray._of(host)


def _array(obj: Any, dtype: Any = None, copy: bool = True, order: str = "K", subok: bool = False, ndmin: int = 0,
           *, blocking: bool = False) -> DeviceArray:
    """``cupy.array``."""
    return _to_device(obj, dtype, copy, ndmin)


def _asarray(a: Any, dtype: Any = None, order: Any = None, *, copy: Any = None, blocking: bool = False
             ) -> DeviceArray:
    """``cupy.asarray`` / ``cupy.asanyarray``."""
    return _to_device(a, dtype, bool(copy))


def _asnumpy(a: Any, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
    if isinstance(a, DeviceArray):
        return a.get()
    return np.asarray(a, order=order)


def _wrapped_index(index: Any, shape: tuple[int, ...], setting: bool) -> Any:
    """CuPy's integer-array indexing: an index array on one axis wraps out-of-range values; assignments through
    repeated indices are refused (CuPy stores an undefined one)."""
    parts = index if isinstance(index, tuple) else (index,)
    if any(p is None or p is Ellipsis for p in parts):
        return index
    out, changed = [], False
    for axis, part in enumerate(parts):
        if isinstance(part, np.ndarray) and part.dtype.kind in "iu" and axis < len(shape):
            if setting and np.unique(part.ravel()).size != part.size:
                raise ValueError("an integer-array assignment writes one place twice (CuPy stores an undefined one "
                                 "of the values)")
            part, changed = part % max(shape[axis], 1), True
        out.append(part)
    if not changed:
        return index
    return tuple(out) if isinstance(index, tuple) else out[0]


class _MemoryPointer:
    """``cupy.cuda.MemoryPointer``: the address of device (here: host) memory."""

    def __init__(self, mem: Any, offset: int) -> None:
        self.mem, self.ptr, self.device_id = mem, int(mem.ptr) + int(offset), 0

    def __getattr__(self, name: str) -> Any:
        return _missing("cuda.MemoryPointer", name)


class _UnownedMemory:
    """``cupy.cuda.UnownedMemory(ptr, size, owner, device_id)``: memory owned by ``owner`` (kept alive)."""

    def __init__(self, ptr: int, size: int, owner: Any, device_id: int = -1) -> None:
        self.ptr, self.size, self.owner, self.device_id = int(ptr), int(size), owner, max(device_id, 0)

    def __getattr__(self, name: str) -> Any:
        return _missing("cuda.UnownedMemory", name)


@dataclass
class _Flags:
    c_contiguous: bool
    f_contiguous: bool
    owndata: bool


class DeviceArray:
    """``cupy.ndarray`` on the host: NumPy data (``_a``) that refuses implicit conversion."""

    __array_ufunc__ = None  # NumPy's operators defer to ours, which refuse host arrays
    __array_priority__ = 1000
    __hash__ = None  # type: ignore[assignment]

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:
        """``cupy.ndarray(shape, dtype, memptr, strides, order)``: new memory, or the memory ``memptr`` points to
        (kept alive through its owner)."""
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        dtype = np.dtype(dtype)
        if memptr is None:
            self._a = np.empty(shape, dtype, order=order)
        else:
            nbytes = int(np.prod(shape)) * dtype.itemsize
            buffer = (ctypes.c_char * nbytes).from_address(memptr.ptr)
            buffer.owner = memptr.mem  # the numpy view keeps the buffer, the buffer keeps the owner
            self._a = np.frombuffer(buffer, dtype, count=int(np.prod(shape))).reshape(shape, order=order)
        _track(self._a)

    @classmethod
    def _of(cls, data: np.ndarray) -> DeviceArray:
        out = cls.__new__(cls)
        out._a = data
        _track(data)
        return out

    def __array__(self, *args: Any, **kwargs: Any) -> np.ndarray:
        raise TypeError("Implicit conversion to a NumPy array is not allowed (device array)")

    # -- transfers and syncs ------------------------------------------------------------------------------------
    def get(self, stream: Any = None, order: str = "C", out: Any = None, blocking: bool = True) -> np.ndarray:
        COUNTS.syncs += 1
        return np.array(self._a, order=order, copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        COUNTS.transfers += 1
        COUNTS.transfer_bytes += np.asarray(arr).nbytes
        self._a[...] = arr

    def item(self, *args: Any) -> Any:
        COUNTS.syncs += 1
        return self._a.item(*args)

    def tolist(self) -> Any:
        COUNTS.syncs += 1
        return self._a.tolist()

    def __bool__(self) -> bool:
        COUNTS.syncs += 1
        return bool(self._a)

    def __float__(self) -> float:
        COUNTS.syncs += 1
        return float(self._a)

    def __int__(self) -> int:
        COUNTS.syncs += 1
        return int(self._a)

    def __complex__(self) -> complex:
        COUNTS.syncs += 1
        return complex(self._a)

    # -- attributes -----------------------------------------------------------------------------------------------
    @property
    def data(self) -> _MemoryPointer:
        return _MemoryPointer(_UnownedMemory(self._a.ctypes.data, self._a.nbytes, self), 0)

    @property
    def flags(self) -> _Flags:
        return _Flags(bool(self._a.flags.c_contiguous), bool(self._a.flags.f_contiguous), bool(self._a.flags.owndata))

    @property
    def base(self) -> Any:
        return None

    @property
    def T(self) -> DeviceArray:  # noqa: N802 (numpy's name)
        return DeviceArray._of(self._a.T)

    @property
    def mT(self) -> DeviceArray:  # noqa: N802 (numpy's name)
        return DeviceArray._of(np.swapaxes(self._a, -1, -2))

    def take(self, indices: Any, axis: Any = None, out: Any = None) -> DeviceArray:
        return _take(self, indices, axis, out)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name not in NAMES["ndarray"]:
            raise AttributeError(f"'cupy.ndarray' object has no attribute {name!r}")
        if not hasattr(self._a, name):
            return NotEmulated(f"ndarray.{name}")
        value = getattr(self._a, name)
        return _device_function(value) if callable(value) else _wrap(value)

    def __dir__(self) -> list[str]:
        return [n for n in NAMES["ndarray"] if not n.startswith("__")]

    # -- indexing and iteration -----------------------------------------------------------------------------------
    def __getitem__(self, index: Any) -> DeviceArray:
        return _wrap(self._a[_wrapped_index(_unwrap(index), self._a.shape, False)])

    def __setitem__(self, index: Any, value: Any) -> None:
        self._a[_wrapped_index(_unwrap(index), self._a.shape, True)] = _unwrap(value)

    def __len__(self) -> int:
        return len(self._a)

    def __iter__(self):
        return (_wrap(v) for v in self._a)

    def __repr__(self) -> str:
        return f"DeviceArray({self._a!r})"

    def __copy__(self) -> DeviceArray:
        return DeviceArray._of(self._a.copy())

    def __deepcopy__(self, memo: Any) -> DeviceArray:
        return DeviceArray._of(self._a.copy())


def _track(data: np.ndarray) -> None:
    """Count the bytes of live arrays that own their memory (the pool's ``used_bytes``)."""
    if data.flags.owndata and id(data) not in _OWNED:
        _OWNED.add(id(data))
        COUNTS.live_bytes += data.nbytes
        weakref.finalize(data, _untrack, id(data), data.nbytes)


def _untrack(key: int, nbytes: int) -> None:
    _OWNED.discard(key)
    COUNTS.live_bytes -= nbytes


def _take(a: Any, indices: Any, axis: Any = None, out: Any = None) -> DeviceArray:
    """``cupy.take``: out-of-range indices wrap (NumPy raises)."""
    got = np.take(_unwrap(a), _unwrap(indices), axis=axis, mode="wrap")
    if out is not None:
        out._a[...] = got
        return out
    return _wrap(got)


def _operator(name: str) -> Any:
    fn = getattr(operator, f"__{name}__")

    def method(self: DeviceArray, *other: Any) -> Any:
        return _wrap(fn(self._a, *_unwrap(other)))

    def reflected(self: DeviceArray, other: Any) -> Any:
        return _wrap(fn(_unwrap(other), self._a))

    return method, reflected


def _in_place(name: str) -> Any:
    fn = getattr(operator, f"__{name}__")

    def method(self: DeviceArray, other: Any) -> DeviceArray:
        self._a = fn(self._a, _unwrap(other))
        return self

    return method


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
              "rshift", "lt", "le", "eq", "ne", "gt", "ge"):
    _method, _reflected = _operator(_name)
    setattr(DeviceArray, f"__{_name}__", _method)
    if _name not in ("lt", "le", "eq", "ne", "gt", "ge"):
        setattr(DeviceArray, f"__r{_name}__", _reflected)
for _name in ("neg", "pos", "abs", "invert"):
    setattr(DeviceArray, f"__{_name}__", _operator(_name)[0])
for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor", "lshift", "rshift"):
    setattr(DeviceArray, f"__i{_name}__", _in_place(f"i{_name}"))


def _missing(owner: str, name: str) -> Any:
    if name.startswith("__") or name not in NAMES.get(owner, ()):
        raise AttributeError(f"'{owner}' has no attribute {name!r}")
    return NotEmulated(f"{owner}.{name}")


class _Ufunc:
    """A CuPy ufunc: callable on device arrays, with CuPy's methods (``at`` refuses repeated indices)."""

    def __init__(self, name: str) -> None:
        self._np = getattr(np, name)
        self.__name__ = self.name = name
        self.nin, self.nout, self.nargs, self.types = self._np.nin, self._np.nout, self._np.nargs, self._np.types
        self._call = _device_function(self._np)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def at(self, a: DeviceArray, indices: Any, b: Any = None) -> None:
        index = _unwrap(indices)
        flat = np.asarray(index[0] if isinstance(index, tuple) else index).ravel()
        if np.unique(flat).size != flat.size:
            raise ValueError(f"cupy.{self.name}.at with repeated indices adds in no fixed order on a GPU")
        self._np.at(a._a, index, *(() if b is None else (_unwrap(b),)))

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__") or attr not in NAMES["ufunc"]:
            raise AttributeError(f"'cupy.ufunc' object has no attribute {attr!r}")
        return _device_function(getattr(self._np, attr))


class _Device:
    def __init__(self, device: Any = None) -> None:
        self.id = 0

    def synchronize(self) -> None:
        pass

    def use(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _missing("cuda.Device", name)


class _Stream:
    def synchronize(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _missing("cuda.Stream", name)


class _MemoryPool:
    def used_bytes(self) -> int:
        return COUNTS.live_bytes

    def total_bytes(self) -> int:
        return COUNTS.live_bytes

    def free_bytes(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return _missing("cuda.MemoryPool", name)


_POOL = _MemoryPool()


def _cuda_module() -> types.ModuleType:
    cuda = types.ModuleType("cupy.cuda")
    given = {"is_available": lambda: True, "Device": _Device, "get_current_stream": lambda device=None: _Stream(),
             "get_device_id": lambda: 0, "UnownedMemory": _UnownedMemory, "MemoryPointer": _MemoryPointer,
             "MemoryPool": _MemoryPool, "Stream": _Stream}

    def attribute(name: str) -> Any:
        if name not in NAMES["cuda"]:
            raise AttributeError(f"module 'cupy.cuda' has no attribute {name!r}")
        return given.get(name) or NotEmulated(f"cuda.{name}")

    cuda.__getattr__ = attribute  # type: ignore[attr-defined]
    cuda.__dir__ = lambda: list(NAMES["cuda"])  # type: ignore[attr-defined]
    return cuda


def make_module() -> types.ModuleType:
    """A ``cupy``-like module over NumPy whose functions take and give :class:`DeviceArray`."""
    module = types.ModuleType("cupy")
    ufuncs = set(NAMES["ufuncs"])
    given: dict[str, Any] = {
        "ndarray": DeviceArray, "asnumpy": _asnumpy, "cuda": _cuda_module(), "take": _take,
        "get_array_module": lambda *args: module if any(isinstance(a, DeviceArray) for a in args) else np,
        "get_default_memory_pool": lambda: _POOL, "is_available": lambda: True,
        "array": _array, "asarray": _asarray, "asanyarray": _asarray,
    }
    made: dict[str, Any] = {}

    def attribute(name: str) -> Any:
        if name not in NAMES["module"]:
            raise AttributeError(f"module 'cupy' has no attribute {name!r}")
        if name in made:
            return made[name]
        if name in given:
            value = given[name]
        elif not hasattr(np, name):
            value = NotEmulated(name)
        elif name in ufuncs:
            value = _Ufunc(name)
        else:
            value = getattr(np, name)
            if isinstance(value, types.ModuleType):
                value = NotEmulated(name)
            elif callable(value) and not isinstance(value, type):
                value = _device_function(value)
        made[name] = value
        return value

    module.__getattr__ = attribute  # type: ignore[attr-defined]
    module.__dir__ = lambda: list(NAMES["module"])  # type: ignore[attr-defined]
    return module
