"""``ebr-onnx inspect``: what ebr_onnx finds in a model — the ops on the signal path and whether each has a rule, each
recurrence (fused op, unrolled cell, Loop, Scan) with its direction, the RNN→CNN boundary, the classifier and its
head activation, the candidate map layers, and what one run on a test input shows: the traced time and sequence
axes of the input and output, and the declared shapes the run contradicts."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx

from ..core import registry
from ..core.errors import EbrError
from ..core.ops import MAP_LAYER_OPS
from ..core.receptive import GLOBAL_OPS, REDUCE_OPS, WINDOW_OPS
from ..core.targets import dual_nodes, logits_below
from ..explainer import Explainer
from ..methods.volume import VolumeLayout, shortest_clip, volume_fields, volume_layout
from ..recurrent.frames import input_time_axis
from ..recurrent.plan import build_plan

#: The size given to an input's free dimensions in the test run (the first: 1 sequence or image).
FREE_DIM = 16


def _shape(explainer: Explainer, name: str) -> list[Any] | None:
    dims = explainer.graph.shapes.get(name)
    return list(dims) if dims is not None else None


def describe(model: str | Path | onnx.ModelProto | Explainer, input_shape: Sequence[int] | None = None
             ) -> dict[str, Any]:
    """A JSON-able report of the model as the engine sees it; the test run feeds random values of ``input_shape``
    (default: the declared shape, free dimensions set to the model's recorded clip length, else 1 for the first axis
    and :data:`FREE_DIM` for the others)."""
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
    report["head"] = logits_below(graph, graph.outputs[0])[1]
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
    report.update(_test_run(ex, input_shape, parts is not None))
    layout = volume_layout(graph, ex.input_name)
    if layout is not None:
        report["video_cnn"] = _video_cnn(ex, layout, path, tuple(report["run"]["input_shape"]))
    return report


def _video_cnn(ex: Explainer, layout: VolumeLayout, path: list, shape: tuple[int, ...]) -> dict[str, Any]:
    """A 3-D CNN's clip layout, and for each window op (Conv, pooling) on the signal path its time stride (the
    product of the strides up to it), its temporal receptive field and its length in time for the test clip."""
    trace = volume_fields(ex.graph, layout, shape)
    layers = []
    for node in path:
        field = next((f for f in trace.fields.get(node.outputs[0], {}).values() if f.input_axis == layout.time_axis),
                     None)
        if field is not None and node.op_type in WINDOW_OPS | GLOBAL_OPS | REDUCE_OPS:
            whole = node.op_type not in WINDOW_OPS  # pooled or reduced over the whole clip
            layers.append({"tensor": node.outputs[0], "op_type": node.op_type,
                           "time_stride": None if whole else field.stride, "time_field": field.size,
                           "frames": field.length})
    report = {"kind": "3-D CNN", "input": layout.input_name, "layout": layout.describe(),
              "time_axis": layout.time_axis, "channel_axis": layout.channel_axis,
              "clip_frames": shape[layout.time_axis], "declared_frames": layout.frames(),
              "shortest_clip": shortest_clip(ex.graph, layout, shape), "layers": layers}
    if trace.shortfall is not None:
        report["problem"] = (f"{trace.shortfall.op_type} node {trace.shortfall.node!r} gets {trace.shortfall.length} "
                             f"positions for a window of {trace.shortfall.reach}")
    return report


def _test_input_shape(ex: Explainer) -> tuple[int, ...]:
    declared = ex.graph.shapes.get(ex.input_name) or ()
    recorded = ex.graph.metadata_json("ebr_onnx.frames")
    video = volume_layout(ex.graph, ex.input_name) is not None  # a 3-D CNN: axis 0 holds clips, not frames
    first = int(recorded) if recorded and not video else 1
    return tuple(d if isinstance(d, int) and d > 0 else (first if i == 0 else int(recorded or FREE_DIM))
                 for i, d in enumerate(declared))


def _test_run(ex: Explainer, input_shape: Sequence[int] | None, recurrent: bool) -> dict[str, Any]:
    """One run on random input: the run-time shapes of the outputs against the declared ones and, for a recurrent
    model, BP-R to the boundary (which traces the time axes) — the input's time axis, the time and sequence axes of
    the logits (the tensor the prior is set on), the number of steps."""
    shape = tuple(input_shape) if input_shape is not None else _test_input_shape(ex)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    graph = ex.graph
    run: dict[str, Any] = {"input_shape": list(shape)}
    try:
        names = [n for n in graph.declared_shapes if not graph.is_constant(n)]
        values = ex.engine.runner.run(ex.engine.feeds(x), names)
    except EbrError as exc:
        return {"run": run, "run_problem": f"{exc} (pass the input's shape: --input-shape)"}
    run["output_shapes"] = {n: list(np.shape(values[n])) for n in graph.outputs}
    contradicted = []
    for name, declared in graph.declared_shapes.items():
        got = np.shape(values.get(name)) if name in values else None
        if declared is not None and got is not None and (len(declared) != len(got) or any(
                isinstance(d, int) and d > 0 and d != g for d, g in zip(declared, got))):
            contradicted.append({"tensor": name, "declared": list(declared), "run": list(got)})
    report: dict[str, Any] = {"run": run, "declared_shapes_contradicted": contradicted}
    if recurrent:
        try:
            boundary = build_plan(ex.engine, ex.logits_tensor(), None).boundary
            res = ex.explain(x, method="gradr", layer=boundary)   # no CNN walk: the boundary is the layer
        except EbrError as exc:
            report["run_problem"] = str(exc)
            return report
        out = res.output
        run["logits"] = res.info.logits
        run["logits_shape"] = list(out.shape)
        run["logits_time_axis"] = res.info.time_axis
        run["steps"] = None if res.info.time_axis is None else out.shape[res.info.time_axis]
        run["logits_sequence_axes"] = [a for a in range(out.ndim - 1) if a != res.info.time_axis]
        run["input_time_axis"] = input_time_axis(graph, ex.input_name, res.info.frames, shape)
        run["frames_tensor"] = res.info.frames
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
    if report["head"]:
        lines.append(f"output head: {' ← '.join(report['head'])} (the prior sits on the logits below it)")
    run = report["run"]
    lines.append(f"test run on input {tuple(run['input_shape'])}: " + (
        report["run_problem"] if "run_problem" in report else f"outputs {run['output_shapes']}"))
    if "logits_time_axis" in run:
        lines.append(f"traced: logits {tuple(run['logits_shape'])}: time axis {run['logits_time_axis']} "
                     f"({run['steps']} steps), sequence axes {run['logits_sequence_axes']}; input time axis "
                     f"{run['input_time_axis']} (frames tensor {run['frames_tensor']})")
    for item in report.get("declared_shapes_contradicted", []):
        lines.append(f"declared shape of {item['tensor']!r} {item['declared']} is contradicted by the run "
                     f"{item['run']}: ignored")
    layers = report["map_layers"][-8:]
    lines.append("candidate map layers (last 8): " + ", ".join(f"{m['tensor']} {m['shape']}" for m in layers))
    if "recommended_map_layer" in report:
        lines.append(f"recommended map layer: {report['recommended_map_layer']}")
    if "video_cnn" in report:
        lines.append(_format_video(report["video_cnn"]))
    lowered = report["lowered_on_cpu"]
    lines.append(f"run as one onnxruntime graph on the CPU: {lowered['nodes']} nodes, {lowered['first']} … "
                 f"{lowered['last']}" if lowered else "run as one onnxruntime graph on the CPU: none (rule by rule)")
    return "\n".join(lines)


def _format_video(video: dict[str, Any]) -> str:
    """The 3-D CNN line: layout, time axis, the time stride (temporal field, frames kept) of each layer."""
    layers = ", ".join(
        f"{m['tensor']} " + (f"x{m['time_stride']}" if m["time_stride"] else "whole clip")
        + f" ({m['time_field']} frames seen, {m['frames']} kept)" for m in video["layers"])
    shortest, fixed = video["shortest_clip"], video["declared_frames"]
    need = (f"clips of {fixed} frames (declared)" if fixed else f"clips of at least {shortest} frames" if shortest
            else "no clip length fits")
    text = (f"3-D CNN, time axis {video['time_axis']} of input {video['input']!r} {video['layout']}; time stride of "
            f"each layer for a clip of {video['clip_frames']} frames: {layers or 'none traced'}; {need}")
    return text + (f" ({video['problem']})" if "problem" in video else "")
