"""Op coverage measured on a corpus (issue 12): fifteen PyTorch architectures exported here and five Keras ones made
by ``tools/make_keras_corpus.py`` (``tests/corpus_models.py`` lists them). Every op on every signal path from the model
input to its logits has a rule in both modes; eb, grad and (where a classifier is found) ceb run on every model and
give finite maps of the input's shape without its channel axis, and ebr, cebr and gradr on the recurrent ones.

``tools/op_coverage.py`` prints the same corpus as a table of ops × models.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from corpus_models import KERAS_CORPUS, TORCH_MODELS, CorpusModel, build_corpus, signal_path_ops

from ebr_onnx import Explainer
from ebr_onnx.core import registry
from ebr_onnx.core.errors import EbrError
from ebr_onnx.core.registry import MODES
from ebr_onnx.core.targets import dual_nodes

pytest.importorskip("torch")
KERAS_MODELS = tuple(sorted(p.stem for p in KERAS_CORPUS.glob("*.onnx")))
MODELS = TORCH_MODELS + KERAS_MODELS
RECURRENT_MODELS = ("crnn", "cnn_lstm", "cnn_gru", "keras_audio_lstm")
#: Models whose logits are time first (a CRNN's CTC head): the CNN methods refuse them and name the recurrent ones.
TIME_FIRST = ("crnn",)
CNN_MODELS = tuple(m for m in MODELS if m not in TIME_FIRST)



def lacking(ops) -> list[str]:
    """The ops among ``ops`` without a rule in some mode."""
    return [op for op in ops if any(registry.find_rule(op, mode) is None for mode in MODES)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, CorpusModel]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {m.name: m for m in build_corpus(tmp_path_factory.mktemp("corpus"))}


@pytest.fixture(scope="module")
def explainers(corpus):
    cache: dict[str, Explainer] = {}

    def get(name: str) -> Explainer:
        if name not in cache:
            cache[name] = Explainer(corpus[name].path)
        return cache[name]

    return get


def test_the_corpus(corpus):
    frameworks = [m.framework for m in corpus.values()]
    assert len(corpus) >= 15 and frameworks.count("Keras") >= 3 and frameworks.count("PyTorch") >= 12
    assert all(corpus[name].recurrent for name in RECURRENT_MODELS)
    assert all(m.path.stat().st_size < 100_000 for m in corpus.values())


@pytest.mark.parametrize("name", KERAS_MODELS)
def test_keras_fixtures_reproduce_keras(corpus, explainers, name):
    """The committed Keras exports still compute what Keras computed when they were made."""
    model = corpus[name]
    out = explainers(name).predict(model.inputs)
    np.testing.assert_allclose(out, np.load(model.path.with_suffix(".npz"))["output"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", MODELS)
def test_every_op_on_the_signal_path_has_rules(corpus, name):
    ops = signal_path_ops(corpus[name])
    assert ops and not lacking(ops), f"ops without an eb or grad rule: {lacking(ops)}"


def _check_maps(model: CorpusModel, res) -> None:
    assert np.isfinite(res.maps).all() and np.isfinite(res.signal).all()
    assert res.signal.shape == model.inputs.shape
    assert np.abs(res.signal).sum() > 0


@pytest.mark.parametrize(("name", "method"), [(m, k) for m in CNN_MODELS for k in ("eb", "grad")])
def test_cnn_methods(corpus, explainers, name, method):
    model = corpus[name]
    _check_maps(model, explainers(name).explain(model.inputs, method=method))


@pytest.mark.parametrize("name", CNN_MODELS)
def test_contrastive(corpus, explainers, name):
    """``ceb`` wherever the graph search finds a classifier (the one :mod:`ebr_onnx.app.inspect` reports)."""
    ex = explainers(name)
    try:
        dual_nodes(ex.graph, ex.engine.signal, ex.logits_tensor(), None)
    except EbrError as exc:
        pytest.skip(f"no classifier found: {exc}")
    model = corpus[name]
    _check_maps(model, ex.explain(model.inputs, method="ceb"))


@pytest.mark.parametrize(("name", "method"), [(m, k) for m in RECURRENT_MODELS
                                              for k in ("ebr", "cebr", "gradr")])
def test_recurrent_methods(corpus, explainers, name, method):
    model = corpus[name]
    res = explainers(name).explain(model.inputs, method=method, time_step=-1)
    assert np.isfinite(res.maps).all() and np.isfinite(res.temporal).all()
    assert np.abs(res.maps).sum() > 0


@pytest.mark.parametrize("name", [m for m in CNN_MODELS if m != "keras_transformer"])
def test_maps_sum_the_channel_axis(corpus, explainers, name):
    """A map has the input's shape without its channel axis (axis 1 of PyTorch's NCHW/NCL inputs, the last of
    Keras's channels-last ones; the transformer's frames, which meet no Conv, are left out)."""
    model = corpus[name]
    res = explainers(name).explain(model.inputs, method="grad")
    assert res.maps.shape == tuple(np.delete(model.inputs.shape, model.channel_axis))


@pytest.mark.parametrize("name", CNN_MODELS)
def test_classes_are_read_on_the_class_axis(corpus, explainers, name):
    """A target one past the last class is refused: the class axis was found (the check runs before the walk)."""
    model = corpus[name]
    with pytest.raises(EbrError, match="out of range"):
        explainers(name).explain(model.inputs, target=model.classes, method="grad")



@pytest.mark.parametrize(("name", "method"), [(m, k) for m in TIME_FIRST for k in ("eb", "ceb", "grad")])
def test_time_first_logits_are_left_to_the_recurrent_methods(corpus, explainers, name, method):
    with pytest.raises(EbrError, match="recurrent output .* explain it with ebr, cebr or gradr"):
        explainers(name).explain(corpus[name].inputs, method=method)
