"""Words of a caption (paper §4.2, §6): a captioner's vocabulary and special tokens, the caption's word at each output
step, the step a word is explained at, and several words explained in one call.

A captioner's output holds one step per word, ``(L, V)`` or ``(L, 1, V)`` logits over its vocabulary (the labels:
``ebr_onnx.labels`` in the model's metadata, or ``labels=``). Its **caption** is the word of each step:

* a *teacher-forced* model (the caption fed as a words input, ``<bos> w1 … wn``): step ``k`` is fed word ``k`` and
  predicts word ``k + 1``, so the caption at step ``k`` is fed word ``k + 1``, and at the last step ``<eos>`` (a fed
  caption is a whole one);
* a *decoder* (no words input, e.g. a greedy ``Loop``, :mod:`.decoding`): the word each step emitted, its highest
  score.

``time_step`` then also takes ``"first"``/``"last"`` (the target word's first/last step in the caption) or a word (its
first step); a step past the caption's ``<eos>``, a word not in the caption and one not in the vocabulary are refused
with one line. The metadata entry ``ebr_onnx.caption`` (JSON) names the ``words_input``, the ``bos``, ``eos`` and
``pad`` tokens and the ``nouns``; without it the words input is the model's one integer input beside the frames and
the special tokens are recognised by their usual spellings.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from ..core.errors import EbrError
from ..core.graph import ModelGraph
from ..core.request import ExplainRequest, TimeStep
from ..core.result import ExplainResult, Mass, Passes
from ..core.targets import Target

_BOS = ("<bos>", "<start>", "<s>", "<sos>", "BOS", "<BOS>")
_EOS = ("<eos>", "<end>", "</s>", "EOS", "<EOS>")
#: ``time_step`` words that name the target word's own step in the caption.
WORD_STEPS = ("first", "last")


@dataclass(frozen=True)
class CaptionSpec:
    """What a captioner's metadata says about its words (see the module docstring)."""

    words_input: str | None = None
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    nouns: tuple[str, ...] = ()
    #: The most words a decoder emits (a teacher-forced model decoded word by word stops there).
    max_steps: int = 30

    @property
    def known(self) -> bool:
        """Whether the model is a captioner: its metadata says so, it reads a words input, or its vocabulary has an
        end-of-sentence token (other models' outputs are not read as captions)."""
        return self.words_input is not None or self.eos is not None or bool(self.nouns)


def caption_spec(graph: ModelGraph, input_name: str, labels: Sequence[str] | None) -> CaptionSpec:
    """The model's :class:`CaptionSpec`: ``ebr_onnx.caption`` from its metadata, else guessed (the one integer input
    beside ``input_name``, the usual spellings of the special tokens among ``labels``)."""
    meta = graph.metadata_json("ebr_onnx.caption")
    if isinstance(meta, dict):
        return CaptionSpec(meta.get("words_input"), meta.get("bos"), meta.get("eos"), meta.get("pad"),
                           tuple(meta.get("nouns") or ()), int(meta.get("max_steps") or 30))
    ints = [n for n in graph.inputs if n != input_name and not graph.is_float(n)]
    vocabulary = set(labels or ())
    return CaptionSpec(ints[0] if len(ints) == 1 else None, next((w for w in _BOS if w in vocabulary), None),
                       next((w for w in _EOS if w in vocabulary), None))


def caption_words(spec: CaptionSpec, labels: Sequence[str] | None, out: np.ndarray, time_axis: int | None,
                  seq_axis: int | None, feeds: Mapping[str, np.ndarray]) -> list[str] | None:
    """The caption's word at each output step (see the module docstring); None where the output is not one
    sequence of steps over the vocabulary."""
    if not spec.known or labels is None or time_axis is None or seq_axis is not None or out.shape[-1] != len(labels):
        return None
    steps = np.moveaxis(out, time_axis, 0).reshape(out.shape[time_axis], -1, out.shape[-1])[:, 0]
    emitted = [labels[int(k)] for k in steps.argmax(axis=1)]
    fed = feeds.get(spec.words_input) if spec.words_input else None
    if fed is None or spec.bos is None or np.size(fed) != len(emitted) or np.asarray(fed).dtype.kind not in "iu":
        return emitted
    fed = np.ravel(fed)
    if not 0 <= int(fed[0]) < len(labels) or labels[int(fed[0])] != spec.bos:
        return emitted
    return [labels[int(k)] if 0 <= int(k) < len(labels) else str(int(k)) for k in fed[1:]] + \
        ([spec.eos] if spec.eos is not None else emitted[-1:])


def caption_text(words: Sequence[str], spec: CaptionSpec) -> str:
    """The caption as a sentence: its words up to ``<eos>``, padding left out."""
    out = []
    for w in words:
        if w == spec.eos:
            break
        if w not in (spec.pad, spec.bos):
            out.append(w)
    return " ".join(out)


def caption_end(words: Sequence[str], spec: CaptionSpec) -> int:
    """The last step of the caption: its ``<eos>`` (the last step when there is none)."""
    return words.index(spec.eos) if spec.eos in words else len(words) - 1


def check_word(word: Any, labels: Sequence[str] | None, what: str = "word") -> None:
    """A word must be in the vocabulary (the labels)."""
    if isinstance(word, str) and labels is not None and word not in labels:
        shown = ", ".join(list(labels)[:12]) + (", …" if len(labels) > 12 else "")
        raise EbrError(f"{what} {word!r} is not in the model's vocabulary of {len(labels)} words ({shown})")


def word_time_step(time_step: TimeStep, target: Target, words: list[str] | None, spec: CaptionSpec,
                   labels: Sequence[str] | None) -> TimeStep:
    """``time_step`` resolved against the caption ``words``: ``"first"``/``"last"`` → the target word's first/last step,
    a word → its first step; integer steps are checked against the caption's end. Other values, and every value where
    there is no caption (``words`` None: not a captioner's output), pass unchanged."""
    if words is None:
        return time_step
    if isinstance(target, str):
        check_word(target, labels)
    if isinstance(time_step, str) and time_step != "all":
        word = target if time_step in WORD_STEPS else time_step
        if word is None:
            raise EbrError(f"time_step={time_step!r} needs a target word")
        if isinstance(word, (list, tuple)):
            raise EbrError(f"time_step={time_step!r} takes one target word, not {word!r}")
        word = labels[int(word)] if not isinstance(word, str) and labels and 0 <= int(word) < len(labels) else word
        check_word(word, labels, "time_step" if time_step not in WORD_STEPS else "word")
        found = [k for k, w in enumerate(words) if w == word]
        if not found:
            raise EbrError(f"word {word!r} is not in the caption {caption_text(words, spec)!r}")
        return found[-1] if time_step == "last" else found[0]
    if spec.eos is not None:
        end = caption_end(words, spec)
        for s in [time_step] if isinstance(time_step, (int, np.integer)) else \
                ([] if isinstance(time_step, str) else list(time_step)):
            if end < int(s) < len(words):
                raise EbrError(f"time_step {int(s)} is past the end of the caption {caption_text(words, spec)!r} "
                               f"(its {spec.eos} is at step {end})")
    return time_step


def several_words(target: Target) -> bool:
    """Whether ``target`` names several words (a list of more than one; on a captioner's one caption)."""
    return isinstance(target, (list, tuple)) and len(target) > 1


def explain_words(explain: Callable[[ExplainRequest], ExplainResult], request: ExplainRequest) -> ExplainResult:
    """Several words of one caption: each explained on its own (one call of ``explain`` each, at its own step), the
    results stacked on a leading word axis — ``maps`` (W, T, h, w), ``temporal`` (W, T), ``target`` and
    ``info.time_steps`` one entry per word."""
    if not isinstance(request.time_step, (str, int, np.integer)) or request.time_step == "all":
        raise EbrError(f"several words are explained at one step each: time_step must be an int, 'first', 'last' or "
                       f"a word, not {request.time_step!r}")
    results = [explain(replace(request, target=word)) for word in request.target]
    first = results[0]

    def stack(values: list[Any]) -> Any:
        return None if any(v is None for v in values) else np.stack(values)

    info = first.info
    passes = None if info.passes is None else Passes(
        pos=np.stack([r.info.passes.pos for r in results]),
        neg=stack([r.info.passes.neg for r in results]))
    return ExplainResult(
        maps=np.stack([r.maps for r in results]), signal=np.stack([r.signal for r in results]),
        method=first.method, layer=first.layer, target=[r.target[0] for r in results],
        output=first.output, temporal=stack([r.temporal for r in results]),
        mass=Mass(top=np.concatenate([np.ravel(r.mass.top) for r in results]),
                  layer=np.stack([r.mass.layer for r in results]),
                  boundary=stack([r.mass.boundary for r in results])),
        info=replace(info, time_steps=[r.info.time_steps[0] for r in results], passes=passes,
                     boundary_signal=stack([r.info.boundary_signal for r in results])),
        warnings=list(dict.fromkeys(w for r in results for w in r.warnings)),
    )


__all__ = ["CaptionSpec", "WORD_STEPS", "caption_end", "caption_spec", "caption_text", "caption_words",
           "check_word", "explain_words", "several_words", "word_time_step"]
