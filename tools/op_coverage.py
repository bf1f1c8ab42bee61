"""Print ebr_onnx's op coverage on the corpus of ``tests/corpus_models.py`` as Markdown tables for README.

The first table has one row per op type met on a signal path (from the model input to its logits) in any corpus
model and one column per model: ✓ where the op is on that model's signal path and has a rule in both modes (``eb``
and ``grad``), ✗ where it is on the path without one, blank where the model does not have it. With ``--methods``, a
second table says which methods run on each model (✓) and which fail (✗, with the first line of the error below).

    python tools/op_coverage.py                 # needs torch (the PyTorch models are exported on the fly)
    python tools/op_coverage.py --methods       # also run eb, grad, ceb (and ebr, cebr, gradr on recurrent models)
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from corpus_models import CorpusModel, build_corpus, signal_path_ops  # noqa: E402

from ebr_onnx import Explainer  # noqa: E402
from ebr_onnx.core import registry  # noqa: E402
from ebr_onnx.core.registry import MODES  # noqa: E402

CNN_METHODS = ("eb", "grad", "ceb")
RECURRENT_METHODS = ("ebr", "cebr", "gradr")


def has_rules(op: str) -> bool:
    return all(registry.find_rule(op, mode) is not None for mode in MODES)


def op_table(corpus: list[CorpusModel]) -> str:
    """Ops × models: ✓ on the path with rules, ✗ on the path without, blank elsewhere."""
    ops = {m.name: signal_path_ops(m) for m in corpus}
    rows = sorted({op for found in ops.values() for op in found}, key=lambda op: (has_rules(op), op))
    lines = ["| op | " + " | ".join(m.name for m in corpus) + " |", "|---|" + "---|" * len(corpus)]
    for op in rows:
        mark = "✓" if has_rules(op) else "✗"
        lines.append(f"| {op} | " + " | ".join(mark if op in ops[m.name] else "" for m in corpus) + " |")
    header = "| framework | " + " | ".join(m.framework for m in corpus) + " |"
    return "\n".join(lines[:2] + [header] + lines[2:])


def method_table(corpus: list[CorpusModel]) -> str:
    """Methods × models: ✓ runs with finite maps, ✗ fails (the errors are listed below the table)."""
    errors: dict[str, list[str]] = {}
    cells: dict[str, dict[str, str]] = {}
    for model in corpus:
        ex = Explainer(model.path)
        cells[model.name] = {}
        for method in CNN_METHODS + (RECURRENT_METHODS if model.recurrent else ()):
            try:
                res = ex.explain(model.inputs, method=method)
                ok = bool(np.isfinite(res.maps).all())
                cells[model.name][method] = "✓" if ok else "✗"
                if not ok:
                    errors.setdefault(f"{method}: maps not finite", []).append(model.name)
            except Exception as exc:  # noqa: BLE001 — the table reports every failure
                cells[model.name][method] = "✗"
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                errors.setdefault(f"{method}: {message}", []).append(model.name)
    lines = ["| method | " + " | ".join(m.name for m in corpus) + " |", "|---|" + "---|" * len(corpus)]
    for method in CNN_METHODS + RECURRENT_METHODS:
        lines.append(f"| {method} | " + " | ".join(cells[m.name].get(method, "") for m in corpus) + " |")
    lines.append("")
    lines += [f"* {', '.join(models)} — {error}" for error, models in errors.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", action="store_true", help="also run every method on every model")
    parser.add_argument("--out", type=Path, help="folder for the PyTorch exports (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        corpus = build_corpus(args.out or Path(tmp))
        print(op_table(corpus))
        if args.methods:
            print()
            print(method_table(corpus))


if __name__ == "__main__":
    main()
