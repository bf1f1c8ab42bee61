"""EB-R, cEB-R and BP-R on small video models (per-frame CNN → recurrent op → classifier at every step).

References: PyTorch autograd through exported nn.LSTM / nn.GRU models (gradr); a direct NumPy transcription of
``shared/spec/caffe-reference.md`` §3.4 and §8 written here (caffe rules, both passes, the cEB-R map); the spec's §8
invariants; mass conservation (excitation rules).
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn as nn
from onnx import TensorProto, helper, numpy_helper

from converters.caffe import convert_caffe
from ebr_onnx import EbrError, Explainer
from ebr_onnx.recurrent import cnn_pass

T, K = 6, 5


# -- PyTorch models, exported ---------------------------------------------------------------------------------------
class VideoNet(nn.Module):
    """frames (T, 3, 8, 8) → conv → ReLU → max-pool → fc → ReLU → recurrent → classifier at every step.

    ``out``: "TC" gives (T, K), "TNC" (T, 1, K), "NTC" (1, T, K) (batch_first recurrent), "last" (1, K) (the
    classifier on the last step only); ``clip_input`` takes a (1, T, 3, 8, 8) clip reshaped inside the graph."""

    def __init__(self, cell="lstm", bidirectional=False, out="TC", clip_input=False):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 6)
        self.batch_first = out == "NTC"
        self.rnn = {"lstm": nn.LSTM, "gru": nn.GRU}[cell](6, 5, bidirectional=bidirectional,
                                                         batch_first=self.batch_first)
        self.cls = nn.Linear(5 * (2 if bidirectional else 1), K)
        self.out, self.clip_input = out, clip_input
        self.conv_out = None

    def forward(self, x):
        if self.clip_input:
            x = x.reshape(-1, 3, 8, 8)
        y = self.conv(x)
        self.conv_out = y
        y = nn.functional.max_pool2d(torch.relu(y), 2)
        y = torch.relu(self.fc(y.flatten(1)))
        y = y.unsqueeze(0) if self.batch_first else y.unsqueeze(1)
        o, _ = self.rnn(y)
        logits = self.cls(o)
        return {"TC": logits[:, 0] if not self.batch_first else logits[0], "last": logits[-1]}.get(self.out, logits)


def export(net: nn.Module, dynamo: bool = False) -> onnx.ModelProto:
    clip_input = getattr(net, "clip_input", False)
    shape = (1, T, 3, 8, 8) if clip_input else (T, 3, 8, 8)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (torch.randn(shape),), f, dynamo=True)
        else:
            axis = 1 if clip_input else 0
            torch.onnx.export(net, (torch.randn(shape),), f, dynamo=False, input_names=["x"], output_names=["logits"],
                              dynamic_axes={"x": {axis: "T"}}, opset_version=17)
    return onnx.load_from_string(f.getvalue())


def clip(shape=(T, 3, 8, 8), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(np.float32)


def autograd(net: VideoNet, x: np.ndarray, k: int, steps, time_axis: int):
    """The gradient of the summed target logits at ``steps`` w.r.t. the clip and the conv output."""
    xt = torch.tensor(x, requires_grad=True)
    logits = net(xt)
    net.conv_out.retain_grad()
    picked = logits.reshape(-1)[k:k + 1] if time_axis is None else \
        logits.movedim(time_axis, 0)[steps].reshape(len(steps), -1)[:, k]
    picked.sum().backward()
    return xt.grad.numpy(), net.conv_out.grad.numpy()


CASES = {
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "lstm-bidirectional": dict(cell="lstm", bidirectional=True),
    "gru-batch-first": dict(cell="gru", out="NTC"),
    "lstm-TNC": dict(cell="lstm", out="TNC"),
    "lstm-clip-input": dict(cell="lstm", clip_input=True, out="NTC"),
    "gru-last-step-only": dict(cell="gru", out="last"),
}


@pytest.fixture(scope="module")
def exported():
    cache = {}

    def get(name):
        if name not in cache:
            net = VideoNet(**CASES[name])
            cache[name] = (net, Explainer(export(net), dtype=np.float64, batch_size=4))
        return cache[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_gradr_equals_autograd(exported, name):
    net, ex = exported(name)
    x = clip((1, T, 3, 8, 8) if net.clip_input else (T, 3, 8, 8))
    time_axis = {"NTC": 1, "last": None}.get(net.out, 0)
    want_x, want_conv = autograd(net, x, 3, [T - 1], time_axis)
    res = ex.explain(x, target=3, method="gradr")
    np.testing.assert_allclose(res.signal, want_x, rtol=1e-4, atol=1e-6 * np.abs(want_x).max())
    assert res.maps.shape == (T, 8, 8) and res.temporal.shape == (T,)
    assert res.info.time_axis == time_axis
    conv = next(n.outputs[0] for n in ex.graph.nodes if n.op_type == "Conv")
    res = ex.explain(x, target=3, method="gradr", layer=conv)
    np.testing.assert_allclose(res.signal, want_conv, rtol=1e-4, atol=1e-6 * np.abs(want_conv).max())


def test_gradr_time_steps_list_and_all(exported):
    net, ex = exported("lstm")
    x = clip(seed=1)
    for steps, arg in (([1, 4], [1, -2]), (list(range(T)), "all")):
        want, _ = autograd(net, x, 2, steps, 0)
        res = ex.explain(x, target=2, method="gradr", time_step=arg)
        np.testing.assert_allclose(res.signal, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
        assert res.info.time_steps == steps


def test_user_prior_and_time_axis_override(exported):
    net, ex = exported("lstm-TNC")
    x = clip(seed=6)
    want = ex.explain(x, target=1, method="cebr")
    got = ex.explain(x, method="cebr", prior=np.eye(K)[1], time_axis=0)
    np.testing.assert_allclose(got.maps, want.maps, rtol=1e-12)
    with pytest.raises(EbrError, match="time_axis"):
        ex.explain(x, target=1, method="cebr", time_axis=2)


def test_layer_at_the_boundary(exported):
    net, ex = exported("lstm")
    x = clip(seed=6)
    res = ex.explain(x, target=1, method="cebr", layer=ex.explain(x, target=1, method="cebr").info.boundary)
    assert res.maps.shape == (T, 6) and abs(res.temporal.sum()) < 1e-9
    np.testing.assert_allclose(res.signal, res.info.boundary_signal)


def test_dynamo_export_and_chunking_agree(exported):
    net, ex = exported("lstm")
    x = clip(seed=2)
    dyn = Explainer(export(net, dynamo=True), dtype=np.float64, batch_size=4)
    a = ex.explain(x, target=1, method="cebr")
    b = dyn.explain(x, target=1, method="cebr")
    np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(a.temporal, b.temporal, rtol=1e-5, atol=1e-9)


def test_chunk_captures_kept_or_recomputed_agree(exported, monkeypatch):
    net, ex = exported("gru")
    x = clip(seed=3)
    kept = ex.explain(x, target=0, method="cebr")
    monkeypatch.setattr(cnn_pass, "KEEP_BYTES", 0)
    again = ex.explain(x, target=0, method="cebr")
    np.testing.assert_array_equal(kept.maps, again.maps)


def test_targets_by_name_and_predicted(exported):
    net, ex = exported("lstm")
    x = clip(seed=4)
    named = Explainer(ex.graph.model, labels=[f"class{i}" for i in range(K)], dtype=np.float64)
    by_index = ex.explain(x, target=3, method="ebr")
    by_name = named.explain(x, target="class3", method="ebr")
    np.testing.assert_allclose(by_name.maps, by_index.maps, rtol=1e-12)
    predicted = ex.explain(x, method="ebr")
    with torch.no_grad():
        assert predicted.target == [int(net(torch.tensor(x))[-1].argmax())]


def test_tanh_and_bidirectional_lstms_give_finite_maps_with_the_warning(exported):
    for name in ("lstm", "lstm-bidirectional"):
        net, ex = exported(name)
        for method in ("ebr", "cebr"):
            res = ex.explain(clip(seed=5), target=2, method=method)
            assert np.isfinite(res.maps).all() and np.abs(res.maps).sum() > 0
            assert any(w.startswith("[recurrent-relu]") for w in res.warnings)


def test_user_errors(exported):
    net, ex = exported("lstm")
    x = clip()
    with pytest.raises(EbrError, match="time_step"):
        ex.explain(x, target=0, method="ebr", time_step=T)
    with pytest.raises(EbrError, match="recurrent_rules"):
        ex.explain(x, target=0, method="ebr", recurrent_rules="lrp")
    with pytest.raises(EbrError, match="2 targets given for the one sequence"):
        ex.explain(x, target=[0, 1], method="ebr")


# -- the release's rules on a ReLU-LSTM built with onnx.helper ------------------------------------------------------
class ReluLstmVideo:
    """frames (T, 2, 6, 6) → conv1 → ReLU (c1) → conv2 → ReLU (c2) → Flatten → Gemm → ReLU (fc7) → Reshape (T, 1, F)
    → LSTM [Sigmoid, Relu, Relu] → Squeeze → MatMul + Add (classifier at every step) → logits (T, 1, K)."""

    F, H = 10, 8

    def __init__(self, seed=0, negative_class=None):
        rng = np.random.default_rng(seed)
        f32 = lambda *s, scale=1.0: (scale * rng.normal(size=s)).astype(np.float32)  # noqa: E731
        self.w1, self.w2 = f32(4, 2, 3, 3, scale=0.5), f32(4, 4, 3, 3, scale=0.3)
        self.b1, self.b2 = f32(4, scale=0.1), f32(4, scale=0.1)
        self.w6, self.b6 = f32(self.F, 144, scale=0.2), np.abs(f32(self.F, scale=0.1))
        self.w, self.r = f32(1, 4 * self.H, self.F, scale=0.5), f32(1, 4 * self.H, self.H, scale=0.5)
        self.b = f32(1, 8 * self.H, scale=0.1)
        self.w8, self.b8 = f32(K, self.H), f32(K, scale=0.1)
        if negative_class is not None:
            self.w8[negative_class] = -np.abs(self.w8[negative_class])
        inits = dict(w1=self.w1, b1=self.b1, w2=self.w2, b2=self.b2, w6=self.w6, b6=self.b6, W=self.w, R=self.r,
                     B=self.b, w8t=np.ascontiguousarray(self.w8.T), b8=self.b8,
                     shape=np.array([-1, 1, self.F], np.int64), axes=np.array([1], np.int64))
        nodes = [
            helper.make_node("Conv", ["frames", "w1", "b1"], ["conv1"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv1"], ["c1"]),
            helper.make_node("Conv", ["c1", "w2", "b2"], ["conv2"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", ["conv2"], ["c2"]),
            helper.make_node("Flatten", ["c2"], ["flat"]),
            helper.make_node("Gemm", ["flat", "w6", "b6"], ["fc"], transB=1),
            helper.make_node("Relu", ["fc"], ["fc7"]),
            helper.make_node("Reshape", ["fc7", "shape"], ["seq"]),
            helper.make_node("LSTM", ["seq", "W", "R", "B"], ["Y"], hidden_size=self.H,
                             activations=["Sigmoid", "Relu", "Relu"], name="lstm1"),
            helper.make_node("Squeeze", ["Y", "axes"], ["h"]),
            helper.make_node("MatMul", ["h", "w8t"], ["fc8"], name="fc8-final"),
            helper.make_node("Add", ["fc8", "b8"], ["logits"]),
        ]
        graph = helper.make_graph(
            nodes, "relu_lstm_video", [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["T", 2, 6, 6])],
            [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["T", 1, K])],
            [numpy_helper.from_array(v, k) for k, v in inits.items()])
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    # the spec's recipe (§8), float64, from the float32 weights
    def cnn_forward(self, x):
        def conv(a, w, b):
            t64 = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
            return torch.nn.functional.conv2d(t64(a), t64(w), t64(b), padding=1).numpy()

        c1 = np.maximum(conv(x.astype(np.float64), self.w1, self.b1), 0)
        c2 = np.maximum(conv(c1, self.w2, self.b2), 0)
        fc7 = np.maximum(c2.reshape(len(x), -1) @ self.w6.T.astype(np.float64) + self.b6, 0)
        return c1, c2, fc7

    def rnn_pass(self, x7, k, sign):
        """Spec §3.4 with the prior at the last step: returns P (T, F) and δa (T, 4H) (ONNX gate order i, o, f, c)."""
        H = self.H
        w, r, b = (a[0].astype(np.float64) for a in (self.w, self.r, self.b))
        h, c, cache = np.zeros(H), np.zeros(H), []
        sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
        for t in range(len(x7)):
            a = w @ x7[t] + b[:4 * H] + r @ h + b[4 * H:]
            i, o, f, g = sig(a[:H]), sig(a[H:2 * H]), sig(a[2 * H:3 * H]), np.maximum(a[3 * H:], 0)
            c_prev, c = c, f * c + i * g
            h = o * np.maximum(c, 0)
            cache.append((i, o, f, g, a[3 * H:], c_prev, c))
        pos = np.maximum(sign * self.w8.astype(np.float64), 0)[k]
        z = pos @ h
        e = h * pos / z if z != 0 else np.zeros(H)
        da = np.zeros((len(x7), 4 * H))
        dc = np.zeros(H)
        for t in reversed(range(len(x7))):
            i, o, f, g, ag, c_prev, c = cache[t]
            dh = e if t == len(x7) - 1 else np.zeros(H)
            kappa = dc + dh * o * (c > 0)
            da[t] = np.concatenate([kappa * g * i * (1 - i), dh * np.maximum(c, 0) * o * (1 - o),
                                    kappa * c_prev * f * (1 - f), kappa * i * (ag > 0)])
            dc = kappa * f
        wp = np.maximum(w, 0)
        zx = x7 @ wp.T
        return x7 * (np.divide(da, zx, out=np.zeros_like(da), where=zx != 0) @ wp), da

    def cnn_backward(self, c1, c2, m):
        """Eq. 8 from fc7 down to c1: Gemm (fc6-like) then conv2, with W⁺ and no bias."""
        eb_fc = lambda a, w, s: a * ((s / np.where(a @ w.T == 0, 1, a @ w.T) * (a @ w.T != 0)) @ w)  # noqa: E731
        p2 = eb_fc(c2.reshape(len(c2), -1), np.maximum(self.w6, 0).astype(np.float64), m).reshape(c2.shape)
        wp = torch.tensor(np.maximum(self.w2, 0), dtype=torch.float64)
        z = torch.nn.functional.conv2d(torch.tensor(c1), wp, padding=1).numpy()
        q = np.divide(p2, z, out=np.zeros_like(p2), where=z != 0)
        return c1 * torch.nn.functional.conv_transpose2d(torch.tensor(q), wp, padding=1).numpy()


def test_caffe_rules_equal_the_spec_closed_form():
    video = ReluLstmVideo()
    ex = Explainer(video.model, dtype=np.float64, batch_size=4)
    x = np.abs(clip((T, 2, 6, 6), seed=7))
    k = 2
    res = ex.explain(x, target=k, method="cebr", layer="c1", recurrent_rules="caffe")
    c1, c2, fc7 = video.cnn_forward(x)
    pos, da_pos = video.rnn_pass(fc7, k, +1)
    neg, da_neg = video.rnn_pass(fc7, k, -1)
    assert res.info.boundary == "fc7" and res.info.frames == "frames"
    np.testing.assert_allclose(res.info.passes.pos, pos, rtol=1e-5, atol=1e-9 * np.abs(pos).max())
    np.testing.assert_allclose(res.info.passes.neg, neg, rtol=1e-5, atol=1e-9 * np.abs(neg).max())
    m = pos / pos.sum() - neg / neg.sum()
    np.testing.assert_allclose(res.info.boundary_signal, m, rtol=1e-5, atol=1e-9)
    want = video.cnn_backward(c1, c2, m)
    np.testing.assert_allclose(res.signal, want, rtol=1e-4, atol=1e-7 * np.abs(want).max())
    np.testing.assert_allclose(res.maps, want.sum(axis=1), rtol=1e-4, atol=1e-7 * np.abs(want).max())
    # §8 invariants: P ≥ 0 in both passes, ΣM = 0, no o-gate signal before T (it shows in δa of the reference,
    # which the rules match), and the per-frame mass is conserved from fc7 to c1 (no Z = 0 loss here)
    H = video.H
    assert (pos >= 0).all() and (neg >= 0).all() and pos.sum() > 0 and neg.sum() > 0
    assert abs(res.info.boundary_signal.sum()) < 1e-12
    assert not da_pos[:-1, H:2 * H].any() and not da_neg[:-1, H:2 * H].any()
    np.testing.assert_allclose(res.temporal, res.mass.boundary, rtol=1e-6, atol=1e-12)
    assert not any(w.startswith("[recurrent-relu]") for w in res.warnings)


def test_ebr_is_the_normalised_positive_pass():
    video = ReluLstmVideo(seed=1)
    ex = Explainer(video.model, dtype=np.float64)
    x = np.abs(clip((T, 2, 6, 6), seed=8))
    res = ex.explain(x, target=0, method="ebr", layer="fc7")
    _, _, fc7 = video.cnn_forward(x)
    pos, _ = video.rnn_pass(fc7, 0, +1)
    np.testing.assert_allclose(res.signal, pos / pos.sum(), rtol=1e-5, atol=1e-12)
    assert res.maps.shape == (T, video.F) and res.temporal.sum() == pytest.approx(1.0)


def test_excitation_rules_conserve_mass_through_time():
    video = ReluLstmVideo(seed=2)
    ex = Explainer(video.model, dtype=np.float64)
    x = np.abs(clip((T, 2, 6, 6), seed=9))
    res = ex.explain(x, target=1, method="ebr", layer="c1", recurrent_rules="excitation")
    pos = res.info.passes.pos
    assert (pos >= 0).all()
    assert pos.sum() == pytest.approx(1.0, rel=1e-9)  # the prior's mass, all of it at fc7 (zero initial states)
    assert (pos[:-1].sum(axis=1) > 0).all()  # earlier frames are reached, through c and through h
    np.testing.assert_allclose(res.temporal.sum(), 1.0, rtol=1e-9)
    cebr = ex.explain(x, target=1, method="cebr", recurrent_rules="excitation", layer="c1")
    assert abs(cebr.temporal.sum()) < 1e-9


def test_zero_total_gives_zero_maps_and_a_warning():
    video = ReluLstmVideo(seed=3, negative_class=4)
    ex = Explainer(video.model, dtype=np.float64)
    x = np.abs(clip((T, 2, 6, 6), seed=10))
    with pytest.warns(RuntimeWarning, match="no signal"):
        res = ex.explain(x, target=4, method="ebr", layer="c1")
    assert not res.maps.any() and np.isfinite(res.maps).all()
    assert any(w.startswith("[zero-total]") for w in res.warnings)
    with pytest.warns(RuntimeWarning, match="no signal"):
        res = ex.explain(x, target=4, method="cebr", layer="c1")
    assert np.isfinite(res.maps).all() and res.temporal.sum() < 0  # only the dual's evidence remains


# -- unrolled cells (ebr_onnx.passes.cells) and the fused op agree ----------------------------------------------
class UnrolledReluLstm(nn.Module):
    """The CNN of :class:`VideoNet` and a ReLU-LSTM written step by step (gates i, f, g, o as nn.LSTM orders them)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(64, 6)
        self.ih, self.hh, self.cls = nn.Linear(6, 20), nn.Linear(5, 20), nn.Linear(5, K)

    def features(self, x):
        return torch.relu(self.fc(nn.functional.max_pool2d(torch.relu(self.conv(x)), 2).flatten(1)))

    def forward(self, x):
        y = self.features(x)
        h, c, outs = torch.zeros(1, 5), torch.zeros(1, 5), []
        for t in range(T):
            i, f, g, o = (self.ih(y[t:t + 1]) + self.hh(h)).chunk(4, 1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.relu(g)
            h = torch.sigmoid(o) * torch.relu(c)
            outs.append(self.cls(h))
        return torch.cat(outs)


class FusedReluLstm(nn.Module):
    """The same weights through nn.LSTM (exported as one LSTM op whose activations are then set to ReLU)."""

    def __init__(self, unrolled: UnrolledReluLstm):
        super().__init__()
        self.u, self.lstm = unrolled, nn.LSTM(6, 5)
        self.lstm.weight_ih_l0.data, self.lstm.bias_ih_l0.data = unrolled.ih.weight.data, unrolled.ih.bias.data
        self.lstm.weight_hh_l0.data, self.lstm.bias_hh_l0.data = unrolled.hh.weight.data, unrolled.hh.bias.data

    def forward(self, x):
        o, _ = self.lstm(self.u.features(x).unsqueeze(1))
        return self.u.cls(o[:, 0])


def test_unrolled_cells_and_the_fused_op_agree():
    unrolled = UnrolledReluLstm()
    fused = export(FusedReluLstm(unrolled))
    for node in fused.graph.node:
        if node.op_type == "LSTM":
            node.attribute.append(helper.make_attribute("activations", ["Sigmoid", "Relu", "Relu"]))
    a_ex, b_ex = Explainer(export(unrolled), dtype=np.float64), Explainer(fused, dtype=np.float64)
    x = clip(seed=11)
    for method, rules in (("gradr", "caffe"), ("cebr", "caffe"), ("cebr", "excitation")):
        a = a_ex.explain(x, target=2, method=method, recurrent_rules=rules)
        b = b_ex.explain(x, target=2, method=method, recurrent_rules=rules)
        assert a.info.boundary == b.info.boundary
        np.testing.assert_allclose(a.maps, b.maps, rtol=1e-5, atol=1e-6 * np.abs(b.maps).max())


# -- the authors' Caffe outputs (shared/golden, through the Caffe converter and the unrolled-cell rules) -------------
GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "vgg16_lstm_small_a"


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="the release's golden outputs are not available")
def test_release_golden_outputs():
    ex = Explainer(convert_caffe(GOLDEN / "deploy.prototxt", GOLDEN / "weights.caffemodel"), batch_size=3)
    inputs, gold = np.load(GOLDEN / "inputs.npz"), np.load(GOLDEN / "golden.npz")
    feeds = {"data": inputs["data"], "clip_markers": inputs["clip_markers"]}

    def close(got, want):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

    res = ex.explain(feeds, target=3, method="cebr", layer="conv5_1")
    close(res.info.passes.pos, gold["fc7_signal_pos"])
    close(res.info.passes.neg, gold["fc7_signal_neg"])
    close(res.info.boundary_signal, gold["fc7_contrastive"])
    close(res.maps, gold["cebr_map"])
    close(ex.explain(feeds, target=3, method="ebr", layer="conv5_1").maps, gold["ebr_map"])
    # Caffe's conv5_1.diff is taken after the in-place relu5_1 backward: the gradient at the pre-ReLU output
    close(ex.explain(feeds, target=3, method="gradr", layer="conv5_1/pre_relu5_1").signal, gold["bpr_conv5_1_signal"])
