"""What an explanation starts from, shared by the CNN and the recurrent methods: the logits tensor, the target class
(by index or label), the classifier and the contrastive dual's negated nodes (Eq. 2), and the prior — the top signal
of Alg. 1 (a one-hot on the target's pre-softmax logit, or the user's vector over classes)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import EbrError
from .graph import ModelGraph, Node
from .ops import HEAD_ACTIVATIONS, HEAD_OPS, LAYOUT_OPS, LINEAR_OPS

#: A target: a class index, a label name, one of those per example, or None (the predicted class).
Target = int | str | Sequence[int | str] | None


def read_labels(graph: ModelGraph, labels: Sequence[str] | str | Path | None) -> list[str] | None:
    """Class names: given, read from a file (one per line), or from the model's metadata (``ebr_onnx.labels``)."""
    if labels is None:
        found = graph.metadata_json("ebr_onnx.labels")
        return list(found) if isinstance(found, list) else None
    if isinstance(labels, (str, Path)):
        path = Path(labels)
        if not path.is_file():
            raise EbrError(f"labels file {str(path)!r} does not exist")
        return [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return list(labels)


def logits_tensor(graph: ModelGraph, output: str | None = None) -> str:
    """The tensor the prior is set on: ``output`` (default the first model output), moved below the final head
    activations (Softmax, LogSoftmax, Sigmoid, Identity): the pre-activation logits, as in the release's recipe."""
    name = graph.resolve_tensor(output, "output") if output else graph.outputs[0]
    return logits_below(graph, name)[0]


def logits_below(graph: ModelGraph, output: str) -> tuple[str, list[str]]:
    """The pre-activation logits below ``output`` — the input of the innermost head activation reached through
    head activations and layout ops (a CTC head's LogSoftmax, then a Transpose) — and the head activations passed
    (outermost first); ``output`` itself when there is none."""
    name, heads, logits = output, [], output
    node = graph.producer.get(name)
    while node is not None and (node.op_type in HEAD_ACTIVATIONS or node.op_type in LAYOUT_OPS):
        name = node.inputs[0]
        if node.op_type in HEAD_ACTIVATIONS:
            heads.append(node.op_type)
            logits = name
        node = graph.producer.get(name)
    return logits, heads


def class_index(labels: Sequence[str] | None, target: int | str, classes: int) -> int:
    """A class index from an index or a label name, checked against the number of classes."""
    if isinstance(target, str):
        if labels is None:
            raise EbrError(f"target {target!r} is a name, but the model has no labels (pass labels=…)")
        if target not in labels:
            close = [lab for lab in labels if lab.lower() == target.lower()]
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise EbrError(f"target {target!r} is not one of the model's {len(labels)} labels{hint}")
        target = list(labels).index(target)
    index = int(target)
    if not 0 <= index < classes:
        raise EbrError(f"target {index} is out of range: the output has {classes} classes (0…{classes - 1})")
    return index


def target_classes(labels: Sequence[str] | None, target: Target, scores: np.ndarray) -> list[int]:
    """One class per example of ``scores`` (N, classes): the given one(s), or where None the highest score."""
    n, classes = scores.shape
    if target is None:
        return [int(k) for k in scores.argmax(axis=1)]
    if isinstance(target, (str, int, np.integer)):
        return [class_index(labels, target, classes)] * n
    targets = list(target)
    if len(targets) != n:
        raise EbrError(f"{len(targets)} targets given for {n} examples")
    return [class_index(labels, t, classes) for t in targets]


def find_classifier(graph: ModelGraph, signal: set[str], logits: str, name: str | None = None) -> Node:
    """The classifier: ``name`` if given, else the last Gemm/MatMul/Conv before ``logits`` (through reshapes and
    bias adds)."""
    if name is not None:
        if name in graph.node_by_name:
            node = graph.node_by_name[name]
        else:
            node = graph.producer.get(graph.resolve_tensor(name, "classifier"))
        if node is None or node.op_type not in LINEAR_OPS:
            raise EbrError(f"classifier {name!r} is not a Gemm, MatMul or Conv node")
        return node
    tensor = logits
    while tensor in graph.producer:
        node = graph.producer[tensor]
        if node.op_type in LINEAR_OPS:
            return node
        if node.op_type not in HEAD_OPS:
            break
        tensor = next((t for t in node.inputs if t in signal), "")
    raise EbrError(f"no classifier (Gemm/MatMul/Conv) found directly below {logits!r}; name it with classifier=… "
                   "(ebr-onnx: --classifier)")


def dual_nodes(graph: ModelGraph, signal: set[str], logits: str, classifier: str | None) -> frozenset[str]:
    """The nodes whose weights the dual unit negates (Eq. 2): the classifier, or one per step where the logits are
    (a reshape of) a ``Concat`` of per-step classifiers (unrolled models, tf2onnx's ``TimeDistributed(Dense)``), and
    every linear node that shares their weights."""
    producer = graph.producer.get(graph.trace_down(logits, LAYOUT_OPS))
    if classifier is None and producer is not None and producer.op_type == "Concat":
        found = [find_classifier(graph, signal, t) for t in producer.inputs if t in signal]
    else:
        found = [find_classifier(graph, signal, logits, classifier)]
    weights = {t for n in found for t in n.inputs[:2] if graph.is_constant(t)}
    shared = {n.name for n in graph.nodes if n.op_type in LINEAR_OPS and weights & set(n.inputs[:2])}
    return frozenset({n.name for n in found} | shared)


def class_axis(logits: np.ndarray, axis: int | None = None) -> int:
    """The class axis of a CNN's logits: ``axis`` (traced from the classifier), else axis 1 of a 4-D (N, C, h, w)
    map of scores, else the last."""
    if axis is not None:
        return axis
    return 1 if logits.ndim == 4 else logits.ndim - 1


def cnn_prior(logits: np.ndarray, targets: Sequence[int], prior: np.ndarray | None, dtype: np.dtype,
              axis: int | None = None) -> np.ndarray:
    """The top signal of a CNN: a one-hot on each example's target logit (over a spatial map: the release's spatial
    softmax of that channel), or the user's prior vector placed on the class axis (``axis``: see
    :func:`class_axis`)."""
    axis = class_axis(logits, axis)
    out = np.zeros_like(logits, dtype=dtype)
    if prior is not None:
        vec = np.asarray(prior, dtype=dtype)
        if vec.shape[-1] != logits.shape[axis]:
            raise EbrError(f"prior has {vec.shape[-1]} entries, the output has {logits.shape[axis]} classes")
        vec = np.broadcast_to(vec, (logits.shape[0], vec.shape[-1]))
        shape = [logits.shape[0]] + [1] * (logits.ndim - 1)
        shape[axis] = vec.shape[-1]
        spatial = int(np.prod(logits.shape[1:])) // logits.shape[axis] if logits.ndim == 4 else 1
        return np.broadcast_to(vec.reshape(shape), logits.shape).astype(dtype) / spatial
    for n, k in enumerate(targets):
        index: list[Any] = [n] + [slice(None)] * (logits.ndim - 1)
        index[axis] = k
        if logits.ndim == 4:
            score = logits[tuple(index)].astype(np.float64)
            weights = np.exp(score - score.max())
            out[tuple(index)] = weights / weights.sum()
        else:
            out[tuple(index)] = 1.0
    return out


def cnn_scores(logits: np.ndarray, axis: int | None = None) -> np.ndarray:
    """(N, classes): each example's highest score per class over any other axes (spatial maps, steps)."""
    axis = class_axis(logits, axis)
    return np.moveaxis(logits, axis, -1).reshape(logits.shape[0], -1, logits.shape[axis]).max(axis=1)
