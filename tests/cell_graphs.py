"""Tiny recurrent models built with onnx.helper for the cell tests: the same LSTM or GRU (ReLU or tanh) as one fused
op and unrolled into primitive ops in PyTorch's, Keras's and TF1's (one stacked projection over ``[x_t, h_{t-1}]``)
forms, with peepholes, or as one stateful step whose state is a model input, plus a walk driver and a NumPy reference
of the release's EB-R pass (``shared/spec/caffe-reference.md`` §3.4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ebr_onnx import Explainer
from ebr_onnx.core.options import RuleOptions
from ebr_onnx.core.walk import walk
from ebr_onnx.passes.cells import find_cells
from ebr_onnx.recurrent.cell_rules import cell_needs, cell_overrides

OPSET = 17


@dataclass
class Weights:
    """ONNX-order weights (LSTM i, o, f, c; GRU z, r, h) of one forward recurrent layer, a feature layer V in front
    and a classifier W8 behind."""

    v: np.ndarray  # (D, D0): x = relu(frames @ V)
    w: np.ndarray  # (G·H, D)
    r: np.ndarray  # (G·H, H)
    wb: np.ndarray  # (G·H,)
    rb: np.ndarray  # (G·H,)
    w8: np.ndarray  # (K, H)
    b8: np.ndarray  # (K,)
    peep: np.ndarray | None = None  # (3·H,): LSTM peepholes P in ONNX order i, o, f

    @classmethod
    def random(cls, d0: int = 5, d: int = 6, h: int = 4, k: int = 3, seed: int = 0, gates: int = 4,
               peepholes: bool = False) -> "Weights":
        rng = np.random.default_rng(seed)
        f = lambda *s: rng.normal(0, 0.6, s).astype(np.float32)  # noqa: E731
        return cls(f(d0, d), f(gates * h, d), f(gates * h, h), f(gates * h), f(gates * h), f(k, h), f(k),
                   f(3 * h) if peepholes else None)

    def rows(self, array: np.ndarray, order: str, onnx_order: str) -> np.ndarray:
        """The gate blocks of ``array`` (rows of W, R or a bias, in ``onnx_order``) restacked in ``order``."""
        h = self.r.shape[1]
        return np.concatenate([array[onnx_order.index(g) * h:(onnx_order.index(g) + 1) * h] for g in order])


def _init(name: str, array: np.ndarray) -> TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def _model(nodes, inits, steps: int, batch: int, d0: int, classes: int, states: dict[str, str] | None = None,
           state_shape: tuple[int, ...] = ()) -> onnx.ModelProto:
    """The graph of ``nodes``: input ``frames``, output ``logits``; ``states`` maps state inputs to the outputs that
    carry them on (a stateful step), all of shape ``state_shape``."""
    float_io = lambda name, shape: helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)  # noqa: E731
    states = states or {}
    graph = helper.make_graph(
        nodes, "lstm", [float_io("frames", [steps, batch, d0])] + [float_io(k, state_shape) for k in states],
        [float_io("logits", [steps, batch, classes])] + [float_io(v, state_shape) for v in states.values()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def _front(p: Weights) -> tuple[list, list]:
    nodes = [helper.make_node("MatMul", ["frames", "V"], ["pre"], name="fc"),
             helper.make_node("Relu", ["pre"], ["x"], name="relu")]
    return nodes, [_init("V", p.v)]


def _back(p: Weights, hidden_seq: str) -> tuple[list, list]:
    nodes = [helper.make_node("MatMul", [hidden_seq, "W8_T"], ["scores"], name="classifier"),
             helper.make_node("Add", ["scores", "b8"], ["logits"], name="classifier_bias")]
    return nodes, [_init("W8_T", p.w8.T.copy()), _init("b8", p.b8)]


def fused_lstm(p: Weights, steps: int, batch: int = 1, act: str = "Relu", stateful: bool = False
               ) -> onnx.ModelProto:
    """frames → relu(frames V) → LSTM (activations Sigmoid, act, act; peepholes ``p.peep``) → per-step classifier;
    ``stateful``: the initial states are the model inputs ``h0``, ``c0`` (1, N, H) and the last ones outputs."""
    inputs = ["x", "W", "R", "B", "", "h0" if stateful else "", "c0" if stateful else "",
              "" if p.peep is None else "P"]
    lstm = helper.make_node("LSTM", inputs[:8 if p.peep is not None else 7 if stateful else 4],
                            ["Y", "Y_h", "Y_c"] if stateful else ["Y"], name="lstm", hidden_size=p.r.shape[1],
                            activations=["Sigmoid", act, act])
    return _fused(p, lstm, steps, batch, {"h0": "Y_h", "c0": "Y_c"} if stateful else None)


#: The LSTM cell forms :func:`unrolled_lstm` writes.
LSTM_STYLES = ("pytorch", "keras", "concat")


def unrolled_lstm(p: Weights, steps: int, batch: int = 1, act: str = "Relu", style: str = "pytorch",
                  stateful: bool = False) -> onnx.ModelProto:
    """The same network with the LSTM unrolled: ``style="pytorch"`` as PyTorch exports an ``LSTMCell`` loop
    (Gemm(x) + Gemm(h) → Split), ``"keras"`` as a Keras cell (MatMul(x) + MatMul(h), one bias add, gates sliced),
    ``"concat"`` as TF1's ``BasicLSTMCell`` (MatMul(Concat([x, h]), [W; R]) + b, split in TF's order i, j, f, o, the
    forget bias 1 added to f). With ``p.peep``, the peepholes ``P_i ⊙ c_{t-1}``, ``P_f ⊙ c_{t-1}``, ``P_o ⊙ c_t`` are
    added to the gates' pre-activations. ``stateful``: the initial states are the model inputs ``h_prev``, ``c_prev``
    (N, H) and the last ones outputs (one step: a streaming model's cell)."""
    front, inits = _front(p)
    hidden = p.r.shape[1]
    h, c = ("h_prev", "c_prev") if stateful else ("h_init", "c_init")
    if not stateful:
        inits += [_init(h, np.zeros((batch, hidden), np.float32)), _init(c, np.zeros((batch, hidden), np.float32))]
    inits += [_init("axis0", np.array([0], np.int64)), _init("axis1", np.array([1], np.int64))]
    if style == "pytorch":
        inits += [_init("W_ih", p.w), _init("W_hh", p.r), _init("b_ih", p.wb), _init("b_hh", p.rb)]
    elif style == "keras":
        inits += [_init("W_T", p.w.T.copy()), _init("R_T", p.r.T.copy()), _init("b", p.wb + p.rb)]
        inits += [_init(f"at{k}", np.array([k * hidden], np.int64)) for k in range(5)]
    else:
        stacked = np.concatenate([p.w, p.r], axis=1)  # (4H, D + H): [W R] on x_t, h_{t-1} stacked
        inits += [_init("K", p.rows(stacked, "icfo", "iofc").T.copy()),
                  _init("b", p.rows(p.wb + p.rb, "icfo", "iofc") - np.repeat(np.float32([0, 0, 1, 0]), hidden)),
                  _init("forget_bias", np.float32(1))]
    if p.peep is not None:
        inits += [_init(f"P_{g}", p.peep[k * hidden:(k + 1) * hidden]) for k, g in enumerate("iof")]
    nodes = []
    seq = []
    for t in range(steps):
        n, x_t = _step(nodes, inits, t)
        if style == "pytorch":
            a = n("Add", [n("Gemm", [h, "W_hh", "b_hh"], "hr", transB=1),
                          n("Gemm", [x_t, "W_ih", "b_ih"], "xw", transB=1)], "gates")
            nodes.append(helper.make_node("Split", [a], [f"a_{g}_{t}" for g in "iofc"], name=f"split_{t}", axis=1))
        elif style == "keras":
            a = n("Add", [n("Add", [n("MatMul", [x_t, "W_T"], "xw"), n("MatMul", [h, "R_T"], "hr")], "sum"), "b"],
                  "gates")
            for k, g in enumerate("iofc"):
                n("Slice", [a, f"at{k}", f"at{k + 1}", "axis1"], f"a_{g}")
        else:
            a = n("Add", [n("MatMul", [n("Concat", [x_t, h], "xh", axis=1), "K"], "xhk"), "b"], "gates")
            nodes.append(helper.make_node("Split", [a], [f"a_{g}_{t}" for g in "icfo"], name=f"split_{t}", axis=1))
            n("Add", [f"a_f_{t}", "forget_bias"], "a_f_biased")
        pre = {g: f"a_{g}_{t}" for g in "iofc"}
        if style == "concat":
            pre["f"] = f"a_f_biased_{t}"
        if p.peep is not None:
            for g in "if":
                pre[g] = n("Add", [pre[g], n("Mul", [f"P_{g}", c], f"peep_{g}")], f"a_{g}_peep")
        i, f = (n("Sigmoid", [pre[g]], g) for g in "if")
        g = n(act, [pre["c"]], "g")
        forget, write = ([c, f], [i, g]) if style == "concat" else ([f, c], [i, g])
        c = n("Add", [n("Mul", forget, "fc"), n("Mul", write, "ig")], "c")
        if p.peep is not None:
            pre["o"] = n("Add", [n("Mul", [c, "P_o"], "peep_o"), pre["o"]], "a_o_peep")
        o, act_c = n("Sigmoid", [pre["o"]], "o"), n(act, [c], "act_c")
        h = n("Mul", [act_c, o] if style == "concat" else [o, act_c], "h")
        seq.append(n("Unsqueeze", [h, "axis0"], "h_seq"))
    nodes.append(helper.make_node("Concat", seq, ["hs"], name="concat", axis=0))
    back, back_inits = _back(p, "hs")
    return _model(front + nodes + back, inits + back_inits, steps, batch, p.v.shape[0], p.w8.shape[0],
                  {"h_prev": h, "c_prev": c} if stateful else None, (batch, hidden))


def _step(nodes: list, inits: list, t: int):
    """Step ``t`` of an unrolled cell: an adder ``n(op, inputs, out, **attrs)`` that appends a node named and
    outputting ``f"{out}_{t}"`` (and returns that name), and the step's input ``x_t`` (a Gather of frame t)."""
    def n(op: str, ins: list, out: str, **kw) -> str:
        nodes.append(helper.make_node(op, ins, [f"{out}_{t}"], name=f"{out}_{t}", **kw))
        return f"{out}_{t}"

    inits.append(_init(f"t{t}", np.array(t, np.int64)))
    return n, n("Gather", ["x", f"t{t}"], "x", axis=0)


def fused_gru(p: Weights, steps: int, batch: int = 1, act: str = "Relu", linear_before_reset: int = 1,
              stateful: bool = False) -> onnx.ModelProto:
    """frames → relu(frames V) → GRU (activations Sigmoid, act) → per-step classifier; ``stateful``: the initial
    state is the model input ``h0`` (1, N, H) and the last one an output."""
    gru = helper.make_node("GRU", ["x", "W", "R", "B", "", "h0"] if stateful else ["x", "W", "R", "B"],
                           ["Y", "Y_h"] if stateful else ["Y"], name="gru", hidden_size=p.r.shape[1],
                           activations=["Sigmoid", act], linear_before_reset=linear_before_reset)
    return _fused(p, gru, steps, batch, {"h0": "Y_h"} if stateful else None)


def _fused(p: Weights, op: onnx.NodeProto, steps: int, batch: int, states: dict[str, str] | None
           ) -> onnx.ModelProto:
    """frames → relu(frames V) → the fused recurrent ``op`` (inputs x, W, R, B, P, state inputs ``states``) →
    per-step classifier."""
    front, inits = _front(p)
    squeeze = helper.make_node("Squeeze", ["Y", "axis1"], ["hs"], name="squeeze")
    back, back_inits = _back(p, "hs")
    inits += [_init("W", p.w[None]), _init("R", p.r[None]), _init("B", np.concatenate([p.wb, p.rb])[None]),
              _init("axis1", np.array([1], np.int64))] + back_inits
    inits += [] if p.peep is None else [_init("P", p.peep[None])]
    return _model(front + [op, squeeze] + back, inits, steps, batch, p.v.shape[0], p.w8.shape[0], states,
                  (1, batch, p.r.shape[1]))


def unrolled_gru(p: Weights, steps: int, batch: int = 1, act: str = "Relu", style: str = "pytorch",
                 stateful: bool = False) -> onnx.ModelProto:
    """The GRU unrolled: ``style="pytorch"`` as PyTorch exports a ``GRUCell`` loop (reset after the recurrent
    projection, ``h = h̃ + z ⊙ (h_{t−1} − h̃)``; the fused op's ``linear_before_reset=1``), ``"keras"`` as a Keras cell
    with ``reset_after=False`` (``h̃ = act(W_h x + R_h (r ⊙ h) + b)``, ``h = z ⊙ h_{t−1} + (1 − z) ⊙ h̃``;
    ``linear_before_reset=0``), ``"concat"`` as TF1's ``GRUCell`` (``r, u = split(σ([x, h]·K_g + b_g))``,
    ``h̃ = act([x, r ⊙ h]·K_c + b_c)``, ``h = u ⊙ h + (1 − u) ⊙ h̃``; ``linear_before_reset=0``). ``stateful``: the
    initial state is the model input ``h_prev`` (N, H) and the last one an output."""
    front, inits = _front(p)
    hidden = p.r.shape[1]
    inits += [_init("b_ih", p.wb), _init("axis0", np.array([0], np.int64))]
    inits += [] if stateful else [_init("h_init", np.zeros((batch, hidden), np.float32))]
    if style == "pytorch":
        inits += [_init("W_ih", p.w), _init("W_hh", p.r), _init("b_hh", p.rb)]
    elif style == "concat":
        stacked = np.concatenate([p.w, p.r], axis=1)  # (3H, D + H)
        inits += [_init("K_g", p.rows(stacked, "rz", "zrh").T.copy()), _init("b_g", p.rows(p.wb + p.rb, "rz", "zrh")),
                  _init("K_c", p.rows(stacked, "h", "zrh").T.copy()), _init("b_c", p.rows(p.wb + p.rb, "h", "zrh")),
                  _init("one", np.ones((), np.float32))]
    else:
        inits += [_init("W_T", p.w.T.copy()), _init("R_zr_T", p.r[:2 * hidden].T.copy()),
                  _init("R_h_T", p.r[2 * hidden:].T.copy()), _init("b_zr", p.rb[:2 * hidden]),
                  _init("b_h", p.rb[2 * hidden:]), _init("one", np.ones((), np.float32)),
                  _init("axis1", np.array([1], np.int64))]
        inits += [_init(f"at{k}", np.array([k * hidden], np.int64)) for k in range(3)]
    nodes = []
    h, seq = "h_prev" if stateful else "h_init", []
    for t in range(steps):
        n, x_t = _step(nodes, inits, t)
        if style == "concat":
            gates = n("Sigmoid", [n("Add", [n("MatMul", [n("Concat", [x_t, h], "xh", axis=1), "K_g"], "xhk"), "b_g"],
                                    "a_rz")], "rz")
            nodes.append(helper.make_node("Split", [gates], [f"r_{t}", f"u_{t}"], name=f"split_{t}", axis=1))
            x_rh = n("Concat", [x_t, n("Mul", [f"r_{t}", h], "reset")], "x_rh", axis=1)
            hh = n(act, [n("Add", [n("MatMul", [x_rh, "K_c"], "x_rh_k"), "b_c"], "a_h")], "hh")
            h = n("Add", [n("Mul", [f"u_{t}", h], "keep"), n("Mul", [n("Sub", ["one", f"u_{t}"], "not_u"), hh],
                                                                "write")], "h")
        elif style == "pytorch":
            xw, hr = n("Gemm", [x_t, "W_ih", "b_ih"], "xw", transB=1), n("Gemm", [h, "W_hh", "b_hh"], "hr", transB=1)
            for src in (xw, hr):
                nodes.append(helper.make_node("Split", [src], [f"{src}_{g}" for g in "zrh"], name=f"split_{src}",
                                              axis=1))
            z = n("Sigmoid", [n("Add", [f"{hr}_z", f"{xw}_z"], "a_z")], "z")
            r = n("Sigmoid", [n("Add", [f"{hr}_r", f"{xw}_r"], "a_r")], "r")
            hh = n(act, [n("Add", [f"{xw}_h", n("Mul", [f"{hr}_h", r], "reset")], "a_h")], "hh")
            h = n("Add", [n("Mul", [n("Sub", [h, hh], "diff"), z], "move"), hh], "h")
        else:
            xw = n("Add", [n("MatMul", [x_t, "W_T"], "xw_mm"), "b_ih"], "xw")
            nodes.append(helper.make_node("Split", [xw], [f"{xw}_{g}" for g in "zrh"], name=f"split_{xw}", axis=1))
            rec = n("Add", [n("MatMul", [h, "R_zr_T"], "rec_mm"), "b_zr"], "rec")
            rz, rr = (n("Slice", [rec, f"at{k}", f"at{k + 1}", "axis1"], f"rec_{g}") for k, g in enumerate("zr"))
            z = n("Sigmoid", [n("Add", [f"{xw}_z", rz], "a_z")], "z")
            r = n("Sigmoid", [n("Add", [f"{xw}_r", rr], "a_r")], "r")
            rh = n("Add", [n("MatMul", [n("Mul", [r, h], "reset"), "R_h_T"], "rh_mm"), "b_h"], "rh")
            hh = n(act, [n("Add", [f"{xw}_h", rh], "a_h")], "hh")
            h = n("Add", [n("Mul", [z, h], "keep"), n("Mul", [n("Sub", ["one", z], "not_z"), hh], "write")], "h")
        seq.append(n("Unsqueeze", [h, "axis0"], "h_seq"))
    nodes.append(helper.make_node("Concat", seq, ["hs"], name="concat", axis=0))
    back, back_inits = _back(p, "hs")
    return _model(front + nodes + back, inits + back_inits, steps, batch, p.v.shape[0], p.w8.shape[0],
                  {"h_prev": h} if stateful else None, (batch, hidden))


def walk_to(model: onnx.ModelProto, frames: np.ndarray, layer: str, mode: str, rules: str | None,
            target: int, step: int = -1, negate: bool = False, classifier: str = "classifier",
            logits: str = "logits") -> np.ndarray:
    """One backward pass from a one-hot at ``logits[step, :, target]`` to ``layer``, with the unrolled cells' rule
    set ``rules`` (``None``: registry rules only); ``negate`` runs the contrastive dual (``classifier`` negated)."""
    ex = Explainer(model)
    g = ex.graph
    nodes = g.nodes_between([layer], [logits])
    cells = find_cells(g, [ex.input_name])
    overrides = cell_overrides(g, cells, rules) if rules else {}
    hook = cell_needs(g, cells, rules) if rules else None
    feeds = ex.engine.feeds({ex.input_name: frames})  # with the defaults of other inputs (clip markers)
    shapes = ex.engine.shapes_for(feeds)
    values = ex.engine.runner.run(feeds, ex.engine.capture_plan(nodes, mode, shapes, [logits], overrides_needs=hook))
    ctx = ex.engine.context(mode, values, shapes, overrides=overrides,
                            options=RuleOptions(recurrent_rules=rules or "caffe"),
                            negated=frozenset({classifier}) if negate else frozenset())
    top = np.zeros_like(values[logits])
    top[step, ..., target] = 1
    return walk(ctx, nodes, {logits: top}, keep={layer})[layer]


def release_pass(p: Weights, x: np.ndarray, target: int, sign: float = 1.0, order: str = "iofc") -> np.ndarray:
    """The release's EB-R pass at the LSTM input, in float64 (spec §3.4, N = 1, prior at the last step, ReLU-LSTM,
    gates stacked in ``order``: ONNX's i, o, f, c or Caffe's i, f, o, c): the classifier's Eq. 8, the unit's
    gradient, no h-to-h signal, Eq. 8 over x_t at W."""
    relu = lambda v: np.maximum(v, 0)  # noqa: E731
    sig = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    x = x[:, 0].astype(np.float64)
    steps, hidden = x.shape[0], p.r.shape[1]
    h, c, cache = np.zeros(hidden), np.zeros(hidden), []
    for t in range(steps):
        a = p.w @ x[t] + p.wb + p.r @ h + p.rb
        gate = dict(zip(order, np.split(a, 4)))
        a_c = gate["c"]
        i, o, f, g = sig(gate["i"]), sig(gate["o"]), sig(gate["f"]), relu(a_c)
        c_prev, c = c, f * c + i * g
        h = o * relu(c)
        cache.append((i, o, f, g, a_c, c_prev, c))
    w8 = relu(sign * p.w8[target].astype(np.float64))
    e = h * w8 / (w8 @ h) if w8 @ h else np.zeros(hidden)
    dh, dc, da = e, np.zeros(hidden), np.zeros((steps, 4 * hidden))
    for t in reversed(range(steps)):
        i, o, f, g, a_c, c_prev, c = cache[t]
        kappa = dc + dh * o * (c > 0)
        delta = {"i": kappa * g * i * (1 - i), "o": dh * relu(c) * o * (1 - o), "f": kappa * c_prev * f * (1 - f),
                 "c": kappa * i * (a_c > 0)}
        da[t] = np.concatenate([delta[k] for k in order])
        dc, dh = f * kappa, np.zeros(hidden)
    w_pos = relu(p.w.astype(np.float64))
    z = x @ w_pos.T
    q = np.divide(da, z, out=np.zeros_like(da), where=z != 0)
    return (x * (q @ w_pos))[:, None]
