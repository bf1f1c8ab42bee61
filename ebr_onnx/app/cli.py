"""The ``ebr-onnx`` command: ``demo``, ``ground``, ``audit``, ``caption``, ``inspect``, ``convert caffe``.

User errors print one line (``ebr-onnx: error: …``) and exit with status 2; results already written are kept.
"""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata
from pathlib import Path
from typing import Sequence

import numpy as np

from converters.caffe.cli import run as convert_caffe
from converters.caffe.errors import CaffeConversionError

from ..core.errors import EbrError
from ..methods import METHODS
from .audit import AuditRequest, audit
from .caption import CaptionOptions, caption_video
from .demo import run_demo
from .inspect import describe, format_report
from .pipeline import GroundOptions, ground
from .video_audit import DEFAULT_STEPS

EXIT_USER_ERROR = 2


def _clip_options(p: argparse.ArgumentParser) -> None:
    """The options ``ground`` and ``audit`` share: clips and sampling, preprocessing, labels, where the method
    starts, the recurrent rules and the time step."""
    clip = p.add_argument_group("clips and sampling")
    clip.add_argument("--frames", type=int, help="clip length T (default: the model's)")
    clip.add_argument("--stride", type=int, help="frames between clip starts (default: T)")
    clip.add_argument("--every", type=int, default=1, help="keep every k-th frame (default: 1)")
    clip.add_argument("--fps", type=float, help="resample the video(s) to this frame rate")
    clip.add_argument("--source-fps", type=float, metavar="R",
                      help="the frame rate of frame folders and arrays (files: when the container has none)")
    p.add_argument("--preset", help="preprocessing preset: caffe-ucf101, imagenet, synthetic (default: the model's)")
    custom = p.add_argument_group("custom preprocessing (overrides the preset's fields)")
    custom.add_argument("--size", type=int, nargs="+", metavar="N", help="resize: H W, or the shorter side")
    custom.add_argument("--crop", type=int, nargs="+", metavar="N", help="centre crop: side, or H W")
    custom.add_argument("--mean", type=float, nargs=3, help="per-channel mean, in --channel-order and scaled range")
    custom.add_argument("--std", type=float, nargs=3, help="per-channel standard deviation")
    custom.add_argument("--channel-order", choices=("RGB", "BGR"), help="channel order the model expects")
    custom.add_argument("--scale", type=float, help="pixel range: value = pixel / 255 * scale (255 for 0–255)")
    p.add_argument("--labels", help="class names, one per line (default: the labels in the model's metadata)")
    where = p.add_argument_group("where the method starts (found in the graph unless given)")
    where.add_argument("--classifier", help="the node whose weights the contrastive dual (ceb, cebr) negates")
    where.add_argument("--boundary", help="recurrent methods: the per-frame RNN→CNN tensor where Eqs. 5–7 apply")
    where.add_argument("--time-axis", type=int, help="recurrent methods: the output's time axis")
    p.add_argument("--recurrent-rules", default="caffe", choices=("caffe", "excitation"),
                   help="caffe: the authors' release (default); excitation: the mass-conserving variant")
    p.add_argument("--time-step", type=int, default=-1, help="time step of the prior (default: -1, the last)")


def _ground_parser(sub) -> None:
    p = sub.add_parser("ground", help="spatiotemporal evidence for a class in a video",
                       description="Explain a class in every clip of a video; write maps, overlays, the evidence "
                                   "curve, localized segments and summary.json to --out.")
    p.add_argument("model", help="ONNX model")
    p.add_argument("video", help="video file (mp4/avi/webm), folder of frames, or .npy array (T,H,W,3) uint8")
    p.add_argument("--target", help="class name or index (default: the class with the highest mean probability "
                                    "over the clips at --time-step)")
    p.add_argument("--method", default="cebr", choices=METHODS, help="paper Table 1 (default: cebr)")
    p.add_argument("--layer", help="tensor or node name for the maps (default: the model's recorded map layer, "
                                   "else the input)")
    p.add_argument("--out", default="ebr-results", help="output folder (default: ebr-results)")
    _clip_options(p)
    pictures = p.add_argument_group("pictures")
    pictures.add_argument("--no-overlays", action="store_true", help="no pictures: maps and summaries only")
    pictures.add_argument("--no-gif", action="store_true", help="no overlay.gif per clip")
    pictures.add_argument("--mp4", action="store_true", help="also write overlay.mp4 per clip")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _audit_parser(sub) -> None:
    p = sub.add_parser("audit", help="a whole dataset on Dask: resumable results, the paper's metrics, a report",
                       description="Explain every video of a dataset on a Dask cluster; write results.parquet, "
                                   "maps/, metrics.json and report.html to --out. Re-running the same command "
                                   "audits only the videos not finished yet.")
    p.add_argument("model", help="ONNX model")
    p.add_argument("dataset", help="a CSV manifest (video[,label,start,end,boxes]), a THUMOS14 annotation folder "
                                   "(<Class>_test.txt files) or a folder of videos")
    p.add_argument("--out", required=True, help="results folder (created if missing; an existing audit there is "
                                                "resumed)")
    p.add_argument("--method", default="cebr", choices=METHODS, help="paper Table 1 (default: cebr)")
    p.add_argument("--layer", help="tensor or node name for the maps (default: the model's recorded map layer, "
                                   "else the input)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--workers", type=int, metavar="N",
                       help="worker processes of a local Dask cluster (default: one per core; 0: no Dask, this "
                            "process)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="an existing Dask cluster, e.g. tcp://host:8786 (its workers must see the videos)")
    p.add_argument("--videos", metavar="DIR", help="THUMOS14: the folder of the videos (default: videos/ beside or "
                                                   "inside the annotation folder)")
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS, metavar="K",
                   help=f"deletion/insertion steps per clip (4K-2 forward passes per clip; 0: none; default: "
                        f"{DEFAULT_STEPS})")
    p.add_argument("--retry-errors", action="store_true", help="audit again the videos that failed before")
    _clip_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _audit(args: argparse.Namespace) -> int:
    options = GroundOptions(
        method=args.method, layer=args.layer, frames=args.frames, stride=args.stride, every=args.every,
        fps=args.fps, source_fps=args.source_fps, preset=args.preset, recurrent_rules=args.recurrent_rules,
        time_step=args.time_step, time_axis=args.time_axis, boundary=args.boundary, classifier=args.classifier,
        labels=args.labels, quiet=True, pictures=False, preprocess_overrides=_preprocess_overrides(args),
    )
    request = AuditRequest(model=Path(args.model), dataset=Path(args.dataset), out=Path(args.out), options=options,
                           workers=args.workers, scheduler=args.scheduler,
                           videos=None if args.videos is None else Path(args.videos), steps=args.steps,
                           retry_errors=args.retry_errors, quiet=args.quiet)
    run = audit(request)
    m = run.metrics
    print(f"{run.audited} video(s) audited ({run.errors} failed), {run.skipped} already done, of {run.total}; "
          f"{run.seconds['total']:.1f} s")
    for video, message in list(m["errors"].items())[:3]:
        print(f"  failed: {video}: {message}")
    tpg, det = m["temporal_pointing_game"], m["detection"]["map"]
    if tpg["segments"]:
        print(f"temporal pointing game over {tpg['segments']} segments: evidence {tpg['evidence']:.3f}, "
              f"peak probability {tpg['peak_probability']:.3f}, random {tpg['random']:.3f}"
              + (f"; mAP@0.1 {det['0.1']:.3f}, @0.5 {det['0.5']:.3f}" if det else ""))
    print(f"results in {args.out}/ (results.parquet, maps/, metrics.json, report.html)")
    return 0


def _caption_parser(sub) -> None:
    p = sub.add_parser("caption", help="ground the words of a video's caption in space and time",
                       description="Decode (or take) a video's caption and ground each requested word with a "
                                   "recurrent method at its step in the caption; write per word the overlays, the "
                                   "evidence curve with the localized segment and summary.json, and one sheet of "
                                   "the caption with each word's best frame, to --out.")
    p.add_argument("model", help="ONNX captioner (teacher-forced with a words input, or with its own decoding Loop)")
    p.add_argument("video", help="video file (mp4/avi/webm), folder of frames, or .npy array (T,H,W,3) uint8")
    p.add_argument("--caption", help="the caption to ground, words separated by spaces (default: the model's own "
                                     "greedy caption; teacher-forced models only)")
    p.add_argument("--words", nargs="+", metavar="WORD",
                   help="the words to ground, each in the caption (default: every noun of the model's noun list "
                        "that the caption holds)")
    p.add_argument("--out", default="ebr-caption", help="output folder (default: ebr-caption)")
    p.add_argument("--method", default="cebr", choices=("ebr", "cebr", "gradr"), help="(default: cebr)")
    p.add_argument("--layer", help="tensor or node name for the maps (default: the model's recorded map layer, "
                                   "else the input)")
    p.add_argument("--recurrent-rules", default="caffe", choices=("caffe", "excitation"),
                   help="caffe: the authors' release (default); excitation: the mass-conserving variant")
    frames = p.add_argument_group("frames")
    frames.add_argument("--frames", type=int, help="frames sampled evenly over the video (default: the model's T; "
                                                   "all frames when it records none)")
    frames.add_argument("--every", type=int, default=1, help="keep every k-th frame first (default: 1)")
    frames.add_argument("--fps", type=float, help="resample the video to this frame rate first")
    frames.add_argument("--source-fps", type=float, metavar="R",
                        help="the frame rate of a folder of frames or an array (files: when the container has none)")
    p.add_argument("--preset", help="preprocessing preset: caffe-ucf101, imagenet, synthetic (default: the model's)")
    p.add_argument("--labels", help="the vocabulary, one word per line (default: the labels in the model's metadata)")
    pictures = p.add_argument_group("pictures")
    pictures.add_argument("--no-overlays", action="store_true", help="no pictures: maps and summaries only")
    pictures.add_argument("--no-gif", action="store_true", help="no overlay.gif per word")
    pictures.add_argument("--mp4", action="store_true", help="also write overlay.mp4 per word")


def _caption(args: argparse.Namespace) -> int:
    options = CaptionOptions(
        caption=args.caption, words=args.words, method=args.method, layer=args.layer, frames=args.frames,
        every=args.every, fps=args.fps, source_fps=args.source_fps, preset=args.preset,
        recurrent_rules=args.recurrent_rules, labels=args.labels, pictures=not args.no_overlays,
        animations=tuple(kind for kind, on in (("gif", not args.no_gif), ("mp4", args.mp4)) if on))
    summary = caption_video(args.model, _video(args.video), Path(args.out), options)
    print(f"caption ({'given' if summary['caption_given'] else 'decoded'}): {summary['caption']}")
    for w in summary["words"]:
        s, e = w["segment_frames"]
        print(f"  {w['word']!r} (step {w['step']}, p {w['probability']:.2f}): frames {s}–{e}, best frame "
              f"{w['best_frame']}; {w['seconds']:.2f} s")
    print(f"results in {args.out}/")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ebr-onnx", description="Excitation Backprop for RNNs on ONNX models")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="bundled model + generated two-action video → ./ebr-demo/")
    demo.add_argument("--out", default="ebr-demo", help="output folder (default: ebr-demo)")
    demo.add_argument("--seed", type=int, help="the generated video's seed (default: the rule in 'demo' docs: the "
                                               "first seed whose video the model classifies correctly)")
    demo.add_argument("--method", default="cebr", choices=("ebr", "cebr", "gradr"), help="(default: cebr)")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    _ground_parser(sub)
    _audit_parser(sub)
    _caption_parser(sub)
    inspect = sub.add_parser("inspect", help="what ebr_onnx finds in a model")
    inspect.add_argument("model", help="ONNX model")
    inspect.add_argument("--json", action="store_true", help="machine-readable output")
    inspect.add_argument("--input-shape", type=int, nargs="+", metavar="N",
                         help="the test run's input shape (default: the declared one, free dimensions filled)")
    convert = sub.add_parser("convert", help="convert a model to ONNX (caffe)", add_help=False)
    convert.add_argument("framework", choices=("caffe",), help="the source framework")
    convert.add_argument("args", nargs=argparse.REMAINDER, help="see: ebr-onnx convert caffe --help")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "convert":
        return convert_caffe(args.args)
    if args.command == "inspect":
        report = describe(args.model, args.input_shape)
        print(json.dumps(report, indent=2) if args.json else format_report(report))
        return 0
    if args.command == "demo":
        return run_demo(Path(args.out), seed=args.seed, method=args.method, quiet=args.quiet)
    if args.command == "audit":
        return _audit(args)
    if args.command == "caption":
        return _caption(args)
    target: str | int | None = args.target
    if target is not None and target.isdigit():
        target = int(target)
    animations = tuple(kind for kind, on in (("gif", not args.no_gif), ("mp4", args.mp4)) if on)
    options = GroundOptions(
        target=target, method=args.method, layer=args.layer, frames=args.frames, stride=args.stride,
        every=args.every, fps=args.fps, source_fps=args.source_fps, preset=args.preset,
        recurrent_rules=args.recurrent_rules, time_step=args.time_step, time_axis=args.time_axis,
        boundary=args.boundary, classifier=args.classifier, quiet=args.quiet, labels=args.labels,
        pictures=not args.no_overlays, animations=animations, preprocess_overrides=_preprocess_overrides(args),
    )
    summary = ground(args.model, _video(args.video), Path(args.out), options)
    print(report_lines(summary))
    print(f"results in {args.out}/")
    return 0


def report_lines(summary: dict) -> str:
    """The console report of a ground run: target, segment, evidence peak, clips and timings."""
    target = summary["target"]["label"] or summary["target"]["index"]
    s, e = summary["segment_frames"]
    seconds = summary["segment_seconds"]
    when = f" ({seconds[0]:.2f}–{seconds[1]:.2f} s)" if seconds else ""
    peak = summary["evidence_peak"]
    t = summary["seconds"]
    return (f"{target}: localized in frames {s}–{e}{when}, evidence peak at frame {peak['frame']}; "
            f"{len(summary['clips'])} clip(s)\n"
            f"time: explanation {t['explanation']:.2f} s, outputs {t['outputs']:.2f} s, total {t['total']:.2f} s")


def _video(path: str) -> str | np.ndarray:
    """A video path, or the array of a ``.npy`` file (never unpickled)."""
    if not path.endswith(".npy"):
        return path
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise EbrError(f"{path} is not a plain array ({str(exc).splitlines()[0]}); save frames as a uint8 "
                       "(T, H, W, 3) array with np.save(path, frames)") from None


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
    except (EbrError, CaffeConversionError) as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc))
    except KeyboardInterrupt:
        print("ebr-onnx: interrupted", file=sys.stderr)
        return 130


def _error(message: str) -> int:
    print(f"ebr-onnx: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USER_ERROR


def _version() -> str:
    try:
        return metadata.version("ebr_onnx")
    except metadata.PackageNotFoundError:
        return "(not installed)"


if __name__ == "__main__":
    sys.exit(main())
