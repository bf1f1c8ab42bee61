"""The ``ebr-onnx`` command: ``demo``, ``ground``, ``inspect``, ``convert caffe``.

User errors print one line (``ebr-onnx: error: …``) and exit with status 2; results already written are kept.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np

from converters.caffe.cli import main as convert_caffe

from ..core.errors import EbrError
from ..methods import METHODS
from .demo import run_demo
from .inspect import describe, format_report
from .pipeline import GroundOptions, ground

EXIT_USER_ERROR = 2


def _ground_parser(sub) -> None:
    p = sub.add_parser("ground", help="spatiotemporal evidence for a class in a video")
    p.add_argument("model", help="ONNX model")
    p.add_argument("video", help="video file (mp4/avi/webm), folder of frames, or .npy array (T,H,W,3) uint8")
    p.add_argument("--target", help="class name or index (default: the class predicted at the last step)")
    p.add_argument("--method", default="cebr", choices=METHODS)
    p.add_argument("--layer", help="tensor or node name for the maps (default: the model's recorded map layer)")
    p.add_argument("--out", default="ebr-results", help="output folder (default: ebr-results)")
    p.add_argument("--frames", type=int, help="clip length T (default: the model's)")
    p.add_argument("--stride", type=int, help="frames between clip starts (default: T)")
    p.add_argument("--every", type=int, default=1, help="keep every k-th frame")
    p.add_argument("--fps", type=float, help="resample the video to this frame rate")
    p.add_argument("--preset", help="preprocessing preset: caffe-ucf101, imagenet (default: the model's)")
    custom = p.add_argument_group("custom preprocessing (overrides the preset's fields)")
    custom.add_argument("--size", type=int, nargs="+", metavar="N", help="resize: H W, or the shorter side")
    custom.add_argument("--crop", type=int, nargs="+", metavar="N", help="centre crop: side, or H W")
    custom.add_argument("--mean", type=float, nargs=3, help="per-channel mean, in --channel-order and scaled range")
    custom.add_argument("--std", type=float, nargs=3, help="per-channel std")
    custom.add_argument("--channel-order", choices=("RGB", "BGR"))
    custom.add_argument("--scale", type=float, help="pixel range: value = pixel / 255 * scale (255 for 0–255)")
    p.add_argument("--labels", help="class names, one per line (default: the labels in the model's metadata)")
    p.add_argument("--recurrent-rules", default="caffe", choices=("caffe", "excitation"))
    p.add_argument("--time-step", type=int, default=-1, help="time step of the prior (default: the last)")
    p.add_argument("--mp4", action="store_true", help="also write overlay.mp4")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebr-onnx", description="Excitation Backprop for RNNs on ONNX models")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="bundled model + generated two-action video → ./ebr-demo/")
    demo.add_argument("--out", default="ebr-demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--method", default="cebr", choices=("ebr", "cebr", "gradr"))
    demo.add_argument("--quiet", action="store_true")
    _ground_parser(sub)
    inspect = sub.add_parser("inspect", help="what ebr_onnx finds in a model")
    inspect.add_argument("model")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    convert = sub.add_parser("convert", help="convert a model to ONNX (caffe)")
    convert.add_argument("framework", choices=("caffe",))
    convert.add_argument("args", nargs=argparse.REMAINDER, help="see: ebr-onnx convert caffe --help")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        return convert_caffe(args.args)
    if args.command == "inspect":
        report = describe(args.model)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    if args.command == "demo":
        return run_demo(Path(args.out), seed=args.seed, method=args.method, quiet=args.quiet)
    target: str | int | None = args.target
    if target is not None and target.isdigit():
        target = int(target)
    options = GroundOptions(
        target=target, method=args.method, layer=args.layer, frames=args.frames, stride=args.stride,
        every=args.every, fps=args.fps, preset=args.preset, recurrent_rules=args.recurrent_rules,
        time_step=args.time_step, quiet=args.quiet, labels=args.labels,
        animations=("gif", "mp4") if args.mp4 else ("gif",), preprocess_overrides=_preprocess_overrides(args),
    )
    video = args.video
    if video.endswith(".npy"):
        video = np.load(video, allow_pickle=False)
    summary = ground(args.model, video, Path(args.out), options)
    for clip in summary["clips"]:
        s, e = clip["segment_frames"]
        label = clip["target"]["label"] or clip["target"]["index"]
        print(f"clip {clip['clip']} (frames {clip['frames'][0]}–{clip['frames'][1]}): {label} localized in frames "
              f"{s}–{e}")
    print(f"results in {args.out}/")
    return 0


def _preprocess_overrides(args: argparse.Namespace) -> dict:
    """The custom preprocessing flags that were given, as :class:`ebr_onnx.app.preprocess.Preprocess` fields."""
    out: dict = {}
    for key in ("size", "crop"):
        value = getattr(args, key)
        if value is not None:
            if len(value) > 2:
                raise EbrError(f"--{key} takes one or two numbers, got {len(value)}")
            out[key] = value[0] if len(value) == 1 else tuple(value)
    for key in ("mean", "std"):
        if getattr(args, key) is not None:
            out[key] = tuple(getattr(args, key))
    if args.channel_order is not None:
        out["channel_order"] = args.channel_order
    if args.scale is not None:
        out["scale"] = args.scale
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except EbrError as exc:
        print(f"ebr-onnx: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("ebr-onnx: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
