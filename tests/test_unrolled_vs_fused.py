"""One PyTorch model (per-frame CNN → LSTM or GRU → Linear at every step) exported fused (``nn.LSTM``/``nn.GRU`` → ONNX
``LSTM``/``GRU``) and unrolled (the same weights in a Python loop of steps: ``LSTMCell``'s form, TF1
``BasicLSTMCell``'s one stacked projection over ``cat([x_t, h_{t-1}])``, a hand-written cell with one Linear over
``cat([h_{t-1}, x_t])`` and one σ over three gates, ``GRUCell``'s form; or one stateful step of a streaming model
whose state is a model input) gives the same maps: the gradient for the tanh cells (and that equals
torch autograd), and both recurrent rule sets of EB-R / cEB-R for the ReLU cells (the fused op's activations set to
Sigmoid, Relu(, Relu))."""
from __future__ import annotations

import io
import warnings
from typing import Any

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


class UnrolledConcat(nn.Module):
    """The LSTM of ``lstm`` as a loop of TF1 ``BasicLSTMCell`` steps: one stacked weight ``[W; R]`` over
    ``cat([x_t, h_{t-1}])``, the gates in TF's order i, j (= g), f, o, the forget bias 1 added to f."""

    def __init__(self, cnn: FrameCNN, lstm: nn.LSTM, head: nn.Linear, act) -> None:
        super().__init__()
        self.cnn, self.head, self.act = cnn, head, act
        tf_order = lambda w: torch.cat([w.chunk(4)[k] for k in (0, 2, 1, 3)])  # noqa: E731  (i, f, g, o → i, g, f, o)
        with torch.no_grad():
            bias = tf_order(lstm.bias_ih_l0 + lstm.bias_hh_l0) - torch.tensor([0.0, 0, 1, 0]).repeat_interleave(HIDDEN)
            self.register_buffer("kernel", tf_order(torch.cat([lstm.weight_ih_l0, lstm.weight_hh_l0], 1)).T.clone())
            self.register_buffer("bias", bias)

    def forward(self, frames):
        x = self.cnn(frames).unsqueeze(1)
        h = c = torch.zeros(1, HIDDEN)
        hs = []
        for t in range(x.shape[0]):
            i, j, f, o = (torch.cat([x[t], h], 1) @ self.kernel + self.bias).chunk(4, 1)
            c = c * torch.sigmoid(f + 1.0) + torch.sigmoid(i) * self.act(j)
            h = self.act(c) * torch.sigmoid(o)
            hs.append(h)
        return self.head(torch.stack(hs))


class UnrolledHandWritten(nn.Module):
    """The LSTM of ``lstm`` as a hand-written cell loop: one ``Linear`` over ``cat([h_{t-1}, x_t])``, one σ over the
    gates i, f, o sliced from it, then chunked."""

    def __init__(self, cnn: FrameCNN, lstm: nn.LSTM, head: nn.Linear, act) -> None:
        super().__init__()
        self.cnn, self.head, self.act = cnn, head, act
        order = lambda w: torch.cat([w.chunk(4)[k] for k in (0, 1, 3, 2)])  # noqa: E731  (i, f, g, o → i, f, o, g)
        self.gates = nn.Linear(8 + HIDDEN, 4 * HIDDEN)
        with torch.no_grad():
            self.gates.weight.copy_(order(torch.cat([lstm.weight_hh_l0, lstm.weight_ih_l0], 1)))
            self.gates.bias.copy_(order(lstm.bias_ih_l0 + lstm.bias_hh_l0))

    def forward(self, frames):
        x = self.cnn(frames).unsqueeze(1)
        h = c = torch.zeros(1, HIDDEN)
        hs = []
        for t in range(x.shape[0]):
            a = self.gates(torch.cat([h, x[t]], 1))
            i, f, o = torch.sigmoid(a[:, :3 * HIDDEN]).chunk(3, 1)
            c = f * c + i * self.act(a[:, 3 * HIDDEN:])
            h = o * self.act(c)
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


def _export(module: nn.Module, frames, dynamo: bool, states: tuple = (), names: tuple[str, ...] = ()
            ) -> onnx.ModelProto:
    """``module`` exported; ``states`` (named ``names``) are further inputs, returned again after the logits."""
    inputs, outputs = ["frames", *names], ["logits", *(f"{n}_out" for n in names)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(module.eval(), (frames, *states), dynamo=True, verbose=False,
                                     input_names=inputs, output_names=outputs).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(module.eval(), (frames, *states), buffer, dynamo=False, input_names=inputs,
                          output_names=outputs)
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


def _parts(kind: str) -> tuple[FrameCNN, nn.Module, nn.Linear]:
    torch.manual_seed(0)
    cnn, rnn, head = FrameCNN(), getattr(nn, kind)(8, HIDDEN), nn.Linear(HIDDEN, CLASSES)
    with torch.no_grad():  # larger than the default init, so that several ReLU units are active at every step
        for p in rnn.parameters():
            p.normal_(0.2, 0.5)
    return cnn, rnn, head


LOOPS = {"lstm": Unrolled, "lstm-concat": UnrolledConcat, "lstm-hand": UnrolledHandWritten, "gru": UnrolledGru}


@pytest.fixture(scope="module", params=[("lstm", False), ("lstm", True), ("lstm-concat", False),
                                        ("lstm-concat", True), ("lstm-hand", False), ("gru", False)],
                ids=["lstm-legacy", "lstm-dynamo", "lstm-concat-legacy", "lstm-concat-dynamo", "lstm-hand-legacy",
                     "gru-legacy"])
def models(request, frames) -> dict[str, Any]:
    """The exported models, and ``torch_tanh``: the unrolled tanh module itself."""
    form, dynamo = request.param
    cnn, rnn, head = _parts("GRU" if form == "gru" else "LSTM")
    x = torch.from_numpy(frames)
    fused = _export(Fused(cnn, rnn, head), x, dynamo=False)
    loop = LOOPS[form]
    return {
        "fused_tanh": fused, "fused_relu": _relu_cell(fused), "torch_tanh": loop(cnn, rnn, head, torch.tanh),
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


def test_gradr_equals_autograd(models, frames, explain) -> None:
    for target in (1, 3):
        x = torch.from_numpy(frames).requires_grad_()
        models["torch_tanh"](x)[-1, 0, target].backward()
        _close(explain(models["unrolled_tanh"], "gradr", target).signal, x.grad.numpy())


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


# -- a stateful step: a streaming model run one frame at a time -----------------------------------------------------
class FusedStep(nn.Module):
    """One frame through the CNN and ``nn.LSTM`` from the state ``(h0, c0)``; returns the logits and the new state."""

    def __init__(self, cnn: FrameCNN, lstm: nn.LSTM, head: nn.Linear) -> None:
        super().__init__()
        self.cnn, self.lstm, self.head = cnn, lstm, head

    def forward(self, frames, h0, c0):
        y, (h, c) = self.lstm(self.cnn(frames).unsqueeze(1), (h0, c0))
        return self.head(y), h, c


class LstmStep(nn.Module):
    """The same step written out (``LSTMCell``'s form) with the state ``(h, c)`` as model inputs and outputs."""

    def __init__(self, cnn: FrameCNN, lstm: nn.LSTM, head: nn.Linear, act) -> None:
        super().__init__()
        self.cnn, self.lstm, self.head, self.act = cnn, lstm, head, act

    def forward(self, frames, h, c):
        lin = nn.functional.linear
        a = lin(self.cnn(frames), self.lstm.weight_ih_l0, self.lstm.bias_ih_l0) + \
            lin(h, self.lstm.weight_hh_l0, self.lstm.bias_hh_l0)
        i, f, g, o = a.chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * self.act(g)
        h = torch.sigmoid(o) * self.act(c)
        return self.head(h), h, c


@pytest.fixture(scope="module")
def steps(frames) -> dict[str, Any]:
    """One frame, a non-negative state (as a ReLU cell's), the fused and the stateful step models, and the tanh step
    module itself."""
    cnn, lstm, head = _parts("LSTM")
    frame = frames[:1]
    state = np.abs(np.random.default_rng(4).normal(size=(2, 1, HIDDEN))).astype(np.float32)
    fused = _export(FusedStep(cnn, lstm, head), torch.from_numpy(frame), False,
                    tuple(torch.from_numpy(s[None]) for s in state), ("h0", "c0"))
    step = {act: _export(LstmStep(cnn, lstm, head, getattr(torch, act)), torch.from_numpy(frame), False,
                         tuple(torch.from_numpy(s) for s in state), ("h", "c")) for act in ("tanh", "relu")}
    return {"frame": frame, "state": state, "fused_tanh": fused, "fused_relu": _relu_cell(fused),
            "step_tanh": step["tanh"], "step_relu": step["relu"],
            "torch_tanh": LstmStep(cnn, lstm, head, torch.tanh)}


@pytest.mark.parametrize("method, rules", [("ebr", "caffe"), ("ebr", "excitation"), ("cebr", "caffe"),
                                           ("cebr", "excitation"), ("gradr", "caffe")])
def test_stateful_step_equals_a_one_step_sequence(steps, method: str, rules: str) -> None:
    """The maps of one step of the streaming model equal the fused op's for a one-step sequence from the same
    initial state (the state inputs carry no signal; under excitation R⁺h_{t-1} counts in the gate's normaliser)."""
    act = "tanh" if method == "gradr" else "relu"
    h, c = steps["state"]
    fused, step = Explainer(steps[f"fused_{act}"]), Explainer(steps[f"step_{act}"])
    assert [cell.c_prev for cell in find_cells(step.graph, [step.input_name])] == ["c"]
    for target in range(CLASSES):
        options = dict(target=target, method=method, recurrent_rules=rules, time_axis=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a pass with no positive classifier weight
            want = fused.explain(steps["frame"], extra_inputs={"h0": h[None], "c0": c[None]}, **options)
            got = step.explain(steps["frame"], extra_inputs={"h": h, "c": c}, **options)
        assert len(got.warnings) == len(want.warnings)
        _close(got.signal, want.signal, nonzero=False)
        _close(got.maps, want.maps, nonzero=False)
        if method == "gradr":
            x = torch.from_numpy(steps["frame"]).requires_grad_()
            steps["torch_tanh"](x, *(torch.from_numpy(s) for s in steps["state"]))[0][0, target].backward()
            _close(got.signal, x.grad.numpy())
