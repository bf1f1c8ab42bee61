"""The pycaffe interface (``ebr_onnx.compat.caffe``) runs the authors' own flows with one changed import.

* The release notebook's cells (``excitationBP-RNNs/demo.ipynb``; spec §1), written against the interface only,
  reproduce every array of the authors' Caffe run (``shared/golden/vgg16_lstm_small_a``) to 1e-5, and the BP-R map by
  a plain-mode backward.
* The original EB release's cEB recipe for GoogleNet-COCO (``excitationBP/eval_coco.py``: TRAIN phase, the input
  reshaped, the dual at ``loss3/classifier``, raw subtraction at ``pool5/7x7_s1``, EB on to ``pool2/3x3_s2``) gives
  ``Explainer``'s ``ceb`` maps.
* Caffe's blob semantics: in-place diffs, no clearing, the LSTM's state carry-over, DummyData refills, Split layers,
  parameter writes, save/copy_from; ``caffe.io`` with the release's numerics; what is not offered fails in one line.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from caffe_nets import input_layer, layer, write_net
from google.protobuf import text_format
from PIL import Image

from converters.caffe import convert_caffe, convert_net
from converters.caffe.netspec import in_state
from converters.caffe.parse import read_prototxt
from converters.caffe.schema import NetParameter
from converters.caffe.weights import ZeroWeights
from ebr_onnx import Explainer, preprocess
from ebr_onnx.compat import caffe
from ebr_onnx.compat import state as caffe_state
from ebr_onnx.compat.netspec import insert_splits

SHARED = Path(__file__).resolve().parents[2] / "shared"
GOLDEN = SHARED / "golden" / "vgg16_lstm_small_a"
RELEASE = SHARED / "caffe-release"
pytestmark = pytest.mark.skipif(not GOLDEN.is_dir(), reason="shared/golden is not present")


def _match(got: np.ndarray, want: np.ndarray, tol: float = 1e-5) -> float:
    """Assert ``got ≈ want`` to ``tol`` relative (elementwise, floored at ``tol`` of the largest value); returns the
    largest difference relative to the largest value."""
    got = np.asarray(got).reshape(want.shape)
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale)
    return float(np.abs(got - want).max()) / scale


@pytest.fixture(autouse=True)
def cpu_mode():
    caffe.set_mode_cpu()
    yield
    caffe.set_mode_cpu()


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "golden.npz"))


@pytest.fixture(scope="module")
def inputs() -> dict[str, np.ndarray]:
    return dict(np.load(GOLDEN / "inputs.npz"))


def _golden_net(inputs: dict[str, np.ndarray]) -> caffe.Net:
    net = caffe.Net(str(GOLDEN / "deploy.prototxt"), str(GOLDEN / "weights.caffemodel"), caffe.TEST)
    net.blobs["data"].data[...] = inputs["data"]
    net.blobs["clip_markers"].data[...] = inputs["clip_markers"]
    return net


@pytest.mark.filterwarnings("ignore:caffe GPU mode")
def test_release_notebook_flow_reproduces_the_golden_arrays(golden, inputs) -> None:
    """demo.ipynb cells 3, 9 and 11 with ``from ebr_onnx.compat import caffe``; every golden array to 1e-5."""
    meta = json.loads((GOLDEN / "meta.json").read_text())
    errors: dict[str, float] = {}
    # cell 3
    caffe.set_mode_gpu()
    net = caffe.Net(str(GOLDEN / "deploy.prototxt"), str(GOLDEN / "weights.caffemodel"), caffe.TEST)
    topBlobName, topLayerName = "fc8-final", "fc8-final"  # noqa: N806  (the notebook's names)
    secondTopLayerName, secondTopBlobName = "fc7", "fc7"  # noqa: N806
    # cell 9
    data, clip = inputs["data"], inputs["clip_markers"]
    frames_per_clip = data.shape[0]
    net.blobs["data"].data[...] = data
    net.blobs["clip_markers"].data[...] = clip
    net.forward()
    clips_per_batch = net.blobs["probs"].data.shape[1]
    scores = np.mean(net.blobs["probs"].data[:, 0, :], axis=0)
    for key, blob in (("probs", "probs"), ("fc8", "fc8-final"), ("fc7", "fc7"), ("conv5_1", "conv5_1")):
        errors[key] = _match(net.blobs[blob].data, golden[key])
    errors["mean softmax"] = _match(scores, golden["probs"][:, 0, :].mean(axis=0))
    # cell 11: cEB-R
    caffe.set_mode_eb_gpu()
    tagID = meta["target"]  # noqa: N806
    outputBlobName = "conv5_1"  # noqa: N806
    net.blobs[topBlobName].diff[...] = 0
    for c in range(clips_per_batch):
        net.blobs[topBlobName].diff[frames_per_clip - 1, c, tagID] = 1
    net.backward(start=topLayerName, end=secondTopLayerName)
    attMap1 = net.blobs[secondTopBlobName].diff.copy()  # noqa: N806
    net.params[topBlobName][0].data[...] *= -1
    net.backward(start=topLayerName, end=secondTopLayerName)
    attMap2 = net.blobs[secondTopBlobName].diff.copy()  # noqa: N806
    net.params[topBlobName][0].data[...] *= -1
    errors["fc7_signal_pos"] = _match(attMap1, golden["fc7_signal_pos"])
    errors["fc7_signal_neg"] = _match(attMap2, golden["fc7_signal_neg"])
    norm1 = sum(sum(attMap1[...]))
    norm2 = sum(sum(attMap2[...]))
    pos = attMap1.copy()
    for ff in range(frames_per_clip):
        attMap1[ff] /= norm1
        attMap2[ff] /= norm2
        net.blobs[secondTopBlobName].diff[ff] = attMap1[ff] - attMap2[ff]
    errors["fc7_contrastive"] = _match(net.blobs[secondTopBlobName].diff, golden["fc7_contrastive"])
    net.backward(start=secondTopLayerName, end=outputBlobName)
    attMap = net.blobs[outputBlobName].diff.sum(1)  # noqa: N806
    errors["cebr_conv5_1_signal"] = _match(net.blobs[outputBlobName].diff, golden["cebr_conv5_1_signal"])
    errors["cebr_map"] = _match(attMap, golden["cebr_map"])
    # EB-R: the positive pass alone, normalised (spec §1.11)
    net.blobs[secondTopBlobName].diff[...] = pos / sum(sum(pos))
    net.backward(start=secondTopLayerName, end=outputBlobName)
    errors["ebr_conv5_1_signal"] = _match(net.blobs[outputBlobName].diff, golden["ebr_conv5_1_signal"])
    errors["ebr_map"] = _match(net.blobs[outputBlobName].diff.sum(1), golden["ebr_map"])
    # BP-R: the same prior, a plain-mode backward; conv5_1's diff is the gradient at relu5_1's input
    caffe.set_mode_gpu()
    net.blobs[topBlobName].diff[...] = 0
    net.blobs[topBlobName].diff[frames_per_clip - 1, 0, tagID] = 1
    net.backward(start=topLayerName, end=outputBlobName)
    errors["bpr_conv5_1_signal"] = _match(net.blobs[outputBlobName].diff, golden["bpr_conv5_1_signal"])
    assert set(golden) <= set(errors)
    print("max relative errors:", json.dumps(errors, indent=1))


def test_blobs_layers_and_params_in_caffes_order(inputs) -> None:
    net = _golden_net(inputs)
    names = net._layer_names
    assert names[:4] == ["data", "clip_markers", "conv1_1", "relu1_1"]
    assert names[-3:] == ["probs", "probs_probs_0_split", "dummyLoss"]  # InsertSplits: probs feeds the loss twice
    assert list(net.blobs)[:4] == ["data", "clip_markers", "conv1_1", "conv1_2"]  # in-place tops share a blob
    assert "conv1_1" in net.blobs and "relu1_1" not in net.blobs
    assert list(net.blobs)[-4:] == ["probs", "probs_probs_0_split_0", "probs_probs_0_split_1", "loss"]
    assert net.inputs == [] and net.outputs == ["loss"]  # DummyData tops are not net inputs
    assert list(net.params)[-3:] == ["fc7", "lstm1", "fc8-final"]
    assert [b.data.shape for b in net.params["lstm1"]] == [(64, 64), (64,), (64, 16)]  # W_xc, b_c, W_hc
    assert [layer.type for layer in net.layers][-3:] == ["Softmax", "Split", "EuclideanLoss"]
    assert net.top_names["relu5_1"] == ["conv5_1"] and net.bottom_names["lstm1"] == ["fc7-reshape", "reshape-cm"]
    assert net.blobs["fc8-final"].shape == (8, 1, 10) and net.blobs["loss"].shape == ()
    assert net.blob_loss_weights["loss"] == 1.0 and float(net.blobs["loss"].diff) == 1.0  # SetLossWeights
    out = net.forward()
    assert set(out) == {"loss"} and float(out["loss"]) == 0.0  # EuclideanLoss(probs, probs)
    # a Reshape's top views its bottom's data and diff
    assert np.shares_memory(net.blobs["fc7-reshape"].data, net.blobs["fc7"].data)
    assert np.shares_memory(net.blobs["fc7-reshape"].diff, net.blobs["fc7"].diff)


def test_in_place_diffs_and_diffs_not_cleared(golden, inputs) -> None:
    """A blob's diff holds what the last layer run wrote: conv5_2's backward writes the gradient at relu5_1's
    output; the in-place relu5_1, run next, masks it in place (the golden BP-R). Diffs below ``end`` are kept."""
    net = _golden_net(inputs)
    net.forward()
    net.blobs["fc8-final"].diff[...] = 0
    net.blobs["fc8-final"].diff[7, 0, 3] = 1
    net.backward(start="fc8-final", end="conv5_2")
    after_conv5_2 = net.blobs["conv5_1"].diff.copy()
    net.backward(start="relu5_1", end="relu5_1")
    _match(net.blobs["conv5_1"].diff, golden["bpr_conv5_1_signal"])
    np.testing.assert_array_equal(net.blobs["conv5_1"].diff, after_conv5_2 * (net.blobs["conv5_1"].data > 0))
    kept = net.blobs["conv5_1"].diff.copy()
    caffe.set_mode_eb_cpu()
    net.backward(start="fc8-final", end="fc7")
    np.testing.assert_array_equal(net.blobs["conv5_1"].diff, kept)  # below end: not cleared, not touched
    # the data blob gets no diff: nothing needs backward into it (no force_backward)
    assert not net.blobs["data"].diff.any()


def test_parameter_writes_change_the_next_forward(inputs) -> None:
    net = _golden_net(inputs)
    net.forward()
    before = net.blobs["fc8-final"].data.copy()
    bias = net.params["fc8-final"][1].data.copy()
    net.params["fc8-final"][0].data[...] *= -1
    net.forward()
    np.testing.assert_allclose(net.blobs["fc8-final"].data, -(before - bias) + bias, rtol=1e-5, atol=1e-6)
    net.params["lstm1"][0].data[...] *= 0.5  # the LSTM's W_xc (stored transposed in the graph)
    net.forward()
    x, markers = net.blobs["fc7-reshape"].data, net.blobs["reshape-cm"].data
    w_xc, b_c, w_hc = (np.asarray(p.data, np.float64) for p in net.params["lstm1"])
    zero = np.zeros((1, w_hc.shape[1]))
    _match(net.blobs["lstm1"].data, _lstm(x, markers, w_xc, b_c, w_hc, zero, zero)[0])


def _lstm(x: np.ndarray, cont: np.ndarray, w_xc, b_c, w_hc, h: np.ndarray, c: np.ndarray):
    """The release's ReLU-LSTM (spec §3.2) from state (h, c): the hs and the final (h, c)."""
    x, h, c = x.astype(np.float64), h.astype(np.float64), c.astype(np.float64)
    hs = []
    for t in range(x.shape[0]):
        gates = (h * cont[t][:, None]) @ w_hc.T + x[t] @ w_xc.T + b_c
        a_i, a_f, a_o, a_g = np.split(gates, 4, axis=1)
        i, f, o = (1 / (1 + np.exp(-a)) for a in (a_i, a_f, a_o))
        c = cont[t][:, None] * f * c + i * np.maximum(a_g, 0)
        h = o * np.maximum(c, 0)
        hs.append(h)
    return np.stack(hs), h, c


def test_lstm_state_carries_over_between_forwards(inputs) -> None:
    """Each forward starts from the last forward's final h and c (``recurrent_layer.cpp``); a clip marker 0 at the
    first step flushes it (spec §3.1, §7 #16)."""
    net = _golden_net(inputs)
    net.forward()
    first = net.blobs["lstm1"].data.copy()
    net.forward()
    np.testing.assert_array_equal(net.blobs["lstm1"].data, first)  # cont_0 = 0: flushed
    x, markers = net.blobs["fc7-reshape"].data.copy(), net.blobs["reshape-cm"].data.copy()
    w_xc, b_c, w_hc = (np.asarray(p.data, np.float64) for p in net.params["lstm1"])
    zero = np.zeros((1, w_hc.shape[1]))
    hs, h, c = _lstm(x, markers, w_xc, b_c, w_hc, zero, zero)
    _match(first, hs)
    net.blobs["clip_markers"].data[...] = 1
    for _ in range(2):
        hs, h, c = _lstm(x, np.ones_like(markers), w_xc, b_c, w_hc, h, c)
        net.forward()
        _match(net.blobs["lstm1"].data, hs)
    assert not np.allclose(net.blobs["lstm1"].data, first, rtol=1e-3)


def test_dummy_data_refills_and_input_layers(tmp_path) -> None:
    """DummyData tops with a constant filler keep what the user wrote; other fillers refill on every forward;
    Input tops are ``net.inputs`` and take ``forward(**kwargs)``."""
    proto = (
        layer("noise", "DummyData", tops=["noise"],
              params='dummy_data_param { shape { dim: 2 dim: 3 } data_filler { type: "gaussian" std: 1 } }')
        + layer("kept", "DummyData", tops=["kept"], params='dummy_data_param { shape { dim: 2 dim: 3 } }')
        + input_layer("x", (2, 3))
        + layer("sum", "Eltwise", ["noise", "kept"], ["sum"])
        + layer("total", "Eltwise", ["sum", "x"], ["total"])
    )
    path, _ = write_net(tmp_path, proto)
    caffe.set_random_seed(3)
    net = caffe.Net(str(path), caffe.TEST)
    assert net.inputs == ["x"] and net.outputs == ["total"]
    net.blobs["kept"].data[...] = 5
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    out1 = net.forward(x=x)["total"].copy()
    noise1 = net.blobs["noise"].data.copy()
    out2 = net.forward(x=x)["total"].copy()
    assert not np.array_equal(noise1, net.blobs["noise"].data)
    np.testing.assert_allclose(out1, noise1 + 5 + x, rtol=1e-6)
    np.testing.assert_allclose(out2, net.blobs["noise"].data + 5 + x, rtol=1e-6)
    with pytest.raises(Exception, match="do not match net inputs"):
        net.forward(y=x)
    with pytest.warns(RuntimeWarning, match="needs backward"):  # no loss, no force_backward: Caffe runs nothing
        net.backward(start="total")


@pytest.mark.filterwarnings("ignore:caffe GPU mode")
def test_googlenet_ceb_recipe_matches_explainer(tmp_path) -> None:
    """eval_coco.py's doExcitationBackprop, random weights, one 224×224 image: the map at pool2/3x3_s2 equals
    ``Explainer(...).explain(..., method="ceb", layer="pool2/3x3_s2")``'s."""
    prototxt = RELEASE / "GoogleNet_COCO" / "deploy.prototxt"
    if not prototxt.is_file():
        pytest.skip("the GoogleNet_COCO release files are not present")
    caffe.set_mode_gpu()
    caffe.set_random_seed(0)
    net = caffe.Net(str(prototxt), caffe.TRAIN)
    assert net._layer_names[0] == "input" and net.inputs == ["data"]
    assert "pool2/3x3_s2_pool2/3x3_s2_0_split" in net._layer_names
    img = np.random.default_rng(1).random((224, 300, 3)).astype(np.float32)
    net.blobs["data"].reshape(1, 3, 224, 224)
    transformer = caffe.io.Transformer({"data": net.blobs["data"].data.shape})
    transformer.set_mean("data", np.array([103.939, 116.779, 123.68]))
    transformer.set_transpose("data", (2, 0, 1))
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_raw_scale("data", 255.0)
    net.blobs["data"].data[...] = transformer.preprocess("data", img)
    net.forward(end="loss3/classifier")
    assert net.blobs["loss3/classifier"].shape == (1, 80, 1, 1) and not net.blobs["prob"].data.any()  # not run
    caffe.set_mode_eb_gpu()
    top, second, output, tag = "loss3/classifier", "pool5/7x7_s1", "pool2/3x3_s2", 17
    net.blobs[top].diff[0][...] = 0
    net.blobs[top].diff[0][tag] = np.exp(net.blobs[top].data[0][tag].copy())
    net.blobs[top].diff[0][tag] /= net.blobs[top].diff[0][tag].sum()
    net.params[top][0].data[...] *= -1
    net.backward(start=top, end=second)
    buff = net.blobs[second].diff.copy()
    net.params[top][0].data[...] *= -1
    net.backward(start=top, end=second)
    net.blobs[second].diff[...] -= buff
    net.backward(start=second, end=output)
    signal = net.blobs[output].diff.copy()
    attMap = np.maximum(signal[0].sum(0), 0)  # noqa: N806
    weights = tmp_path / "googlenet.caffemodel"
    net.save(str(weights))
    explainer = Explainer(convert_caffe(prototxt, weights, frames=1), add_rule="caffe")
    got = explainer.explain(net.blobs["data"].data.copy(), target=tag, method="ceb", layer=output)
    error = _match(signal, got.signal, 1e-5)
    _match(attMap, np.maximum(got.maps[0], 0), 1e-5)
    assert np.abs(signal).sum() > 0
    print(f"GoogleNet cEB at {output}: max relative difference to Explainer {error:.2e}")


def test_save_and_copy_from_round_trip(tmp_path, inputs) -> None:
    net = _golden_net(inputs)
    saved = tmp_path / "copy.caffemodel"
    net.save(str(saved))
    again = caffe.Net(str(GOLDEN / "deploy.prototxt"), caffe.TEST, weights=str(saved))
    for name, blobs in net.params.items():
        for a, b in zip(blobs, again.params[name]):
            np.testing.assert_array_equal(a.data, b.data)
    again.params["conv1_1"][0].data[...] = 0
    again.copy_from(str(GOLDEN / "weights.caffemodel"))
    np.testing.assert_array_equal(again.params["conv1_1"][0].data, net.params["conv1_1"][0].data)


def test_transformer_reproduces_the_release_preprocessing() -> None:
    """util_preprocess_data.py's image_processor with caffe.io gives ebr_onnx's caffe-ucf101 preset bit for bit."""
    frames = sorted((RELEASE / "demo-frames" / "demo1").glob("*.jpg"))[:3]
    if not frames:
        pytest.skip("the demo frames are not present")
    transformer = caffe.io.Transformer({"data": (3, 3, 224, 224)})
    transformer.set_raw_scale("data", 255)
    channel_mean = np.zeros((3, 224, 224))
    for index, value in enumerate([103.939, 116.779, 128.68]):
        channel_mean[index, ...] = value
    transformer.set_mean("data", channel_mean)
    transformer.set_channel_swap("data", (2, 1, 0))
    transformer.set_transpose("data", (2, 0, 1))
    ours = []
    for frame in frames:
        data_in = caffe.io.load_image(str(frame))
        assert data_in.shape == (240, 320, 3) and data_in.dtype == np.float32
        ours.append(transformer.preprocess("data", data_in[8:232, 48:272, :]))
    pixels = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in frames])
    np.testing.assert_array_equal(np.stack(ours), preprocess(pixels, "caffe-ucf101")[0])
    back = transformer.deprocess("data", ours[0])
    np.testing.assert_allclose(back, caffe.io.load_image(str(frames[0]))[8:232, 48:272], atol=1e-5)


def test_load_image_grey_and_alpha(tmp_path) -> None:
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgba = np.random.default_rng(0).integers(0, 256, (3, 4, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    img = caffe.io.load_image(str(tmp_path / "grey.png"))
    assert img.shape == (3, 4, 3) and img.dtype == np.float32
    np.testing.assert_array_equal(img[..., 1], (grey / 255.0).astype(np.float32))
    assert caffe.io.load_image(str(tmp_path / "grey.png"), color=False).shape == (3, 4, 1)
    np.testing.assert_array_equal(caffe.io.load_image(str(tmp_path / "rgba.png")),
                                  (rgba[..., :3] / 255.0).astype(np.float32))


@pytest.mark.parametrize("order", [0, 1])
def test_resize_image_is_skimages_resize_of_the_release(order) -> None:
    ndimage = pytest.importorskip("scipy.ndimage")
    im = np.random.default_rng(0).random((7, 9, 3)).astype(np.float32) * 3 - 1
    got = caffe.io.resize_image(im, (12, 5), interp_order=order)
    lo, hi = im.min(), im.max()
    rows = (np.arange(12) + 0.5) * 7 / 12 - 0.5
    cols = (np.arange(5) + 0.5) * 9 / 5 - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    want = np.stack([ndimage.map_coordinates(((im - lo) / (hi - lo))[..., k].astype(np.float64), grid, order=order,
                                             mode="nearest") for k in range(3)], axis=-1) * (hi - lo) + lo
    assert got.shape == (12, 5, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(caffe.io.resize_image(np.full((4, 4, 1), 0.5, np.float32), (2, 3)), 0.5)


def test_gpu_modes_without_a_gpu_say_so_once_and_run_on_the_cpu(monkeypatch, inputs, golden) -> None:
    if caffe_state.gpu_available():
        pytest.skip("a GPU is present")
    monkeypatch.setattr(caffe_state, "_warned_no_gpu", False)
    with pytest.warns(RuntimeWarning, match="no CUDA GPU"):
        caffe.set_mode_gpu()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        caffe.set_mode_eb_gpu()
    assert caffe_state.device() == "cpu" and caffe_state.mode().eb


@pytest.fixture
def host_device(monkeypatch):
    """The engine's CUDA path served by the strict host stand-in of CuPy (``tests/device_shim.py``)."""
    from device_shim import make_module

    monkeypatch.setitem(__import__("sys").modules, "cupy", make_module())
    monkeypatch.setattr(caffe_state, "_warned_no_gpu", True)


@pytest.mark.filterwarnings("ignore:onnxruntime has no CUDA provider")
@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_eb_gpu_mode_runs_the_device_path(host_device, inputs, golden) -> None:
    net = _golden_net(inputs)
    caffe.set_mode_gpu()
    assert caffe_state.device() == "cuda"
    net.forward()
    caffe.set_mode_eb_gpu()
    net.blobs["fc8-final"].diff[...] = 0
    net.blobs["fc8-final"].diff[7, 0, 3] = 1
    net.backward(start="fc8-final", end="fc7")
    _match(net.blobs["fc7"].diff, golden["fc7_signal_pos"])
    net.blobs["fc7"].diff[...] = golden["fc7_contrastive"]
    net.backward(start="fc7", end="conv5_1")
    _match(net.blobs["conv5_1"].diff, golden["cebr_conv5_1_signal"])


def _one_line(excinfo, call: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message and call in message and "not offered" in message


def test_what_is_not_offered_fails_in_one_line(tmp_path, inputs) -> None:
    for call, thing in (("caffe.SGDSolver", lambda: caffe.SGDSolver("solver.prototxt")),
                        ("caffe.get_solver", lambda: caffe.get_solver("solver.prototxt")),
                        ("caffe.set_mode_dc_cpu", caffe.set_mode_dc_cpu),
                        ("caffe.layers", lambda: caffe.layers.Convolution),
                        ("caffe.io.oversample", lambda: caffe.io.oversample([], (1, 1)))):
        with pytest.raises(caffe.NotOffered) as excinfo:
            thing()
        _one_line(excinfo, call)
    data = layer("data", "Data", tops=["data", "label"], params='data_param { source: "lmdb" batch_size: 1 }')
    path, _ = write_net(tmp_path, data + layer("ip", "InnerProduct", ["data"], params="inner_product_param { "
                                                                                      "num_output: 2 }"))
    with pytest.raises(caffe.NotOffered) as excinfo:
        caffe.Net(str(path), caffe.TEST)
    _one_line(excinfo, "layer 'data' (Data)")
    with pytest.raises(caffe.NotOffered) as excinfo:
        caffe.Net(str(GOLDEN / "deploy.prototxt"), str(GOLDEN / "weights.caffemodel"), caffe.TRAIN)
    _one_line(excinfo, "layer 'drop6' (Dropout)")
    net = _golden_net(inputs)
    for call, thing in (("Net.forward_all", net.forward_all), ("net.params[...][i].diff",
                                                               lambda: net.params["fc7"][0].diff),
                        ("Net.forward(start=...)", lambda: net.forward(start="conv1_1"))):
        with pytest.raises(caffe.NotOffered) as excinfo:
            thing()
        _one_line(excinfo, call)


def test_eltwise_product_has_no_eb_rule(tmp_path) -> None:
    proto = input_layer("x", (1, 2)) + layer("ip", "InnerProduct", ["x"], params="inner_product_param { "
                                                                                  "num_output: 2 }")
    proto += layer("prod", "Eltwise", ["ip", "x"], params="eltwise_param { operation: PROD }")
    path, _ = write_net(tmp_path, "force_backward: true\n" + proto)
    net = caffe.Net(str(path), caffe.TEST)
    net.forward(x=np.ones((1, 2), np.float32))
    caffe.set_mode_eb_cpu()
    net.blobs["prod"].diff[...] = 1
    with pytest.raises(caffe.NotOffered) as excinfo:
        net.backward(start="prod")
    _one_line(excinfo, "Eltwise PROD")
    caffe.set_mode_cpu()
    grads = net.backward(start="prod")  # its gradient is offered
    assert grads["x"].shape == (1, 2) and grads["x"].any()


def _net(text: str) -> NetParameter:
    net = NetParameter()
    text_format.Parse(text, net)
    return net


def test_insert_splits_names_as_caffe() -> None:
    """``InsertSplits``: a blob read twice is copied by a Split right after its producer; a loss weight on a top
    that is also read moves to the Split's first top."""
    split = insert_splits(_net(input_layer("x", (1, 2)) + layer("a", "ReLU", ["x"], params="loss_weight: 1")
                               + layer("b", "ReLU", ["x"]) + layer("c", "Eltwise", ["a", "b"])))
    assert [(spec.name, list(spec.bottom), list(spec.top)) for spec in split.layer] == [
        ("x", [], ["x"]), ("x_x_0_split", ["x"], ["x_x_0_split_0", "x_x_0_split_1"]),
        ("a", ["x_x_0_split_0"], ["a"]), ("a_a_0_split", ["a"], ["a_a_0_split_0", "a_a_0_split_1"]),
        ("b", ["x_x_0_split_1"], ["b"]), ("c", ["a_a_0_split_1", "b"], ["c"])]
    assert list(split.layer[3].loss_weight) == [1.0, 0.0] and not split.layer[2].loss_weight


def test_converter_exposes_layers_and_lstm_states() -> None:
    """``convert_net``: each Caffe layer's tensors and nodes, and the LSTM's state tensors; ``in_state`` keeps
    Caffe's phase, level and stage rules."""
    net = in_state(read_prototxt(GOLDEN / "deploy.prototxt"), "TEST")
    converted = convert_net(net, ZeroWeights())
    by_name = {l.name: l for l in converted.layers}
    assert by_name["relu5_1"].inputs == ("conv5_1/pre_relu5_1",) and by_name["relu5_1"].outputs == ("conv5_1",)
    assert [converted.model.graph.node[i].name for i in by_name["fc7"].nodes] == ["fc7"]
    state = converted.lstm_states["lstm1"]
    assert (state.h0, state.c0) == ("lstm1/h_-1", "lstm1/c_-1")
    produced = {o for node in converted.model.graph.node for o in node.output}
    assert {state.h_last, state.c_last} <= produced
    staged = _net(layer("a", "Input", tops=["a"], params="include { stage: 'deploy' }")
                  + layer("b", "Input", tops=["b"], params="exclude { min_level: 1 }"))
    assert [l.name for l in in_state(staged, "TEST").layer] == ["b"]
    assert [l.name for l in in_state(staged, "TEST", level=1, stages=["deploy"]).layer] == ["a"]
