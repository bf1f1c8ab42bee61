"""``ebr-onnx inspect``: what ebr_onnx finds in a model — the ops on the signal path and whether each has a rule, each
recurrence (fused op, unrolled cell, Loop, Scan) with its direction, the RNN→CNN boundary, the classifier, and the
candidate map layers."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import onnx

from ..core import registry
from ..core.errors import EbrError
from ..core.ops import MAP_LAYER_OPS
from ..core.targets import dual_nodes
from ..explainer import Explainer
from ..recurrent.plan import build_plan


def _shape(explainer: Explainer, name: str) -> list[Any] | None:
    dims = explainer.graph.shapes.get(name)
    return list(dims) if dims is not None else None


def describe(model: str | Path | onnx.ModelProto | Explainer) -> dict[str, Any]:
    """A JSON-able report of the model as the engine sees it."""
    ex = model if isinstance(model, Explainer) else Explainer(model)
    graph = ex.graph
    loops = [{"name": name, "op_type": op} for name, op in ex.unrolled_loops]
    logits = ex.logits_tensor()
    path = graph.nodes_between([ex.input_name], [logits])
    counts = Counter(n.op_type for n in path)
    unsupported = [{"node": n.name, "op_type": n.op_type} for n in path
                   if registry.find_rule(n.op_type, "eb") is None or registry.find_rule(n.op_type, "grad") is None]
    report: dict[str, Any] = {
        "model": str(model) if isinstance(model, (str, Path)) else graph.light.graph.name,
        "opset": graph.opset,
        "inputs": {name: _shape(ex, name) for name in graph.inputs},
        "explained_input": ex.input_name,
        "outputs": {name: _shape(ex, name) for name in graph.outputs},
        "logits": logits,
        "labels": len(ex.labels) if ex.labels else None,
        "ops_on_signal_path": dict(sorted(counts.items())),
        "ops_without_rules": unsupported,
        "loops_unrolled": loops,
        "recurrences": [],
        "boundary": None,
        "classifier": None,
        "map_layers": [],
    }
    try:
        names = sorted(dual_nodes(graph, ex.engine.signal, logits, None))
        report["classifier"] = names[0] if len(names) == 1 else names
    except EbrError as exc:
        report["classifier_problem"] = str(exc)

    try:
        parts = build_plan(ex.engine, logits, None)
    except EbrError as exc:
        report["recurrence_problem"] = str(exc)
        parts = None
    if parts is not None:
        report["boundary"] = parts.boundary
        report["frames_tensor"] = parts.frames
        for node in parts.recurrent:
            report["recurrences"].append({
                "kind": "fused op", "node": node.name, "op_type": node.op_type,
                "direction": node.attr("direction", "forward"), "layout": int(node.attr("layout", 0)),
                "hidden_size": node.attr("hidden_size"), "activations": node.attr("activations"),
                "time_axis": 1 if node.attr("layout", 0) else 0,
            })
        chains: dict[int, list] = {}
        for cell in parts.cells:
            chains.setdefault(cell.chain, []).append(cell)
        for steps in chains.values():
            steps.sort(key=lambda c: c.step)
            report["recurrences"].append({
                "kind": "unrolled " + ("GRU" if type(steps[0]).__name__ == "GruCell" else "LSTM") + " cells",
                "steps": len(steps), "first_step_inputs": list(steps[0].x_inputs),
                "last_step_inputs": list(steps[-1].x_inputs),
            })
    cnn_side = graph.nodes_between([ex.input_name], [report["boundary"] or logits])
    report["map_layers"] = [
        {"tensor": n.outputs[0], "op_type": n.op_type, "shape": _shape(ex, n.outputs[0])}
        for n in cnn_side if n.op_type in MAP_LAYER_OPS
    ]
    recorded = graph.metadata_json("ebr_onnx.map_layer")
    if recorded:
        report["recommended_map_layer"] = recorded
    report["lowered_on_cpu"] = _lowered_run(ex, path)
    return report


def _lowered_run(ex: Explainer, path: list) -> dict[str, Any] | None:
    """The bottom run of the walk to the input that the CPU runs as one onnxruntime graph (EB mode), if any."""
    shapes = {k: v for k, v in ex.graph.shapes.items() if v is not None}
    ctx = ex.engine.context("eb", {}, shapes)
    try:
        below, _ = ctx.lowerer.split(ctx, path) if ctx.lowerer is not None else ([], path)
    except KeyError:  # a shape onnx could not infer: the walk decides on the concrete shapes
        return None
    return {"nodes": len(below), "first": below[0].name, "last": below[-1].name} if below else None


def format_report(report: dict[str, Any]) -> str:
    """The report as text for a terminal."""
    lines = [f"model: {report['model']} (opset {report['opset']})",
             f"inputs: {report['inputs']}  (explained: {report['explained_input']})",
             f"outputs: {report['outputs']}  (prior set on: {report['logits']})"]
    if report["labels"]:
        lines.append(f"labels: {report['labels']} classes")
    ops = ", ".join(f"{op}×{n}" for op, n in report["ops_on_signal_path"].items())
    lines.append(f"ops on the signal path: {ops}")
    if report["ops_without_rules"]:
        lines.append("ops WITHOUT rules: " + ", ".join(f"{u['node']} ({u['op_type']})"
                                                       for u in report["ops_without_rules"]))
    else:
        lines.append("every op on the signal path has EB and gradient rules")
    for loop in report["loops_unrolled"]:
        lines.append(f"{loop['op_type']} {loop['name']!r}: unrolled into per-step ops on load")
    for rec in report["recurrences"]:
        if rec["kind"] == "fused op":
            lines.append(f"recurrence: {rec['op_type']} {rec['node']!r}, {rec['direction']}, layout {rec['layout']} "
                         f"(time axis {rec['time_axis']}), hidden {rec['hidden_size']}, "
                         f"activations {rec['activations'] or 'default'}")
        else:
            lines.append(f"recurrence: {rec['kind']}, {rec['steps']} steps, from {', '.join(rec['first_step_inputs'])} "
                         f"to {', '.join(rec['last_step_inputs'])}")
    if "recurrence_problem" in report:
        lines.append(f"no recurrent part: {report['recurrence_problem']}")
    lines.append(f"RNN→CNN boundary: {report['boundary']}")
    classifier = report["classifier"]
    if isinstance(classifier, list):
        classifier = f"{len(classifier)} nodes sharing the classifier's weights ({classifier[0]}, …)"
    lines.append(f"classifier (negated by the contrastive dual): {classifier or report.get('classifier_problem')}")
    layers = report["map_layers"][-8:]
    lines.append("candidate map layers (last 8): " + ", ".join(f"{m['tensor']} {m['shape']}" for m in layers))
    if "recommended_map_layer" in report:
        lines.append(f"recommended map layer: {report['recommended_map_layer']}")
    lowered = report["lowered_on_cpu"]
    lines.append(f"run as one onnxruntime graph on the CPU: {lowered['nodes']} nodes, {lowered['first']} … "
                 f"{lowered['last']}" if lowered else "run as one onnxruntime graph on the CPU: none (rule by rule)")
    return "\n".join(lines)
