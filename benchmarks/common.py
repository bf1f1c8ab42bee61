"""What the benchmarks share: timing in this process, and running one case per child process (so that each row's
peak memory — its max RSS — is its own; Linux keeps a process's peak RSS across exec, so parents stay small)."""
from __future__ import annotations

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


def run_child(script: str, args: list[str]) -> tuple[float | None, float | None, str]:
    """Run ``script --case …`` in a child process: (seconds, peak MB, note — the last error line when it failed)."""
    proc = subprocess.run([sys.executable, script, *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return None, None, (proc.stderr.strip().splitlines() or ["failed"])[-1][:60]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return result["seconds"], result["peak_mb"], ""


def build_in_child(script: str, model: str) -> None:
    subprocess.run([sys.executable, script, "--case", "build", "--model", model], check=True, capture_output=True)
