"""What the benchmarks share: timing in this process, and running one case per child process (so that each row's
peak memory — its max RSS — is its own; Linux keeps a process's peak RSS across exec, so parents stay small)."""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from typing import Callable


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(case: str, fn: Callable[[], object], repeats: int) -> dict:
    """Best-of-``repeats`` wall time of ``fn`` after one warm-up call (sessions, caches), and this process's peak."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"case": case, "seconds": min(times), "peak_mb": peak_mb()}


def ort_forward(model: str, feeds: dict, threads: int) -> Callable[[], object]:
    """onnxruntime's plain forward of ``model`` (CPU, ``threads`` intra-op threads)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, feeds)


def eb_convolutions(model: str, feeds: dict, threads: int) -> Callable[[], object]:
    """The floor of EB on a CNN: only the two convolutions per Conv node that Eq. 8 needs (``Z = f(x, W⁺)`` and the
    transpose ``fᵀ(q, W⁺)``), on inputs of the forward's shapes, as one onnxruntime graph (all optimizations, with an
    arena) — no forward, no elementwise work, no memory handed back."""
    import onnxruntime as ort

    proto, data = eb_convolutions_graph(model, feeds)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    sess = ort.InferenceSession(proto, opts, providers=["CPUExecutionProvider"])
    return lambda: sess.run(None, data)


def eb_convolutions_graph(model: str, feeds: dict) -> tuple[bytes, dict]:
    """The graph of :func:`eb_convolutions` (serialized) and its feeds: for each Conv node of ``model``, its
    convolution by W⁺ and the transpose, on random inputs of the shapes the forward of ``feeds`` gives them."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from ebr_onnx.core.geometry import ConvGeometry
    from ebr_onnx.core.graph import ModelGraph
    from ebr_onnx.core.kernels import transpose_as_node

    graph = ModelGraph(model)
    shapes = graph.concrete_shapes({k: np.shape(v) for k, v in feeds.items()})
    rng = np.random.default_rng(0)
    nodes, inits, inputs, outputs, data = [], [], [], [], {}
    for i, node in enumerate(n for n in graph.nodes if n.op_type == "Conv"):
        x_shape = tuple(shapes[node.inputs[0]]) if node.inputs[0] in shapes else np.shape(feeds[node.inputs[0]])
        w = np.maximum(graph.constant(node.inputs[1]), 0).astype(np.float32)
        geo = ConvGeometry(node, x_shape, w.shape)
        op_type, weight, attrs = transpose_as_node(geo)
        inits += [numpy_helper.from_array(w, f"w{i}"),
                  numpy_helper.from_array(np.ascontiguousarray(weight(w)), f"wt{i}")]
        data[f"x{i}"] = rng.random(x_shape, dtype=np.float32)
        inputs.append(helper.make_tensor_value_info(f"x{i}", onnx.TensorProto.FLOAT, list(x_shape)))
        nodes += [helper.make_node("Conv", [f"x{i}", f"w{i}"], [f"z{i}"], strides=geo.strides, pads=geo.pads,
                                   dilations=geo.dilations, group=geo.group),
                  helper.make_node(op_type, [f"z{i}", f"wt{i}"], [f"t{i}"], **attrs),
                  helper.make_node("ReduceSum", [f"t{i}"], [f"s{i}"], keepdims=0)]
        outputs.append(helper.make_tensor_value_info(f"s{i}", onnx.TensorProto.FLOAT, []))
    proto = helper.make_model(helper.make_graph(nodes, "eb_convolutions", inputs, outputs, inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    return proto.SerializeToString(), data


def shared_case(case: str, model: str, feeds: dict, threads: int) -> Callable[[], object] | None:
    """The rows every benchmark has: onnxruntime's forward (``ort``) and EB's convolutions alone (``floor``); ``None``
    for any other case."""
    if case == "ort":
        return ort_forward(model, feeds, threads)
    if case == "floor":
        return eb_convolutions(model, feeds, threads)
    return None


def interleaved(fns: dict[str, Callable[[], object]], rounds: int) -> dict[str, float]:
    """The best time of each function over ``rounds`` rounds that run them one after the other (after one warm-up
    call each), in this process: on a machine shared with other jobs, rows measured minutes apart see different
    loads, rows measured in turn see the same."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def run_json_child(script: str, args: list[str]) -> dict | None:
    """Run ``script --case …`` in a child process and return the JSON it prints last (None when it failed)."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_child(script: str, args: list[str], timeout: float | None = None,
              note: int = 60) -> tuple[float | None, float | None, str]:
    """Run ``script --case …`` in a child process (killed after ``timeout`` seconds): (seconds, peak MB, note — the
    first ``note`` characters of the last error line when it failed)."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False,
                          timeout=timeout)
    if proc.returncode != 0:
        return None, None, (proc.stderr.strip().splitlines() or ["failed"])[-1][:note]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_mb"], ""


def ratio(value: float, base: float | None) -> str:
    """``value / base`` in a column of 6 (``-`` without a base): the "x ort" columns of the tables."""
    return f"{value / base:6.2f}" if base else f"{'-':>6s}"


def build_in_child(script: str, model: str, extra: list[str] | None = None) -> None:
    subprocess.run([sys.executable, script, "--case", "build", "--model", model, *(extra or [])], check=True,
                   capture_output=True)


def parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every benchmark takes (``--repeats``, ``--threads``) and those of its child runs."""
    out = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    out.add_argument("--repeats", type=int, default=2)
    out.add_argument("--threads", type=int, default=2)
    out.add_argument("--case", help=argparse.SUPPRESS)
    out.add_argument("--model", help=argparse.SUPPRESS)
    return out


def child(args: argparse.Namespace, build: Callable[[str], None], run: Callable[[], dict]) -> bool:
    """Serve a child run: ``--case build`` builds the model, any other case prints its measurement as JSON.
    Returns whether this process is a child."""
    if args.case == "build":
        build(args.model)
    elif args.case:
        print(json.dumps(run()))
    return bool(args.case)


def measure_case(case: str, make: Callable[[str], Callable[[], object]], names: list[str], repeats: int) -> dict:
    """A child's measurement: ``make(case)``'s best-of-``repeats`` time and this process's peak (:func:`measure`);
    the case ``interleaved`` times every one of ``names`` in turn, ``repeats`` rounds (:func:`interleaved`)."""
    if case == "interleaved":
        return {"case": case, "seconds": interleaved({name: make(name) for name in names}, repeats)}
    return measure(case, make(case), repeats)


def measure_rows(script: str, cases: list[tuple[str, str]], args: list[str], repeats: int, rounds: int
                 ) -> tuple[list[tuple[str, str, float | None, float | None, str]], dict[str, float]]:
    """Each (case, label) of ``cases`` in its own child process of ``script`` (best of ``repeats``), then all in
    turn in one more child (``rounds`` rounds): the rows :func:`print_rows` takes, and the in-turn times by case."""
    rows = []
    for case, label in cases:
        t, m, note = run_child(script, ["--case", case, *args, "--repeats", str(repeats)])
        rows.append((case, label, t, m, note))
    turns = run_json_child(script, ["--case", "interleaved", *args, "--repeats", str(rounds)])
    return rows, turns["seconds"] if turns else {}


def print_rows(rows: list[tuple[str, str, float | None, float | None, str]], turns: dict[str, float], count: int,
               unit: str) -> None:
    """The table of a CNN benchmark: each row's (case, label, seconds, peak MB, note) from its own process, its ratio
    to the first row (onnxruntime's forward), and the ``in turn`` column (:func:`interleaved`: every row timed in
    one process, ``turns`` by case); then the floor of EB to the input (forward + EB's convolutions, the rows ``ort``
    and ``floor``) and the ``eb``/``ceb`` rows to the input against it, both ways, and PyTorch's row against
    ``eb``'s."""
    base_t, base_m = rows[0][2], rows[0][3]
    print(f"{'what':45s} {'s':>8s} {f's/{unit}':>8s} {'x ort':>6s} {'peak MB':>8s} {'x ort':>6s} {'in turn':>8s}")
    for case, label, t, m, note in rows:
        turn = f"{turns[case] / turns['ort']:8.2f}" if case in turns and "ort" in turns else f"{'-':>8s}"
        if t is None:
            print(f"{label:45s} {'-':>8s} {'-':>8s} {'-':>6s} {'-':>8s} {'-':>6s} {turn}  ({note})")
        else:
            print(f"{label:45s} {t:8.2f} {t / count:8.3f} {ratio(t, base_t)} {m:8.0f} {ratio(m, base_m)} {turn}")
    for what, times in (("own processes", {case: t for case, _, t, _, _ in rows}), ("in turn", turns)):
        if all(times.get(k) is not None for k in ("ort", "floor", "eb:input", "ceb:input")):
            floor = times["ort"] + times["floor"]
            eb, ceb = times["eb:input"] / floor, times["ceb:input"] / floor
            line = (f"{what}: floor of eb to the input (forward + EB's convolutions) {floor / times['ort']:.2f}x ort; "
                    f"eb to the input {eb:.2f}x the floor, ceb {ceb:.2f}x")
            if times.get("torch") is not None:
                line += f"; PyTorch forward+backward takes {times['torch'] / times['eb:input']:.2f}x eb's time"
            print(line)
