import numpy as np
import pytest
from PIL import Image

from ebr_onnx import EbrError
from ebr_onnx.app.colour import ColourScale
from ebr_onnx.app.overlay import contact_sheet, display_size, evidence_plot, outlier_range, overlay, overlays
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


def test_evidence_plot_writes_a_png(tmp_path):
    curve = np.sin(np.arange(32) / 4.0)
    frames = np.arange(100, 132)
    maps = np.random.default_rng(0).normal(size=(32, 7, 7))
    evidence_plot(tmp_path / "full.png", frames, curve, probs=np.linspace(0, 1, 32), segment=(102, 110),
                  truth=(104, 112), fps=12, title="model · target · cebr · layer", maps=maps,
                  scale=ColourScale.robust(maps, signed=True))
    evidence_plot(tmp_path / "bare.png", frames, curve)
    for name in ("full.png", "bare.png"):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.size[0] == 900


def test_one_colour_scale_for_all_frames_of_a_video():
    """A frame with a tenth of another's evidence is drawn paler on the video's scale, not as red as the other."""
    maps = np.stack([np.ones((14, 14)), np.full((14, 14), 0.1)])
    scale = ColourScale.robust(maps, signed=True)
    assert scale.limit == pytest.approx(1.0) and "99.5th percentile" in scale.rule
    strong, weak = overlays(np.stack([GREY, GREY]), maps, BOX, scale, min_side=0).astype(int)
    change = [np.abs(p[120, 160] - 200).sum() for p in (strong, weak)]
    assert change[0] > 3 * change[1] > 0
    alone = overlay(GREY, maps[1], BOX)        # without a video scale a map fills its own range
    np.testing.assert_array_equal(alone, overlay(GREY, maps[0], BOX))


def test_robust_scale_ignores_one_outlying_cell_and_zero_maps():
    maps = np.random.default_rng(1).uniform(-1, 1, size=(8, 14, 14))
    maps[3, 2, 2] = 500.0
    scale = ColourScale.robust(maps, signed=True)
    assert 0.9 < scale.limit < 1.0
    assert ColourScale.robust(np.maximum(maps, 0), signed=False).limit < 1.0
    assert ColourScale.robust(np.zeros((2, 3, 3)), signed=True).limit == 1.0
    unit = scale.unit(maps)
    assert unit.min() >= -1 and unit.max() == 1.0


def test_small_frames_are_shown_at_least_256_px():
    assert display_size((64, 64)) == (256, 256)
    assert display_size((240, 320)) == (256, 341)
    assert display_size((480, 640)) == (480, 640)
    small = np.full((64, 64, 3), 200, np.uint8)
    box = CropBox(0.0, 0.0, 64.0, 64.0, frame_size=(64, 64))
    assert overlays(small[None], np.ones((1, 8, 8)), box, ColourScale(1.0, True)).shape == (1, 256, 256, 3)


def test_contact_sheet_holds_every_frame_and_a_colour_bar():
    pictures = np.full((10, 64, 64, 3), 200, np.uint8)
    scale = ColourScale(0.5, signed=True)
    sheet = contact_sheet(pictures, range(100, 110), np.linspace(-1, 1, 10), scale, tile=64, columns=4)
    rows = 3
    assert sheet.shape[0] == 4 + rows * (64 + 14 + 4)
    bar = scale.bar(100)
    assert sheet.shape[1] == 4 + 4 * (64 + 4) + bar.shape[1] + 8
    top, bottom = bar[0, 0].astype(int), bar[-1, 0].astype(int)
    assert top[0] > top[2] and bottom[2] > bottom[0]    # positive (warm) on top, negative (cool) below


def test_one_outlier_does_not_flatten_the_evidence_plot():
    curve = np.sin(np.arange(40) / 4.0) * 0.05
    limit, outliers = outlier_range(curve)
    assert not outliers.any()
    curve[7] = -0.9
    limit, outliers = outlier_range(curve)
    assert list(np.flatnonzero(outliers)) == [7] and limit < 0.1
