"""The ``device="cuda"`` path end to end on the strict host stand-in of CuPy (``tests/device_shim.py``), whose device
memory is host memory, so the forward runs through onnxruntime's I/O binding exactly as on a GPU
(``DeviceArrays.host_addressable``):

* the forward binds its inputs and outputs, and the walk reads the captures as device arrays (no host round trip);
* each weight is uploaded once per explainer and is its only device copy, whatever the layers, methods, chunks and
  passes (counted), and repeated calls do not grow the stand-in's device memory;
* every recurrent form (fused LSTM/GRU, the unrolled cells of every recognised form, the Caffe converter's LSTM with
  several streams) gives the CPU's maps for ``ebr``, ``cebr`` and ``gradr`` under both rule sets;
* the host reads of one call are the ones :mod:`ebr_onnx.core.device` lists (counted);
* the CUDA provider's options (TF32 off, a fixed cuDNN algorithm) and the minimum onnxruntime that knows them.
"""
from __future__ import annotations

import gc
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from caffe_nets import write_net
from cell_graphs import (
    LSTM_STYLES,
    Weights,
    _back,
    _front,
    _init,
    _model,
    _step,
    fused_gru,
    fused_lstm,
    unrolled_gru,
    unrolled_lstm,
)
from onnx import helper
from test_caffe_upstream import lrcn_deploy
from test_gpu import _clip
from test_gpu import _close as _close_to

from converters.caffe import convert_caffe
from ebr_onnx import Explainer
from ebr_onnx.app.demo import BUNDLED_MODEL
from ebr_onnx.core import forward as forward_module
from ebr_onnx.core.backend import MIN_ORT_GPU, cuda_provider_options, ort_providers
from ebr_onnx.core.device import DeviceArrays
from ebr_onnx.passes.cells import find_cells

sys.path.insert(0, str(Path(__file__).parent))
import device_shim  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.filterwarnings("ignore:onnxruntime has no CUDA provider"),
              pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning")]


@pytest.fixture
def stand_in(monkeypatch):
    """``device="cuda"`` served by the stand-in; the forward bound to its (host) memory; counters reset."""
    module = device_shim.make_module()
    monkeypatch.setitem(sys.modules, "cupy", module)
    monkeypatch.setattr(DeviceArrays, "host_addressable", True)
    device_shim.COUNTS.reset()
    return module


def _close(got: np.ndarray, want: np.ndarray) -> None:
    _close_to(got, want, rtol=1e-5)


# -- the bound forward ----------------------------------------------------------------------------------------------
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
def test_forward_binds_device_memory_and_keeps_captures_there(stand_in, monkeypatch):
    bound, through_host = [], []
    run = DeviceArrays.run
    monkeypatch.setattr(DeviceArrays, "run", lambda self, *a, **k: bound.append(a[1]) or run(self, *a, **k))
    monkeypatch.setattr(forward_module.ForwardRunner, "_run_on_host",
                        lambda *a, **k: through_host.append(1) or pytest.fail("the forward went through the host"))
    x, label = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda")
    values = ex.engine.runner.run({ex.input_name: x}, ["relu3", "fc"], keep_on_device=True)
    assert all(isinstance(v, stand_in.ndarray) for v in values.values())
    host = Explainer(BUNDLED_MODEL).engine.runner.run({ex.input_name: x}, ["relu3", "fc"])
    for name in values:
        np.testing.assert_allclose(values[name].get(), host[name], rtol=1e-6, atol=1e-7)
    assert isinstance(ex.engine.runner.run({ex.input_name: x}, ["fc"])["fc"], np.ndarray)  # the host default
    ex.explain(x, target=label, method="cebr", layer="relu3")
    assert bound and set(bound) == {"cpu"} and not through_host


# -- one copy of the weights ----------------------------------------------------------------------------------------
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
def test_weights_are_uploaded_once_per_explainer(stand_in):
    """Every constant is uploaded at most once (the sessions bind the same device copies the rules read); after
    the first calls, calls with other layers, methods and the dual pass upload nothing but the clip and the prior,
    and the stand-in's device memory does not grow."""
    x, label = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda", batch_size=8)  # two chunks of frames
    arrays = ex.engine.arrays
    for method in ("cebr", "gradr"):
        ex.explain(x, target=label, method=method)  # down to the input: every constant is read
    for method in ("ceb", "grad"):
        ex.explain(x, target=3, method=method, output="fc")
    uploads, held = arrays.uploads, arrays.constant_bytes
    model_bytes = sum(w.nbytes for w in ex.graph.weights.values()) + sum(
        onnx.numpy_helper.to_array(i).nbytes for i in ex.graph.light.graph.initializer)
    assert uploads == len(arrays._constants) and held <= model_bytes
    gc.collect()
    live = device_shim.COUNTS.live_bytes
    for _ in range(2):
        for method, layer in (("cebr", "relu3"), ("ebr", "relu2"), ("gradr", "relu1"), ("cebr", "relu1")):
            device_shim.COUNTS.reset()
            ex.explain(x, target=label, method=method, layer=layer)
            assert device_shim.COUNTS.transfer_bytes <= x.nbytes + 4096, (method, layer)
        for method, layer in (("eb", "relu3"), ("ceb", "relu2"), ("grad_x_input", "relu1")):
            device_shim.COUNTS.reset()
            ex.explain(x, target=3, method=method, layer=layer, output="fc")
            assert device_shim.COUNTS.transfer_bytes <= x.nbytes + 4096, (method, layer)
    assert arrays.uploads == uploads and arrays.constant_bytes == held
    assert len(ex.engine.runner._sessions) <= forward_module.DEVICE_SESSIONS
    gc.collect()
    assert device_shim.COUNTS.live_bytes <= live


def test_live_weights_are_uploaded_on_every_use(stand_in):
    arrays = DeviceArrays(stand_in, live=True)
    w = np.ones((3, 2), np.float32)
    first = arrays.constant("w", w)
    w[0, 0] = 5.0
    assert float(arrays.constant("w", w)[0, 0]) == 5.0 and float(first[0, 0]) == 1.0 and arrays.uploads == 2


# -- host syncs -----------------------------------------------------------------------------------------------------
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="the bundled model is missing")
@pytest.mark.parametrize("method, layer, syncs", [
    # the logits; the signs of the walk's captures; the signal at the layer
    ("eb", "relu3", 3),
    # the logits; the signs, once per rule context (the target pass's, which the rest of the walk shares, and the
    # dual pass's); the signal
    ("ceb", None, 4),
    # the logits; the signal (no signs in a gradient walk)
    ("grad", None, 2),
    # the logits; the signs of the RNN walk; its total (Eq. 5); the signs of the CNN walk; the signal, the pass and
    # the normalised boundary signal returned
    ("ebr", "relu3", 7),
    # as ebr, plus the dual pass's signs, total and returned pass
    ("cebr", "relu3", 10),
    # the logits; the signal, the pass and the boundary signal returned
    ("gradr", "relu2", 4),
])
def test_host_reads_are_the_listed_ones(stand_in, method, layer, syncs):
    x, label = _clip()
    ex = Explainer(BUNDLED_MODEL, device="cuda")
    options = {"output": "fc", "target": 3} if method in ("eb", "ceb", "grad") else {"target": label}
    ex.explain(x, method=method, layer=layer, **options)
    device_shim.COUNTS.reset()
    ex.explain(x, method=method, layer=layer, **options)
    assert device_shim.COUNTS.syncs == syncs


# -- every recurrent form -------------------------------------------------------------------------------------------
def hand_written_lstm(p: Weights, steps: int) -> onnx.ModelProto:
    """A hand-written LSTM step: one projection over ``Concat([h_{t-1}, x_t])``, one σ over the first three gates
    (i, f, o) split after it, the cell input from the fourth (ReLU units)."""
    front, inits = _front(p)
    hidden = p.r.shape[1]
    stacked = np.concatenate([p.r, p.w], axis=1)  # h first
    inits += [_init("K", p.rows(stacked, "ifoc", "iofc").T.copy()), _init("b", p.rows(p.wb + p.rb, "ifoc", "iofc")),
              _init("h_init", np.zeros((1, hidden), np.float32)), _init("c_init", np.zeros((1, hidden), np.float32)),
              _init("axis0", np.array([0], np.int64)), _init("axis1", np.array([1], np.int64)),
              _init("at0", np.array([0], np.int64)), _init("at3", np.array([3 * hidden], np.int64)),
              _init("at4", np.array([4 * hidden], np.int64)), _init("sizes", np.array([hidden] * 3, np.int64))]
    nodes, seq, h, c = [], [], "h_init", "c_init"
    for t in range(steps):
        n, x_t = _step(nodes, inits, t)
        a = n("Add", [n("MatMul", [n("Concat", [h, x_t], "hx", axis=1), "K"], "hxk"), "b"], "a")
        s = n("Sigmoid", [n("Slice", [a, "at0", "at3", "axis1"], "a_ifo")], "ifo")
        nodes.append(helper.make_node("Split", [s, "sizes"], [f"i_{t}", f"f_{t}", f"o_{t}"], name=f"split_{t}",
                                      axis=1))
        g = n("Relu", [n("Slice", [a, "at3", "at4", "axis1"], "a_g")], "g")
        c = n("Add", [n("Mul", [f"f_{t}", c], "fc"), n("Mul", [f"i_{t}", g], "ig")], "c")
        h = n("Mul", [f"o_{t}", n("Relu", [c], "act_c")], "h")
        seq.append(n("Unsqueeze", [h, "axis0"], "h_seq"))
    nodes.append(helper.make_node("Concat", seq, ["hs"], name="concat", axis=0))
    back, back_inits = _back(p, "hs")
    return _model(front + nodes + back, inits + back_inits, steps, 1, p.v.shape[0], p.w8.shape[0])


STEPS = 5
FORMS = {
    "lstm-fused": lambda act: fused_lstm(Weights.random(seed=3), STEPS, act=act),
    "gru-fused": lambda act: fused_gru(Weights.random(seed=3, gates=3), STEPS, act=act),
    **{f"lstm-{s}": (lambda act, s=s: unrolled_lstm(Weights.random(seed=3), STEPS, act=act, style=s))
       for s in LSTM_STYLES},
    **{f"lstm-peepholes-{s}": (lambda act, s=s: unrolled_lstm(Weights.random(seed=3, peepholes=True), STEPS, act=act,
                                                              style=s)) for s in LSTM_STYLES},
    **{f"gru-{s}": (lambda act, s=s: unrolled_gru(Weights.random(seed=3, gates=3), STEPS, act=act, style=s))
       for s in ("pytorch", "keras", "concat")},
    "lstm-hand-written": lambda act: hand_written_lstm(Weights.random(seed=3), STEPS),
}
STATEFUL = {
    **{f"lstm-stateful-{s}": (lambda s=s: unrolled_lstm(Weights.random(seed=3), 1, style=s, stateful=True))
       for s in LSTM_STYLES},
    **{f"gru-stateful-{s}": (lambda s=s: unrolled_gru(Weights.random(seed=3, gates=3), 1, style=s, stateful=True))
       for s in ("pytorch", "keras", "concat")},
}


def _explain_both(model: onnx.ModelProto, frames: np.ndarray, **options):
    cpu = Explainer(model).explain(frames, **options)
    got = Explainer(model, device="cuda").explain(frames, **options)
    _close(got.maps, cpu.maps)
    _close(got.signal, cpu.signal)
    _close(got.info.boundary_signal, cpu.info.boundary_signal)
    assert got.warnings == cpu.warnings and got.target == cpu.target
    return cpu


@pytest.mark.parametrize("rules", ["caffe", "excitation"])
@pytest.mark.parametrize("name", list(FORMS))
def test_recurrent_forms_on_the_device_equal_the_cpu(name, rules, stand_in):
    frames = np.abs(np.random.default_rng(1).normal(size=(STEPS, 1, 5))).astype(np.float32)
    relu, tanh = FORMS[name]("Relu"), FORMS[name]("Tanh")
    if "fused" not in name:
        assert find_cells(onnx_graph(relu), ["frames"]), "the form is not recognised"
    reached = 0
    for target in range(3):
        for method in ("ebr", "cebr"):
            want = _explain_both(relu, frames, target=target, method=method, recurrent_rules=rules)
            reached += bool(np.abs(want.signal).max() > 0)
        if rules == "caffe":
            _explain_both(tanh, frames, target=target, method="gradr")
    assert reached


@pytest.mark.parametrize("name", list(STATEFUL))
def test_stateful_steps_on_the_device_equal_the_cpu(name, stand_in):
    model = STATEFUL[name]()
    frames = np.abs(np.random.default_rng(1).normal(size=(1, 1, 5))).astype(np.float32)
    state = np.abs(np.random.default_rng(2).normal(size=(1, 4))).astype(np.float32)
    extra = {i.name: state for i in model.graph.input if i.name != "frames"}
    for method, rules in (("ebr", "caffe"), ("cebr", "excitation"), ("gradr", "caffe")):
        _explain_both(model, frames, target=1, method=method, extra_inputs=extra, time_axis=0,
                      **({} if method == "gradr" else {"recurrent_rules": rules}))


def test_caffe_lstm_with_several_streams_on_the_device(stand_in, tmp_path):
    """The Caffe converter's unrolled LSTM (clip markers) over 3 interleaved streams: one call, per-stream maps."""
    proto, _ = write_net(tmp_path, lrcn_deploy())
    model = convert_caffe(proto, random_weights=3, frames=4)
    data = np.abs(np.random.default_rng(4).standard_normal((12, 3, 8, 8))).astype(np.float32)
    for method, rules in (("cebr", "caffe"), ("ebr", "excitation"), ("gradr", "caffe")):
        got = _explain_both(model, data, target=[1, 2, 0], method=method,
                            **({} if method == "gradr" else {"recurrent_rules": rules}))
        assert got.maps.shape[0] == 3


def onnx_graph(model: onnx.ModelProto):
    from ebr_onnx.core.graph import ModelGraph

    return ModelGraph(model)


# -- the stand-in itself --------------------------------------------------------------------------------------------
def test_the_stand_in_offers_exactly_cupys_names(stand_in):
    names = device_shim.NAMES
    assert sorted(dir(stand_in)) == sorted(names["module"])
    for missing in ("einsum_path", "matrix", "nditer", "errstate"):  # NumPy has them, CuPy does not
        with pytest.raises(AttributeError):
            getattr(stand_in, missing)
    with pytest.raises(NotImplementedError):
        stand_in.ElementwiseKernel("x", "y", "y = x", "k")
    a = stand_in.zeros((2, 3), np.float32)
    dunders = {n for n in dir(type(a)) if n.startswith("__") and n in vars(device_shim.DeviceArray)}
    mechanics = {"__dict__", "__weakref__", "__module__", "__annotations__", "__getattr__"}  # the emulation's own
    assert dunders - set(names["ndarray"]) - mechanics == set()
    assert not hasattr(a, "__index__") and not hasattr(a, "__imatmul__")
    with pytest.raises(AttributeError):
        a.itemset  # NumPy 1's, not CuPy's
    assert set(vars(a.flags)) == {"c_contiguous", "f_contiguous", "owndata"} <= set(names["flags"])
    assert sorted(dir(stand_in.cuda)) == sorted(names["cuda"])


def test_the_stand_in_refuses_host_data_where_cupy_does(stand_in):
    """CuPy takes host data in through array/asarray only; NumPy refuses device arrays."""
    a = stand_in.asarray(np.ones(3, np.float32))
    host = np.ones(3)
    for mix in (lambda: np.asarray(a), lambda: host * a, lambda: a + host, lambda: stand_in.maximum(a, host),
                lambda: np.maximum(a, 0), lambda: stand_in.ascontiguousarray(host), lambda: a[np.array([0, 1])],
                lambda: stand_in.concatenate([a, host]), lambda: stand_in.take(a, np.array([0]))):
        with pytest.raises(TypeError):
            mix()
    assert isinstance(stand_in.asnumpy(a * 2 + 1), np.ndarray) and float((a * 2).sum()) == 6.0


def test_the_stand_in_has_cupys_index_semantics(stand_in):
    a = stand_in.asarray(np.arange(4.0))
    idx = stand_in.asarray(np.array([1, 5, -1]))
    np.testing.assert_array_equal(stand_in.take(a, idx).get(), [1.0, 1.0, 3.0])  # CuPy wraps, NumPy would raise
    np.testing.assert_array_equal(a[idx].get(), [1.0, 1.0, 3.0])
    with pytest.raises(ValueError, match="writes one place twice"):
        a[stand_in.asarray(np.array([0, 0]))] += 1.0
    with pytest.raises(ValueError, match="no fixed order"):
        stand_in.add.at(a, stand_in.asarray(np.array([2, 2])), 1.0)


def test_the_stand_in_counts_transfers_and_reads(stand_in):
    a = stand_in.asarray(np.ones((4, 2), np.float32))
    assert (device_shim.COUNTS.transfers, device_shim.COUNTS.transfer_bytes) == (1, 32)
    b = stand_in.asarray(a)  # already on the device: no transfer
    assert b is a and device_shim.COUNTS.transfers == 1
    bool((a > 0).all())
    a.get()
    assert device_shim.COUNTS.syncs == 2


# -- the CUDA provider ----------------------------------------------------------------------------------------------
def test_cuda_provider_runs_in_full_fp32_with_a_fixed_conv_algorithm():
    options = cuda_provider_options(1)
    assert options["use_tf32"] == "0" and options["cudnn_conv_algo_search"] == "DEFAULT"
    assert options["device_id"] == "1"
    assert ort_providers("cuda")[0] == ("CUDAExecutionProvider", cuda_provider_options(0))
    assert ort_providers("cuda")[-1] == "CPUExecutionProvider" and ort_providers("cpu") == ["CPUExecutionProvider"]


def test_the_gpu_extra_requires_an_onnxruntime_that_knows_the_options():
    gpu = re.search(r"^gpu\s*=\s*\[(.*)\]", (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    bound = re.search(r'"onnxruntime-gpu\s*>=\s*([\d.]+)', gpu).group(1)
    assert tuple(int(v) for v in bound.split(".")[:2]) >= MIN_ORT_GPU
