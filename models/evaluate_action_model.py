"""Measure the bundled action models under onnxruntime on fresh generated clips and draw how their prediction
follows a change of action (``models/README.md``'s tables and ``docs/lrcn_probability.png``).

    python models/evaluate_action_model.py [--clips 320] [--quick] [--plot docs/lrcn_probability.png]

Per model and clip length T (16, 32, 64, 128): the accuracy at the last step, the mean accuracy over steps 16 to
T − 1 (0-based: from the 17th frame on) and the accuracy at steps 1, 4, 8, 16, 32, 64, 128 (1-based), on single-action
clips (seed stream ``[5, T, i]``, disjoint from the training streams ``[seed, 0]`` and the scripts' test streams).
Then the probability of the true (GT) class and of the first action's class over time on ``rand+GT`` clips of 16
and 128 frames (the action changes at the midpoint): mean ± std over the clips, both models.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ebr_onnx.app.preprocess import preprocess
from ebr_onnx.app.synthetic import make_clip, make_concatenated

HERE = Path(__file__).resolve().parent
MODELS = {"action_lrcn.onnx (LRCN-style)": HERE / "action_lrcn.onnx",
          "action_lstm.onnx (old)": HERE / "action_lstm.onnx"}
LENGTHS = (16, 32, 64, 128)
STEPS = (1, 4, 8, 16, 32, 64, 128)


class Model:
    """An onnxruntime session on one bundled model and its recorded preprocessing."""

    def __init__(self, path: Path) -> None:
        proto = onnx.load(path)
        meta = {p.key: p.value for p in proto.metadata_props}
        if json.loads(meta["ebr_onnx.preprocess"])["name"] != "synthetic":
            raise ValueError(f"{path} does not record the 'synthetic' preprocessing")
        self.session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])

    def probs(self, frames: np.ndarray) -> np.ndarray:
        """uint8 (T, H, W, 3) → class probabilities at every step (T, K)."""
        x, _ = preprocess(frames, "synthetic")
        return self.session.run(None, {"frames": x})[0][:, 0]


def per_step(model: Model, length: int, clips: int) -> np.ndarray:
    """Accuracy at every step (T,) over ``clips`` fresh single-action clips of ``length`` frames."""
    hits = np.zeros(length)
    for i in range(clips):
        clip = make_clip(np.random.default_rng([5, length, i]), label=i % 8, frames=length)
        hits += model.probs(clip.frames).argmax(1) == clip.label
    return hits / clips


def switch_curves(model: Model, frames: int, clips: int) -> tuple[np.ndarray, np.ndarray]:
    """p(GT class) and p(first action's class) at every step of ``clips`` rand+GT clips: two (clips, T) arrays."""
    gt, rand = [], []
    for i in range(clips):
        clip = make_concatenated(np.random.default_rng([6, frames, i]), "rand+GT", frames=frames)
        p = model.probs(clip.frames)
        gt.append(p[:, clip.gt_class])
        rand.append(p[:, int(clip.labels[0])])
    return np.array(gt), np.array(rand)


def plot(curves: dict[str, dict[int, tuple[np.ndarray, np.ndarray]]], out: Path) -> None:
    """One clip (the first 128-frame rand+GT clip the LRCN-style model gets right at the last step, as the demo
    chooses its video), then the mean over the clips with the LRCN-style model's interquartile range, at 16 and 128
    frames."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = sorted(next(iter(curves.values())))
    fig, axes = plt.subplots(1, 1 + len(lengths), figsize=(5.0 * (1 + len(lengths)), 3.5))
    colours = {"GT": "tab:red", "rand": "tab:blue"}
    gt, rand = next(iter(curves.values()))[max(lengths)]
    right = np.flatnonzero(gt[:, -1] > rand[:, -1])
    pick = int(right[0]) if len(right) else 0
    for k, frames in enumerate([max(lengths)] + lengths):
        ax, example = axes[k], k == 0
        for (name, by_length), style in zip(curves.items(), ("-", "--")):
            gt, rand = by_length[frames]
            t = np.arange(1, frames + 1)
            for values, what in ((gt, "GT"), (rand, "rand")):
                line = values[pick] if example else values.mean(0)
                label = f"p({what}), {name.split(' ')[0]}"
                ax.plot(t, line, style, color=colours[what], lw=1.2, label=label)
                if style == "-" and not example:
                    lo, hi = np.percentile(values, [25, 75], axis=0)
                    ax.fill_between(t, lo, hi, color=colours[what], alpha=0.15, lw=0)
        ax.axvline(frames / 2 + 0.5, color="gray", ls=":", lw=1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("frame")
        ax.set_ylabel("probability")
        clips = len(next(iter(curves.values()))[frames][0])
        ax.set_title(f"one rand+GT clip, {frames} frames (#{pick}: the first the LRCN-style\nmodel gets right at the "
                     "last step)" if example else
                     f"rand+GT, {frames} frames: mean of {clips} clips\n(band: LRCN-style's 25–75 %)", fontsize=9)
    axes[0].legend(fontsize=7, loc="center left")
    fig.suptitle("Probability of the second action (GT, red) and of the first (rand, blue); solid: action_lrcn.onnx, "
                 "dashed: action_lstm.onnx; the action changes at the dotted line", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=320, help="clips per length (and per rand+GT curve / 2)")
    parser.add_argument("--quick", action="store_true", help="4 clips per length, T ≤ 32, no picture")
    parser.add_argument("--plot", type=Path, default=HERE.parent / "docs" / "lrcn_probability.png")
    args = parser.parse_args(argv)
    clips = 4 if args.quick else args.clips
    lengths = LENGTHS[:2] if args.quick else LENGTHS
    models = {name: Model(path) for name, path in MODELS.items()}
    print(f"Accuracy (%) on fresh single-action clips, {clips} per length, onnxruntime")
    print("| model | T | last step | mean over steps 16 to T−1 | " +
          " | ".join(f"step {s}" for s in STEPS) + " |\n|" + "---|" * (len(STEPS) + 4))
    for name, model in models.items():
        for length in lengths:
            acc = per_step(model, length, clips)
            mean = f"{100 * acc[16:].mean():.1f}" if length > 16 else "–"
            at = [f"{100 * acc[s - 1]:.1f}" if s <= length else "" for s in STEPS]
            print(f"| {name} | {length} | {100 * acc[-1]:.1f} | {mean} | " + " | ".join(at) + " |")
    if args.quick:
        return
    curves = {name: {frames: switch_curves(model, frames, clips // 2) for frames in (16, 128)}
              for name, model in models.items()}
    print("\nrand+GT: mean p(GT class) at the midpoint and the last step; mean p(first action) at the midpoint")
    for name, by_length in curves.items():
        for frames, (gt, rand) in by_length.items():
            mid = frames // 2 - 1
            print(f"  {name}, {frames} frames: p(GT) {gt[:, mid].mean():.2f} → {gt[:, -1].mean():.2f} "
                  f"(last step correct in {100 * np.mean(gt[:, -1] > rand[:, -1]):.0f} % against the first action); "
                  f"p(rand) {rand[:, mid].mean():.2f} → {rand[:, -1].mean():.2f}")
    plot(curves, args.plot)
    print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
