"""The caption-guided saliency baseline of ``benchmarks/bench_captions.py`` reads log-probabilities that keep their
precision on a confident captioner (from the logits, in float64), and the benchmark runs end to end on one video."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_captions.py"
MODEL = ROOT / "models" / "captioner.onnx"

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="the bundled captioner is missing")


def _bench():
    spec = importlib.util.spec_from_file_location("bench_captions", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_log_softmax_keeps_a_confident_words_precision() -> None:
    bench = _bench()
    z = np.random.default_rng(0).normal(size=(3, 5, 9)) * 4
    z[0, 0, 2] = 80.0   # p rounds to 1 even in float64: log p = −Σ e^{z_j − 80}
    reference = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    np.testing.assert_allclose(bench.log_softmax(z)[1:], reference[1:], rtol=1e-12)
    exact = -np.exp(np.delete(z[0, 0], 2) - 80.0).sum()
    assert reference[0, 0, 2] == 0.0 and bench.log_softmax(z)[0, 0, 2] == pytest.approx(exact, rel=1e-12)


def test_baseline_log_probs_are_the_models() -> None:
    """Where the model's float32 probabilities are not saturated, the baseline's log-probabilities are their logs."""
    bench = _bench()
    from ebr_onnx import Explainer
    from ebr_onnx.app.preprocess import model_preprocess, preprocess
    from ebr_onnx.app.synthetic_captions import make_caption_clip, teacher_inputs
    ex = Explainer(MODEL)
    clip = make_caption_clip(np.random.default_rng([7, 0]), 16)
    x, _ = preprocess(clip.frames, model_preprocess(ex.graph))
    fed = teacher_inputs(clip.caption)[0]
    probs = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"]).run(
        None, {"frames": x, "words": fed})[0][:, 0]
    ours = bench.CaptionSaliency(MODEL, 2).log_probs(x, fed)
    unsaturated = (probs > 1e-20) & (probs < 0.999)
    assert unsaturated.sum() > 10
    np.testing.assert_allclose(ours[unsaturated], np.log(probs[unsaturated]), rtol=1e-4, atol=1e-6)
    assert np.all(ours < 0)   # no word's log-probability rounds to 0


def test_benchmark_runs_on_one_video(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(BENCH), "--videos", "1", "--grid", "2", "--json",
                           str(tmp_path / "r.json")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    methods = json.loads((tmp_path / "r.json").read_text())["methods"]
    assert set(methods) >= {"cEB-R", "EB-R", "BP-R", "caption-guided saliency"}
    assert all(0.0 <= row["spatial_all"] <= 1.0 and 0.0 <= row["temporal_all"] <= 1.0 for row in methods.values())
