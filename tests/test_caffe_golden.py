"""The converter plus the engine reproduce the authors' own Caffe outputs (``shared/golden/vgg16_lstm_small_a``).

golden.npz holds the release's blob values and diffs on a channel-reduced VGG16-LSTM with seeded weights (see
``shared/golden/README.md``); every array must match to 1e-4 relative. Two Caffe conventions matter:

* a blob rewritten in place keeps one diff; after ``net.backward(…, end='conv5_1')`` the in-place ``relu5_1`` has
  also run backward, so the BP-R diff of ``conv5_1`` is the gradient at the ReLU's input, the converter's
  ``conv5_1/pre_relu5_1`` (under EB the ReLU mask is a no-op, so ``conv5_1`` itself is used);
* the RNN passes stop at ``fc7`` (spec §1.5), whose diff is the EB-R signal of the LSTM's ``x_transform``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ebr_onnx import Explainer
from ebr_onnx.core.walk import walk
from ebr_onnx.passes.cells import find_cells
from ebr_onnx.recurrent.cell_rules import cell_needs, cell_overrides

GOLDEN = Path(__file__).resolve().parents[2] / "shared" / "golden" / "vgg16_lstm_small_a"
pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="shared/golden is not present")


def _match(got: np.ndarray, want: np.ndarray) -> None:
    got = np.asarray(got).reshape(want.shape)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "golden.npz"))


@pytest.fixture(scope="module")
def meta() -> dict:
    return json.loads((GOLDEN / "meta.json").read_text())


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "inputs.npz"))


@pytest.fixture(scope="module")
def explainer() -> Explainer:
    from converters.caffe import convert_caffe

    return Explainer(convert_caffe(GOLDEN / "deploy.prototxt", GOLDEN / "weights.caffemodel"))


def test_forward(explainer, inputs, golden) -> None:
    values = explainer.engine.runner.run(explainer.engine.feeds(inputs), ["probs", "fc8-final", "fc7", "conv5_1"])
    for key, tensor in (("probs", "probs"), ("fc8", "fc8-final"), ("fc7", "fc7"), ("conv5_1", "conv5_1")):
        _match(values[tensor], golden[key])


def test_rnn_passes_at_fc7(explainer, inputs, golden, meta) -> None:
    """Both passes of the release's cEB-R (spec §1.5–1.6) on the recognised unrolled LSTM, walked directly."""
    graph = explainer.graph
    cells = find_cells(graph)
    assert len(cells) == meta["T"] and {c.x_inputs for c in cells} == {("fc7-reshape",)}
    nodes = graph.nodes_between([meta["boundary"]], ["fc8-final"])
    feeds = explainer.engine.feeds(inputs)
    shapes = explainer.engine.shapes_for(feeds)
    values = explainer.engine.runner.run(feeds, explainer.engine.capture_plan(
        nodes, "eb", shapes, ["fc8-final"], overrides_needs=cell_needs(graph, cells, "caffe")))
    top = np.zeros_like(values["fc8-final"])
    top[meta["time_step"], 0, meta["target"]] = 1
    overrides = cell_overrides(graph, cells, "caffe")
    passes = {}
    for key, negated in (("pos", frozenset()), ("neg", frozenset({meta["classifier"]}))):
        ctx = explainer.engine.context("eb", values, shapes, overrides=overrides, negated=negated)
        passes[key] = walk(ctx, nodes, {"fc8-final": top}, keep={"fc7"})["fc7"]
        _match(passes[key], golden[f"fc7_signal_{key}"])
    _match(passes["pos"] / passes["pos"].sum() - passes["neg"] / passes["neg"].sum(), golden["fc7_contrastive"])


@pytest.fixture(scope="module")
def explain(explainer, inputs, meta):
    def run(method: str, layer: str):
        return explainer.explain(inputs, target=meta["target"], method=method, layer=layer,
                                 boundary=meta["boundary"], classifier=meta["classifier"], time_step=-1)

    return run


@pytest.mark.parametrize("method", ["cebr", "ebr"])
def test_recurrent_maps(explain, golden, method: str) -> None:
    result = explain(method, "conv5_1")
    assert result.info.boundary == "fc7"
    passes = result.info.passes
    _match(passes.pos, golden["fc7_signal_pos"])
    if method == "cebr":
        _match(passes.neg, golden["fc7_signal_neg"])
        _match(result.info.boundary_signal, golden["fc7_contrastive"])
    else:
        _match(result.info.boundary_signal, golden["fc7_signal_pos"] / golden["fc7_signal_pos"].sum())
    _match(result.signal, golden[f"{method}_conv5_1_signal"])
    _match(result.maps, golden[f"{method}_map"])


def test_bpr_gradient(explain, golden) -> None:
    _match(explain("gradr", "conv5_1/pre_relu5_1").signal, golden["bpr_conv5_1_signal"])
