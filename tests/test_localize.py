import numpy as np
import pytest

from ebr_onnx import EbrError
from ebr_onnx.app.localize import (
    best_window,
    peaks_to_frame_coords,
    probability_segment,
    probability_window,
    spatial_peaks,
    temporal_segment,
)
from ebr_onnx.app.preprocess import CropBox


def test_temporal_segment_extends_until_a_negative_sum():
    # anchor = index 3 (5); left: 0 at 2 and 2 at 1 are non-negative, -1 at 0 stops; right: 1 at 4, -3 at 5 stops
    assert temporal_segment(np.array([-1.0, 2, 0, 5, 1, -3, 4])) == (1, 4)


def test_temporal_segment_edge_cases():
    assert temporal_segment(np.array([-3.0, -1, -2])) == (1, 1)  # negative anchor: the anchor alone
    assert temporal_segment(np.array([1.0, 3, 3, -1])) == (0, 2)  # tie: the first maximum anchors
    assert temporal_segment(np.array([2.0, 2, 2])) == (0, 2)  # reaches both ends
    assert temporal_segment(np.array([5.0, -1, 1, 2]), anchor=3) == (2, 3)
    with pytest.raises(EbrError):
        temporal_segment(np.array([]))
    with pytest.raises(EbrError):
        temporal_segment(np.array([1.0, np.nan]))
    with pytest.raises(EbrError, match="anchor"):
        temporal_segment(np.array([1.0, 2.0]), anchor=2)


def test_best_window():
    curve = np.array([1.0, -2, 3, 1, -1, 2])
    assert best_window(curve, 2) == (2, 3)  # window sums -1, 1, 4, 0, 1
    assert best_window(curve, 3) == (2, 4)  # window sums 2, 2, 3, 2
    assert best_window(curve, 6) == (0, 5)
    with pytest.raises(EbrError, match=r"\[1, 6\]"):
        best_window(curve, 7)


def test_probability_segment_anchors_at_the_most_probable_frame():
    probs = np.array([0.2, 0.6, 0.9, 0.4, 0.7, 0.8])
    # signs -1 +1 +1 -1 +1 +1; anchor = argmax p = 2; extends to 1, stops at 0 and 3
    assert probability_segment(probs) == (1, 2)
    assert probability_segment(probs, threshold=0.3) == (1, 5)  # signs -1 +1 +1 +1 +1 +1


def test_probability_window_breaks_ties_by_probability():
    probs = np.array([0.2, 0.6, 0.7, 0.4, 0.9, 0.8])
    # ±1 window sums of length 2: 0, 2, 0, 0, 2 -> starts 1 and 4 tie; probability sums 1.3 and 1.7 -> start 4
    assert probability_window(probs, 2) == (4, 5)


def test_spatial_peaks_first_maximum_on_ties():
    maps = np.zeros((3, 4, 5))
    maps[0, 2, 3] = 1.0
    maps[1, 1, 4] = maps[1, 3, 0] = 2.0  # tie: row-major first is (1, 4)
    maps[2] = -1.0
    maps[2, 0, 1] = -0.5
    np.testing.assert_array_equal(spatial_peaks(maps), [[2, 3], [1, 4], [0, 1]])
    with pytest.raises(EbrError):
        spatial_peaks(np.zeros((4, 5)))


def test_peaks_to_frame_coords_uses_the_crop_box():
    box = CropBox(48.0, 8.0, 272.0, 232.0, frame_size=(240, 320))
    # 14×14 map over a 224 px crop: 16 px cells; centre of cell (0, 0) = (8 + 8, 48 + 8),
    # of cell (13, 13) = (8 + 13.5 * 16, 48 + 13.5 * 16) = (224, 264)
    coords = peaks_to_frame_coords(np.array([[0, 0], [13, 13]]), (14, 14), box)
    np.testing.assert_allclose(coords, [[16.0, 56.0], [224.0, 264.0]])
    resized = CropBox(96.0, 16.0, 544.0, 464.0, frame_size=(480, 640))  # 32 px cells
    np.testing.assert_allclose(peaks_to_frame_coords(np.array([[0, 1]]), (14, 14), resized), [[32.0, 144.0]])
