"""The op rules, one module per family; importing this package registers them all."""
from . import activation, elementwise, linear, pooling, recurrent, routing  # noqa: F401
from .registry import find_rule, rule, supported_ops

__all__ = ["find_rule", "rule", "supported_ops"]
