"""The paper's experiments on the bundled LRCN-style model run from one command each (``benchmarks/bench_paper.py``,
``models/evaluate_action_model.py``): their ``--quick`` sizes print the tables beside the paper's numbers, write the
numbers and Fig. 7, and the numbers are in range."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks" / "bench_paper.py"
MODEL = ROOT / "models" / "action_lrcn.onnx"

pytestmark = pytest.mark.skipif(not MODEL.is_file(), reason="the LRCN-style bundled model is missing")


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_table2_quick(tmp_path: Path) -> None:
    out = run(str(BENCH), "table2", "--quick", "--json", str(tmp_path / "t2.json"))
    assert "128-frame clips" in out and "paper: cEB-R" in out and "| known | 65 |" in out and "73.5" in out
    result = json.loads((tmp_path / "t2.json").read_text())
    for setting in ("known", "unknown"):
        for name in ("probability", "EB-R", "cEB-R", "EB-R exc.", "cEB-R exc."):
            values = result["mAP"][setting][name]
            assert sorted(values) == ["11", "41", "65"] and all(0 <= v <= 1 for v in values.values())
    for name in ("probability", "cEB-R", "cEB-R exc."):
        d = result["diagnostics"][name]["65"]
        assert all(0 <= d[key] <= 1 for key in ("anchor_in_gt", "last_16", "gt_negative", "hit", "hit_given_anchor"))
        assert 0 <= d["before"] + d["inside"] + d["after"] <= 1 + 1e-6 and 1 <= d["found_length"] <= 128
    assert "Unknown length (Sec. 4.1)" in out


def test_fig7_quick(tmp_path: Path) -> None:
    picture = tmp_path / "fig7.png"
    out = run(str(BENCH), "fig7", "--quick", "--out", str(picture), "--json", str(tmp_path / "f7.json"))
    assert picture.stat().st_size > 0 and "rand+GT" in out and "GT+rand" in out
    sums = json.loads((tmp_path / "f7.json").read_text())
    for rules in ("caffe", "excitation"):
        for setup in ("rand+GT", "GT+rand"):
            rows = np.array(sums[rules][setup])
            assert rows.shape == (2, 16)
            # Eq. 7: both passes are normalised to a total of 1 over time and units, so each clip's sums total 0
            np.testing.assert_allclose(rows.sum(axis=1), 0, atol=1e-4)


def test_table1_quick(tmp_path: Path) -> None:
    out = run(str(BENCH), "table1", "--quick", "--json", str(tmp_path / "t1.json"))
    assert "| paper | 55.8 | 61.5 | 37.0 | 39.1 | 37.3 | 39.2 |" in out and "BP-R @ ReLU input" in out
    result = json.loads((tmp_path / "t1.json").read_text())
    pointing = result["pointing"]
    for name in ("EB", "EB-R", "cEB", "cEB-R", "BP", "BP-R", "frame centre", "BP-R @ conv input: Σc g"):
        assert 0 <= pointing[name] <= 1
    assert pointing["BP-R"] == pointing["BP-R @ map layer: Σc g"]
    assert result["gradient_layers"] == {"map layer": "relu3", "ReLU input": "conv3", "conv input": "pool2",
                                         "pixels": "frames"}


def test_evaluate_models_quick() -> None:
    out = run(str(ROOT / "models" / "evaluate_action_model.py"), "--quick")
    assert "action_lrcn.onnx (LRCN-style) | 32 |" in out and "action_lstm.onnx (old) | 16 |" in out
