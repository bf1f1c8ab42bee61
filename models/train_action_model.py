"""Train the bundled CNN + ReLU-LSTM action classifier on :mod:`ebr_onnx.app.synthetic` clips and export it to ONNX.

    python models/train_action_model.py --seed 0 --out models/action_lstm.onnx

Per frame: 3 × (Conv 3×3 + ReLU + MaxPool 2×2) → Flatten → Gemm + ReLU (``features``, D = 64, ≥ 0). Then one
ReLU-LSTM layer (H = 64; gates sigmoid, cell input and output ReLU as in the paper's Caffe release) and a linear
classifier at every time step, trained with cross-entropy at every step on freshly generated 16-frame clips.
The ONNX graph takes ``frames`` (T, 3, 64, 64), T dynamic, holds the LSTM as one ``LSTM`` op and outputs
``probs`` (T, 1, K). Preprocessing (written to the model's metadata): ``x = (pixel / 255 - 0.5) / 0.25``, RGB.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ebr_onnx.app.synthetic import CLASS_NAMES, make_dataset

SIZE, FRAMES, BATCH = 64, 16, 16
CHANNELS = (8, 16, 32)
FEATURES, HIDDEN = 64, 64
# ebr_onnx.app.preprocess convention: x = (float32(pixel / 255) * scale - mean) / std, channels in channel_order.
PREPROCESS = {"name": "synthetic", "size": [SIZE, SIZE], "crop": None, "scale": 1.0, "mean": [0.5, 0.5, 0.5],
              "std": [0.25, 0.25, 0.25], "channel_order": "RGB"}
UNIT = (np.arange(256, dtype=np.float64) / 255.0).astype(np.float32)
MAP_LAYER = "relu3"
MEAN = torch.tensor(PREPROCESS["mean"]).view(3, 1, 1)
STD = torch.tensor(PREPROCESS["std"]).view(3, 1, 1)


class ReLULSTM(nn.Module):
    """One LSTM layer with ReLU for the cell input and output; gate rows in ONNX order i, o, f, c.

    i, o, f = σ(W x + R h + b), c̃ = relu(W x + R h + b), c_t = f ⊙ c_{t-1} + i ⊙ c̃, h_t = o ⊙ relu(c_t).
    """

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        bound = hidden**-0.5
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, inputs).uniform_(-bound, bound))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden).uniform_(-bound, bound))
        bias = torch.zeros(4 * hidden)
        bias[2 * hidden : 3 * hidden] = 1.0  # forget gate starts open
        self.bias = nn.Parameter(bias)
        self.hidden = hidden

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, B, D) → h (T, B, H), zero initial state."""
        h = x.new_zeros(x.shape[1], self.hidden)
        c = torch.zeros_like(h)
        gates_x = x @ self.weight_ih.T + self.bias
        out = []
        for gx in gates_x:
            i, o, f, g = (gx + h @ self.weight_hh.T).chunk(4, dim=1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g)
            h = torch.sigmoid(o) * torch.relu(c)
            out.append(h)
        return torch.stack(out)


class ActionModel(nn.Module):
    """Per-frame CNN → ReLU-LSTM → per-step classifier."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in CHANNELS:
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = c_out
        side = SIZE // 2 ** len(CHANNELS)
        self.cnn = nn.Sequential(*layers, nn.Flatten(), nn.Linear(c_in * side * side, FEATURES), nn.ReLU())
        self.lstm = ReLULSTM(FEATURES, HIDDEN)
        self.classifier = nn.Linear(HIDDEN, len(CLASS_NAMES))
        for m in self.cnn:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """frames (T, B, 3, S, S) preprocessed → logits (T, B, K)."""
        t, b = frames.shape[:2]
        features = self.cnn(frames.flatten(0, 1)).view(t, b, -1)
        return self.classifier(self.lstm(features))


def to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 clips (B, T, H, W, 3) → preprocessed float (T, B, 3, H, W)."""
    x = torch.from_numpy(UNIT[frames]).permute(1, 0, 4, 2, 3)
    return (x * PREPROCESS["scale"] - MEAN) / STD


def accuracy(model: ActionModel, frames: np.ndarray, labels: np.ndarray) -> float:
    """Last-step accuracy on uint8 clips (N, T, H, W, 3)."""
    with torch.no_grad():
        preds = np.concatenate([model(to_input(frames[k : k + 64]))[-1].argmax(1).numpy()
                                for k in range(0, len(frames), 64)])
    return float((preds == labels).mean())


def train(model: ActionModel, steps: int, seed: int, lr: float) -> float:
    """Adam (one-cycle schedule), cross-entropy at every time step, a fresh batch of clips per step: 16 clips of
    ``FRAMES`` frames at odd steps, 8 clips of twice that at even steps (the same number of frames), so that the
    predictions stay stable on clips longer than ``FRAMES``. Returns the last-step accuracy over the last 100 batches.

    Curriculum: the first 5 % of steps see clips without clutter; clutter then ramps up to full by 30 % of the steps.
    """
    rng = np.random.default_rng([seed, 0])
    loss_fn = nn.CrossEntropyLoss()

    def batch_step(step: int, clutter: float) -> tuple[torch.Tensor, float]:
        length, batch = (FRAMES, BATCH) if step % 2 else (2 * FRAMES, BATCH // 2)  # longer clips: stable past T
        frames, labels, _ = make_dataset(batch, rng, length, SIZE, clutter)
        logits = model(to_input(frames))
        target = torch.from_numpy(labels).repeat(length)
        return loss_fn(logits.flatten(0, 1), target), (logits[-1].argmax(1).numpy() == labels).mean()

    return fit(model, steps, lr, 0.05, 100, "last-step acc", batch_step)


def fit(model: nn.Module, steps: int, lr: float, pct_start: float, window: int, what: str,
        batch_step: Callable[[int, float], tuple[torch.Tensor, float]]) -> float:
    """The training loop of the bundled action models: Adam with a one-cycle schedule (warm-up ``pct_start``), the
    gradient norm clipped to 1; ``batch_step(step, clutter)`` returns the loss and the accuracy (``what``) of a fresh
    batch. Curriculum: clean clips first, clutter ramping up from none to full between 5 % and 30 % of the steps.
    Prints progress every ``window`` steps; returns the accuracy over the last ``window`` batches."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=pct_start)
    start, running = time.time(), []
    for step in range(1, steps + 1):
        clutter = min(1.0, max(0.0, (step / steps - 0.05) / 0.25))  # curriculum: clean clips first, full by 30 %
        loss, acc = batch_step(step, clutter)
        opt.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        running.append(acc)
        if step % window == 0:
            print(f"step {step}/{steps}  loss {loss.item():.3f}  {what} (last {window} batches) "
                  f"{np.mean(running[-window:]):.3f}  clutter {clutter:.2f}  {time.time() - start:.0f} s", flush=True)
    return float(np.mean(running[-window:]))


class OnnxParts:
    """The initializers and nodes of an ONNX graph built by hand, each node named after its one output."""

    def __init__(self) -> None:
        self.init: list[TensorProto] = []
        self.nodes: list[onnx.NodeProto] = []

    def const(self, name: str, value: torch.Tensor | np.ndarray) -> str:
        array = value.detach().numpy() if isinstance(value, torch.Tensor) else value
        self.init.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def save(self, name: str, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
             test_accuracy: float, path: Path, boundary: str | None = None) -> onnx.ModelProto:
        """The model (opset 17, IR 8) with the bundled models' metadata (labels, preprocessing, frames, the boundary
        when given, classifier, map layer, test accuracy), checked and saved to ``path``."""
        graph = helper.make_graph(self.nodes, name, inputs, outputs, self.init)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="ebr_onnx")
        proto.ir_version = 8
        props = {
            "ebr_onnx.labels": json.dumps(CLASS_NAMES),
            "ebr_onnx.input_size": json.dumps([SIZE, SIZE]),
            "ebr_onnx.preprocess": json.dumps(PREPROCESS),
            "ebr_onnx.frames": json.dumps(FRAMES),
        }
        if boundary is not None:
            props["ebr_onnx.boundary"] = boundary
        props.update({
            "ebr_onnx.classifier": "classifier",
            "ebr_onnx.map_layer": MAP_LAYER,
            "ebr_onnx.test_accuracy": json.dumps(round(test_accuracy, 4)),
        })
        helper.set_model_props(proto, props)
        onnx.checker.check_model(proto, full_check=True)
        onnx.save(proto, path)
        return proto


def export(model: ActionModel, test_accuracy: float, path: Path) -> onnx.ModelProto:
    """Build the ONNX graph by hand: CNN ops, one LSTM op, MatMul + Add classifier, Softmax."""
    parts = OnnxParts()
    const, node = parts.const, parts.node
    x = "frames"
    convs = [m for m in model.cnn if isinstance(m, nn.Conv2d)]
    for k, conv in enumerate(convs, 1):
        x = node("Conv", [x, const(f"conv{k}_W", conv.weight), const(f"conv{k}_B", conv.bias)], f"conv{k}",
                 kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        x = node("Relu", [x], f"relu{k}")
        x = node("MaxPool", [x], f"pool{k}", kernel_shape=[2, 2], strides=[2, 2])
    fc = model.cnn[-2]
    x = node("Flatten", [x], "flatten", axis=1)
    x = node("Gemm", [x, const("fc_W", fc.weight), const("fc_B", fc.bias)], "fc", transB=1)
    features = node("Relu", [x], "features")
    axis1 = const("axis1", np.array([1], dtype=np.int64))
    x = node("Unsqueeze", [features, axis1], "lstm_X")
    lstm = model.lstm
    bias = torch.cat([lstm.bias, torch.zeros_like(lstm.bias)])  # B = [Wb; Rb]
    x = node("LSTM", [x, const("lstm_W", lstm.weight_ih[None]), const("lstm_R", lstm.weight_hh[None]),
                      const("lstm_B", bias[None])], "lstm_Y",
             hidden_size=HIDDEN, activations=["Sigmoid", "Relu", "Relu"], direction="forward", layout=0)
    x = node("Squeeze", [x, axis1], "lstm_H")
    x = node("MatMul", [x, const("classifier_W", model.classifier.weight.T)], "classifier")
    x = node("Add", [x, const("classifier_B", model.classifier.bias)], "logits")
    node("Softmax", [x], "probs", axis=2)

    frames = helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 3, SIZE, SIZE])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["T", 1, len(CLASS_NAMES)])
    return parts.save("action_lstm", [frames], [probs], test_accuracy, path, boundary=features)


def check_export(model: ActionModel, path: Path, frames: np.ndarray) -> float:
    """Largest |onnxruntime probs − PyTorch softmax| over T = 16 and T = 24 of one clip; raises above 1e-5."""
    return max_difference(model, path, [to_input(frames[None, :t]) for t in (16, 24)],
                          lambda x: {"frames": x[:, 0].numpy()}, dim=2)


def max_difference(model: nn.Module, path: Path, inputs: list[torch.Tensor],
                   feeds: Callable[[torch.Tensor], dict[str, np.ndarray]], dim: int) -> float:
    """Largest |onnxruntime ``probs`` − PyTorch softmax over ``dim``| over ``inputs`` (the model's input each,
    ``feeds`` makes the session's); raises above 1e-5."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = torch.softmax(model(x), dim=dim).numpy()
        got = sess.run(["probs"], feeds(x))[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    if worst > 1e-5:
        raise RuntimeError(f"onnxruntime differs from PyTorch by {worst:.2e} (> 1e-5)")
    return worst


def main() -> None:
    run(__doc__, Path(__file__).with_name("action_lstm.onnx"), 1000, 2e-3, ActionModel, train, accuracy, export,
        check_export, ("frames_seen", BATCH * FRAMES))


def run(doc: str, out: Path, steps: int, lr: float, make_model: Callable[[], nn.Module],
        train: Callable[[nn.Module, int, int, float], float], accuracy: Callable[..., float],
        export: Callable[..., onnx.ModelProto], check_export: Callable[..., float], seen: tuple[str, int]) -> None:
    """A training script's command line (``--seed``, ``--out``, ``--steps``, ``--lr``, ``--test-clips``; defaults
    ``out``, ``steps``, ``lr``): train, test on fresh clips, export, check the export, print a JSON summary
    (``seen``: its key for the training data seen and that data per step)."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=out)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--test-clips", type=int, default=800)
    args = parser.parse_args()

    torch.set_num_threads(2)
    torch.manual_seed(args.seed)
    model = make_model()
    start = time.time()
    train_acc = train(model, args.steps, args.seed, args.lr)
    train_time = time.time() - start
    model.eval()
    test_frames, test_labels, _ = make_dataset(args.test_clips, np.random.default_rng([args.seed, 1]))
    test_acc = accuracy(model, test_frames, test_labels)

    export(model, test_acc, args.out)
    args.out.with_suffix(".labels.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    worst = check_export(model, args.out, make_dataset(1, np.random.default_rng([args.seed, 2]), 24)[0][0])
    print(json.dumps({"train_accuracy": round(train_acc, 4), "test_accuracy": round(test_acc, 4),
                      "train_seconds": round(train_time, 1), "steps": args.steps,
                      seen[0]: args.steps * seen[1], "onnx_max_abs_diff": worst,
                      "model_bytes": args.out.stat().st_size}, indent=1))


if __name__ == "__main__":
    main()
