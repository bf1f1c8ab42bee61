"""Benchmark: cEB-R on a CNN-LSTM (VGG-16 → fc7 → 256-unit ReLU-LSTM → 101 classes per step, random weights) against
onnxruntime's plain forward of the clip.

The model is the VGG-16 of :mod:`bench_cnn` (224×224, seeded random weights) cut at fc7 (4096 units, after its ReLU),
then ``Unsqueeze`` (frames become the sequence, batch 1) → ONNX ``LSTM`` (hidden 256, activations Sigmoid/Relu/Relu, as
the paper's release) → ``MatMul`` + ``Add`` classifier at every step (101 classes) → ``Softmax``. Every row runs in its
own subprocess (peak memory = its max RSS); ratios are against the onnxruntime forward of the same clip length,
measured in the same run.

    python benchmarks/bench_cnn_lstm.py [--frames 16] [--long 128] [--repeats 2] [--threads 2]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from bench_cnn import CONV5_1, build_vgg16  # noqa: E402
from common import build_in_child, child, measure, parser, ratio, run_child, shared_case  # noqa: E402

HIDDEN, CLASSES = 256, 101


def build_cnn_lstm(path: Path) -> None:
    """VGG-16 (from :func:`bench_cnn.build_vgg16`) cut at fc7, with a ReLU-LSTM and a per-step classifier on top."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    vgg = path.with_name("vgg16.onnx")
    build_vgg16(vgg)
    model = onnx.load(str(vgg))
    graph = model.graph
    gemms = [i for i, n in enumerate(graph.node) if n.op_type == "Gemm"]
    fc7_relu = next(i for i in range(gemms[1] + 1, len(graph.node)) if graph.node[i].op_type == "Relu")
    fc7 = graph.node[fc7_relu].output[0]
    kept = list(graph.node)[:fc7_relu + 1]
    used = {t for n in kept for t in n.input}
    rng = np.random.default_rng(0)
    weights = {
        "lstm_W": rng.normal(0, 0.01, (1, 4 * HIDDEN, 4096)),
        "lstm_R": rng.normal(0, 0.05, (1, 4 * HIDDEN, HIDDEN)),
        "lstm_B": rng.normal(0, 0.01, (1, 8 * HIDDEN)),
        "cls_W": rng.normal(0, 0.1, (HIDDEN, CLASSES)),
        "cls_b": rng.normal(0, 0.01, (CLASSES,)),
        "axes1": np.array([1], dtype=np.int64),
    }
    inits = [i for i in graph.initializer if i.name in used]
    inits += [numpy_helper.from_array(v.astype(np.float32) if v.dtype == np.float64 else v, k)
              for k, v in weights.items()]
    nodes = kept + [
        helper.make_node("Unsqueeze", [fc7, "axes1"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "lstm_W", "lstm_R", "lstm_B"], ["Y", "Y_h", "Y_c"], name="lstm",
                         hidden_size=HIDDEN, activations=["Sigmoid", "Relu", "Relu"]),
        helper.make_node("Squeeze", ["Y", "axes1"], ["h"], name="hidden"),
        helper.make_node("MatMul", ["h", "cls_W"], ["scores"], name="classifier"),
        helper.make_node("Add", ["scores", "cls_b"], ["logits"], name="classifier_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    out = helper.make_graph(nodes, "vgg16_lstm", [helper.make_tensor_value_info("data", TensorProto.FLOAT,
                                                                                 ["T", 3, 224, 224])],
                            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["T", 1, CLASSES])], inits)
    lstm = helper.make_model(out, opset_imports=model.opset_import, ir_version=model.ir_version)
    onnx.checker.check_model(lstm)
    onnx.save(lstm, str(path))


def run_case(case: str, model: str, frames: int, repeats: int, threads: int) -> dict:
    """One measurement (in this process): best-of-``repeats`` wall time (after a warm-up call) and peak RSS."""
    import numpy as np

    x = np.random.default_rng(1).random((frames, 3, 224, 224), dtype=np.float32)
    fn = shared_case(case, model, {"data": x}, threads)
    if fn is None:
        from ebr_onnx import Explainer

        method, layer = case.split(":")
        ex = Explainer(model, threads=threads)
        fn = lambda: ex.explain(x, target=7, method=method, layer=None if layer == "input" else layer)  # noqa: E731
    return measure(case, fn, repeats)


def _row(case: str, model: Path, frames: int, repeats: int, threads: int) -> tuple[float | None, float | None, str]:
    return run_child(__file__, ["--case", case, "--model", str(model), "--frames", str(frames),
                                "--repeats", str(repeats), "--threads", str(threads)])


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--frames", type=int, default=16, help="clip length of the speed rows")
    options.add_argument("--long", type=int, default=128, help="clip length of the memory row (0: skip)")
    args = options.parse_args()
    if child(args, lambda path: build_cnn_lstm(Path(path)),
             lambda: run_case(args.case, args.model, args.frames, args.repeats, args.threads)):
        return
    cases = [(args.frames, "ort", "onnxruntime forward", None),
             (args.frames, "floor", "EB's 2 convolutions per layer alone", None),
             (args.frames, f"cebr:{CONV5_1}", "cebr to conv5_1 (forward incl.)", 1.8),
             (args.frames, "cebr:input", "cebr to the input (forward incl.)", 3.5)]
    if args.long:
        cases += [(args.long, "ort", "onnxruntime forward", None),
                  (args.long, f"cebr:{CONV5_1}", "cebr to conv5_1 (forward incl.)", None)]
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "vgg16_lstm.onnx"
        build_in_child(__file__, str(model))
        rows = [(frames, label, target, *_row(case, model, frames, 1 if frames > 32 else args.repeats,
                                               args.threads))
                for frames, case, label, target in cases]
    base = {frames: (t, m) for frames, label, _, t, m, _ in rows if label.startswith("onnxruntime")}
    print(f"VGG-16 + {HIDDEN}-unit ReLU-LSTM + {CLASSES} classes, 224x224, {args.threads} threads, "
          f"best of {args.repeats} (1 for clips over 32 frames)")
    print(f"{'T':>4s} {'what':38s} {'s':>8s} {'s/frame':>8s} {'x ort':>6s} {'target':>6s} {'peak MB':>8s} {'x ort':>6s}")
    for frames, label, target, t, m, note in rows:
        goal = f"{target:.1f}" if target else "-"
        if t is None:
            print(f"{frames:4d} {label:38s} {'-':>8s} {'-':>8s} {'-':>6s} {goal:>6s} {'-':>8s} {'-':>6s}  ({note})")
            continue
        bt, bm = base.get(frames, (None, None))
        print(f"{frames:4d} {label:38s} {t:8.2f} {t / frames:8.3f} {ratio(t, bt)} {goal:>6s} {m:8.0f} {ratio(m, bm)}")
    floor, (bt, _) = rows[1][3], base.get(args.frames, (None, None))
    if floor is not None and bt:
        print(f"floor of cebr to the input (forward + EB's convolutions), T = {args.frames}: {(bt + floor) / bt:.2f}x ort")


if __name__ == "__main__":
    main()
