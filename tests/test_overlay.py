import numpy as np
import pytest
from PIL import Image

from ebr_onnx import EbrError
from ebr_onnx.app.overlay import evidence_curve_plot, overlay
from ebr_onnx.app.preprocess import CropBox

BOX = CropBox(48.0, 8.0, 272.0, 232.0, frame_size=(240, 320))  # the caffe-ucf101 crop of a 240×320 frame
GREY = np.full((240, 320, 3), 200, dtype=np.uint8)


def test_outside_the_crop_is_dimmed_and_inside_is_coloured():
    out = overlay(GREY, np.random.default_rng(0).normal(size=(14, 14)), BOX)
    assert out.shape == GREY.shape and out.dtype == np.uint8
    outside = np.ones((240, 320), dtype=bool)
    outside[8:232, 48:272] = False
    assert np.all(out[outside] == 100)  # 200 * 0.5
    assert np.any(out[8:232, 48:272] != 200)


def test_map_is_pasted_on_the_crop_not_stretched_over_the_frame():
    m = np.zeros((14, 14))
    m[0, 0] = 1.0  # top-left cell: frame rows 8..24, cols 48..64 (16 px cells)
    out = overlay(GREY, m, BOX).astype(int)
    change = np.abs(out - 200).sum(axis=2)
    change[:8] = change[232:] = 0
    change[:, :48] = change[:, 272:] = 0
    y, x = np.unravel_index(np.argmax(change), change.shape)
    assert 8 <= y < 24 and 48 <= x < 64


def test_signed_maps_are_warm_where_positive_and_cool_where_negative():
    m = np.ones((14, 14))
    m[:, 7:] = -1.0
    out = overlay(GREY, m, BOX).astype(int)
    left, right = out[120, 80], out[120, 240]
    assert left[0] > left[2] and right[2] > right[0]
    # symmetric scaling by max |m|: a weaker negative half changes only that half, which stays cool but paler
    m[:, 7:] = -0.25
    weak = overlay(GREY, m, BOX).astype(int)
    np.testing.assert_array_equal(weak[120, 80], left)
    assert weak[120, 240][2] > weak[120, 240][0]
    assert np.abs(weak[120, 240] - 200).sum() < np.abs(right - 200).sum()


def test_non_negative_display_clips_negatives_and_zero_maps_stay_finite():
    m = np.full((14, 14), -1.0)
    m[:, :7] = 1.0
    out = overlay(GREY, m, BOX, signed=False)
    np.testing.assert_array_equal(out[120, 240], [200, 200, 200])  # negative half: clipped to 0, no colour
    assert np.any(out[120, 80] != 200)
    for signed in (True, False):
        zero = overlay(GREY, np.zeros((14, 14)), BOX, signed=signed)
        np.testing.assert_array_equal(zero[8:232, 48:272], GREY[8:232, 48:272])


def test_resized_frames_use_the_original_coordinates():
    frame = np.full((480, 640, 3), 200, dtype=np.uint8)
    box = CropBox(96.0, 16.0, 544.0, 464.0, frame_size=(480, 640))
    out = overlay(frame, np.ones((14, 14)), box)
    assert np.all(out[:, :96] == 100) and np.all(out[:, 544:] == 100) and np.all(out[16:464, 96:544] != 100)


def test_overlay_errors():
    with pytest.raises(EbrError, match="finite"):
        overlay(GREY, np.full((14, 14), np.nan), BOX)
    with pytest.raises(EbrError, match="crop box"):
        overlay(np.zeros((100, 100, 3), dtype=np.uint8), np.ones((14, 14)), BOX)


def test_evidence_curve_plot_writes_a_png(tmp_path):
    curve = np.sin(np.arange(32) / 4.0)
    evidence_curve_plot(tmp_path / "full.png", curve, probs=np.linspace(0, 1, 32), segment=(2, 10), truth=(4, 12),
                        fps=12)
    evidence_curve_plot(tmp_path / "bare.png", curve)
    for name in ("full.png", "bare.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size == (800, 350)
