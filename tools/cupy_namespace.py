"""Write the names CuPy offers to ``tests/cupy_namespace.json``: the whitelist of the strict host stand-in of CuPy
(``tests/device_shim.py``), which offers exactly these names and no others.

Run it with CuPy installed, in a virtualenv of its own (CuPy must not enter the project's environment beside the
CPU onnxruntime; it imports without a GPU, ``shared/notes/environment.md``)::

    python3 -m venv /tmp/cupyenv && /tmp/cupyenv/bin/pip install cupy-cuda12x
    /tmp/cupyenv/bin/python tools/cupy_namespace.py

The lists are ``dir()`` of the module and of the classes the stand-in emulates, so they are CuPy's own API, not a
hand-written guess.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "tests" / "cupy_namespace.json"


def public(obj: object) -> list[str]:
    return sorted(n for n in dir(obj) if not n.startswith("_"))


def main() -> None:
    import cupy
    from cupy._core import flags

    module = public(cupy)
    ufuncs = sorted(n for n in module if isinstance(getattr(cupy, n), cupy.ufunc))
    names = {
        "source": f"dir() of cupy {cupy.__version__} (Python {sys.version_info.major}.{sys.version_info.minor}), "
                  "written by tools/cupy_namespace.py",
        "version": cupy.__version__,
        "module": module,
        "ufuncs": ufuncs,
        "ufunc": public(cupy.add),
        # the public attributes and the special methods (operators, conversions) of cupy.ndarray
        "ndarray": public(cupy.ndarray) + sorted(n for n in dir(cupy.ndarray) if n.startswith("__")),
        "flags": public(flags.Flags),
        "cuda": public(cupy.cuda),
        "cuda.MemoryPointer": public(cupy.cuda.MemoryPointer),
        "cuda.UnownedMemory": public(cupy.cuda.UnownedMemory),
        "cuda.MemoryPool": public(cupy.cuda.MemoryPool),
        "cuda.Stream": public(cupy.cuda.Stream),
        "cuda.Device": public(cupy.cuda.Device),
    }
    OUT.write_text(json.dumps(names, indent=1) + "\n")
    print(f"wrote {OUT}: {len(module)} module names, {len(ufuncs)} ufuncs, {len(names['ndarray'])} ndarray names")


if __name__ == "__main__":
    main()
