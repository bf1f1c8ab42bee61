"""The error of the pycaffe interface for what it does not offer."""
from __future__ import annotations

from ..core.errors import EbrError


class NotOffered(EbrError):
    """A pycaffe call :mod:`ebr_onnx.compat.caffe` does not offer (training, solvers, data layers other than
    Input/DummyData, …): one line naming the call and why."""

    def __init__(self, call: str, why: str) -> None:
        self.call = call
        super().__init__(f"{call} is not offered by ebr_onnx.compat.caffe: {why}")


def not_offered(call: str, why: str):
    """A stand-in for a pycaffe function or class: calling it raises :class:`NotOffered` naming ``call``."""

    def stub(*args, **kwargs):
        raise NotOffered(call, why)

    stub.__name__ = call.rsplit(".", 1)[-1]
    stub.__doc__ = f"Not offered: {why}."
    return stub


def not_offered_attributes(module: str, label: str, names: dict[str, str]):
    """A module ``__getattr__`` for ``module`` (as pycaffe names it, e.g. ``caffe.io``; ``label``: the module that
    stands in for it): reading one of ``names`` (name → why) raises :class:`NotOffered`, any other unknown name
    AttributeError."""

    def __getattr__(name: str):
        if name in names:
            raise NotOffered(f"{module}.{name}", names[name])
        raise AttributeError(f"module {module!r} ({label}) has no attribute {name!r}")

    return __getattr__
