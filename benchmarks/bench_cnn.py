"""Benchmark: EB / cEB on VGG-16 (random weights, 224×224) against onnxruntime's forward, PyTorch and torchray.

Prints one table; every row runs in its own subprocess, so its peak memory (max RSS) is its own. Ratios are computed
against onnxruntime's plain forward measured in the same run. On a machine shared with other jobs rows measured
minutes apart see different loads: one more child times every row in turn, ``--rounds`` rounds, best of each (the
``in turn`` column), which is the ratio to trust there.

    python benchmarks/bench_cnn.py [--images 8] [--repeats 2] [--rounds 3] [--threads 2]

Needs the ``dev`` extra (torch==2.13.0, onnxscript). The torchray row needs ``pip install --no-deps torchray``
(torchray is CC BY-NC: a benchmark oracle only, never a dependency).
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).parent))

from common import build_in_child, child, measure_case, measure_rows, parser, print_rows, shared_case  # noqa: E402

CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
CONV5_1 = "conv5_1"


def build_vgg16(path: Path) -> None:
    """Export a VGG-16 with seeded random weights, naming each conv's ReLU output ``convB_L`` as in Caffe."""
    import torch
    import torch.nn as nn

    torch.manual_seed(0)

    class VGG16(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layers, c = [], 3
            for v in CONFIG:
                if v == "M":
                    layers.append(nn.MaxPool2d(2, 2))
                else:
                    conv = nn.Conv2d(c, v, 3, padding=1)
                    nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                    layers += [conv, nn.ReLU()]
                    c = v
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(),
                                            nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 1000))

        def forward(self, x):
            return self.classifier(self.features(x))

    model = VGG16().eval()
    torch.onnx.export(model, torch.randn(1, 3, 224, 224), str(path), dynamo=False, input_names=["data"],
                      output_names=["logits"], dynamic_axes={"data": {0: "N"}, "logits": {0: "N"}})
    torch.save(model.state_dict(), str(path.with_suffix(".pt")))
    _rename_conv5_1(path)


def _rename_conv5_1(path: Path) -> None:
    """Name the output of the 11th ReLU (VGG's conv5_1 after its in-place ReLU) ``conv5_1``."""
    import onnx

    model = onnx.load(str(path))
    relus = [n for n in model.graph.node if n.op_type == "Relu"]
    old = relus[10].output[0]
    for node in model.graph.node:
        node.output[:] = [CONV5_1 if o == old else o for o in node.output]
        node.input[:] = [CONV5_1 if i == old else i for i in node.input]
    onnx.save(model, str(path))


def make_case(case: str, model: str, images: int, threads: int) -> Callable[[], object]:
    """The function one row times."""
    import numpy as np

    x = np.random.default_rng(1).random((images, 3, 224, 224), dtype=np.float32)
    fn = shared_case(case, model, {"data": x}, threads)
    if fn is not None:
        return fn
    if case.startswith(("eb", "ceb")):
        from ebr_onnx import Explainer

        method, layer = case.split(":")
        ex = Explainer(model, threads=threads, batch_size=images)
        return lambda: ex.explain(x, target=7, method=method, layer=None if layer == "input" else layer)
    if case.startswith("torch"):
        import torch

        torch.set_num_threads(threads)
        net = _torch_model(model)
        if case == "torch":
            def fn():
                xt = torch.from_numpy(x).requires_grad_(True)
                net(xt)[:, 7].sum().backward()

            return fn
        # torchray imports torchvision.models.resnet at import time: the tests' stub stands in for torchvision
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "stubs"))
        from torchray.attribution.excitation_backprop import excitation_backprop

        return lambda: excitation_backprop(net, torch.from_numpy(x), 7, saliency_layer="features.0")
    raise SystemExit(f"unknown case {case}")


def _torch_model(model: str):
    import torch
    import torch.nn as nn

    layers, c = [], 3
    for v in CONFIG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU()]
            c = v
    net = nn.Sequential()
    net.features = nn.Sequential(*layers)
    net.classifier = nn.Sequential(nn.Flatten(), nn.Linear(512 * 7 * 7, 4096), nn.ReLU(), nn.Linear(4096, 4096),
                                   nn.ReLU(), nn.Linear(4096, 1000))
    net.load_state_dict(torch.load(str(Path(model).with_suffix(".pt"))))
    return net.eval()


CASES = [
    ("ort", "onnxruntime forward"),
    ("floor", "EB's 2 convolutions per layer alone"),
    ("eb:conv5_1", "eb to conv5_1 (forward incl.)"),
    ("ceb:conv5_1", "ceb to conv5_1 (forward incl.)"),
    ("eb:input", "eb to the input (forward incl.)"),
    ("ceb:input", "ceb to the input (forward incl.)"),
    ("torch", "PyTorch forward + input-gradient backward"),
    ("torchray", "torchray excitation backprop"),
]


def main() -> None:
    options = parser(__doc__)
    options.add_argument("--images", type=int, default=8)
    options.add_argument("--rounds", type=int, default=3, help="rounds of the interleaved timing (default: 3)")
    args = options.parse_args()

    def make(case: str) -> Callable[[], object]:
        return make_case(case, args.model, args.images, args.threads)

    if child(args, lambda path: build_vgg16(Path(path)),
             lambda: measure_case(args.case, make, [c for c, _ in CASES if c != "torchray"], args.repeats)):
        return
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "vgg16.onnx"
        build_in_child(__file__, str(model))
        common = ["--model", str(model), "--images", str(args.images), "--threads", str(args.threads)]
        rows, turns = measure_rows(__file__, CASES, common, args.repeats, args.rounds)
    print(f"VGG-16, {args.images} images 224x224, {args.threads} threads; each row in its own process, best of "
          f"{args.repeats}; last column: all rows but torchray's timed in turn in one process, best of {args.rounds} "
          "rounds")
    print_rows(rows, turns, args.images, "frame")


if __name__ == "__main__":
    main()
