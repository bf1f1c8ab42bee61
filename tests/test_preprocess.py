from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ebr_onnx import EbrError
from ebr_onnx.app.preprocess import PRESETS, CropBox, Preprocess, get_preset, preprocess

DEMO = Path("/work/shared/caffe-release/demo-frames/demo1")


def caffe_release_transcription(path: Path) -> np.ndarray:
    """Spec §1.2, step by step, as the release's Python does it (one 240×320 frame)."""
    img = (np.asarray(Image.open(path).convert("RGB")) / 255.0).astype(np.float32)  # caffe.io.load_image
    assert img.shape[:2] == (240, 320)  # already 240×320: no resize
    img = img[8:232, 48:272, :]  # util_preprocess_data.py:21-23, Python 2 integer-division offsets
    x = img.transpose(2, 0, 1)  # Transformer.preprocess: HWC -> CHW
    x = x[(2, 1, 0), :, :]  # channel_swap (2, 1, 0): RGB -> BGR
    x *= 255.0  # raw_scale
    x -= np.array([103.939, 116.779, 128.68]).reshape(3, 1, 1)  # float64 mean, in place on float32
    return x


def test_caffe_preset_matches_the_release_bit_for_bit():
    frames = sorted(DEMO.glob("*.jpg"))[:3] if DEMO.is_dir() else []
    if not frames:
        pytest.skip("demo frames not available")
    video = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
    x, box = preprocess(video, "caffe-ucf101")
    assert x.dtype == np.float32 and x.shape == (3, 3, 224, 224)
    for k, f in enumerate(frames):
        np.testing.assert_array_equal(x[k], caffe_release_transcription(f))
    assert box == CropBox(48.0, 8.0, 272.0, 232.0, frame_size=(240, 320))


def test_caffe_preset_resizes_other_sizes_and_maps_the_crop_back():
    frames = np.random.default_rng(0).integers(0, 256, (2, 480, 640, 3), dtype=np.uint8)
    x, box = preprocess(frames, get_preset("caffe-ucf101"))
    assert x.shape == (2, 3, 224, 224)
    # resized to 240×320 (scale 1/2), crop rows 8:232 cols 48:272 -> original rows 16:464, cols 96:544
    assert box == CropBox(96.0, 16.0, 544.0, 464.0, frame_size=(480, 640))


def test_imagenet_preset_shorter_side_and_normalisation():
    frame = np.full((1, 300, 400, 3), (255, 0, 128), dtype=np.uint8)
    x, box = preprocess(frame, "imagenet")
    assert x.shape == (1, 3, 224, 224)
    # shorter side 300 -> 256 (scale 256/300), long side round(400 * 256/300) = 341; crop offsets (0, (341-224)//2=58)
    s = 256 / 300
    assert box == CropBox(58 / (341 / 400), 16 / s, (58 + 224) / (341 / 400), (16 + 224) / s, frame_size=(300, 400))
    # RGB order, [0, 1] range: R = (1 - 0.485) / 0.229, G = (0 - 0.456) / 0.224
    np.testing.assert_allclose(x[0, 0], (1 - 0.485) / 0.229, rtol=1e-6)
    np.testing.assert_allclose(x[0, 1], -0.456 / 0.224, rtol=1e-6)
    np.testing.assert_allclose(x[0, 2], (128 / 255 - 0.406) / 0.225, rtol=1e-6)


def test_custom_preset_without_resize_or_crop():
    spec = Preprocess(size=None, crop=None, mean=(1.0, 2.0, 3.0), std=(2.0, 2.0, 2.0), channel_order="BGR", scale=255)
    frame = np.zeros((1, 5, 7, 3), dtype=np.uint8)
    frame[..., 0] = 11  # red
    x, box = preprocess(frame, spec)
    assert x.shape == (1, 3, 5, 7)
    np.testing.assert_allclose(x[0, 2], (11 - 3.0) / 2)  # red is the last channel in BGR, its mean is 3
    np.testing.assert_allclose(x[0, 0], (0 - 1.0) / 2)
    assert box == CropBox(0.0, 0.0, 7.0, 5.0, frame_size=(5, 7))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"size": None, "crop": None, "channel_order": "RBG"},
        {"size": None, "crop": None, "std": (1.0, 0.0, 1.0)},
        {"size": None, "crop": 0},
        {"size": (240,), "crop": None},
        {"size": None, "crop": None, "mean": (1.0, 2.0)},
    ],
)
def test_invalid_presets_raise(kwargs):
    with pytest.raises(EbrError):
        Preprocess(**kwargs)


def test_bad_input_and_unknown_preset_raise():
    with pytest.raises(EbrError, match="available: caffe-ucf101, imagenet, synthetic"):
        get_preset("vgg")
    with pytest.raises(EbrError, match="uint8"):
        preprocess(np.zeros((1, 240, 320, 3), dtype=np.float32))
    with pytest.raises(EbrError, match="larger than"):
        preprocess(np.zeros((1, 100, 100, 3), dtype=np.uint8), Preprocess(size=None, crop=224))
    assert set(PRESETS) == {"caffe-ucf101", "imagenet", "synthetic"}


def test_prepare_applies_the_models_recorded_preprocessing():
    """The bundled model records the synthetic preset's fields; prepare() gives them from the model, a file, an
    explainer or a graph alike, and the same as preprocess() with the preset named."""
    from ebr_onnx import Explainer, prepare
    from ebr_onnx.app.demo import BUNDLED_MODEL
    from ebr_onnx.app.synthetic import make_clip

    frames = make_clip(0, frames=3).frames
    ex = Explainer(BUNDLED_MODEL)
    x, box = prepare(ex, frames)
    np.testing.assert_array_equal(x, preprocess(frames, "synthetic")[0])
    assert x.shape == (3, 3, 64, 64) and box.frame_size == (64, 64)
    np.testing.assert_array_equal(prepare(BUNDLED_MODEL, frames)[0], x)
    np.testing.assert_array_equal(prepare(ex.graph, frames)[0], x)
    other, _ = prepare(ex, frames, mean=(0.2, 0.2, 0.2))
    assert not np.allclose(other, x)
    with pytest.raises(EbrError, match="unknown preprocessing field"):
        prepare(ex, frames, colour="red")
    with pytest.raises(EbrError, match="Explainer, a ModelGraph or an ONNX file"):
        prepare(42, frames)
