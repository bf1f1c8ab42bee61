"""Train the bundled 3-D CNN action classifier on :mod:`ebr_onnx.app.synthetic` clips and export it to ONNX.

    python models/train_action_c3d.py --seed 0 --out models/action_c3d.onnx

A small C3D: 4 × (Conv 3×3×3 + ReLU) with max pooling between them (the first convolution strided 2 in space, the
pools 2×2×2), global average pooling over (T, H, W) and a linear classifier. It is trained with cross-entropy on
freshly generated 16-frame clips of the same videos, classes and preprocessing as the bundled CNN-LSTM
(``models/action_lstm.onnx``), so ``ebr-onnx ground`` can be tried on a 3-D CNN with no download. The ONNX graph
takes ``clip`` (N, 3, T, 64, 64), N and T dynamic, and outputs ``probs`` (N, K); the metadata keys are the
CNN-LSTM's (labels, preprocess, frames, map_layer, classifier, test_accuracy).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn
from train_action_model import BATCH, FRAMES, PREPROCESS, SIZE, UNIT, OnnxParts, fit, max_difference, run

from ebr_onnx.app.synthetic import CLASS_NAMES, make_dataset

CHANNELS = (8, 16, 32, 48)
#: Per convolution: (stride, the max pooling after it or None), both (T, H, W).
LAYOUT = (((1, 2, 2), None), ((1, 1, 1), (2, 2, 2)), ((1, 1, 1), (2, 2, 2)), ((1, 1, 1), None))
# SIZE, FRAMES, BATCH, the preprocessing and the map layer (relu3) are the CNN-LSTM's (train_action_model.py).
MEAN = torch.tensor(PREPROCESS["mean"]).view(1, 3, 1, 1, 1)
STD = torch.tensor(PREPROCESS["std"]).view(1, 3, 1, 1, 1)


class ActionC3D(nn.Module):
    """3-D convolutions → global average pooling over (T, H, W) → classifier."""

    def __init__(self) -> None:
        super().__init__()
        c_in = 3
        self.convs = nn.ModuleList()
        for c_out, (stride, _) in zip(CHANNELS, LAYOUT):
            conv = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1)
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            self.convs.append(conv)
            c_in = c_out
        self.classifier = nn.Linear(c_in, len(CLASS_NAMES))

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        """clip (N, 3, T, S, S) preprocessed → logits (N, K)."""
        h = clip
        for conv, (_, pool) in zip(self.convs, LAYOUT):
            h = torch.relu(conv(h))
            if pool is not None:
                h = nn.functional.max_pool3d(h, pool)
        return self.classifier(h.mean(dim=(2, 3, 4)))


def to_input(frames: np.ndarray) -> torch.Tensor:
    """uint8 clips (N, T, H, W, 3) → preprocessed float (N, 3, T, H, W)."""
    x = torch.from_numpy(UNIT[frames]).permute(0, 4, 1, 2, 3)
    return (x * PREPROCESS["scale"] - MEAN) / STD


def accuracy(model: ActionC3D, frames: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        preds = np.concatenate([model(to_input(frames[k : k + 32])).argmax(1).numpy()
                                for k in range(0, len(frames), 32)])
    return float((preds == labels).mean())


def train(model: ActionC3D, steps: int, seed: int, lr: float) -> float:
    """Adam (one-cycle schedule), cross-entropy, a fresh batch of 16-frame clips per step; clutter ramps up from none
    to full between 5 % and 30 % of the steps (the CNN-LSTM's curriculum). Returns the accuracy over the last 50
    batches."""
    rng = np.random.default_rng([seed, 0])
    loss_fn = nn.CrossEntropyLoss()

    def batch_step(step: int, clutter: float) -> tuple[torch.Tensor, float]:
        frames, labels, _ = make_dataset(BATCH, rng, FRAMES, SIZE, clutter)
        logits = model(to_input(frames))
        return loss_fn(logits, torch.from_numpy(labels)), (logits.argmax(1).numpy() == labels).mean()

    return fit(model, steps, lr, 0.1, 50, "acc", batch_step)


def export(model: ActionC3D, test_accuracy: float, path: Path) -> onnx.ModelProto:
    """Build the ONNX graph by hand, with Caffe-like tensor names (conv1, relu1, pool1, …, gap, classifier)."""
    parts = OnnxParts()
    const, node = parts.const, parts.node
    x = "clip"
    for k, (conv, (stride, pool)) in enumerate(zip(model.convs, LAYOUT), 1):
        x = node("Conv", [x, const(f"conv{k}_W", conv.weight), const(f"conv{k}_B", conv.bias)], f"conv{k}",
                 kernel_shape=[3, 3, 3], pads=[1] * 6, strides=list(stride))
        x = node("Relu", [x], f"relu{k}")
        if pool is not None:
            x = node("MaxPool", [x], f"pool{k}", kernel_shape=list(pool), strides=list(pool))
    x = node("GlobalAveragePool", [x], "gap")
    x = node("Flatten", [x], "flatten", axis=1)
    x = node("Gemm", [x, const("classifier_W", model.classifier.weight), const("classifier_B", model.classifier.bias)],
             "classifier", transB=1)
    node("Softmax", [x], "probs", axis=1)
    clip = helper.make_tensor_value_info("clip", TensorProto.FLOAT, ["N", 3, "T", SIZE, SIZE])
    probs = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", len(CLASS_NAMES)])
    return parts.save("action_c3d", [clip], [probs], test_accuracy, path)


def check_export(model: ActionC3D, path: Path, frames: np.ndarray) -> float:
    """Largest |onnxruntime probs − PyTorch softmax| at T = 16 and T = 24; raises above 1e-5."""
    return max_difference(model, path, [to_input(frames[None, :t]) for t in (16, 24)],
                          lambda x: {"clip": x.numpy()}, dim=1)


def main() -> None:
    run(__doc__, Path(__file__).with_name("action_c3d.onnx"), 400, 3e-3, ActionC3D, train, accuracy, export,
        check_export, ("clips_seen", BATCH))


if __name__ == "__main__":
    main()
