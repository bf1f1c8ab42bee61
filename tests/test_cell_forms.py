"""Cell forms built with onnx.helper (tests/cell_graphs.py): a step as one stacked projection over
``Concat([x_t, h_{t-1}])`` (TF1's ``BasicLSTMCell``, gates in TF's order with a forget bias, and ``GRUCell``, whose
r and u are split out of one σ), peephole LSTMs, and stateful single steps whose state is a model input.

Each is recognised (ebr_onnx.passes.cells) and, through ``Explainer.explain``, gives the maps of the fused ONNX op with
the same weights for ``ebr`` and ``cebr`` under both recurrent rule sets and for ``gradr``; ``gradr`` also equals torch
autograd of the same computation (an independent float64 transcription of the ONNX operator definitions)."""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import pytest
from cell_graphs import LSTM_STYLES, Weights, fused_gru, fused_lstm, unrolled_gru, unrolled_lstm

from ebr_onnx import Explainer
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.passes.cells import Cell, GateSum, GruCell, StackedGateSum, find_cells

torch = pytest.importorskip("torch")

STEPS, HIDDEN = 5, 4


# -- recognition ----------------------------------------------------------------------------------------------------
def test_finds_stacked_lstm_cells() -> None:
    """TF1 BasicLSTMCell: MatMul(Concat([x_t, h_{t-1}]), K) + b, split i, j, f, o, forget bias added to f."""
    graph = ModelGraph(unrolled_lstm(Weights.random(seed=1), 3, style="concat"))
    cells = find_cells(graph)
    assert [(c.chain, c.step) for c in cells] == [(0, 0), (0, 1), (0, 2)]
    for t, cell in enumerate(cells):
        s = cell.gate_sum
        assert isinstance(cell, Cell) and isinstance(s, StackedGateSum)
        assert (s.name, s.concat, s.input_operand) == (f"xhk_{t}", f"xh_{t}", f"x_{t}")
        assert s.recurrent_operand == ("h_init" if t == 0 else cells[t - 1].h) and cell.x_inputs == (f"x_{t}",)
        assert {f"a_f_biased_{t}", f"gates_{t}", f"split_{t}"} <= set(cell.unit_nodes)
        assert s.name not in cell.unit_nodes and cell.peepholes == ()


def test_finds_stacked_gru_cells() -> None:
    """TF1 GRUCell: r, u split out of σ([x, h]·K_g + b_g); the candidate reads Concat([x, r ⊙ h])."""
    graph = ModelGraph(unrolled_gru(Weights.random(seed=1, gates=3), 3, style="concat"))
    cells = find_cells(graph)
    assert [(c.chain, c.step) for c in cells] == [(0, 0), (0, 1), (0, 2)]
    for t, cell in enumerate(cells):
        assert isinstance(cell, GruCell) and cell.form == "mix"
        assert cell.gates["z"] == cell.gates["r"] == f"rz_{t}"  # one σ over both gates
        assert (cell.update, cell.reset, cell.reset_product) == (f"u_{t}", f"r_{t}", f"reset_{t}")
        assert cell.sums["z"] == cell.sums["r"] == StackedGateSum(f"xhk_{t}", f"xh_{t}", cell.h_prev, f"x_{t}")
        assert cell.sums["h"] == StackedGateSum(f"x_rh_k_{t}", f"x_rh_{t}", f"reset_{t}", f"x_{t}")
        assert f"split_{t}" in cell.unit_nodes


@pytest.mark.parametrize("style", LSTM_STYLES)
def test_finds_peepholes(style: str) -> None:
    """i and f read P ⊙ c_{t-1}, o reads P ⊙ c_t: the products and their adds are in the unit."""
    graph = ModelGraph(unrolled_lstm(Weights.random(seed=1, peepholes=True), 3, style=style))
    cells = find_cells(graph)
    assert [c.step for c in cells] == [0, 1, 2]
    for t, cell in enumerate(cells):
        assert cell.peepholes == (f"peep_i_{t}", f"peep_f_{t}", f"peep_o_{t}")
        assert {f"a_{g}_peep_{t}" for g in "ifo"} | set(cell.peepholes) <= set(cell.unit_nodes)
        assert cell.c_prev == ("c_init" if t == 0 else cells[t - 1].c)


@pytest.mark.parametrize("style", LSTM_STYLES)
def test_finds_a_stateful_lstm_step(style: str) -> None:
    """h_{t-1} and c_{t-1} are model inputs: with the explained input named they are the step's constants."""
    graph = ModelGraph(unrolled_lstm(Weights.random(seed=1), 1, style=style, stateful=True))
    (cell,) = find_cells(graph, ["frames"])
    assert cell.c_prev == "c_prev" and cell.x_inputs == ("x_0",)
    s = cell.gate_sum
    if isinstance(s, GateSum):  # the recurrent projection is kept: its R⁺h_{t-1} counts in the excitation rule's Z
        assert "h_prev" in graph.node_by_name[s.recurrent_projection].inputs
    else:
        assert s.recurrent_operand == "h_prev"


@pytest.mark.parametrize("style", ["pytorch", "keras", "concat"])
def test_finds_a_stateful_gru_step(style: str) -> None:
    graph = ModelGraph(unrolled_gru(Weights.random(seed=1, gates=3), 1, style=style, stateful=True))
    (cell,) = find_cells(graph, ["frames"])
    assert cell.h_prev == "h_prev" and cell.x_inputs == ("x_0",)


# -- the same maps as the fused op ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Form:
    """A cell form (``style`` of :func:`unrolled_lstm` / :func:`unrolled_gru`) and the fused op it equals, both built
    from the same weights; ``states``: a stateful step's state inputs, unrolled name → fused name."""

    kind: str
    style: str
    peepholes: bool = False
    states: tuple[tuple[str, str], ...] = ()

    @property
    def steps(self) -> int:
        return 1 if self.states else STEPS

    @property
    def linear_before_reset(self) -> int:
        """The fused GRU's attribute that PyTorch's GRUCell form (reset after the recurrent projection) equals."""
        return int(self.style == "pytorch")

    def weights(self) -> Weights:
        return Weights.random(seed=3, h=HIDDEN, gates=4 if self.kind == "LSTM" else 3, peepholes=self.peepholes)

    def models(self, act: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
        p, steps, stateful = self.weights(), self.steps, bool(self.states)
        if self.kind == "LSTM":
            return (fused_lstm(p, steps, act=act, stateful=stateful),
                    unrolled_lstm(p, steps, act=act, style=self.style, stateful=stateful))
        return (fused_gru(p, steps, act=act, linear_before_reset=self.linear_before_reset, stateful=stateful),
                unrolled_gru(p, steps, act=act, style=self.style, stateful=stateful))


_LSTM_STATE = (("h_prev", "h0"), ("c_prev", "c0"))
FORMS = {
    "lstm-concat": Form("LSTM", "concat"),
    "gru-concat": Form("GRU", "concat"),
    **{f"lstm-peepholes-{s}": Form("LSTM", s, peepholes=True) for s in LSTM_STYLES},
    **{f"lstm-stateful-{s}": Form("LSTM", s, states=_LSTM_STATE) for s in LSTM_STYLES},
    "lstm-stateful-peepholes": Form("LSTM", "concat", peepholes=True, states=_LSTM_STATE),
    **{f"gru-stateful-{s}": Form("GRU", s, states=(("h_prev", "h0"),)) for s in ("pytorch", "keras", "concat")},
}


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.abs(np.random.default_rng(1).normal(size=(STEPS, 1, 5))).astype(np.float32)


@pytest.fixture(scope="module")
def state() -> np.ndarray:
    """A non-negative initial state (a ReLU cell's h and c are), the same for h and c."""
    return np.abs(np.random.default_rng(2).normal(size=(1, HIDDEN))).astype(np.float32)


def _explain(explainer: Explainer, form: Form, names: tuple[str, ...], frames: np.ndarray, state: np.ndarray,
             **options):
    """One explanation; a stateful step's state inputs get ``state`` (the fused op's with a leading direction axis)."""
    extra = {name: state if name in dict(form.states) else state[None] for name in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a pass with no positive classifier weight (zero-total)
        return explainer.explain(frames[:form.steps], extra_inputs=extra, time_axis=0 if form.states else None,
                                 **options)


def _close(a: np.ndarray, b: np.ndarray) -> None:
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * max(float(np.abs(b).max()), 1e-12))


@pytest.mark.parametrize("name", list(FORMS))
@pytest.mark.parametrize("method, act", [("ebr", "Relu"), ("cebr", "Relu"), ("gradr", "Tanh")])
def test_maps_equal_the_fused_op(name: str, method: str, act: str, frames, state) -> None:
    form = FORMS[name]
    fused, unrolled = (Explainer(m) for m in form.models(act))
    reached = 0
    for rules in ("caffe", "excitation") if method != "gradr" else ("caffe",):
        for target in range(3):
            options = dict(target=target, method=method, recurrent_rules=rules)
            want = _explain(fused, form, tuple(n for _, n in form.states), frames, state, **options)
            got = _explain(unrolled, form, tuple(n for n, _ in form.states), frames, state, **options)
            assert len(got.warnings) == len(want.warnings)
            _close(got.signal, want.signal)
            _close(got.maps, want.maps)
            reached += bool(np.abs(want.signal).max() > 0)
    assert reached >= 2


# -- BP-R against torch autograd --------------------------------------------------------------------------------------
def torch_logits(p: Weights, kind: str, lbr: int, frames, h0=None, c0=None):
    """frames → relu(frames V) → ONNX LSTM (i, o, f, c; peepholes P) or GRU (z, r, h) with tanh → classifier, in
    float64 (the operator definitions, written step by step)."""
    d = lambda a: torch.tensor(a, dtype=torch.float64)  # noqa: E731
    hidden = p.r.shape[1]
    x = torch.relu(frames @ d(p.v))
    h = torch.zeros(x.shape[1], hidden, dtype=torch.float64) if h0 is None else d(h0)
    c = torch.zeros_like(h) if c0 is None else d(c0)
    w, r, wb, rb = d(p.w), d(p.r), d(p.wb), d(p.rb)
    hs = []
    for x_t in x:
        if kind == "LSTM":
            a_i, a_o, a_f, a_c = (x_t @ w.T + wb + h @ r.T + rb).split(hidden, -1)
            p_i, p_o, p_f = (0, 0, 0) if p.peep is None else d(p.peep).split(hidden)
            i, f = torch.sigmoid(a_i + p_i * c), torch.sigmoid(a_f + p_f * c)
            c = f * c + i * torch.tanh(a_c)
            h = torch.sigmoid(a_o + p_o * c) * torch.tanh(c)
        else:
            (x_z, x_r, x_h), (r_z, r_r, r_h), (b_z, b_r, b_h) = (x_t @ w.T + wb).split(hidden, -1), \
                r.split(hidden), rb.split(hidden)
            z, g = torch.sigmoid(x_z + h @ r_z.T + b_z), torch.sigmoid(x_r + h @ r_r.T + b_r)
            a_h = x_h + (g * (h @ r_h.T + b_h) if lbr else (g * h) @ r_h.T + b_h)
            h = (1 - z) * torch.tanh(a_h) + z * h
        hs.append(h)
    return torch.stack(hs) @ d(p.w8).T + d(p.b8)


@pytest.mark.parametrize("name", list(FORMS))
def test_gradr_equals_autograd(name: str, frames, state) -> None:
    form = FORMS[name]
    unrolled = Explainer(form.models("Tanh")[1])
    names = tuple(n for n, _ in form.states)
    for target in range(3):
        got = _explain(unrolled, form, names, frames, state, target=target, method="gradr")
        x = torch.tensor(frames[:form.steps], dtype=torch.float64, requires_grad=True)
        states = [state.astype(np.float64)] * len(names)
        torch_logits(form.weights(), form.kind, form.linear_before_reset, x, *states)[-1, 0, target].backward()
        np.testing.assert_allclose(got.signal, x.grad.numpy(), rtol=1e-4, atol=1e-6)
