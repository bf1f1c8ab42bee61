"""Everything a user can get wrong gives an :class:`EbrError` whose message names the problem and what is supported."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from ebr_onnx import EbrError, Explainer, UnsupportedOpError

RNG = np.random.default_rng(3)


@pytest.fixture(scope="module")
def small_net(make_model):
    """Conv–Relu–GlobalAveragePool–Flatten–Gemm without biases, so an all-zero input gives all-zero activations."""
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("GlobalAveragePool", ["r1"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "w2"], ["logits"], transB=1),
    ]
    weights = {"w1": RNG.uniform(-0.5, 1, (4, 3, 3, 3)).astype(np.float32),
               "w2": RNG.uniform(-1, 1, (3, 4)).astype(np.float32)}
    return make_model(nodes, {"x": ["N", 3, 5, 5]}, ["logits"], weights)


def _x(n: int = 1) -> np.ndarray:
    return RNG.uniform(0, 1, (n, 3, 5, 5)).astype(np.float32)


@pytest.mark.parametrize("method", ["eb", "grad"])
def test_unsupported_op_on_the_signal_path(make_model, method):
    nodes = [
        helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=1, name="top_k"),
        helper.make_node("Gemm", ["values", "w"], ["logits"], transB=1),
    ]
    model = make_model(nodes, {"x": [1, 6]}, ["logits"],
                       {"k": np.array([3], np.int64), "w": RNG.uniform(-1, 1, (2, 3)).astype(np.float32)})
    supported = r"supported op types: .*Conv.*MaxPool"
    with pytest.raises(UnsupportedOpError, match=rf"node 'top_k' has op type 'TopK'.*{supported}"):
        Explainer(model).explain(RNG.uniform(size=(1, 6)).astype(np.float32), target=0, method=method)


def test_custom_domain_op_on_the_signal_path(make_model):
    node = helper.make_node("Mystery", ["x"], ["y"], domain="com.example", name="mystery")
    model = make_model([helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Identity", ["r"], ["x2"])],
                       {"x": [1, 4]}, ["x2"])
    model.graph.node.insert(1, node)
    model.graph.node[2].input[0] = "y"
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedOpError, match="'mystery' has op type 'Mystery'.*supported op types"):
        Explainer(model).explain(np.ones((1, 4), np.float32), target=0)


def test_target_out_of_range(small_net):
    with pytest.raises(EbrError, match=r"target 7 is out of range: the output has 3 classes \(0…2\)"):
        Explainer(small_net).explain(_x(), target=7)


def test_wrong_number_of_targets(small_net):
    with pytest.raises(EbrError, match="3 targets given for 2 examples"):
        Explainer(small_net).explain(_x(2), target=[0, 1, 2])


def test_input_of_the_wrong_shape(small_net):
    with pytest.raises(EbrError, match=r"input 'x' has shape \(1, 3, 5\), but the model expects"):
        Explainer(small_net).explain(np.zeros((1, 3, 5), np.float32), target=0)


def test_file_that_is_not_onnx(tmp_path):
    path = tmp_path / "random.onnx"
    path.write_bytes(RNG.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(EbrError, match="is not an ONNX model"):
        Explainer(path)


def test_missing_file(tmp_path):
    with pytest.raises(EbrError, match="model file .*missing.onnx' does not exist"):
        Explainer(tmp_path / "missing.onnx")


def test_unknown_label(small_net):
    ex = Explainer(small_net, labels=["cat", "dog", "zebra"])
    assert ex.explain(_x(), target="dog").target == [1]
    with pytest.raises(EbrError, match=r"target 'Zebr' is not one of the model's 3 labels"):
        ex.explain(_x(), target="Zebr")
    with pytest.raises(EbrError, match=r"did you mean 'zebra'"):
        ex.explain(_x(), target="ZEBRA")


def test_label_without_labels(small_net):
    with pytest.raises(EbrError, match="has no labels"):
        Explainer(small_net).explain(_x(), target="cat")


def test_unknown_layer(small_net):
    with pytest.raises(EbrError, match="layer 'conv9' is neither a tensor nor a node of the graph; candidate layers"):
        Explainer(small_net).explain(_x(), target=0, layer="conv9")


def test_unknown_method(small_net):
    with pytest.raises(EbrError, match="unknown method 'lrp'; supported: eb, ceb, grad"):
        Explainer(small_net).explain(_x(), target=0, method="lrp")


def test_unknown_add_rule(small_net):
    with pytest.raises(EbrError, match="add_rule 'sum' is not one of: proportional, caffe"):
        Explainer(small_net, add_rule="sum")


@pytest.mark.parametrize("layer", [None, "r1"])
@pytest.mark.parametrize("method", ["eb", "ceb", "grad", "grad_x_input"])
def test_all_zero_input_gives_zeros_not_nan(small_net, method, layer):
    """EB and gradient × input vanish; the gradient vanishes below the ReLUs (above them it need not)."""
    r = Explainer(small_net).explain(np.zeros((2, 3, 5, 5), np.float32), target=1, method=method, layer=layer)
    assert np.isfinite(r.signal).all()
    assert not r.signal.any() or (method == "grad" and layer == "r1")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_the_input(small_net, bad):
    x = _x()
    x[0, 1, 2, 3] = bad
    with pytest.raises(EbrError, match="input 'x' contains NaN or infinite values"):
        Explainer(small_net).explain(x, target=0)


def test_four_d_windows_are_refused():
    """3-D pooling and convolutions are explained (tests/test_cnn3d.py); a 4-D window is refused by name."""
    from ebr_onnx.core.geometry import ConvGeometry
    from ebr_onnx.core.graph import Node

    node = Node("conv4d", "Conv", "", ("x", "w"), ("y",), {})
    with pytest.raises(EbrError, match="Conv node 'conv4d' is 4-D; ebr_onnx supports 1-D, 2-D and 3-D convolutions"):
        ConvGeometry(node, (1, 1, 2, 2, 2, 2), (1, 1, 2, 2, 2, 2))


def test_batch_norm_in_training_mode_is_refused(make_model):
    stats = {k: np.ones(2, np.float32) for k in ("g", "b", "m", "v")}
    nodes = [helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y", "rm", "rv"],
                                    training_mode=1, name="bn")]
    model = make_model(nodes, {"x": [3, 2]}, ["y"], stats, opset=15)
    with pytest.raises(EbrError, match="BatchNormalization node 'bn' is in training mode"):
        Explainer(model).explain(RNG.uniform(size=(3, 2)).astype(np.float32), target=0, method="grad")


def test_model_failing_the_checker(small_net):
    broken = onnx.ModelProto()
    broken.CopyFrom(small_net)
    broken.graph.node[1].input[0] = "no_such_tensor"
    with pytest.raises(EbrError, match="fails the ONNX checker"):
        Explainer(broken)


def test_an_empty_batch_is_a_clear_error(small_net):
    for method in ("eb", "ceb", "grad"):
        with pytest.raises(EbrError, match="empty batch"):
            Explainer(small_net).explain(np.zeros((0, *_x().shape[1:]), np.float32), target=0, method=method)


def test_integer_frames_name_the_fix(small_net):
    with pytest.raises(EbrError, match=r"uint8, the model expects float32: preprocess the frames first .*prepare"):
        Explainer(small_net).explain(np.zeros(_x().shape, np.uint8), target=0)
