"""``ebr-onnx caption`` on the bundled captioners (``models/captioner.onnx``, teacher-forced, and
``models/captioner_greedy.onnx``, with its decoding Loop): the files it writes, the caption it decodes or takes, and
its one-line errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ebr_onnx import Explainer, prepare
from ebr_onnx.app.cli import main
from ebr_onnx.app.synthetic_captions import NOUNS, make_caption_clip, teacher_inputs

MODELS = Path(__file__).resolve().parents[1] / "models"
TEACHER, GREEDY = MODELS / "captioner.onnx", MODELS / "captioner_greedy.onnx"


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> tuple[Path, list[str]]:
    clip = make_caption_clip(np.random.default_rng([7, 0]), 16)
    path = tmp_path_factory.mktemp("video") / "clip.npy"
    np.save(path, clip.frames)
    return path, clip.caption


def test_the_two_exports_agree(video):
    """The greedy Loop's probabilities equal the teacher-forced model's fed the words the Loop fed back."""
    frames = np.load(video[0])
    greedy, teacher = Explainer(GREEDY), Explainer(TEACHER)
    x, _ = prepare(teacher, frames)
    decoded = greedy.predict(x)
    words = decoded[:, 0].argmax(axis=1)
    fed = np.concatenate([[teacher.labels.index("<bos>")], words[:-1]]).astype(np.int64)
    np.testing.assert_allclose(teacher.predict(x, extra_inputs={"words": fed}), decoded, rtol=1e-4, atol=1e-5)
    assert teacher.labels[words[-1]] == "<eos>"


@pytest.mark.parametrize("model", [TEACHER, GREEDY])
def test_caption_writes_each_words_results_and_the_sheet(tmp_path, video, model, capsys):
    out = tmp_path / "out"
    assert main(["caption", str(model), str(video[0]), "--out", str(out), "--no-gif"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["caption_given"] is False and summary["steps"][-1] == "<eos>"
    nouns = [w for w in summary["caption"].split() if w in NOUNS]
    assert [w["word"] for w in summary["words"]] == list(dict.fromkeys(nouns)) and nouns
    assert (out / "caption_sheet.png").is_file()
    for word in summary["words"]:
        folder = out / word["folder"]
        assert summary["steps"][word["step"]] == word["word"]
        for name in ("maps.npz", "summary.json", "evidence.png", "sheet.png", "overlays/frame_00000.jpg"):
            assert (folder / name).is_file(), name
        maps = np.load(folder / "maps.npz", allow_pickle=False)
        assert maps["maps"].shape == (16, 16, 16) and abs(float(maps["temporal"].sum())) < 1e-4   # cEB-R: sums to 0
        s, e = word["segment_frames"]
        assert 0 <= s <= e <= 15 and 0 <= word["best_frame"] <= 15
    assert "results in" in capsys.readouterr().out


def test_a_given_caption_and_words(tmp_path, video):
    path, caption = video
    out = tmp_path / "out"
    noun = next(w for w in caption if w in NOUNS)
    assert main(["caption", str(TEACHER), str(path), "--caption", " ".join(caption), "--words", noun, "a",
                 "--out", str(out), "--no-overlays", "--method", "ebr"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["caption"] == " ".join(caption) and summary["caption_given"] is True
    assert [w["word"] for w in summary["words"]] == [noun, "a"]
    assert [w["step"] for w in summary["words"]] == [caption.index(noun), 0]
    assert not (out / "caption_sheet.png").exists()
    maps = np.load(out / summary["words"][0]["folder"] / "maps.npz", allow_pickle=False)
    assert float(maps["temporal"].sum()) == pytest.approx(1.0, abs=1e-4)   # EB-R: unit mass over all frames


@pytest.mark.parametrize("model, flags, message", [
    (TEACHER, ["--words", "cat"], "word 'cat' is not in the model's vocabulary"),
    (TEACHER, ["--caption", "a red square on the left", "--words", "circle"], "word 'circle' is not in the caption "
                                                                                 "'a red square on the left'"),
    (TEACHER, ["--caption", "a red cat"], "caption word 'cat' is not in the model's vocabulary"),
    (GREEDY, ["--caption", "a red square"], "the model decodes its own caption"),
])
def test_errors_are_one_line(tmp_path, video, model, flags, message, capsys):
    assert main(["caption", str(model), str(video[0]), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_method_that_does_not_ground_words_is_refused(tmp_path, video):
    with pytest.raises(SystemExit) as exit_info:
        main(["caption", str(TEACHER), str(video[0]), "--out", str(tmp_path / "out"), "--method", "ceb"])
    assert exit_info.value.code == 2


def test_teacher_inputs_feed_bos_and_predict_eos():
    fed, target = teacher_inputs(["a", "red", "square"])
    assert len(fed) == len(target) == 4 and fed[1:].tolist() == target[:-1].tolist()
