"""Recognition of unrolled LSTM and GRU cells and the two recurrent rule sets on them (ebr_onnx.passes.cells).

References: the fused ``LSTM``/``GRU`` ops' rules on the same weights (tests/cell_graphs.py builds both forms with
onnx.helper) and an independent float64 transcription of the release's EB-R pass (spec §3.4)."""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from caffe_nets import input_layer, layer, write_net
from cell_graphs import Weights, fused_gru, fused_lstm, release_pass, unrolled_gru, unrolled_lstm, walk_to
from onnx import helper

from converters.caffe import convert_caffe
from ebr_onnx import EbrError, Explainer
from ebr_onnx.core.graph import ModelGraph
from ebr_onnx.passes.cells import Cell, GruCell, find_cells
from ebr_onnx.passes.unroll import unroll_loops
from ebr_onnx.recurrent.cell_rules import cell_needs

STEPS = 5
KERAS = Path(__file__).parent / "fixtures" / "keras"


@pytest.fixture(scope="module")
def weights() -> Weights:
    return Weights.random(seed=3)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.random.default_rng(1).normal(size=(STEPS, 1, 5)).astype(np.float32)


def _lstm_input(model: onnx.ModelProto, frames: np.ndarray) -> np.ndarray:
    return Explainer(model).engine.runner.run({"frames": frames}, ["x"])["x"]


def _close(a: np.ndarray, b: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(float(np.abs(b).max()), 1e-12))


# -- recognition --------------------------------------------------------------------------------------------------
def _export_cell_loop(dynamo: bool, steps: int = 3, kind: str = "LSTM") -> onnx.ModelProto:
    """A PyTorch ``LSTMCell`` (or ``GRUCell``) Python loop with a Linear at every step, exported by either exporter."""
    torch = pytest.importorskip("torch")

    class Loop(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell, self.fc = getattr(torch.nn, f"{kind}Cell")(5, 3), torch.nn.Linear(3, 4)

        def forward(self, x):
            h = c = torch.zeros(x.shape[1], 3)
            outs = []
            for t in range(x.shape[0]):
                if kind == "LSTM":
                    h, c = self.cell(x[t], (h, c))
                else:
                    h = self.cell(x[t], h)
                outs.append(self.fc(h))
            return torch.stack(outs)

    torch.manual_seed(0)
    args = (torch.rand(steps, 1, 5),)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            return torch.onnx.export(Loop().eval(), args, dynamo=True, verbose=False).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(Loop().eval(), args, buffer, dynamo=False)
    return onnx.load_from_string(buffer.getvalue())


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_finds_pytorch_lstmcell_loop(dynamo: bool) -> None:
    graph = ModelGraph(_export_cell_loop(dynamo))
    cells = find_cells(graph)
    assert [(c.chain, c.step) for c in cells] == [(0, 0), (0, 1), (0, 2)]
    assert all(isinstance(c, Cell) for c in cells)
    op = lambda name: graph.node_by_name[name].op_type  # noqa: E731
    for t, cell in enumerate(cells):
        assert {k: op(v) for k, v in cell.gates.items()} == {"i": "Sigmoid", "f": "Sigmoid", "o": "Sigmoid",
                                                             "g": "Tanh"}
        assert (op(cell.cell_sum), op(cell.h_product), op(cell.cell_activation)) == ("Add", "Mul", "Tanh")
        assert cell.forget_gate_product is None
        x_proj = graph.node_by_name[cell.gate_sum.x_projection]
        assert x_proj.op_type == "Gemm" and x_proj.inputs[1] == "cell.weight_ih"
        (x_t,) = cell.x_inputs
        assert graph.producer[x_t].op_type == "Gather" and graph.producer[x_t].inputs[0] == graph.inputs[0]
        assert cell.gate_sum.input_operand == x_proj.outputs[0]
        if t == 0:  # h_0 = 0: the recurrent operand is a (possibly folded) constant
            assert cell.h_prev is None and cell.gate_sum.recurrent_projection is None
        else:
            assert graph.node_by_name[cell.gate_sum.recurrent_projection].inputs[1] == "cell.weight_hh"
            assert cell.h_prev == cells[t - 1].h and cell.c_prev == cells[t - 1].c
            assert graph.node_by_name[cell.gate_sum.recurrent_projection].inputs[0] == cell.h_prev


def _caffe_lstm_net(tmp_path, steps: int, depth: int, hidden: int, classes: int, seed: int = 0):
    """A Caffe net x → LSTM (clip markers) → per-step InnerProduct, with its weights (Caffe's gate order i, f, o, g)."""
    rng = np.random.default_rng(seed)
    f = lambda *s: rng.normal(0, 0.6, s).astype(np.float32)  # noqa: E731
    blobs = {"lstm1": [f(4 * hidden, depth), f(4 * hidden), f(4 * hidden, hidden)],
             "fc8": [f(classes, hidden), f(classes)]}
    proto = (input_layer("x", [steps, 1, depth]) + input_layer("cont", [steps, 1])
             + layer("lstm1", "LSTM", ["x", "cont"], params=f"recurrent_param {{ num_output: {hidden} }}")
             + layer("fc8", "InnerProduct", ["lstm1"],
                     params=f"inner_product_param {{ num_output: {classes} axis: 2 }}"))
    paths = write_net(tmp_path, proto, blobs)
    return convert_caffe(*paths), blobs


def test_finds_caffe_converter_cells(tmp_path) -> None:
    model, _ = _caffe_lstm_net(tmp_path, steps=4, depth=6, hidden=3, classes=2)
    graph = ModelGraph(model)
    cells = find_cells(graph)
    assert [c.step for c in cells] == [0, 1, 2, 3]
    for t, cell in enumerate(cells):
        s = cell.gate_sum
        assert graph.node_by_name[s.name].inputs == (s.recurrent_operand, s.input_operand)  # Caffe's bottom order
        assert cell.x_inputs == ("x",)
        assert graph.node_by_name[cell.gate_sum.x_projection].op_type == "MatMul"
        assert graph.node_by_name[cell.gate_sum.recurrent_projection].op_type == "MatMul"
        assert [graph.node_by_name[n].op_type for n in cell.gate_sum.input_path] == ["Gather", "Add"]
        cont_f = graph.node_by_name[cell.forget_gate_product]
        assert cont_f.op_type == "Mul" and graph.node_by_name[cell.gates["f"]].outputs[0] in cont_f.inputs
        assert graph.node_by_name[cell.gates["g"]].op_type == "Relu"
        if t:
            assert cell.h_prev == cells[t - 1].h


def test_finds_keras_style_cells(weights) -> None:
    """MatMul(x) + MatMul(h), then a bias add above the gate sum, gates sliced: the bias add is inside the unit."""
    graph = ModelGraph(unrolled_lstm(weights, 3, style="keras"))
    cells = find_cells(graph)
    assert [c.step for c in cells] == [0, 1, 2]
    for t, cell in enumerate(cells):
        assert cell.gate_sum.name == f"sum_{t}" and f"gates_{t}" in cell.unit_nodes
        assert (cell.gate_sum.recurrent_operand, cell.gate_sum.input_operand) == (f"hr_{t}", f"xw_{t}")
        assert cell.x_inputs == (f"x_{t}",)


@pytest.mark.parametrize("dynamo", [False, True], ids=["legacy", "dynamo"])
def test_finds_pytorch_grucell_loop(dynamo: bool) -> None:
    graph = ModelGraph(_export_cell_loop(dynamo, kind="GRU"))
    cells = find_cells(graph)
    assert [(c.chain, c.step, c.form) for c in cells] == [(0, t, "interpolate") for t in range(3)]
    op = lambda name: graph.node_by_name[name].op_type  # noqa: E731
    for t, cell in enumerate(cells):
        assert isinstance(cell, GruCell)
        assert {k: op(v) for k, v in cell.gates.items()} == {"z": "Sigmoid", "r": "Sigmoid", "h": "Tanh"}
        for s in cell.sums.values():
            assert graph.node_by_name[s.x_projection].inputs[1] == "cell.weight_ih"
        (x_t,) = cell.x_inputs
        assert graph.producer[x_t].op_type == "Gather"
        if t:
            assert cell.h_prev == cells[t - 1].h
            h_sum = cell.sums["h"]  # r ⊙ (R_h h + b): the reset product leads the recurrent path
            assert h_sum.recurrent_path[0] == cell.reset_product
            assert graph.node_by_name[h_sum.recurrent_projection].inputs[1] == "cell.weight_hh"


@pytest.mark.parametrize("name, chains", [("gru_seq", 1), ("bigru_seq", 2)])
def test_finds_keras_gru_loops_once_unrolled(name: str, chains: int) -> None:
    """tf2onnx exports Keras GRUs as Loop bodies; unrolled, each step is a cell (the reverse direction too)."""
    path = KERAS / f"{name}.onnx"
    if not path.is_file():
        pytest.skip("the Keras fixtures are not present")
    graph = ModelGraph(unroll_loops(onnx.load(str(path))))
    cells = find_cells(graph)
    steps = np.load(path.with_suffix(".npz"))["clip"].shape[1]
    assert [(c.chain, c.step) for c in cells] == [(k, t) for k in range(chains) for t in range(steps)]
    assert all(c.form == "mix" and all(s.x_projection for s in c.sums.values()) for c in cells)


def test_products_of_gates_without_a_state_update_are_not_cells() -> None:
    """σ(a)⊙x + σ(b)⊙tanh(c) whose output is not multiplied by a sigmoid gate after an activation: no cell."""
    nodes = [helper.make_node("Sigmoid", ["a"], ["sa"]), helper.make_node("Sigmoid", ["b"], ["sb"]),
             helper.make_node("Tanh", ["c"], ["tc"]), helper.make_node("Mul", ["sa", "x"], ["m1"]),
             helper.make_node("Mul", ["sb", "tc"], ["m2"]), helper.make_node("Add", ["m1", "m2"], ["y"])]
    io_ = [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, [2]) for n in "abcx"]
    model = helper.make_model(helper.make_graph(nodes, "g", io_, [
        helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])]))
    assert find_cells(ModelGraph(model)) == []


def test_rule_set_names_are_checked(weights: Weights) -> None:
    """Rule-set names are validated once, where the options are made (the API), before any cell rule is chosen."""
    ex = Explainer(unrolled_lstm(weights, 2))
    frames = np.ones((2, 1, weights.w.shape[1]), np.float32)
    with pytest.raises(EbrError, match="recurrent_rules 'lrp' is not one of: caffe, excitation"):
        ex.explain(frames, method="ebr", recurrent_rules="lrp")


def test_needs_name_what_the_overrides_read(weights: Weights) -> None:
    graph = ModelGraph(unrolled_lstm(weights, 3))
    cells = find_cells(graph)
    hook = cell_needs(graph, cells, "excitation")
    last = cells[-1]
    assert set(hook(graph.node_by_name[last.gate_sum.name])) == {"x_2", last.h_prev}
    assert hook(graph.node_by_name["fc"]) is None
    caffe = cell_needs(graph, cells, "caffe")
    assert caffe(graph.node_by_name[last.gate_sum.name]) == []
    assert set(caffe(graph.node_by_name[last.h_product])) == set(graph.node_by_name[last.h_product].inputs)


# -- the rule sets ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("target", [0, 1])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pass", "dual"])
def test_caffe_rules_reproduce_the_release(weights, frames, target: int, sign: float) -> None:
    model = unrolled_lstm(weights, STEPS)
    got = walk_to(model, frames, "x", "eb", "caffe", target, negate=sign < 0)
    want = release_pass(weights, _lstm_input(model, frames), target, sign)
    assert np.abs(want).max() > 0
    _close(got, want)
    assert (got >= 0).all()


@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pass", "dual"])
def test_rules_on_the_caffe_converters_lstm(tmp_path, rules: str, sign: float) -> None:
    """The converter's unrolled LSTM (cont multiplications, x_transform over all steps, gate order i, f, o, g) equals
    the fused op with the same weights, and under ``caffe`` the release's closed form."""
    steps, depth, hidden = 5, 6, 4
    model, blobs = _caffe_lstm_net(tmp_path, steps, depth, hidden, classes=3, seed=2)
    onnx_order = lambda w: np.concatenate([w[k * hidden:(k + 1) * hidden] for k in (0, 2, 1, 3)])  # noqa: E731
    w_xc, b_c, w_hc = (onnx_order(w) for w in blobs["lstm1"])
    p = Weights(np.eye(depth, dtype=np.float32), w_xc, w_hc, b_c, np.zeros_like(b_c), *blobs["fc8"])
    x = np.abs(np.random.default_rng(3).normal(size=(steps, 1, depth))).astype(np.float32)
    got = walk_to(model, x, "x", "eb", rules, 1, negate=sign < 0, classifier="fc8", logits="fc8")
    _close(got, walk_to(fused_lstm(p, steps), x, "x", "eb", rules, 1, negate=sign < 0))
    if rules == "caffe":
        _close(got, release_pass(p, x, 1, sign))


@pytest.mark.parametrize("style", ["pytorch", "keras"])
@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pass", "dual"])
def test_unrolled_rules_equal_the_fused_op(weights, frames, style: str, rules: str, sign: float) -> None:
    for target in range(3):
        fused = walk_to(fused_lstm(weights, STEPS), frames, "x", "eb", rules, target, negate=sign < 0)
        unrolled = walk_to(unrolled_lstm(weights, STEPS, style=style), frames, "x", "eb", rules, target,
                           negate=sign < 0)
        _close(unrolled, fused)


@pytest.mark.parametrize("act", ["Relu", "Tanh"])
def test_gradient_walk_equals_the_fused_op(weights, frames, act: str) -> None:
    fused = walk_to(fused_lstm(weights, STEPS, act=act), frames, "frames", "grad", None, 1)
    unrolled = walk_to(unrolled_lstm(weights, STEPS, act=act), frames, "frames", "grad", None, 1)
    _close(unrolled, fused)


def test_excitation_rules_conserve_mass(weights, frames) -> None:
    """Eqs. 1–4: every normaliser here is non-zero, so the unit mass of the prior arrives at x_1 … x_T."""
    got = walk_to(unrolled_lstm(weights, STEPS), frames, "x", "eb", "excitation", 1)
    assert (got >= 0).all()
    assert got.sum() == pytest.approx(1.0, rel=1e-5)
    assert (got.reshape(STEPS, -1).sum(axis=1) > 0).sum() > 1  # mass crosses time through h and c


# -- GRU ----------------------------------------------------------------------------------------------------------
GRU_FORMS = [("pytorch", 1), ("keras", 0)]


@pytest.fixture(scope="module")
def gru_weights() -> Weights:
    return Weights.random(seed=3, gates=3)


@pytest.mark.parametrize("style, lbr", GRU_FORMS, ids=[s for s, _ in GRU_FORMS])
@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["pass", "dual"])
def test_unrolled_gru_equals_the_fused_op(gru_weights, frames, style: str, lbr: int, rules: str, sign: float
                                          ) -> None:
    for target in range(3):
        fused = walk_to(fused_gru(gru_weights, STEPS, linear_before_reset=lbr), frames, "x", "eb", rules, target,
                        negate=sign < 0)
        unrolled = walk_to(unrolled_gru(gru_weights, STEPS, style=style), frames, "x", "eb", rules, target,
                           negate=sign < 0)
        _close(unrolled, fused)


@pytest.mark.parametrize("style, lbr", GRU_FORMS, ids=[s for s, _ in GRU_FORMS])
def test_gru_gradient_walk_equals_the_fused_op(gru_weights, frames, style: str, lbr: int) -> None:
    fused = walk_to(fused_gru(gru_weights, STEPS, act="Tanh", linear_before_reset=lbr), frames, "frames", "grad",
                    None, 1)
    _close(walk_to(unrolled_gru(gru_weights, STEPS, act="Tanh", style=style), frames, "frames", "grad", None, 1),
           fused)


@pytest.mark.parametrize("style", ["pytorch", "keras"])
def test_gru_excitation_rules_conserve_mass(gru_weights, frames, style: str) -> None:
    got = walk_to(unrolled_gru(gru_weights, STEPS, style=style), frames, "x", "eb", "excitation", 1)
    assert (got >= 0).all()
    assert got.sum() == pytest.approx(1.0, rel=1e-5)
