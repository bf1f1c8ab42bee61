"""The lower part of a backward walk as one onnxruntime graph (CPU, float32).

On the CPU a convolutional network's walk is two convolutions per layer (``Z = f(x, W⁺)`` and ``fᵀ(q, W⁺)``, Eq. 8)
plus memory-bound elementwise work (the ``⊘₀`` guard, ``x ⊙ …``, max-pool routing). Run rule by rule, each step
allocates fresh buffers and crosses into Python; the walk of VGG-16 to its input took 6× the forward. Here the longest
run of nodes at the bottom of the walk whose ops all have a *lowering* (2-D and 3-D Conv, Relu, Max- and
AveragePool, global pools and reductions over (T, H, W), gated Mul, Sigmoid, Slice, Concat, the reshapes,
BatchNormalization …) is written out as the ONNX graph of its backward rules, and onnxruntime runs it in one call:
the captured activations and the signals at its top are its inputs, the signals at the walk's ``keep`` tensors its
outputs. The upper part (classifiers, recurrent cells, anything without a lowering) runs rule by rule as before.
The graph runs on slices of a few examples (its working set grows with the slice; the speed does not), and where
onnxruntime refuses it, the walk falls back to the rules.

* :mod:`.builder` — :class:`GraphBuilder` and the :func:`lowering` registry;
* :mod:`.ops` — one small function per op type that emits the same equation as the op's rule in
  :mod:`ebr_onnx.rules` (the tests hold every lowered walk to the rule-by-rule walk);
* :mod:`.run` — :class:`Lowering`, the walk's :class:`~ebr_onnx.core.context.Lowerer`.
"""
from .run import Lowering

__all__ = ["Lowering"]
