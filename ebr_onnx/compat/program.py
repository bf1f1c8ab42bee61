"""The net converted for one set of input shapes and run by the engine: the ONNX model with its parameters and the
LSTM states fed from outside (so that ``net.params`` writes and Caffe's state carry-over reach every run), the nodes
of each Caffe layer, the forward with every tensor the backward rules read, and the backward of one layer as a walk
between its top and bottom tensors."""
from __future__ import annotations

import warnings
from typing import Any, Mapping

import numpy as np
import onnx
from onnx import helper

from converters.caffe.convert import ConvertedLayer, ConvertedNet
from converters.caffe.graph import LstmState

from ..core.backend import to_numpy
from ..core.engine import Engine
from ..core.errors import EbrError, UnsupportedOpError
from ..core.graph import ModelGraph, Node
from ..core.options import RuleOptions
from ..core.walk import walk
from ..passes.cells import find_cells
from ..recurrent.cell_rules import cell_needs, cell_overrides

#: The release's rules: its Eltwise SUM (the CPU's) and its LSTM unit (spec §2.5, §3).
OPTIONS = RuleOptions(add_rule="caffe", recurrent_rules="caffe", lowering=False)


def live_model(converted: ConvertedNet, owners: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """The converted model with the bound parameters (``owners``) and each LSTM's initial state taken out of the
    initializers and declared as inputs: the engine feeds the parameters from their arrays on every run, the net
    feeds the states."""
    model = converted.model
    states = [name for state in converted.lstm_states.values() for name in (state.h0, state.c0)]
    fed = set(owners) | set(states)
    kept = [init for init in model.graph.initializer if init.name not in fed]
    declared = {init.name: init for init in model.graph.initializer if init.name in fed}
    inputs = list(model.graph.input) + [
        helper.make_tensor_value_info(name, declared[name].data_type, list(declared[name].dims))
        for name in states + sorted(owners)]
    graph = helper.make_graph(model.graph.node, model.graph.name, inputs, model.graph.output, kept,
                              value_info=model.graph.value_info)
    live = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version,
                             producer_name=model.producer_name)
    live.metadata_props.extend(model.metadata_props)
    return live


class Program:
    """One conversion of the net (its input shapes fixed) and the engines that run it, one per device."""

    def __init__(self, converted: ConvertedNet, owners: Mapping[str, np.ndarray], source: str) -> None:
        missing = sorted(set(owners) - {init.name for init in converted.model.graph.initializer})
        if missing:
            raise EbrError(f"the converted net lacks the parameters {missing}")
        self.graph = ModelGraph(live_model(converted, owners), weights=dict(owners))
        self.source = source
        self.layers: dict[str, ConvertedLayer] = {layer.name: layer for layer in converted.layers}
        self.states: dict[str, LstmState] = dict(converted.lstm_states)
        self.nodes: dict[str, list[Node]] = {
            layer.name: [self.graph.nodes[i] for i in layer.nodes] for layer in converted.layers}
        self.inputs = [name for name in self.graph.inputs if name not in
                       {t for s in self.states.values() for t in (s.h0, s.c0)}]
        self.shapes = self.graph.concrete_shapes({name: tuple(self.graph.shapes[name]) for name in self.graph.inputs})
        cells = find_cells(self.graph, self.inputs)
        steps = sum(sum(1 for n in self.nodes[name] if n.op_type == "Split") for name in self.states)
        if len(cells) != steps:
            raise EbrError(f"{source}: {len(cells)} of the LSTM layers' {steps} steps were recognised; the release's "
                           "EB rules for the LSTM need all of them")
        self.overrides = cell_overrides(self.graph, cells, OPTIONS.recurrent_rules)
        self._needs = cell_needs(self.graph, cells, OPTIONS.recurrent_rules)
        self._engines: dict[str, Engine] = {}
        #: Every tensor of the graph (a blob's tensor carries its name).
        self.tensor_names = set(self.graph.tensor_names)
        #: Per layer, the tensors its nodes read and produce (what its forward leaves for its backward).
        self.tensors = {name: {t for n in nodes for t in (*n.inputs, *n.outputs) if t}
                        for name, nodes in self.nodes.items()}
        self.captures = self._captures()

    def engine(self, device: str) -> Engine:
        """The engine on ``device`` (made on first use; the parameters are read live, see ``Engine``)."""
        if device not in self._engines:
            self._engines[device] = Engine(self.graph, device=device, input_name=self.inputs[0], labels=None,
                                           batch_size=1 << 30, dtype=np.float32, threads=None, options=OPTIONS,
                                           lowerer=None, live_weights=True)
        return self._engines[device]

    def _captures(self) -> list[str]:
        """Every tensor of a Caffe blob, every tensor a layer's rules read (EB and gradient; a layer without rules
        fails when its backward runs) and the LSTM states' last steps."""
        engine = self.engine("cpu")
        names = {t for layer in self.layers.values() for t in (*layer.inputs, *layer.outputs)}
        names |= {t for s in self.states.values() for t in (s.h_last, s.c_last)}
        for nodes in self.nodes.values():
            for mode, needs in (("eb", self._needs), ("grad", None)):
                try:
                    names.update(engine.capture_plan(nodes, mode, self.shapes, overrides_needs=needs))
                except UnsupportedOpError:
                    pass
        return sorted(n for n in names if n and not self.graph.is_constant(n))

    def forward(self, feeds: Mapping[str, np.ndarray], device: str) -> dict[str, np.ndarray]:
        """Run the whole model (inputs and LSTM states fed) and return the captured tensors."""
        return self.engine(device).runner.run(dict(feeds), self.captures)

    def backward(self, layer: str, mode: str, device: str, seeds: Mapping[str, np.ndarray], keep: set[str],
                 values: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """One layer's backward: the walk of its nodes from ``seeds`` (its top diffs) to ``keep`` (the tensors of
        the bottoms that need one), in ``mode`` (``"eb"``: the release's EB rules, the LSTM's cell rule set;
        ``"grad"``: the gradient), reading the forward's ``values``. A bottom nothing reached is absent."""
        engine = self.engine(device)
        ctx = engine.context(mode, values, self.shapes, overrides=self.overrides if mode == "eb" else None,
                             options=OPTIONS)
        xp = engine.xp
        with engine.blas():
            got = walk(ctx, self.nodes[layer], {name: xp.asarray(seed) for name, seed in seeds.items()}, keep=keep)
        for message in ctx.warnings:
            warnings.warn(f"layer '{layer}': {message}", RuntimeWarning, stacklevel=4)
        return {name: to_numpy(signal) for name, signal in got.items() if signal is not None}
