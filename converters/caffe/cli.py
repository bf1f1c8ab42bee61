"""``ebr-onnx convert caffe deploy.prototxt [weights.caffemodel] -o model.onnx``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import warnings
from pathlib import Path

import onnx

from .convert import convert_caffe
from .errors import CaffeConversionWarning
from .lstm import ACTIVATIONS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebr-onnx convert caffe", description="Convert a Caffe deploy net (and its weights) to ONNX."
    )
    parser.add_argument("prototxt", type=Path, help="the deploy net definition (text)")
    parser.add_argument("caffemodel", type=Path, nargs="?", help="trained weights (binary); omit with --random-weights")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--frames", type=int, metavar="T",
                        help="the clip length: T steps (an input of T·N frames for N interleaved LSTM streams, "
                             "N kept); default: the prototxt's")
    parser.add_argument("--lstm-activation", choices=sorted(ACTIVATIONS), default="relu",
                        help="relu: the release's LSTM unit (default); tanh: upstream Caffe's")
    parser.add_argument("--random-weights", type=int, metavar="SEED", help="seeded random weights (structure only)")
    return parser


def save_atomically(model: onnx.ModelProto, path: Path) -> None:
    """Write to a temporary file next to ``path``, then rename it: no partial file is ever left at ``path``."""
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        onnx.save(model, temp)
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def run(argv: list[str]) -> int:
    """Run the command; a conversion or file error is raised (``CaffeConversionError``, ``OSError``) for the caller
    to report. Conversion notes (``CaffeConversionWarning``) are printed to stderr, one line each."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return int(exc.code or 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CaffeConversionWarning)
        model = convert_caffe(
            args.prototxt,
            args.caffemodel,
            random_weights=args.random_weights,
            frames=args.frames,
            lstm_activation=args.lstm_activation,
        )
    for warning in caught:
        if issubclass(warning.category, CaffeConversionWarning):
            print(f"ebr-onnx: warning: {warning.message}", file=sys.stderr)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    save_atomically(model, args.output)
    return 0
