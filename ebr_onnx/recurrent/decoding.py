"""Greedy decoders exported with their decoding loop: an ONNX ``Loop`` that feeds each emitted word back and stops on
its own output (after ``<eos>``), so its number of steps is only known by running it.

:class:`DecodedLoops` runs the model once per input as exported (onnxruntime runs the ``Loop``), reads how many steps
each such ``Loop`` made (the length of its first scan output: the stacked per-step logits or words), and unrolls it to
exactly that many steps (:func:`ebr_onnx.passes.unroll.unroll_loops` with ``steps``). The unrolled graph computes,
for that input, what the decoder computed — the words it fed back are the argmax words of its own steps — and the
backward walk crosses its steps like any unrolled recurrence. One unrolled graph is kept per set of lengths.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import onnx
import onnxruntime as ort

from ..core.errors import EbrError
from ..passes.unroll import loop_key, unroll_loops


class DecodedLoops:
    """The ``Loop`` nodes of ``model`` that stop on data (see the module docstring), measured by one run each."""

    def __init__(self, model: onnx.ModelProto, threads: int | None = None) -> None:
        self.model = model
        loops = [n for n in model.graph.node if n.op_type == "Loop"]
        #: Each Loop (by :func:`~ebr_onnx.passes.unroll.loop_key`) → the output whose length is its step count.
        self.lengths = {loop_key(n): name for n in loops if (name := _counted(n)) is not None}
        missing = [loop_key(n) for n in loops if loop_key(n) not in self.lengths]
        if missing:
            raise EbrError(f"Loop node {missing[0]!r} stops on its data and has no scan output (nor a sequence it "
                           "appends to) to count its steps by; supported: decoding loops that stack a per-step output")
        self.threads = threads
        self._session: ort.InferenceSession | None = None

    def session(self) -> ort.InferenceSession:
        """An onnxruntime session of the model as given, with the Loops' scan outputs among its outputs."""
        if self._session is None:
            model = onnx.ModelProto()
            model.CopyFrom(self.model)
            present = {o.name for o in model.graph.output}
            model.graph.output.extend(onnx.ValueInfoProto(name=t) for t in self.lengths.values() if t not in present)
            options = ort.SessionOptions()
            if self.threads:
                options.intra_op_num_threads = self.threads
            self._session = ort.InferenceSession(model.SerializeToString(), options,
                                                 providers=["CPUExecutionProvider"])
        return self._session

    def steps(self, feeds: Mapping[str, Any]) -> dict[str, int]:
        """How many steps each Loop makes on these inputs (one run of the model as given)."""
        session = self.session()
        names = list(self.lengths.values())
        inputs = {i.name for i in session.get_inputs()}
        values = session.run(names, {k: np.asarray(v) for k, v in feeds.items() if k in inputs})
        return {key: len(v) if isinstance(v, list) else int(np.shape(v)[0]) for key, v in zip(self.lengths, values)}

    def unrolled(self, steps: Mapping[str, int]) -> onnx.ModelProto:
        """The model with each Loop unrolled to ``steps`` (others as :func:`unroll_loops` unrolls them)."""
        if any(n < 1 for n in steps.values()):
            raise EbrError(f"a decoding Loop made no step on this input ({dict(steps)}); nothing to explain")
        return unroll_loops(self.model, steps=steps)


def _counted(loop: onnx.NodeProto) -> str | None:
    """The output of a ``Loop`` whose length is its number of steps: its first scan output, else a loop-carried
    sequence (one element appended per step, as PyTorch's scripted list appends)."""
    carried = len(loop.input) - 2
    if len(loop.output) > carried:
        return loop.output[carried]
    body = next(a.g for a in loop.attribute if a.name == "body")
    for value, out in zip(body.output[1:1 + carried], loop.output):
        if value.type.HasField("sequence_type") and out:
            return out
    return None
