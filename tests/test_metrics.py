import pytest

from ebr_onnx import EbrError
from ebr_onnx.app.metrics import (
    PointingGame,
    TemporalPointingGame,
    average_precision,
    mean_average_precision,
    temporal_iou,
)

BOX = (10.0, 20.0, 50.0, 60.0)  # x0, y0, x1, y1


@pytest.mark.parametrize(
    ("point", "hit"),
    [
        ((30.0, 30.0), True),  # inside
        ((30.0, 57.5), True),  # 7.5 px right of the box: on the 15 px diameter circle
        ((30.0, 57.6), False),  # 7.6 px
        ((12.6, 30.0), True),  # 7.4 px above
        ((65.0, 55.0), True),  # corner: sqrt(5² + 5²) = 7.07
        ((66.0, 56.0), False),  # corner: sqrt(6² + 6²) = 8.49
    ],
)
def test_pointing_game_uses_a_15_px_diameter(point, hit):
    assert PointingGame().evaluate(point, BOX) is hit


def test_pointing_game_tolerance_and_accuracy():
    assert PointingGame(tolerance=15).evaluate((30.0, 64.0), BOX)  # TorchRay's radius-15 convention
    game = PointingGame()
    for hit in (True, True, True, False):
        game.aggregate(hit, "Surfing")
    game.aggregate(False, "Diving")
    assert game.accuracy("Surfing") == 0.75  # 3 / (3 + 1)
    assert game.accuracy("Diving") == 0.0
    assert game.accuracy() == 0.6  # 3 / (3 + 2) over all frames
    with pytest.raises(EbrError):
        PointingGame().accuracy()


def test_temporal_pointing_game():
    game = TemporalPointingGame()
    assert game.evaluate(5, (5, 9)) and game.evaluate(9, (5, 9))
    assert not game.evaluate(10, (5, 9))
    game.aggregate(True)
    game.aggregate(False)
    assert game.accuracy() == 0.5


def test_temporal_iou_counts_inclusive_frames():
    assert temporal_iou((0, 9), (5, 14)) == pytest.approx(5 / 15)  # frames 5..9 shared; 10 + 10 - 5 in the union
    assert temporal_iou((0, 4), (5, 9)) == 0.0
    assert temporal_iou((3, 3), (3, 3)) == 1.0
    assert temporal_iou((0, 9), (2, 3)) == pytest.approx(2 / 10)
    with pytest.raises(EbrError):
        temporal_iou((5, 4), (0, 9))


GROUND_TRUTH = [("a", (0, 9)), ("a", (20, 29)), ("b", (0, 9))]


def test_average_precision_by_hand():
    detections = [
        ("a", (0, 9), 0.6),  # duplicate of a matched truth: false positive (ranked last)
        ("a", (0, 9), 0.9),  # true positive
        ("a", (50, 59), 0.8),  # no overlap: false positive
        ("b", (1, 9), 0.7),  # IoU 9/10: true positive
    ]
    # ranked TP, FP, TP, FP: precision 1, 1/2, 2/3, 2/4; recall 1/3, 1/3, 2/3, 2/3
    # interpolated precision at the recall steps: 1 at 1/3, max(2/3, 2/4) = 2/3 at 2/3
    # AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert average_precision(detections, GROUND_TRUTH, 0.5) == pytest.approx(5 / 9)


def test_average_precision_threshold_and_extremes():
    half = [("b", (0, 4), 1.0)]  # IoU with (0, 9) = 5/10
    assert average_precision(half, [("b", (0, 9))], 0.5) == 1.0
    assert average_precision(half, [("b", (0, 9))], 0.6) == 0.0
    assert average_precision([], GROUND_TRUTH, 0.5) == 0.0
    perfect = [(video, segment, 1.0) for video, segment in GROUND_TRUTH]
    assert average_precision(perfect, GROUND_TRUTH, 0.5) == 1.0
    with pytest.raises(EbrError):
        average_precision(half, [], 0.5)


def test_mean_average_precision_over_classes_with_truth():
    detections = {
        "x": [("a", (0, 9), 0.6), ("a", (0, 9), 0.9), ("a", (50, 59), 0.8), ("b", (1, 9), 0.7)],
        "z": [("a", (0, 9), 0.5)],  # no ground truth for z: ignored
    }
    truths = {"x": GROUND_TRUTH, "y": [("a", (0, 9))]}  # y has no detections: AP 0
    assert mean_average_precision(detections, truths, 0.5) == pytest.approx((5 / 9 + 0) / 2)
