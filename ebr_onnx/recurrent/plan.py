"""The parts of a video model (paper Alg. 1): a per-frame CNN from the *frames* tensor (the explained input, or its
in-graph reshape whose leading axis is frames) up to the RNN→CNN *boundary* (the lowest recurrent op's per-frame
input, traced down through layout ops; where the frames are pooled before the recurrence, the pooling's per-frame
input, :mod:`.pooling`; ``boundary=`` overrides), and the recurrent part from the boundary to the
logits — each run by a sub-model of its own."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import onnx

from ..core.device import DeviceArrays
from ..core.engine import Engine
from ..core.errors import EbrError
from ..core.forward import ForwardRunner
from ..core.graph import ModelGraph, Node
from ..core.ops import LAYOUT_OPS, PICK_OPS, RECURRENT_OPS, VALUE_FREE_OPS
from ..passes.cells import AnyCell, find_cells
from .pooling import pooled_boundary


class SubModel:
    """The nodes that compute ``outputs`` from ``inputs`` (and the model inputs they also read), as a model of its
    own with a forward runner; tensor names are those of the full graph, and the weights are the full graph's arrays
    (shared, not copied; on a GPU the explainer's device copies, ``arrays``)."""

    def __init__(self, graph: ModelGraph, inputs: Sequence[str], outputs: Sequence[str], device: str,
                 threads: int | None, arrays: DeviceArrays | None = None) -> None:
        stop, needed, stack = set(inputs), set(), list(outputs)
        while stack:
            name = stack.pop()
            node = graph.producer.get(name)
            if name in stop or node is None or node.name in needed:
                continue
            needed.add(node.name)
            stack.extend(t for t in node.inputs if t)
        self.nodes = [n for n in graph.topological if n.name in needed]
        read = {t for n in self.nodes for t in n.inputs if t} | set(outputs)
        self.inputs = list(inputs) + [t for t in graph.inputs if t in read and t not in stop]
        model = graph.light
        weights = {t: graph.weights[t] for t in sorted(read) if t in graph.weights}  # shared, not copied
        proto = onnx.helper.make_graph(
            [model.graph.node[n.index] for n in self.nodes], f"{model.graph.name}_part",
            [_value_info(graph, t, free_leading=t in stop) for t in self.inputs + list(weights)],
            [onnx.helper.make_tensor_value_info(t, graph.elem_types.get(t) or onnx.TensorProto.FLOAT, None)
             for t in outputs],
            [init for init in model.graph.initializer if init.name in read],
        )
        sub = onnx.helper.make_model(proto, opset_imports=model.opset_import, ir_version=model.ir_version)
        sub.functions.extend(model.functions)
        self.graph = ModelGraph(sub, check=False, weights=weights)
        self.runner = ForwardRunner(self.graph, device, threads, arrays=arrays)

    def run(self, feeds: Mapping[str, Any], outputs: Sequence[str], keep_on_device: bool = False
            ) -> dict[str, Any]:
        """:meth:`ForwardRunner.run` of the part (device arrays with ``keep_on_device`` on a GPU)."""
        return self.runner.run({k: feeds[k] for k in self.inputs}, outputs, keep_on_device)


def _value_info(graph: ModelGraph, name: str, free_leading: bool) -> onnx.ValueInfoProto:
    """An input's declaration: its type and rank, with the leading (frames) axis free where the part is fed chunks."""
    shape = graph.shapes.get(name)
    dims = None if shape is None else [f"{name}_d{i}" if (free_leading and i == 0) or not isinstance(d, int) else d
                                       for i, d in enumerate(shape)]
    return onnx.helper.make_tensor_value_info(name, graph.elem_types.get(name) or onnx.TensorProto.FLOAT, dims)


def _trace_up(graph: ModelGraph, tensor: str, stop: str) -> str:
    """Follow ``tensor`` up through reshapes while it has exactly one consumer: the frames tensor."""
    while tensor != stop:
        users = [u for u in graph.consumers.get(tensor, []) if u.op_type not in VALUE_FREE_OPS]
        if len(users) != 1 or users[0].op_type not in LAYOUT_OPS or users[0].inputs[0] != tensor:
            break
        tensor = users[0].outputs[0]
    return tensor


@dataclass
class Plan:
    """Where the parts of a video model meet, and the sub-models that run them (built once per model/output)."""

    logits: str
    boundary: str
    frames: str
    recurrent: list[Node]
    cells: list[AnyCell]
    rnn_nodes: list[Node]
    cnn: SubModel | None
    rnn: SubModel | None
    to_frames: SubModel | None
    #: The layout part from the boundary to the recurrence's inputs (made when several sequences are explained).
    codes: SubModel | None = None


def build_plan(engine: Engine, logits: str, boundary: str | None) -> Plan:
    """The parts of the model for these logits: the recurrences, the boundary (``boundary`` or the lowest recurrent
    input, traced down through layout ops), the frames tensor and the sub-models that run them."""
    graph = engine.graph
    path = graph.nodes_between([engine.input_name], [logits])
    recurrent = [n for n in path if n.op_type in RECURRENT_OPS]
    cells = find_cells(graph, [engine.input_name])
    if boundary is not None:
        bound = graph.resolve_tensor(boundary, "boundary")
    elif recurrent or cells:
        candidates = [graph.trace_down(n.inputs[0], LAYOUT_OPS) for n in recurrent]
        candidates += [graph.trace_down(t, LAYOUT_OPS | PICK_OPS) for c in cells for t in c.x_inputs]
        bound = min(candidates, key=lambda t: graph.producer[t].index if t in graph.producer else -1)
        bound = pooled_boundary(graph, _trace_up(graph, engine.input_name, bound), bound)  # frames pooled first
    else:
        raise EbrError(f"no recurrent layer (LSTM/GRU/RNN op or unrolled LSTM cells) between the input and {logits!r}; "
                       "name the RNN→CNN boundary with boundary=…")
    if bound not in graph.signal_tensors([engine.input_name]):
        raise EbrError(f"boundary {bound!r} does not depend on the input {engine.input_name!r}")
    frames = _trace_up(graph, engine.input_name, bound)
    device, threads, arrays = engine.device, engine.threads, engine.arrays
    cnn = SubModel(graph, [frames], [bound], device, threads, arrays) if frames != bound else None
    rnn = SubModel(graph, [bound], [logits], device, threads, arrays)
    cnn_side = {n.name for n in cnn.nodes} if cnn else set()
    signal = engine.signal
    if any(n.name in cnn_side and any(o in signal for o in n.outputs) for n in rnn.nodes):
        rnn = None  # the recurrent part reads the CNN elsewhere than at the boundary: run the whole model instead
    to_frames = SubModel(graph, [engine.input_name], [frames], device, threads, arrays) \
        if frames != engine.input_name else None
    return Plan(logits, bound, frames, recurrent, cells, graph.nodes_between([bound], [logits]), cnn, rnn, to_frames)


def part_tensors(part: SubModel) -> set[str]:
    """The tensors a sub-model's nodes read or write."""
    return {t for n in part.nodes for t in (*n.inputs, *n.outputs) if t}
