"""Word-level EB-R / cEB-R / BP-R on video captioners (paper §4.2, §6), with no hints: the RNN→CNN boundary of a
pooled encoder is found by tracing the frames axis to the pooling, the output's steps are the words, a word is named
by the vocabulary, its step by the caption, and a greedy decoder exported with its decoding Loop is unrolled to the
steps it makes. References: PyTorch autograd on the same networks (``caption_models.py``), onnxruntime's run of the
Loop as exported, conservation (EB-R sums to 1 over all frames, cEB-R to 0)."""
from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from caption_models import (
    BOS,
    EOS,
    MAX_STEPS,
    VOCAB,
    CaptionerWeights,
    ScriptedGreedy,
    greedy_captioner,
    scripted_greedy,
    teacher_forced_captioner,
    torch_logits,
)

from ebr_onnx import EbrError, Explainer

POOLS = ("mean", "max", "attention", "s2vt")
T = 5
#: The fed caption: <bos> a man a phone (4 words, so the output's 5 steps are the caption's 4 words and <eos>).
FED = np.array([BOS, 3, 4, 3, 5], np.int64)
CAPTION = ["a", "man", "a", "phone", "<eos>"]


@pytest.fixture(scope="module")
def weights() -> CaptionerWeights:
    return CaptionerWeights.random(2, frames=T)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    return np.abs(np.random.default_rng(1).normal(0, 1, (T, 3, 6, 6))).astype(np.float32)


@pytest.fixture(scope="module")
def explainers(weights) -> dict[str, Explainer]:
    return {pool: Explainer(teacher_forced_captioner(weights, pool, frames=T if pool == "attention" else "T"))
            for pool in POOLS}


def quiet_explain(ex: Explainer, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ex.explain(*args, **kwargs)


def autograd(weights: CaptionerWeights, frames: np.ndarray, fed: np.ndarray, pool: str, step: int, word: str
             ) -> np.ndarray:
    x = torch.from_numpy(frames).requires_grad_()
    torch_logits(weights, x, fed, pool)[step, VOCAB.index(word)].backward()
    return x.grad.numpy()


@pytest.mark.parametrize("pool", POOLS)
def test_the_boundary_is_found_at_the_pooled_features(explainers, frames, pool):
    res = quiet_explain(explainers[pool], frames, target="man", method="ebr", time_step=1, layer="relu",
                        extra_inputs={"words": FED})
    assert res.info.boundary == "features"
    assert res.info.time_axis == 0 and res.output.shape == (5, 1, len(VOCAB))   # steps: the words, not the frames
    assert res.maps.shape == (T, 6, 6) and res.temporal.shape == (T,)
    assert res.info.caption == CAPTION


@pytest.mark.parametrize("pool", POOLS)
def test_bpr_of_a_word_equals_autograd(explainers, weights, frames, pool):
    for step, word in ((1, "man"), (3, "phone"), (4, "<eos>")):
        res = quiet_explain(explainers[pool], frames, target=word, method="gradr", time_step=step,
                            extra_inputs={"words": FED})
        expected = autograd(weights, frames, FED, pool, step, word)
        np.testing.assert_allclose(res.signal, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())


@pytest.mark.parametrize("pool", POOLS)
def test_ebr_of_a_word_has_unit_mass_and_cebr_sums_to_zero(explainers, frames, pool):
    for step, word in ((1, "man"), (3, "phone")):
        kwargs = dict(target=word, time_step=step, layer="relu", extra_inputs={"words": FED})
        ebr = quiet_explain(explainers[pool], frames, method="ebr", **kwargs)
        cebr = quiet_explain(explainers[pool], frames, method="cebr", **kwargs)
        assert ebr.info.passes.pos.sum() > 0 and cebr.info.passes.neg.sum() > 0
        assert ebr.maps.sum() == pytest.approx(1.0, abs=1e-5)
        assert ebr.temporal.sum() == pytest.approx(1.0, abs=1e-5) and (ebr.maps >= 0).all()
        assert abs(cebr.maps.sum()) < 1e-5 and np.abs(cebr.maps).sum() > 1e-3


def test_a_word_is_looked_up_in_the_vocabulary_and_its_step_in_the_caption(explainers, frames):
    ex = explainers["mean"]
    by_step = quiet_explain(ex, frames, target="phone", method="cebr", time_step=3, extra_inputs={"words": FED})
    for time_step in ("first", "phone", "last"):
        got = quiet_explain(ex, frames, target="phone", method="cebr", time_step=time_step,
                            extra_inputs={"words": FED})
        assert got.info.time_steps == [3] and got.target == [VOCAB.index("phone")]
        np.testing.assert_array_equal(got.maps, by_step.maps)
    first_a = quiet_explain(ex, frames, target="a", method="ebr", time_step="first", extra_inputs={"words": FED})
    last_a = quiet_explain(ex, frames, target="a", method="ebr", time_step="last", extra_inputs={"words": FED})
    assert (first_a.info.time_steps, last_a.info.time_steps) == ([0], [2])
    # a word's step given by another word: "phone" explained where "man" is
    at_man = quiet_explain(ex, frames, target="phone", method="ebr", time_step="man", extra_inputs={"words": FED})
    assert at_man.info.time_steps == [1]


def test_several_words_give_one_map_set_per_word(explainers, frames):
    ex = explainers["mean"]
    both = quiet_explain(ex, frames, target=["man", "phone"], method="cebr", time_step="first", layer="relu",
                         extra_inputs={"words": FED})
    assert both.maps.shape == (2, T, 6, 6) and both.temporal.shape == (2, T)
    assert both.info.time_steps == [1, 3] and both.target == [VOCAB.index("man"), VOCAB.index("phone")]
    for k, (word, step) in enumerate((("man", 1), ("phone", 3))):
        one = quiet_explain(ex, frames, target=word, method="cebr", time_step=step, layer="relu",
                            extra_inputs={"words": FED})
        np.testing.assert_array_equal(both.maps[k], one.maps)


@pytest.mark.parametrize("call, message", [
    (dict(target="dog", time_step="first"), "word 'dog' is not in the caption 'a man a phone'"),
    (dict(target="cat", time_step=1), "word 'cat' is not in the model's vocabulary of 8 words"),
    (dict(target="cat", time_step="first"), "word 'cat' is not in the model's vocabulary of 8 words"),
    (dict(target="man", time_step="cat"), "time_step 'cat' is not in the model's vocabulary"),
    (dict(target="man", time_step=5), "time_step 5 is out of range: the output has 5 time steps"),
    (dict(target="man", time_step="first", words=[BOS, 3, 4, EOS, 5, 5]),
     "time_step 4 is past the end of the caption 'a man' (its <eos> is at step 2)"),
])
def test_clear_one_line_errors(explainers, frames, call, message):
    fed = np.array(call.pop("words", FED), np.int64)
    time_step = call.pop("time_step")
    if time_step == "first" and call["target"] == "man":   # (the past-the-end case: man's step, then step 4)
        time_step = 4
    with pytest.raises(EbrError) as err:
        quiet_explain(explainers["mean"], frames, method="cebr", time_step=time_step, extra_inputs={"words": fed},
                      **call)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_caption_without_metadata_is_read_from_the_labels(weights, frames):
    ex = Explainer(teacher_forced_captioner(weights, "mean", metadata=False), labels=VOCAB)
    res = quiet_explain(ex, frames, target="phone", method="ebr", time_step="first", extra_inputs={"words": FED})
    assert res.info.time_steps == [3] and res.info.caption == CAPTION


# -- a greedy decoder exported with its decoding Loop ----------------------------------------------------------------
@pytest.fixture(scope="module")
def greedy(weights):
    return greedy_captioner(weights)


def _decoded(model, frames: np.ndarray) -> np.ndarray:
    """The words onnxruntime's run of the Loop emits (its logits' argmax per step)."""
    logits = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"frames": frames})[0]
    return logits[:, 0].argmax(axis=1)


def _stopping_videos(model, count: int = 2) -> list[np.ndarray]:
    """Videos whose decoding stops early (<eos> before ``MAX_STEPS``), with different lengths."""
    found, lengths = [], set()
    for seed in range(200):
        x = np.abs(np.random.default_rng(seed).normal(0, 1, (T, 3, 6, 6))).astype(np.float32) * (1 + seed % 3)
        tokens = _decoded(model, x)
        if tokens[-1] == EOS and len(tokens) < MAX_STEPS and len(tokens) not in lengths:
            found.append(x)
            lengths.add(len(tokens))
        if len(found) == count:
            return found
    pytest.fail("no video found whose greedy decoding stops before MAX_STEPS")


def test_a_loop_decoded_caption_is_unrolled_to_the_steps_it_made(weights, greedy):
    ex = Explainer(greedy)
    assert ex.decoding is not None
    for x in _stopping_videos(greedy):
        tokens = _decoded(greedy, x)
        res = quiet_explain(ex, x, target=VOCAB[tokens[0]], method="gradr", time_step="first", layer="relu")
        assert res.info.caption == [VOCAB[k] for k in tokens] and res.output.shape[0] == len(tokens)
        assert res.info.boundary == "features"
        # BP-R equals autograd on the teacher-forced network fed the words the decoder fed back
        fed = np.concatenate([[BOS], tokens[:-1]]).astype(np.int64)
        for step in range(len(tokens)):
            res = quiet_explain(ex, x, target=VOCAB[tokens[step]], method="gradr", time_step=step)
            expected = autograd(weights, x, fed, "mean", step, VOCAB[tokens[step]])
            np.testing.assert_allclose(res.signal, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
        ebr = quiet_explain(ex, x, target=VOCAB[tokens[0]], method="ebr", time_step=0, layer="relu")
        cebr = quiet_explain(ex, x, target=VOCAB[tokens[0]], method="cebr", time_step=0, layer="relu")
        if ebr.info.passes.pos.sum() > 0:
            assert ebr.maps.sum() == pytest.approx(1.0, abs=1e-5)
        if cebr.info.passes.pos.sum() > 0 and cebr.info.passes.neg.sum() > 0:
            assert abs(cebr.maps.sum()) < 1e-5


def test_a_step_past_a_decoded_caption_is_refused(greedy):
    ex = Explainer(greedy)
    x = _stopping_videos(greedy, 1)[0]
    length = len(_decoded(greedy, x))
    with pytest.raises(EbrError, match=f"time_step {length} is out of range: the output has {length} time steps"):
        quiet_explain(ex, x, target="a", method="cebr", time_step=length)
    predicted = ex.predict(x)
    assert predicted.shape == (length, 1, len(VOCAB))


def test_a_pytorch_scripted_greedy_decoder(tmp_path):
    """``torch.jit.script`` + the legacy exporter: a Loop with a list of logits as its state, an If that breaks after
    <eos> and one-step LSTM ops chained through their states; unrolled per input, BP-R equals autograd."""
    module = ScriptedGreedy(1)
    with torch.no_grad():
        module.cls.bias[EOS] += 0.225   # some videos stop at once, others run all 9 steps
    ex = Explainer(scripted_greedy(module, tmp_path / "greedy.onnx"))
    lengths = set()
    for seed in (0, 3):
        x = (np.random.default_rng(seed).normal(0, 1, (5, 3, 6, 6)) * (1 + seed % 3)).astype(np.float32)
        with torch.no_grad():
            tokens = module(torch.from_numpy(x))[:, 0].argmax(1).tolist()
        lengths.add(len(tokens))
        fed = [BOS] + tokens[:-1]
        for step in range(len(tokens)):
            res = quiet_explain(ex, x, target=VOCAB[tokens[step]], method="gradr", time_step=step)
            assert res.info.caption == [VOCAB[k] for k in tokens] and res.info.boundary.startswith("/Relu")
            frames = torch.from_numpy(x).requires_grad_()
            module.teacher(frames, fed)[step, tokens[step]].backward()
            np.testing.assert_allclose(res.signal, frames.grad.numpy(), rtol=1e-4,
                                       atol=1e-6 * np.abs(frames.grad.numpy()).max())
    assert lengths == {1, 9}
