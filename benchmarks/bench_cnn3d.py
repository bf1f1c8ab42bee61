"""Benchmark: EB / cEB on an R(2+1)D-18 (random weights, one clip of 16 frames of 112×112) against onnxruntime's
forward, the floor of EB (the forward plus EB's two convolutions per layer, run alone) and PyTorch's forward +
input-gradient backward.

Prints one table; every row runs in its own subprocess, so its peak memory (max RSS) is its own. Ratios are computed
against onnxruntime's plain forward measured in the same run. On a machine shared with other jobs rows measured
minutes apart see different loads: one more child times every row in turn, ``--rounds`` rounds, best of each (the
``in turn`` column), which is the ratio to trust there.

    python benchmarks/bench_cnn3d.py [--clips 1] [--frames 16] [--repeats 2] [--rounds 3] [--threads 2]

The network is torchvision's ``r2plus1d_18`` written out here (torchvision is not a dependency): a (2+1)-D stem
(1×7×7 then 3×1×1 convolutions), four stages of two residual blocks of (2+1)-D convolutions (1×3×3 then 3×1×1, with
torchvision's mid-plane counts; stages 2–4 strided by 2 in time and space, with 1×1×1 projections), global average
pooling and a 400-way classifier. Exported in eval mode with the legacy exporter (BatchNorm folded into the
convolutions). ``layer2`` — the middle of the network — is the output of the second stage. Needs the ``dev`` extra
(torch==2.13.0).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))

from common import build_in_child, child, measure_case, measure_rows, parser, print_rows, shared_case  # noqa: E402

MIDDLE = "layer2"
CLASSES = 400


def r2plus1d_18():
    """torchvision's ``r2plus1d_18`` architecture, without torchvision."""
    import torch.nn as nn

    def conv2plus1d(c_in: int, c_out: int, mid: int, stride: int = 1) -> nn.Sequential:
        return nn.Sequential(
            nn.Conv3d(c_in, mid, (1, 3, 3), stride=(1, stride, stride), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(mid), nn.ReLU(inplace=True),
            nn.Conv3d(mid, c_out, (3, 1, 1), stride=(stride, 1, 1), padding=(1, 0, 0), bias=False))

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            mid = (c_in * c_out * 27) // (c_in * 9 + 3 * c_out)
            self.conv1 = nn.Sequential(conv2plus1d(c_in, c_out, mid, stride), nn.BatchNorm3d(c_out), nn.ReLU(True))
            self.conv2 = nn.Sequential(conv2plus1d(c_out, c_out, mid), nn.BatchNorm3d(c_out))
            self.down = None if stride == 1 and c_in == c_out else nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            skip = x if self.down is None else self.down(x)
            return self.relu(self.conv2(self.conv1(x)) + skip)

    class R2Plus1D18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(
                nn.Conv3d(3, 45, (1, 7, 7), stride=(1, 2, 2), padding=(0, 3, 3), bias=False), nn.BatchNorm3d(45),
                nn.ReLU(inplace=True),
                nn.Conv3d(45, 64, (3, 1, 1), padding=(1, 0, 0), bias=False), nn.BatchNorm3d(64), nn.ReLU(inplace=True))
            stages, c_in = [], 64
            for c_out, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                stages.append(nn.Sequential(Block(c_in, c_out, stride), Block(c_out, c_out, 1)))
                c_in = c_out
            self.layer1, self.layer2, self.layer3, self.layer4 = stages
            self.pool = nn.AdaptiveAvgPool3d(1)
            self.fc = nn.Linear(512, CLASSES)

        def forward(self, x):
            h = self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))
            return self.fc(self.pool(h).flatten(1))

    return R2Plus1D18()


def build(path: Path, frames: int) -> None:
    """Export the network with seeded random weights (BatchNorm statistics included) and name the second stage's
    output ``layer2``."""
    import onnx
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = r2plus1d_18()
    for m in model.modules():
        if isinstance(m, nn.Conv3d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm3d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.1)
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    model.eval()
    torch.onnx.export(model, torch.randn(1, 3, frames, 112, 112), str(path), dynamo=False, input_names=["clip"],
                      output_names=["logits"], dynamic_axes={"clip": {0: "N"}, "logits": {0: "N"}})
    torch.save(model.state_dict(), str(path.with_suffix(".pt")))
    proto = onnx.load(str(path))
    last = [n for n in proto.graph.node if n.op_type == "Relu"][2 + 4 * 2 * 2 - 1]  # stem 2, 4 per block, 2 stages
    old = last.output[0]
    for node in proto.graph.node:
        node.output[:] = [MIDDLE if o == old else o for o in node.output]
        node.input[:] = [MIDDLE if i == old else i for i in node.input]
    onnx.save(proto, str(path))


def make_case(case: str, model: str, clips: int, frames: int, threads: int) -> Callable[[], object]:
    """The function one row times."""
    import numpy as np

    x = np.random.default_rng(1).random((clips, 3, frames, 112, 112), dtype=np.float32)
    fn = shared_case(case, model, {"clip": x}, threads)
    if fn is not None:
        return fn
    if case.startswith(("eb", "ceb")):
        from ebr_onnx import Explainer

        method, layer = case.split(":")
        ex = Explainer(model, threads=threads, batch_size=clips)
        return lambda: ex.explain(x, target=7, method=method, layer=None if layer == "input" else layer)
    if case == "torch":
        import torch

        torch.set_num_threads(threads)
        net = r2plus1d_18()
        net.load_state_dict(torch.load(str(Path(model).with_suffix(".pt"))))
        net.eval()

        def fn():
            xt = torch.from_numpy(x).requires_grad_(True)
            net(xt)[:, 7].sum().backward()

        return fn
    raise SystemExit(f"unknown case {case}")


CASES = [
    ("ort", "onnxruntime forward"),
    ("floor", "EB's 2 convolutions per layer alone"),
    (f"eb:{MIDDLE}", f"eb to {MIDDLE} (forward incl.)"),
    (f"ceb:{MIDDLE}", f"ceb to {MIDDLE} (forward incl.)"),
    ("eb:input", "eb to the input (forward incl.)"),
    ("ceb:input", "ceb to the input (forward incl.)"),
    ("torch", "PyTorch forward + input-gradient backward"),
]


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--clips", type=int, default=1)
    options.add_argument("--frames", type=int, default=16)
    options.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved timing (default: 3)")
    args = options.parse_args()

    def make(case: str) -> Callable[[], object]:
        return make_case(case, args.model, args.clips, args.frames, args.threads)

    if child(args, lambda path: build(Path(path), args.frames),
             lambda: measure_case(args.case, make, [c for c, _ in CASES], args.repeats)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "r2plus1d_18.onnx"
        build_in_child(__file__, str(model), ["--frames", str(args.frames)])
        common = ["--model", str(model), "--clips", str(args.clips), "--frames", str(args.frames), "--threads",
                  str(args.threads)]
        rows, turns = measure_rows(__file__, CASES, common, args.repeats, args.rounds)
    print(f"R(2+1)D-18, {args.clips} clip(s) of {args.frames} frames 112x112, {args.threads} threads; each row in "
          f"its own process, best of {args.repeats}; last column: all rows timed in turn in one process, best of "
          f"{args.rounds} rounds")
    print_rows(rows, turns, args.clips, "clip")

if __name__ == "__main__":
    main()
