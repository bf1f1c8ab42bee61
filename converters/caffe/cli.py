"""``ebr-onnx convert caffe deploy.prototxt [weights.caffemodel] -o model.onnx``."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import onnx

from .convert import convert_caffe
from .lstm import ACTIVATIONS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ebr-onnx convert caffe", description="Convert a Caffe deploy net (and its weights) to ONNX."
    )
    parser.add_argument("prototxt", type=Path, help="the deploy net definition (text)")
    parser.add_argument("caffemodel", type=Path, nargs="?", help="trained weights (binary); omit with --random-weights")
    parser.add_argument("-o", "--output", type=Path, required=True, help="the ONNX file to write")
    parser.add_argument("--frames", type=int, help="replace the hard-coded time/batch size T")
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
    to report."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help or a usage error, already printed by argparse
        return int(exc.code or 0)
    model = convert_caffe(
        args.prototxt,
        args.caffemodel,
        random_weights=args.random_weights,
        frames=args.frames,
        lstm_activation=args.lstm_activation,
    )
    save_atomically(model, args.output)
    return 0
