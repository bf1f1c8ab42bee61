"""Time and sequence axes found without hints (issue: models nobody here built), against PyTorch autograd.

* a CRNN whose recurrence runs along the image's width, with a CTC-style ``(T, N, C)`` output: the map is the
  image's, ``temporal`` the evidence per column band of the explained step;
* a CTC head with transposes around the classifier, a LogSoftmax and a wrong declared output shape;
* a batch of video clips ``(N, T, C, H, W)``: one result per clip, each normalised on its own (Eq. 5);
* output heads (Sigmoid, LogSoftmax, Identity) looked through to the pre-activation logits.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from ebr_onnx import EbrError, Explainer
from ebr_onnx.app.inspect import describe, format_report
from ebr_onnx.recurrent.frames import band_sums

torch = pytest.importorskip("torch")
nn = torch.nn


class Crnn(nn.Module):
    """Conv stack → (N, 16, 1, W/2) → width as time → bidirectional LSTM → classifier per column: (T, N, 11)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d((2, 1)),
                                 nn.Conv2d(16, 16, (4, 1)), nn.ReLU())
        self.rnn = nn.LSTM(16, 12, bidirectional=True)
        self.fc = nn.Linear(24, 11)

    def forward(self, x):
        y, _ = self.rnn(self.cnn(x).squeeze(2).permute(2, 0, 1))
        return self.fc(y)


class CtcHead(nn.Module):
    """A CRNN whose classifier runs batch-first between two transposes, then LogSoftmax: (T, N, C) log-probs."""

    def __init__(self) -> None:
        super().__init__()
        self.body = Crnn()
        self.fc = nn.Linear(24, 7)

    def forward(self, x):
        y, _ = self.body.rnn(self.body.cnn(x).squeeze(2).permute(2, 0, 1))
        return torch.log_softmax(self.fc(y.transpose(0, 1)), dim=2).transpose(0, 1)

    def logits(self, x):
        y, _ = self.body.rnn(self.body.cnn(x).squeeze(2).permute(2, 0, 1))
        return self.fc(y.transpose(0, 1)).transpose(0, 1)


class VideoLstm(nn.Module):
    """Clips (N, T, 3, 12, 12) → frames stacked (N·T) → CNN → (N, T, 32) → batch-first LSTM → (N, T, 5)."""

    def __init__(self) -> None:
        super().__init__()
        self.cnn = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                 nn.Linear(4 * 36, 32), nn.ReLU())
        self.rnn = nn.LSTM(32, 10, batch_first=True)
        self.fc = nn.Linear(10, 5)

    def forward(self, x):
        n, t = x.shape[:2]
        features = self.cnn(x.reshape(n * t, *x.shape[2:])).reshape(n, t, -1)
        return self.fc(self.rnn(features)[0])


def export(model: nn.Module, x, path: Path, dynamic: dict) -> Path:
    torch.manual_seed(0)
    torch.onnx.export(model.eval(), x, path, dynamo=False, input_names=["x"], output_names=["y"],
                      dynamic_axes=dynamic, opset_version=17)
    return path


def grad_map(model, x: np.ndarray, index: tuple) -> np.ndarray:
    """Autograd of one logit with respect to the input."""
    inp = torch.tensor(x, requires_grad=True)
    model(inp)[index].backward()
    return inp.grad.numpy()


@pytest.fixture(scope="module")
def crnn(tmp_path_factory):
    torch.manual_seed(0)
    model = Crnn().eval()
    path = export(model, torch.rand(1, 1, 16, 40), tmp_path_factory.mktemp("crnn") / "crnn.onnx",
                  {"x": {0: "N", 3: "W"}, "y": {0: "T", 1: "N"}})
    return model, Explainer(path)


def test_crnn_time_runs_along_the_width(crnn):
    model, ex = crnn
    x = np.random.default_rng(0).random((1, 1, 16, 40)).astype(np.float32)
    res = ex.explain(x, target=4, method="gradr", time_step=3)
    assert res.info.time_axis == 0 and res.maps.shape == (16, 40) and res.temporal.shape == (20,)
    np.testing.assert_allclose(res.maps, grad_map(model, x, (3, 0, 4))[0, 0], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(res.temporal, res.maps.sum(axis=0).reshape(20, 2).sum(axis=1), rtol=1e-5, atol=1e-7)
    for method in ("ebr", "cebr"):
        res = ex.explain(x, target=4, method=method, time_step=3)
        assert res.maps.shape == (16, 40) and np.isfinite(res.maps).all()
        assert res.temporal.sum() == pytest.approx(res.maps.sum(), rel=1e-4, abs=1e-6)
        assert res.mass.boundary.shape == (20,)
    assert res.mass.boundary.sum() == pytest.approx(0.0, abs=1e-5)      # cEB-R: the two normalised passes cancel
    ebr = ex.explain(x, target=4, method="ebr", time_step=3)
    assert ebr.mass.boundary.sum() == pytest.approx(1.0, rel=1e-5)       # Eq. 5


def test_crnn_batch_of_images_gives_one_result_each(crnn):
    model, ex = crnn
    x = np.random.default_rng(1).random((3, 1, 16, 40)).astype(np.float32)
    res = ex.explain(x, target=[1, 2, 3], method="gradr", time_step=5)
    assert res.maps.shape == (3, 16, 40) and res.temporal.shape == (3, 20) and res.target == [1, 2, 3]
    for n in range(3):
        np.testing.assert_allclose(res.maps[n], grad_map(model, x, (5, n, n + 1))[n, 0], rtol=1e-4, atol=1e-6)
    cebr = ex.explain(x, target=[1, 2, 3], method="cebr", time_step=5)
    single = ex.explain(x[2:], target=3, method="cebr", time_step=5)
    np.testing.assert_allclose(cebr.maps[2], single.maps, rtol=1e-5, atol=1e-8)
    with pytest.raises(EbrError, match="2 targets and 3 priors given for 3 sequences"):
        ex.explain(x, target=[1, 2], method="ebr")


def test_time_step_out_of_range_names_the_traced_length(crnn):
    _, ex = crnn
    x = np.zeros((1, 1, 16, 40), np.float32)
    with pytest.raises(EbrError, match=r"time_step 20 is out of range: the output has 20 time steps \(traced on its "
                                       r"axis 0 of shape \(20, 1, 11\)"):
        ex.explain(x, method="ebr", time_step=20)


def test_band_sums_cut_an_axis_into_contiguous_bands():
    maps = np.arange(2 * 7, dtype=np.float64).reshape(2, 7)
    np.testing.assert_array_equal(band_sums(maps, 1, 3), [0 + 1 + 7 + 8, 2 + 3 + 4 + 9 + 10 + 11, 5 + 6 + 12 + 13])
    np.testing.assert_array_equal(band_sums(maps, 0, 2), maps.sum(axis=1))


def test_ctc_head_with_transposes_and_a_wrong_declared_shape(tmp_path):
    torch.manual_seed(1)
    model = CtcHead().eval()
    path = export(model, torch.rand(1, 1, 16, 24), tmp_path / "ctc.onnx", {"x": {0: "N", 3: "W"}})
    proto = onnx.load(path)
    dims = proto.graph.output[0].type.tensor_type.shape.dim   # declared as [1, 'seqlen'], as a real export did
    while len(dims) > 2:
        dims.pop()
    dims[0].Clear()
    dims[0].dim_value = 1
    dims[1].Clear()
    dims[1].dim_param = "seqlen"
    onnx.save(proto, path)
    ex = Explainer(path)
    assert ex.logits_tensor() != "y"                                   # below the LogSoftmax and its Transpose
    x = np.random.default_rng(2).random((1, 1, 16, 24)).astype(np.float32)
    res = ex.explain(x, target=2, method="gradr", time_step=3)
    inp = torch.tensor(x, requires_grad=True)
    model.logits(inp)[3, 0, 2].backward()
    np.testing.assert_allclose(res.maps, inp.grad.numpy()[0, 0], rtol=1e-4, atol=1e-6)
    assert res.temporal.shape == (12,)
    assert np.isfinite(ex.explain(x, target=2, method="cebr", time_step=3).maps).all()
    report = describe(ex, (1, 1, 16, 24))
    assert report["run"]["logits_time_axis"] == 1 and report["run"]["steps"] == 12    # batch-first logits
    assert report["declared_shapes_contradicted"] == [{"tensor": "y", "declared": [1, "seqlen"], "run": [12, 1, 7]}]
    assert report["head"][-1] == "LogSoftmax"
    assert "is contradicted by the run [12, 1, 7]: ignored" in format_report(report)


def test_batch_of_clips_each_normalised_on_its_own(tmp_path):
    torch.manual_seed(2)
    model = VideoLstm().eval()
    path = export(model, torch.rand(1, 6, 3, 12, 12), tmp_path / "video.onnx", {"x": {0: "N", 1: "T"}})
    ex = Explainer(path)
    x = np.random.default_rng(3).random((2, 6, 3, 12, 12)).astype(np.float32)
    res = ex.explain(x, target=[0, 3], method="gradr", time_step=-1)
    assert res.maps.shape == (2, 6, 12, 12) and res.temporal.shape == (2, 6)
    for n, k in enumerate((0, 3)):
        np.testing.assert_allclose(res.maps[n], grad_map(model, x, (n, -1, k))[n].sum(axis=1), rtol=1e-4, atol=1e-6)
    ebr = ex.explain(x, target=[0, 3], method="ebr")
    np.testing.assert_allclose(ebr.mass.boundary.sum(axis=1), [1.0, 1.0], rtol=1e-5)   # Eq. 5 per clip
    single = ex.explain(x[1:], target=3, method="ebr")
    np.testing.assert_allclose(ebr.maps[1], single.maps, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("head", ["Sigmoid", "LogSoftmax", "Identity", "Softmax", "ArgMax"])
def test_output_heads_are_looked_through(tiny_cnn, head):
    """The prior sits on the pre-activation logits; ceb finds the classifier through the head."""
    plain = onnx.ModelProto()
    plain.CopyFrom(tiny_cnn)
    headed = onnx.ModelProto()
    headed.CopyFrom(tiny_cnn)
    headed.graph.node.append(onnx.helper.make_node(head, ["y"], ["out"], name="head",
                                                   **({"axis": 1} if head == "ArgMax" else {})))
    headed.graph.output[0].name = "out"
    if head == "ArgMax":                                    # the decision itself, int64
        headed.graph.output[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
    x = np.random.default_rng(4).random((2, 3, 4, 4)).astype(np.float32)
    ex = Explainer(headed)
    assert ex.logits_tensor() == "y"
    for method in ("eb", "ceb", "grad"):
        got = ex.explain(x, target=[1, 4], method=method)
        want = Explainer(plain).explain(x, target=[1, 4], method=method)
        np.testing.assert_allclose(got.maps, want.maps, rtol=1e-6, atol=1e-9)
        assert got.warnings == want.warnings
    assert describe(ex)["head"] == [head]


def test_interleaved_streams_of_an_upstream_lrcn_net(tmp_path):
    """Upstream Caffe LRCN: T·N frames, frame t·N + n of stream n, reshaped to (T, N, C) before the LSTM. Each stream
    gets its own frames (found by index codes), its own normalisation, and BP-R equals finite differences."""
    import onnxruntime
    from caffe_nets import write_net
    from test_caffe_upstream import STREAMS, lrcn_deploy

    from converters.caffe import convert_caffe

    proto, _ = write_net(tmp_path, lrcn_deploy())
    model = convert_caffe(proto, random_weights=3, frames=2, lstm_activation="tanh")
    ex = Explainer(model)
    data = np.random.default_rng(5).random((2 * STREAMS, 3, 8, 8)).astype(np.float32)
    res = ex.explain(data, method="gradr", target=[1, 2, 3], prior=np.eye(7)[[1, 2, 3]] - 1 / 7)
    assert res.maps.shape == (STREAMS, 2, 8, 8) and res.temporal.shape == (STREAMS, 2)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    markers = np.asarray(ex.engine.feeds(data)["clip_markers"])

    def score(x: np.ndarray) -> float:
        (probs,) = session.run(None, {"data": x, "clip_markers": markers})
        return float(np.log(probs[-1, 1, 2]) - np.log(probs[-1, 1]).mean())   # stream 1's class-2 logit (centred)

    eps = 2e-3                                           # small: max pooling's switches stay put
    numeric = np.zeros(data.shape, np.float64)
    for index in np.ndindex(*data.shape):
        up, down = data.copy(), data.copy()
        up[index] += eps
        down[index] -= eps
        numeric[index] = (score(up) - score(down)) / (2 * eps)
    np.testing.assert_allclose(res.maps[1], numeric[1::STREAMS].sum(axis=1), rtol=2e-2, atol=5e-4)
    assert np.abs(numeric[0::STREAMS]).max() == 0 and np.abs(numeric[1::STREAMS]).max() > 1e-3
    ebr = ex.explain(data, method="ebr", target=[1, 2, 3], layer="conv1")
    np.testing.assert_allclose(ebr.mass.boundary.sum(axis=1), np.ones(STREAMS), rtol=1e-5)   # Eq. 5 per stream
