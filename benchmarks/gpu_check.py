"""The GPU check: one command that, on a machine with a CUDA GPU and the ``gpu`` extra, confirms the device path.

    pip install -e ".[gpu]" pytest
    python benchmarks/gpu_check.py [--repeats 2] [--skip-tests] [--skip-bench]

1. Asserts that CuPy sees a GPU and that onnxruntime's CUDA provider is the one that runs, with the options of
   :func:`ebr_onnx.core.backend.cuda_provider_options` (TF32 off, cuDNN's default convolution algorithm), on a plain
   session and on every session of an explainer.
2. Runs every ``gpu`` test (they all live in ``tests/test_gpu.py``; none may be skipped).
3. Prints the tables of ``bench_cnn.py`` (VGG-16, 8 images) and ``bench_cnn_lstm.py`` (VGG-16 + 256-unit ReLU-LSTM,
   T = 16 and 128) on the GPU: best-of-``--repeats`` wall time after a warm-up call (1 repeat for T = 128), and the
   peak device memory of the row above the CUDA context's (sampled every millisecond; every row runs in its own
   process). The models are built here from seeded random weights with onnx and NumPy (no PyTorch needed).

It takes about 2–4 minutes on one GPU and fails (exit status 1) if any check does, or if it took more than 5 minutes.
Only NumPy, onnx, onnxruntime-gpu, CuPy and pytest are needed; nothing in CI runs it.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).parent))

from common import eb_convolutions_graph, ratio, run_child  # noqa: E402

CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
CONV5_1 = "conv5_1"
HIDDEN, CLASSES = 256, 101
BUDGET_S = 300


# -- the models (onnx + NumPy) --------------------------------------------------------------------------------------
def vgg16_nodes(rng, size: int = 224):
    """VGG-16's nodes and initializers for ``size``×``size`` images (He-initialised, as ``bench_cnn.build_vgg16``):
    the output of the 11th ReLU is ``conv5_1``, fc7's ReLU output ``fc7``."""
    import numpy as np
    from onnx import helper, numpy_helper

    nodes, inits, x, c, relus = [], [], "data", 3, 0
    for i, v in enumerate(CONFIG):
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [x], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            x = f"pool{i}"
            continue
        w = rng.standard_normal((v, c, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (c * 9)))
        inits += [numpy_helper.from_array(w, f"conv{i}_W"), numpy_helper.from_array(np.zeros(v, np.float32),
                                                                                    f"conv{i}_b")]
        relus += 1
        out = CONV5_1 if relus == 11 else f"relu{i}"
        nodes += [helper.make_node("Conv", [x, f"conv{i}_W", f"conv{i}_b"], [f"conv{i}"], pads=[1, 1, 1, 1]),
                  helper.make_node("Relu", [f"conv{i}"], [out])]
        x, c = out, v
    nodes.append(helper.make_node("Flatten", [x], ["flat"]))
    x = "flat"
    for name, (n_in, n_out) in (("fc6", (c * (size // 32) ** 2, 4096)), ("fc7", (4096, 4096))):
        w = rng.standard_normal((n_out, n_in), dtype=np.float32) * np.float32(np.sqrt(2.0 / n_in))
        inits += [numpy_helper.from_array(w, f"{name}_W"), numpy_helper.from_array(np.zeros(n_out, np.float32),
                                                                                   f"{name}_b")]
        nodes += [helper.make_node("Gemm", [x, f"{name}_W", f"{name}_b"], [f"{name}_pre"], transB=1),
                  helper.make_node("Relu", [f"{name}_pre"], [name])]
        x = name
    return nodes, inits


def build_models(directory: Path, size: int = 224) -> tuple[Path, Path]:
    """``vgg16.onnx`` (1000 classes) and ``vgg16_lstm.onnx`` (cut at fc7, ReLU-LSTM, 101 classes per step)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = vgg16_nodes(rng, size)
    fc8 = rng.standard_normal((1000, 4096), dtype=np.float32) * np.float32(np.sqrt(1.0 / 4096))
    cnn = helper.make_graph(
        nodes + [helper.make_node("Gemm", ["fc7", "fc8_W", "fc8_b"], ["logits"], transB=1)], "vgg16",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 1000])],
        inits + [numpy_helper.from_array(fc8, "fc8_W"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc8_b")])
    vgg = directory / "vgg16.onnx"
    onnx.save(helper.make_model(cnn, opset_imports=[helper.make_opsetid("", 17)]), str(vgg))
    extra = {
        "lstm_W": rng.normal(0, 0.01, (1, 4 * HIDDEN, 4096)), "lstm_R": rng.normal(0, 0.05, (1, 4 * HIDDEN, HIDDEN)),
        "lstm_B": rng.normal(0, 0.01, (1, 8 * HIDDEN)), "cls_W": rng.normal(0, 0.1, (HIDDEN, CLASSES)),
        "cls_b": rng.normal(0, 0.01, (CLASSES,)),
    }
    lstm_inits = inits + [numpy_helper.from_array(v.astype(np.float32), k) for k, v in extra.items()]
    lstm_inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
    lstm_nodes = nodes + [
        helper.make_node("Unsqueeze", ["fc7", "axes1"], ["seq"], name="to_sequence"),
        helper.make_node("LSTM", ["seq", "lstm_W", "lstm_R", "lstm_B"], ["Y", "Y_h", "Y_c"], name="lstm",
                         hidden_size=HIDDEN, activations=["Sigmoid", "Relu", "Relu"]),
        helper.make_node("Squeeze", ["Y", "axes1"], ["h"], name="hidden"),
        helper.make_node("MatMul", ["h", "cls_W"], ["scores"], name="classifier"),
        helper.make_node("Add", ["scores", "cls_b"], ["logits"], name="classifier_bias"),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    rnn = helper.make_graph(lstm_nodes, "vgg16_lstm",
                            [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["T", 3, size, size])],
                            [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["T", 1, CLASSES])],
                            lstm_inits)
    lstm = directory / "vgg16_lstm.onnx"
    onnx.save(helper.make_model(rnn, opset_imports=[helper.make_opsetid("", 17)]), str(lstm))
    return vgg, lstm


# -- one row, in a child process ------------------------------------------------------------------------------------
class DevicePeak:
    """The peak of the device's used memory (total − free) above its level at the start, sampled every ``every``
    seconds on a thread of its own."""

    def __init__(self, every: float = 0.001) -> None:
        import cupy

        self._info, self._every = cupy.cuda.runtime.memGetInfo, every
        free, total = self._info()
        self.base = self.peak = total - free
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            free, total = self._info()
            self.peak = max(self.peak, total - free)
            time.sleep(self._every)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return (self.peak - self.base) / 2**20


def _ort_forward(model: str, x):
    import onnxruntime as ort

    from ebr_onnx.core.backend import ort_providers

    session = ort.InferenceSession(model, providers=ort_providers("cuda"))
    assert session.get_providers()[0] == "CUDAExecutionProvider", session.get_providers()
    return lambda: session.run(None, {"data": x})


def _eb_convolutions(model: str, x):
    """EB's two convolutions per Conv node alone (``Z = f(x, W⁺)`` and its transpose), on the CUDA provider."""
    import onnxruntime as ort

    from ebr_onnx.core.backend import ort_providers

    proto, data = eb_convolutions_graph(model, {"data": x})
    session = ort.InferenceSession(proto, providers=ort_providers("cuda"))
    return lambda: session.run(None, data)


def run_case(case: str, model: str, frames: int, repeats: int, size: int = 224) -> dict:
    """One row: best-of-``repeats`` wall time after a warm-up call, and the peak device memory above the start."""
    import cupy
    import numpy as np

    cupy.cuda.Device().use()
    x = np.random.default_rng(1).random((frames, 3, size, size), dtype=np.float32)
    peak = DevicePeak()
    if case == "ort":
        fn = _ort_forward(model, x)
    elif case == "floor":
        fn = _eb_convolutions(model, x)
    else:
        from ebr_onnx import Explainer

        method, layer = case.split(":")
        ex = Explainer(model, device="cuda", batch_size=min(frames, 16))
        fn = lambda: ex.explain(x, target=7, method=method, layer=None if layer == "input" else layer)  # noqa: E731
    fn()
    times = []
    for _ in range(repeats):
        cupy.cuda.Device().synchronize()
        start = time.perf_counter()
        fn()
        cupy.cuda.Device().synchronize()
        times.append(time.perf_counter() - start)
    return {"case": case, "seconds": min(times), "peak_mb": peak.stop()}


def _row(model: Path, case: str, frames: int, repeats: int) -> tuple[float | None, float | None, str]:
    return run_child(__file__, ["--case", case, "--model", str(model), "--frames", str(frames), "--repeats",
                                str(repeats)], timeout=240, note=70)


def _table(title: str, rows: list[tuple[int, str, float | None, float | None, str]]) -> None:
    base = {frames: (t, m) for frames, label, t, m, _ in rows if label.startswith("onnxruntime")}
    print(f"\n{title}")
    print(f"{'T':>4s} {'what':40s} {'s':>8s} {'s/frame':>8s} {'x ort':>6s} {'peak dev MB':>12s} {'x ort':>6s}")
    for frames, label, t, m, note in rows:
        if t is None:
            print(f"{frames:4d} {label:40s} {'-':>8s} {'-':>8s} {'-':>6s} {'-':>12s} {'-':>6s}  ({note})")
            continue
        bt, bm = base.get(frames, (None, None))
        print(f"{frames:4d} {label:40s} {t:8.3f} {t / frames:8.4f} {ratio(t, bt)} {m:12.0f} {ratio(m, bm)}")


# -- the checks -----------------------------------------------------------------------------------------------------
def check_provider() -> list[str]:
    """CuPy sees a GPU; onnxruntime-gpu is recent enough and its CUDA provider runs, with our options, in a plain
    session and in every session of an explainer."""
    import cupy
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from ebr_onnx import Explainer
    from ebr_onnx.app.demo import BUNDLED_MODEL
    from ebr_onnx.core.backend import MIN_ORT_GPU, cuda_provider_options, ort_providers

    problems = []
    if not cupy.cuda.is_available():
        return ["CuPy sees no CUDA GPU"]
    version = tuple(int(v) for v in ort.__version__.split(".")[:2])
    if version < MIN_ORT_GPU:
        problems.append(f"onnxruntime {ort.__version__} is older than {MIN_ORT_GPU} (use_tf32 unknown)")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return problems + [f"onnxruntime {ort.__version__} has no CUDA provider: install onnxruntime-gpu (the gpu "
                           f"extra), not onnxruntime; available: {ort.get_available_providers()}"]
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "probe",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in "ab"],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [4, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=ort_providers("cuda"))
    sessions = [session]
    if BUNDLED_MODEL.is_file():
        ex = Explainer(BUNDLED_MODEL, device="cuda")
        x = np.random.default_rng(0).random((4, 3, 64, 64), dtype=np.float32)
        ex.explain(x, method="cebr", layer="relu2")
        sessions += list(ex.engine.runner._sessions.values())
        for plan in ex.method("cebr")._plans.values():
            sessions += [s for part in (plan.cnn, plan.rnn, plan.to_frames) if part
                         for s in part.runner._sessions.values()]
    want = cuda_provider_options()
    for s in sessions:
        if s.get_providers()[0] != "CUDAExecutionProvider":
            problems.append(f"a session runs on {s.get_providers()} instead of the CUDA provider")
            continue
        got = s.get_provider_options()["CUDAExecutionProvider"]
        wrong = {k: got.get(k) for k in ("use_tf32", "cudnn_conv_algo_search") if got.get(k) != want[k]}
        if wrong:
            problems.append(f"the CUDA provider's options are {wrong}, not {want}")
    name = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    print(f"GPU {name}; onnxruntime {ort.__version__}, CuPy {cupy.__version__}; {len(sessions)} sessions checked: "
          "CUDA provider, use_tf32=0, cudnn_conv_algo_search=DEFAULT")
    return problems


def run_tests() -> list[str]:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs",
                           str(ROOT / "tests" / "test_gpu.py")], cwd=ROOT, capture_output=True, text=True,
                          check=False)
    tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr.strip()[-300:]
    print(f"gpu tests: {tail}")
    if proc.returncode != 0:
        print(proc.stdout[-6000:], proc.stderr[-2000:], sep="\n")
        return ["a gpu test failed"]
    if "skipped" in tail or " passed" not in tail:
        return [f"gpu tests were skipped or none ran: {tail}"]
    return []


def benchmarks(repeats: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        vgg, lstm = build_models(Path(tmp))
        images = 8
        cnn_rows = [(images, label, *_row(vgg, case, images, repeats)) for case, label in (
            ("ort", "onnxruntime forward"), ("floor", "EB's 2 convolutions per layer alone"),
            (f"eb:{CONV5_1}", "eb to conv5_1 (forward incl.)"), (f"ceb:{CONV5_1}", "ceb to conv5_1 (forward incl.)"),
            ("eb:input", "eb to the input (forward incl.)"), ("ceb:input", "ceb to the input (forward incl.)"))]
        _table(f"VGG-16, {images} images 224x224, on the GPU, best of {repeats}", cnn_rows)
        lstm_rows = [(frames, label, *_row(lstm, case, frames, 1 if frames > 32 else repeats))
                     for frames, case, label in (
                         (16, "ort", "onnxruntime forward"), (16, "floor", "EB's 2 convolutions per layer alone"),
                         (16, f"cebr:{CONV5_1}", "cebr to conv5_1 (forward incl.)"),
                         (16, "cebr:input", "cebr to the input (forward incl.)"),
                         (128, "ort", "onnxruntime forward"), (128, f"cebr:{CONV5_1}",
                                                               "cebr to conv5_1 (forward incl.)"))]
        _table(f"VGG-16 + {HIDDEN}-unit ReLU-LSTM + {CLASSES} classes, 224x224, on the GPU, best of {repeats} "
               "(1 for T = 128)", lstm_rows)
        if any(row[2] is None for row in cnn_rows + lstm_rows):
            raise SystemExit("a benchmark row failed (see its note)")


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    options.add_argument("--repeats", type=int, default=2)
    options.add_argument("--skip-tests", action="store_true")
    options.add_argument("--skip-bench", action="store_true")
    options.add_argument("--case", help=argparse.SUPPRESS)
    options.add_argument("--model", help=argparse.SUPPRESS)
    options.add_argument("--frames", type=int, default=8, help=argparse.SUPPRESS)
    args = options.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.model, args.frames, args.repeats)))
        return 0
    start = time.perf_counter()
    problems = check_provider()
    if problems:
        print("\n".join(f"FAIL: {p}" for p in problems))
        return 1
    if not args.skip_tests:
        problems += run_tests()
    if not args.skip_bench:
        try:
            benchmarks(args.repeats)
        except SystemExit as exc:
            problems.append(str(exc))
    took = time.perf_counter() - start
    print(f"\ngpu_check took {took:.0f} s")
    if took > BUDGET_S:
        problems.append(f"the check took {took:.0f} s, over its {BUDGET_S} s budget")
    print("\n".join(f"FAIL: {p}" for p in problems) if problems else "gpu_check: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
