"""Inputs split into ``batch_size`` chunks give the same results as one batch, with one target or prior per example."""
import numpy as np
import pytest

from ebr_onnx import Explainer

RNG = np.random.default_rng(7)


@pytest.mark.parametrize("method", ["eb", "ceb", "grad"])
def test_batches_equal_one_batch_with_per_example_targets(tiny_cnn, method):
    x = RNG.uniform(0, 1, (5, 3, 4, 4)).astype(np.float32)
    targets = [0, 3, 1, 4, 2]
    whole = Explainer(tiny_cnn, batch_size=16).explain(x, target=targets, method=method, layer="r")
    split = Explainer(tiny_cnn, batch_size=2).explain(x, target=targets, method=method, layer="r")
    assert split.target == targets == whole.target
    np.testing.assert_allclose(split.signal, whole.signal, rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(split.output, whole.output)


def test_batches_with_a_prior_per_example(tiny_cnn):
    x = RNG.uniform(0, 1, (5, 3, 4, 4)).astype(np.float32)
    prior = RNG.uniform(0, 1, (5, 5)).astype(np.float32)
    whole = Explainer(tiny_cnn, batch_size=16).explain(x, prior=prior, layer="r")
    split = Explainer(tiny_cnn, batch_size=2).explain(x, prior=prior, layer="r")
    np.testing.assert_allclose(split.signal, whole.signal, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(split.mass.top, prior.sum(axis=1), rtol=1e-6)
