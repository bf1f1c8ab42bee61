"""Train the LRCN-style action model ``models/action_lrcn.onnx``: the bundled model's CNN + ReLU-LSTM, classified
at every time step, on single-action clips of random length up to 128 frames.

    python models/train_lrcn_model.py --seed 0 --out models/action_lrcn.onnx --checkpoint /tmp/lrcn.pt

The network, the preprocessing and the ONNX export are those of ``train_action_model.py`` (same tensor names, one
``LSTM`` op, metadata ``ebr_onnx.*``); what changes is the training, following the LRCN recipe the paper's release
uses (Donahue et al.; the release's ``fc8-final`` applied to each step's ``h_t``): cross-entropy of the classifier at
**every** step, on clips whose length is drawn at random up to ``--max-frames`` (128, the release's clip length).
As in the paper (UCF101's trimmed videos), every training clip holds **one** action: the two-action clips of
``make_concatenated`` (rand+GT, GT+rand, rand+GT+rand) are never trained on and serve only as test data.

Curricula: clutter as in ``train_action_model.py`` (clean clips for the first 5 % of steps, full clutter by 30 %);
length: the longest clip length grows linearly from 16 frames to ``--max-frames`` over the first half of the steps,
and each batch's length is drawn uniformly between 16 and that bound; the batch holds ``--frames-per-step`` frames
(fewer, longer clips later). ``--checkpoint`` saves model, optimizer and data-stream state every 50 steps and resumes
from it, so an interrupted run continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from train_action_model import SIZE, ActionModel, check_export, export, to_input

from ebr_onnx.app.synthetic import CLASS_NAMES, make_clip, make_dataset

MIN_FRAMES = 16
#: The clip lengths at which the fresh-clip accuracy is measured and stored in the model's metadata.
EVAL_LENGTHS = (16, 32, 64, 128)


def length_bound(step: int, steps: int, max_frames: int, start: int) -> int:
    """The longest clip length at ``step``: ``start`` → ``max_frames`` linearly over the first half of the steps."""
    return int(round(start + (max_frames - start) * min(1.0, step / (0.5 * steps))))


def load_onnx_weights(model: ActionModel, path: Path) -> None:
    """Copy the weights of a model exported by ``train_action_model.export`` (same tensor names) into ``model``."""
    w = {t.name: torch.from_numpy(onnx.numpy_helper.to_array(t).copy()) for t in onnx.load(path).graph.initializer}
    convs = [m for m in model.cnn if isinstance(m, nn.Conv2d)]
    fc = model.cnn[-2]
    with torch.no_grad():
        for k, conv in enumerate(convs, 1):
            conv.weight.copy_(w[f"conv{k}_W"])
            conv.bias.copy_(w[f"conv{k}_B"])
        fc.weight.copy_(w["fc_W"])
        fc.bias.copy_(w["fc_B"])
        hidden = model.lstm.hidden
        model.lstm.weight_ih.copy_(w["lstm_W"][0])
        model.lstm.weight_hh.copy_(w["lstm_R"][0])
        model.lstm.bias.copy_(w["lstm_B"][0, : 4 * hidden] + w["lstm_B"][0, 4 * hidden :])
        model.classifier.weight.copy_(w["classifier_W"].T)
        model.classifier.bias.copy_(w["classifier_B"])


def clutter_level(step: int, steps: int) -> float:
    """Clean clips for the first 5 % of the steps, full clutter by 30 % (``train_action_model.py``'s curriculum)."""
    return min(1.0, max(0.0, (step / steps - 0.05) / 0.25))


def make_batch(rng: np.random.Generator, batch: int, length: int, clutter: float) -> tuple[np.ndarray, np.ndarray]:
    """``batch`` clips of ``length`` frames, each of a class drawn at random: frames (B, T, H, W, 3), labels (B,).
    (``make_dataset`` cycles through the classes in order, so a batch of fewer than 8 clips, as the long clips here
    come in, would never hold the last classes.)"""
    labels = rng.integers(len(CLASS_NAMES), size=batch)
    clips = [make_clip(rng, int(label), length, SIZE, clutter) for label in labels]
    return np.stack([c.frames for c in clips]), labels


def per_step_accuracy(model: ActionModel, frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Accuracy at every step (T,) of uint8 clips (N, T, H, W, 3)."""
    hits = []
    with torch.no_grad():
        for k in range(0, len(frames), 16):
            preds = model(to_input(frames[k : k + 16])).argmax(2).numpy()  # (T, B)
            hits.append(preds == labels[k : k + 16][None])
    return np.concatenate(hits, axis=1).mean(axis=1)


def train(model: ActionModel, args: argparse.Namespace) -> list[float]:
    """Adam with a one-cycle schedule, cross-entropy at every step, gradient norm clipped at 1; resumes from
    ``args.checkpoint`` when it exists. Returns the running per-step training accuracies of the last 100 batches."""
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    rng = np.random.default_rng([args.seed, 0])
    first, running = 1, []
    if args.checkpoint and args.checkpoint.is_file():
        state = torch.load(args.checkpoint, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        rng.bit_generator.state = state["rng"]
        first, running = state["step"] + 1, state["running"]
        print(f"resumed from {args.checkpoint} at step {first}", flush=True)
    loss_fn = nn.CrossEntropyLoss()
    start = time.time()
    for step in range(first, args.steps + 1):
        bound = length_bound(step, args.steps, args.max_frames, args.start_frames)
        length = int(rng.integers(min(args.min_frames, bound), bound + 1))
        batch = max(2, args.frames_per_step // length)
        clutter = 1.0 if args.init else clutter_level(step, args.steps)
        frames, labels = make_batch(rng, batch, length, clutter)
        logits = model(to_input(frames))  # (T, B, K)
        loss = loss_fn(logits.flatten(0, 1), torch.from_numpy(labels).repeat(length))
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(float((logits.argmax(2).numpy() == labels[None]).mean()))
        running = running[-100:]
        if step % 50 == 0 or step == args.steps:
            print(f"step {step}/{args.steps}  T {length:3d} (≤ {bound})  batch {batch:2d}  loss {loss.item():.3f}  "
                  f"per-step acc (last 100 batches) {np.mean(running):.3f}  clutter {clutter:.2f}  "
                  f"{time.time() - start:.0f} s", flush=True)
            if args.checkpoint:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "rng": rng.bit_generator.state, "step": step, "running": running}, args.checkpoint)
    return running


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("action_lrcn.onnx"))
    parser.add_argument("--init", type=Path, default=None,
                        help="start from this model's weights (an ONNX file of train_action_model.py's structure)")
    parser.add_argument("--steps", type=int, default=1600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--start-frames", type=int, default=MIN_FRAMES, help="the length bound at step 0")
    parser.add_argument("--min-frames", type=int, default=MIN_FRAMES, help="the shortest clip length drawn")
    parser.add_argument("--max-frames", type=int, default=128)
    parser.add_argument("--frames-per-step", type=int, default=384)
    parser.add_argument("--test-clips", type=int, default=400, help="fresh clips per evaluated length")
    parser.add_argument("--checkpoint", type=Path, default=None, help="save/resume training state here")
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model = ActionModel()
    if args.init:
        load_onnx_weights(model, args.init)
    start = time.time()
    running = train(model, args)
    train_time = time.time() - start
    model.eval()
    accuracy = {}
    for length in EVAL_LENGTHS:
        frames, labels, _ = make_dataset(args.test_clips, np.random.default_rng([args.seed, 1, length]), length)
        steps = per_step_accuracy(model, frames, labels)
        accuracy[length] = {"last": round(float(steps[-1]), 4),
                            "mean_from_16": round(float(steps[16:].mean()), 4) if length > 16 else None}
        print(f"T = {length}: last-step accuracy {steps[-1]:.3f}" +
              (f", mean over steps 16–{length - 1} {steps[16:].mean():.3f}" if length > 16 else ""), flush=True)

    export(model, accuracy[16]["last"], args.out)
    proto = onnx.load(args.out)
    proto.graph.name = "action_lrcn"
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        "ebr_onnx.per_step_accuracy": json.dumps(accuracy)})
    onnx.checker.check_model(proto, full_check=True)
    onnx.save(proto, args.out)
    args.out.with_suffix(".labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    worst = check_export(model, args.out, make_dataset(1, np.random.default_rng([args.seed, 2]), 24)[0][0])
    print(json.dumps({"train_per_step_accuracy": round(float(np.mean(running)), 4), "accuracy": accuracy,
                      "train_seconds": round(train_time, 1), "steps": args.steps,
                      "onnx_max_abs_diff": worst, "model_bytes": args.out.stat().st_size}, indent=1))


if __name__ == "__main__":
    main()
