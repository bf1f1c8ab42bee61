"""User-facing errors. Every error a user can cause is an :class:`EbrError` with a message that names what is wrong
and what is supported; the CLI prints it as one line."""
from __future__ import annotations


class EbrError(ValueError):
    """A problem with the user's model, input or options."""


class UnsupportedOpError(EbrError):
    """The backward walk met an op that has no rule."""

    def __init__(self, node_name: str, op_type: str, supported: list[str], mode: str) -> None:
        self.node_name = node_name
        self.op_type = op_type
        super().__init__(
            f"node {node_name!r} has op type {op_type!r}, which has no {mode} rule; "
            f"supported op types: {', '.join(sorted(supported))}"
        )


class ForwardRejected(EbrError):
    """onnxruntime refused the feeds of a forward pass: a shape the model's declared inputs do not accept, or an
    error while running on them (e.g. a batch size fixed at export)."""


class LoweringFailed(Exception):
    """onnxruntime could not build or run a lowered walk (the walk then runs those nodes rule by rule). Internal:
    never reaches the user."""
