"""One PyTorch model (per-frame CNN → LSTM or GRU → Linear at every step) exported fused (``nn.LSTM``/``nn.GRU`` → ONNX
``LSTM``/``GRU``) and unrolled (the same weights in a Python loop of steps) gives the same maps: the gradient for the
tanh cells, and both recurrent rule sets of EB-R / cEB-R for the ReLU cells (the fused op's activations set to
Sigmoid, Relu(, Relu))."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from cell_graphs import walk_to
from onnx import helper

from ebr_onnx import Explainer
from ebr_onnx.passes.cells import find_cells

torch = pytest.importorskip("torch")
nn = torch.nn

STEPS, HIDDEN, CLASSES = 4, 6, 5


class FrameCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 8)

    def forward(self, x):
        return torch.relu(self.fc(torch.flatten(torch.max_pool2d(torch.relu(self.conv(x)), 2), 1)))


class Fused(nn.Module):
    def __init__(self, cnn: FrameCNN, rnn: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.cnn, self.rnn, self.head = cnn, rnn, head

    def forward(self, frames):
        y, _ = self.rnn(self.cnn(frames).unsqueeze(1))
        return self.head(y)


class Unrolled(nn.Module):
    """The LSTM of ``lstm`` as a loop of steps (PyTorch gate order i, f, g, o), with tanh or ReLU activations."""

    def __init__(self, cnn: FrameCNN, lstm: nn.LSTM, head: nn.Linear, act) -> None:
        super().__init__()
        self.cnn, self.lstm, self.head, self.act = cnn, lstm, head, act

    def forward(self, frames):
        x = self.cnn(frames).unsqueeze(1)
        h = c = torch.zeros(1, HIDDEN)
        hs = []
        lin = nn.functional.linear
        for t in range(x.shape[0]):
            a = lin(x[t], self.lstm.weight_ih_l0, self.lstm.bias_ih_l0) + \
                lin(h, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0)
            i, f, g, o = a.chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * self.act(g)
            h = torch.sigmoid(o) * self.act(c)
            hs.append(h)
        return self.head(torch.stack(hs))


class UnrolledGru(nn.Module):
    """The GRU of ``gru`` as a loop of steps in ``GRUCell``'s form (gate order r, z, n; reset after R_n h + b)."""

    def __init__(self, cnn: FrameCNN, gru: nn.GRU, head: nn.Linear, act) -> None:
        super().__init__()
        self.cnn, self.gru, self.head, self.act = cnn, gru, head, act

    def forward(self, frames):
        x = self.cnn(frames).unsqueeze(1)
        h = torch.zeros(1, HIDDEN)
        hs = []
        lin = nn.functional.linear
        for t in range(x.shape[0]):
            x_r, x_z, x_n = lin(x[t], self.gru.weight_ih_l0, self.gru.bias_ih_l0).chunk(3, 1)
            h_r, h_z, h_n = lin(h, self.gru.weight_hh_l0, self.gru.bias_hh_l0).chunk(3, 1)
            r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
            n = self.act(x_n + r * h_n)
            h = n + z * (h - n)
            hs.append(h)
        return self.head(torch.stack(hs))


def _export(module: nn.Module, frames, dynamo: bool) -> onnx.ModelProto:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(module.eval(), (frames,), dynamo=True, verbose=False,
                                     input_names=["frames"], output_names=["logits"]).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module.eval(), (frames,), buffer, dynamo=False, input_names=["frames"],
                          output_names=["logits"])
    return onnx.load_from_string(buffer.getvalue())


def _relu_cell(model: onnx.ModelProto) -> onnx.ModelProto:
    """The fused model with its LSTM's activations set to Sigmoid, Relu, Relu (the paper's ReLU-LSTM), or its GRU's
    to Sigmoid, Relu."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    (node,) = [n for n in out.graph.node if n.op_type in ("LSTM", "GRU")]
    kept = [a for a in node.attribute if a.name != "activations"]
    del node.attribute[:]
    acts = ["Sigmoid", "Relu", "Relu"] if node.op_type == "LSTM" else ["Sigmoid", "Relu"]
    node.attribute.extend(kept + [helper.make_attribute("activations", acts)])
    return out


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(0).random((STEPS, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module", params=[("LSTM", False), ("LSTM", True), ("GRU", False)],
                ids=["lstm-legacy", "lstm-dynamo", "gru-legacy"])
def models(request, frames) -> dict[str, onnx.ModelProto]:
    kind, dynamo = request.param
    torch.manual_seed(0)
    cnn, rnn, head = FrameCNN(), getattr(nn, kind)(8, HIDDEN), nn.Linear(HIDDEN, CLASSES)
    with torch.no_grad():  # larger than the default init, so that several ReLU units are active at every step
        for p in rnn.parameters():
            p.normal_(0.2, 0.5)
    x = torch.from_numpy(frames)
    fused = _export(Fused(cnn, rnn, head), x, dynamo=False)
    loop = Unrolled if kind == "LSTM" else UnrolledGru
    return {
        "fused_tanh": fused, "fused_relu": _relu_cell(fused),
        "unrolled_tanh": _export(loop(cnn, rnn, head, torch.tanh), x, dynamo),
        "unrolled_relu": _export(loop(cnn, rnn, head, torch.relu), x, dynamo),
    }


def _close(a: np.ndarray, b: np.ndarray, nonzero: bool = True) -> None:
    assert not nonzero or np.abs(b).max() > 0
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(float(np.abs(b).max()), 1e-12))


def test_same_forward_and_cells_found(models, frames) -> None:
    for act in ("tanh", "relu"):
        fused, unrolled = (Explainer(models[f"{k}_{act}"]) for k in ("fused", "unrolled"))
        _close(unrolled.engine.runner.run({"frames": frames}, ["logits"])["logits"],
               fused.engine.runner.run({"frames": frames}, ["logits"])["logits"])
        assert [c.step for c in find_cells(unrolled.graph)] == list(range(STEPS))


# -- the walk with the cells' overrides (what RecurrentMethod.explain runs between the logits and the boundary) ----
def test_gradient_walk(models, frames) -> None:
    _close(*(np.stack([walk_to(models[k], frames, "frames", "grad", None, target) for target in range(CLASSES)])
             for k in ("unrolled_tanh", "fused_tanh")))


@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("negate", [False, True], ids=["pass", "dual"])
def test_eb_walk(models, frames, rules: str, negate: bool) -> None:
    pair = [(models[k], _classifier(models[k])) for k in ("unrolled_relu", "fused_relu")]
    got = [np.stack([walk_to(m, frames, "frames", "eb", rules, k, negate=negate, classifier=cls)
                     for k in range(CLASSES)]) for m, cls in pair]
    _close(*got)


def _classifier(model: onnx.ModelProto) -> str:
    """The MatMul of the per-step Linear (named differently by the two exporters)."""
    graph = Explainer(model).graph
    node = graph.producer["logits"]
    while node.op_type != "MatMul":
        node = next(graph.producer[t] for t in node.inputs if t in graph.producer)
    return node.name


# -- end to end through the public API ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def explain(frames):
    def run(model: onnx.ModelProto, method: str, target: int, **options):
        return Explainer(model).explain(frames, target=target, method=method, time_step=-1, **options)

    return run


def test_gradr_maps(models, explain) -> None:
    for target in (1, 3):
        _close(explain(models["unrolled_tanh"], "gradr", target).signal,
               explain(models["fused_tanh"], "gradr", target).signal)


@pytest.mark.parametrize("method", ["ebr", "cebr"])
@pytest.mark.parametrize("rules", ["caffe", "excitation"])
def test_eb_recurrent_maps(models, explain, method: str, rules: str) -> None:
    complete = 0
    for target in range(CLASSES):
        unrolled = explain(models["unrolled_relu"], method, target, recurrent_rules=rules)
        fused = explain(models["fused_relu"], method, target, recurrent_rules=rules)
        assert len(unrolled.warnings) == len(fused.warnings)  # e.g. a pass with no positive classifier weight
        complete += not fused.warnings
        for key in ("pos", "neg"):
            signal = getattr(fused.info.passes, key)
            absent = key == "neg" and method != "cebr"
            assert (signal is None) == (getattr(unrolled.info.passes, key) is None) == absent
            if signal is not None:
                _close(getattr(unrolled.info.passes, key), signal, nonzero=False)
        _close(unrolled.signal, fused.signal, nonzero=False)
        _close(unrolled.maps, fused.maps, nonzero=False)
    assert complete >= 2  # targets whose passes all reach the frames
