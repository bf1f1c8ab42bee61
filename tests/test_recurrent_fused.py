"""The rules of the fused ONNX LSTM / GRU / RNN ops, one node at a time.

References: an independent float64 PyTorch transcription of the ONNX operator definitions (checked against
onnxruntime's forward here) differentiated by autograd for mode "grad"; a direct NumPy transcription of the spec's §3.4
unit backward for the "caffe" rules; mass conservation and non-negativity for the "excitation" rules.
"""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ebr_onnx.core.context import RuleContext
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.core.options import RuleOptions
from ebr_onnx.core.walk import walk

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
T, N, I, H = 4, 3, 5, 3


# -- the independent reference: the ONNX operator definitions in torch --------------------------------------------
_TORCH_ACTS = {
    "Sigmoid": lambda x, a, b: torch.sigmoid(x), "Tanh": lambda x, a, b: torch.tanh(x),
    "Relu": lambda x, a, b: torch.relu(x), "LeakyRelu": lambda x, a, b: torch.where(x > 0, x, a * x),
    "HardSigmoid": lambda x, a, b: torch.clamp(a * x + b, 0, 1), "ScaledTanh": lambda x, a, b: a * torch.tanh(b * x),
}
_PARAMS = {"LeakyRelu": (0.01, None), "HardSigmoid": (0.2, 0.5), "ScaledTanh": (1.0, 1.0)}


def torch_recurrent(op, x, w, r, b, h0, c0, p, lens, direction, layout, acts, alphas, betas, clip, lbr):
    """ONNX LSTM/GRU/RNN (operator docs, opset 14) written out step by step; returns Y, Y_h, Y_c."""
    g_count = GATES[op]
    if layout:
        x, h0 = x.transpose(0, 1), h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    steps, batch, hidden, dirs = x.shape[0], x.shape[1], r.shape[-1], w.shape[0]
    alphas, betas = list(alphas), list(betas)
    fns = []
    for name in acts:
        a, bb = _PARAMS.get(name, (0.0, None))
        a = alphas.pop(0) if name in _PARAMS and alphas else a
        bb = betas.pop(0) if bb is not None and betas else bb
        fns.append(lambda v, f=_TORCH_ACTS[name], a=a, bb=bb: f(v, a, bb))
    cl = (lambda v: v) if clip is None else (lambda v: torch.clamp(v, -clip, clip))
    lens = torch.full((batch,), steps) if lens is None else torch.as_tensor(lens)
    k = len(acts) // dirs
    ys, yhs, ycs = [], [], []
    for d in range(dirs):
        f = fns[d * k:(d + 1) * k]
        wb, rb = b[d, :g_count * hidden], b[d, g_count * hidden:]
        h = h0[d]
        c = torch.zeros_like(h) if c0 is None else c0[d]
        out = [None] * steps
        backward = direction == "reverse" or d == 1
        for t in (range(steps - 1, -1, -1) if backward else range(steps)):
            m = (t < lens).reshape(batch, 1)
            xt = x[t]
            if op == "LSTM":
                ai, ao, af, ac = (xt @ w[d].T + wb + h @ r[d].T + rb).split(hidden, -1)
                if p is not None:
                    pi, po, pf = p[d].split(hidden)
                    ai, af = ai + pi * c, af + pf * c
                i, fg, g = f[0](cl(ai)), f[0](cl(af)), f[1](cl(ac))
                cn = fg * c + i * g
                if p is not None:
                    ao = ao + po * cn
                hn = f[0](cl(ao)) * f[2](cn)
                c = torch.where(m, cn, c)
            elif op == "GRU":
                xz, xr, xh = (xt @ w[d].T + wb).split(hidden, -1)
                rz, rr, rh = r[d].split(hidden, 0)
                bz, br, bh = rb.split(hidden)
                z, rg = f[0](cl(xz + h @ rz.T + bz)), f[0](cl(xr + h @ rr.T + br))
                ah = xh + (rg * (h @ rh.T + bh) if lbr else (rg * h) @ rh.T + bh)
                hn = (1 - z) * f[1](cl(ah)) + z * h
            else:
                hn = f[0](cl(xt @ w[d].T + wb + h @ r[d].T + rb))
            out[t] = torch.where(m, hn, torch.zeros_like(hn))
            h = torch.where(m, hn, h)
        ys.append(torch.stack(out))
        yhs.append(h)
        ycs.append(c)
    y, yh = torch.stack(ys, 1), torch.stack(yhs)
    yc = torch.stack(ycs) if op == "LSTM" else None
    if layout:
        y, yh = y.permute(2, 0, 1, 3), yh.transpose(0, 1)
        yc = None if yc is None else yc.transpose(0, 1)
    return y, yh, yc


# -- one-node models ----------------------------------------------------------------------------------------------
class Case:
    """A random one-node recurrent model with all inputs fed (W, R, B, P as initializers)."""

    def __init__(self, op, *, direction="forward", layout=0, acts=None, alphas=(), betas=(), clip=None, lbr=0,
                 peepholes=False, lens=None, init_c=True, seed=0, nonneg=False):
        rng = np.random.default_rng(seed)
        dirs = 2 if direction == "bidirectional" else 1
        g = GATES[op]
        self.op, self.direction, self.layout, self.clip, self.lbr = op, direction, layout, clip, lbr
        self.acts = (acts or DEFAULT_ACTS[op]) * (dirs if len(acts or DEFAULT_ACTS[op]) == len(DEFAULT_ACTS[op]) else 1)
        self.alphas, self.betas = alphas, betas
        rand = (lambda *s: np.abs(rng.normal(size=s))) if nonneg else (lambda *s: rng.normal(size=s))
        self.x = rand(*((N, T, I) if layout else (T, N, I))).astype(np.float32)
        self.w = rng.normal(size=(dirs, g * H, I)).astype(np.float32)
        self.r = rng.normal(size=(dirs, g * H, H)).astype(np.float32)
        self.b = rng.normal(size=(dirs, 2 * g * H)).astype(np.float32)
        state = (N, dirs, H) if layout else (dirs, N, H)
        self.h0 = rand(*state).astype(np.float32)
        self.c0 = rand(*state).astype(np.float32) if op == "LSTM" and init_c else None
        self.p = rng.normal(size=(dirs, 3 * H)).astype(np.float32) if peepholes else None
        self.lens = None if lens is None else np.asarray(lens, np.int32)
        feeds = {"X": self.x, "sequence_lens": self.lens, "initial_h": self.h0, "initial_c": self.c0}
        inits = {"W": self.w, "R": self.r, "B": self.b, "P": self.p}
        names = ["X", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
        inputs = [n if (feeds.get(n) is not None or inits.get(n) is not None) else "" for n in names]
        self.outputs = ["Y", "Y_h"] + (["Y_c"] if op == "LSTM" else [])
        attrs = dict(hidden_size=H, direction=direction, layout=layout, activations=self.acts)
        attrs.update({k: v for k, v in dict(activation_alpha=list(alphas), activation_beta=list(betas), clip=clip,
                                            linear_before_reset=lbr if op == "GRU" else None).items() if v})
        node = helper.make_node(op, inputs, self.outputs, name="rec", **attrs)
        self.feeds = {k: v for k, v in feeds.items() if v is not None}
        graph = helper.make_graph(
            [node], "g",
            [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "sequence_lens" else TensorProto.FLOAT,
                                           list(v.shape)) for k, v in self.feeds.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, list(shape)) for o, shape in
             zip(self.outputs, [(N, T, dirs, H) if layout else (T, dirs, N, H), state, state])],
            [helper.make_tensor(k, TensorProto.FLOAT, v.shape, v.ravel()) for k, v in inits.items() if v is not None],
        )
        self.model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
        self.graph = ModelGraph(self.model)

    def reference(self, **override):
        t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in self.feeds.items()
             if k != "sequence_lens"}
        c = lambda v: None if v is None else torch.tensor(v, dtype=torch.float64)  # noqa: E731
        outs = torch_recurrent(self.op, t["X"], c(self.w), c(self.r), c(self.b), t["initial_h"], t.get("initial_c"),
                               c(self.p), self.lens, self.direction, self.layout, self.acts, self.alphas, self.betas,
                               self.clip, self.lbr)
        return t, outs

    def rule(self, seeds, mode="grad", rules="caffe"):
        """The walk through the node: signals at the inputs, and the warnings."""
        signal = {n for n in ("X", "initial_h", "initial_c", "Y", "Y_h", "Y_c")}
        ctx = RuleContext(self.graph, np, "grad" if mode == "grad" else "eb", self.feeds, {}, signal,
                          dtype=np.float64, options=RuleOptions(recurrent_rules=rules))
        out = walk(ctx, self.graph.nodes, seeds, keep={"X", "initial_h", "initial_c"})
        return out, ctx.warnings

    def seeds(self, seed=1, nonneg=False):
        rng = np.random.default_rng(seed)
        _, outs = self.reference()
        return {name: (np.abs if nonneg else np.asarray)(rng.normal(size=tuple(o.shape)))
                for name, o in zip(self.outputs, outs) if o is not None}


VARIANTS = [
    ("LSTM", {}),
    ("LSTM", dict(direction="reverse", peepholes=True)),
    ("LSTM", dict(direction="bidirectional", lens=[4, 2, 3])),
    ("LSTM", dict(layout=1, direction="bidirectional", peepholes=True)),
    ("LSTM", dict(acts=["Sigmoid", "Relu", "Relu"], init_c=False)),
    ("LSTM", dict(clip=0.625, peepholes=True, lens=[1, 4, 3])),
    ("LSTM", dict(acts=["HardSigmoid", "LeakyRelu", "ScaledTanh"], alphas=(0.25, 0.125, 0.75), betas=(0.375, 1.25))),
    ("GRU", {}),
    ("GRU", dict(lbr=1, direction="bidirectional")),
    ("GRU", dict(layout=1, lens=[2, 4, 1], clip=0.5)),
    ("RNN", dict(direction="reverse")),
    ("RNN", dict(acts=["Relu", "Tanh"], direction="bidirectional", layout=1)),
]


def _id(v):
    return f"{v[0]}-" + "-".join(f"{k}={val}" for k, val in v[1].items())


@pytest.mark.parametrize("op,kw", VARIANTS, ids=[_id(v) for v in VARIANTS])
def test_reference_matches_onnxruntime(op, kw):
    case = Case(op, **kw)
    if case.layout:
        pytest.skip("onnxruntime runs layout=0 only; the layout=1 reference is the same code with transposes")
    got = ort.InferenceSession(case.model.SerializeToString()).run(None, case.feeds)
    _, ref = case.reference()
    for g, r in zip(got, ref):
        np.testing.assert_allclose(g, r.detach().numpy(), atol=2e-6)


@pytest.mark.parametrize("op,kw", VARIANTS, ids=[_id(v) for v in VARIANTS])
def test_grad_equals_autograd(op, kw):
    case = Case(op, **kw)
    seeds = case.seeds()
    inputs, outs = case.reference()
    total = sum((torch.tensor(seeds[n]) * o).sum() for n, o in zip(case.outputs, outs) if o is not None)
    total.backward()
    got, _ = case.rule(seeds, "grad")
    for name, tensor in inputs.items():
        np.testing.assert_allclose(got[name], tensor.grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_grad_with_signal_on_one_output_only():
    case = Case("LSTM", direction="bidirectional")
    seed = case.seeds()["Y_c"]
    inputs, outs = case.reference()
    (torch.tensor(seed) * outs[2]).sum().backward()
    got, _ = case.rule({"Y_c": seed}, "grad")
    np.testing.assert_allclose(got["X"], inputs["X"].grad.numpy(), rtol=1e-9, atol=1e-12)


# -- caffe rules ----------------------------------------------------------------------------------------------------
def _sig(v):
    return 1 / (1 + np.exp(-v))


def caffe_lstm_reference(x, w, r, b, h0, c0, dy, dyh, dyc):
    """Spec §3.2–3.4 transcribed for one forward ReLU-LSTM direction (ONNX gate order i, o, f, c): the unit's
    gradient, nothing on R h_{t−1}, EB (W⁺, Z over x_t) at the input projection."""
    steps, hidden = x.shape[0], r.shape[-1]
    h, c = h0, c0
    cache = []
    for t in range(steps):
        a = x[t] @ w.T + b[:4 * hidden] + h @ r.T + b[4 * hidden:]
        ai, ao, af, ag = np.split(a, 4, axis=-1)
        i, o, f, g = _sig(ai), _sig(ao), _sig(af), np.maximum(ag, 0)
        c_prev, c = c, f * c + i * g
        cache.append((i, o, f, g, ag, c_prev, c))
        h = o * np.maximum(c, 0)
    dh_next, dc = dyh, dyc
    da = np.zeros(x.shape[:2] + (4 * hidden,))
    for t in reversed(range(steps)):
        i, o, f, g, ag, c_prev, c = cache[t]
        dh = dy[t] + (dh_next if t == steps - 1 else 0)
        kappa = dc + dh * o * (c > 0)
        da[t] = np.concatenate([kappa * g * i * (1 - i), dh * np.maximum(c, 0) * o * (1 - o),
                                kappa * c_prev * f * (1 - f), kappa * i * (ag > 0)], axis=-1)
        dc = kappa * f
    wp = np.maximum(w, 0)
    z = x @ wp.T
    q = np.divide(da, z, out=np.zeros_like(da), where=z != 0)
    return x * (q @ wp), dc


def test_caffe_lstm_equals_spec_closed_form():
    case = Case("LSTM", acts=["Sigmoid", "Relu", "Relu"], nonneg=True, seed=3)
    seeds = case.seeds(nonneg=True)
    got, warnings = case.rule(seeds, "eb", "caffe")
    x, h0, c0 = (case.feeds[k].astype(np.float64) for k in ("X", "initial_h", "initial_c"))
    want_x, want_c0 = caffe_lstm_reference(x, case.w[0].astype(np.float64), case.r[0].astype(np.float64),
                                           case.b[0].astype(np.float64), h0[0], c0[0], seeds["Y"][:, 0],
                                           seeds["Y_h"][0], seeds["Y_c"][0])
    np.testing.assert_allclose(got["X"], want_x, rtol=1e-10, atol=1e-14)
    np.testing.assert_allclose(got["initial_c"][0], want_c0, rtol=1e-10, atol=1e-14)
    assert "initial_h" not in got or not got["initial_h"].any()  # the R path carries nothing
    assert (got["X"] >= 0).all() and not warnings


@pytest.mark.parametrize("op,kw", [("LSTM", dict(acts=["Sigmoid", "Tanh", "Tanh"])),
                                   ("LSTM", dict(direction="bidirectional")), ("GRU", {}), ("RNN", {})])
def test_caffe_tanh_units_are_finite_and_warn(op, kw):
    case = Case(op, nonneg=True, **kw)
    got, warnings = case.rule(case.seeds(nonneg=True), "eb", "caffe")
    assert np.isfinite(got["X"]).all()
    assert any(w.startswith("[recurrent-relu]") for w in warnings)


def test_caffe_gru_cuts_the_reset_gate_and_keeps_the_direct_path():
    case = Case("GRU", acts=["Sigmoid", "Relu"], nonneg=True)
    seeds = {"Y_h": np.abs(case.seeds()["Y_h"])}
    got, _ = case.rule(seeds, "eb", "caffe")
    _, outs = case.reference()
    # T steps of the direct path only: δh_0 = δh_T ⊙ Π z_t
    z_prod = np.ones((N, H))
    x, w, r, b = case.x.astype(np.float64), case.w[0], case.r[0], case.b[0]
    h = case.h0[0].astype(np.float64)
    for t in range(T):
        xz = x[t] @ w[:H].T + b[:H] + h @ r[:H].T + b[3 * H:4 * H]
        z = _sig(xz)
        xr = _sig(x[t] @ w[H:2 * H].T + b[H:2 * H] + h @ r[H:2 * H].T + b[4 * H:5 * H])
        ht = np.maximum(x[t] @ w[2 * H:].T + b[2 * H:3 * H] + (xr * h) @ r[2 * H:].T + b[5 * H:], 0)
        h = (1 - z) * ht + z * h
        z_prod = z_prod * z
    np.testing.assert_allclose(got["initial_h"][0], seeds["Y_h"][0] * z_prod, rtol=1e-10)
    np.testing.assert_allclose(h, outs[1].detach().numpy()[0], rtol=1e-5)


# -- excitation rules -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("op,kw", [
    ("LSTM", dict(acts=["Sigmoid", "Relu", "Relu"])),
    ("LSTM", dict(acts=["Sigmoid", "Relu", "Relu"], direction="bidirectional", layout=1, lens=[4, 1, 3])),
    ("GRU", dict(acts=["Sigmoid", "Relu"])),
    ("GRU", dict(acts=["Sigmoid", "Relu"], lbr=1, direction="reverse")),
    ("RNN", dict(acts=["Relu"])),
])
def test_excitation_conserves_mass_through_time(op, kw):
    case = Case(op, nonneg=True, **kw)
    case.w, case.r = np.abs(case.w), np.abs(case.r)  # every normaliser positive: nothing is lost at Z == 0
    case = _with_weights(case)
    seeds = case.seeds(nonneg=True)
    if case.lens is not None:  # outputs past a sequence's end are constants: they take no signal
        seeds.pop("Y")
    got, warnings = case.rule(seeds, "eb", "excitation")
    total_in = sum(float(v.sum()) for v in seeds.values())
    total_out = sum(float(v.sum()) for v in got.values())
    assert total_out == pytest.approx(total_in, rel=1e-10)
    assert all((v >= 0).all() for v in got.values()) and not warnings
    assert got["initial_h"].sum() > 0  # the recurrence carries signal


def _with_weights(case: Case) -> Case:
    """The same case rebuilt around modified weights (initializers)."""
    for init in case.model.graph.initializer:
        value = {"W": case.w, "R": case.r}.get(init.name)
        if value is not None:
            init.CopyFrom(helper.make_tensor(init.name, TensorProto.FLOAT, value.shape, value.ravel()))
    case.graph = ModelGraph(case.model)
    return case


def test_excitation_lstm_gates_take_no_signal():
    """Under excitation only the candidate rows of W are used: zeroing the gate rows of W changes nothing."""
    case = Case("LSTM", acts=["Sigmoid", "Relu", "Relu"], nonneg=True, seed=5)
    seeds = case.seeds(nonneg=True)
    before, _ = case.rule(seeds, "eb", "excitation")
    wp = np.maximum(case.w[0], 0).astype(np.float64)
    z = case.x.astype(np.float64) @ wp[3 * H:].T  # the candidate rows' x-contributions
    assert before["X"].shape == case.x.shape and z.shape == (T, N, H)
    # linearity in the signal: doubling the seeds doubles every output
    doubled, _ = case.rule({k: 2 * v for k, v in seeds.items()}, "eb", "excitation")
    np.testing.assert_allclose(doubled["X"], 2 * before["X"], rtol=1e-12)


def test_unknown_rule_set_is_an_error():
    from ebr_onnx import EbrError

    case = Case("RNN")
    with pytest.raises(EbrError, match="recurrent_rules"):
        case.rule(case.seeds(), "eb", "lrp")
