"""Regenerate README's CNN-LSTM vs 3-D CNN picture: ``python docs/make_cnn3d_pictures.py`` grounds the demo's
default video (two generated actions back to back, 16 frames) with both bundled models — the CNN + ReLU-LSTM
(``models/action_lstm.onnx``, cEB-R at ``relu3``) and the 3-D CNN (``models/action_c3d.onnx``, cEB at ``relu3``) — for
the second action, and stacks their contact sheets into ``lstm_vs_c3d.png`` (256 colours)."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ebr_onnx import Explainer
from ebr_onnx.app.colour import label_font
from ebr_onnx.app.demo import BUNDLED_MODEL, default_seed, demo_video
from ebr_onnx.app.pipeline import GroundOptions, ground
from ebr_onnx.app.synthetic import CLASS_NAMES

HERE = Path(__file__).resolve().parent
C3D_MODEL = BUNDLED_MODEL.with_name("action_c3d.onnx")


def sheet(model: Path, video: np.ndarray, target: str, method: str, out: Path) -> tuple[Image.Image, dict]:
    summary = ground(model, video, out, GroundOptions(target=target, method=method, quiet=True, animations=()))
    with Image.open(out / "clip_000" / "sheet.png") as picture:
        return picture.convert("RGB"), summary


def titled(picture: Image.Image, title: str) -> Image.Image:
    font = label_font()
    band = 28
    out = Image.new("RGB", (picture.width, picture.height + band), "white")
    out.paste(picture, (0, band))
    ImageDraw.Draw(out).text((8, 6), title, fill="black", font=font)
    return out


if __name__ == "__main__":
    T = 16
    clip = demo_video(default_seed(Explainer(BUNDLED_MODEL), T), T)
    target = CLASS_NAMES[clip.gt_class]
    truth = f"frames {clip.gt_segment[0]} to {clip.gt_segment[1]}"
    with tempfile.TemporaryDirectory() as folder:
        lstm, s1 = sheet(BUNDLED_MODEL, clip.frames, target, "cebr", Path(folder) / "lstm")
        c3d, s2 = sheet(C3D_MODEL, clip.frames, target, "ceb", Path(folder) / "c3d")
    rows = [titled(lstm, f"CNN + ReLU-LSTM (action_lstm.onnx), cEB-R at relu3: '{target}' localized in frames "
                         f"{s1['segment_frames'][0]} to {s1['segment_frames'][1]} (truth: {truth})"),
            titled(c3d, f"3-D CNN (action_c3d.onnx), cEB at relu3 (T' = 8: two frames per time slice): localized in "
                        f"frames {s2['segment_frames'][0]} to {s2['segment_frames'][1]}")]
    width = max(r.width for r in rows)
    both = Image.new("RGB", (width, sum(r.height for r in rows) + 8), "white")
    both.paste(rows[0], (0, 0))
    both.paste(rows[1], (0, rows[0].height + 8))
    both.quantize(256).save(HERE / "lstm_vs_c3d.png", optimize=True)
    print(f"wrote {HERE / 'lstm_vs_c3d.png'}: {target}, truth {truth}, CNN-LSTM {s1['segment_frames']}, "
          f"3-D CNN {s2['segment_frames']}")
