"""The engine on CNNs exported from PyTorch against PyTorch itself.

* ``grad`` equals autograd's input gradient of the target logit;
* ``eb`` / ``ceb`` equal an independent EB written here with autograd (the z⁺ trick: each linear layer's backward is
  ``x ⊙ ∂/∂x[Σ (p ⊘₀ z⁺(x)) · z⁺(x)]`` with ``z⁺`` the layer with W⁺ and no bias), map for map;
* optionally (when zennit is installed, see ``tests/stubs``) ``eb`` equals zennit's ZPlus composite.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest

from ebr_onnx import Explainer
from ebr_onnx.app.inspect import describe

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


# -- an independent EB in PyTorch ---------------------------------------------------------------------------------
class _ExcitationFn(torch.autograd.Function):
    """Forward: the layer as it is. Backward: Eq. 8, ``x ⊙ ∂/∂x[Σ (p ⊘₀ z⁺(x)) · z⁺(x)]``."""

    @staticmethod
    def forward(ctx, x, layer, positive):
        ctx.save_for_backward(x)
        ctx.positive = positive
        return layer(x)

    @staticmethod
    def backward(ctx, p):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_()
            z = ctx.positive(xd)
            q = torch.where(z != 0, p / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))
            (g,) = torch.autograd.grad(z, xd, q)
        return x * g, None, None


class _IdentityBackward(torch.autograd.Function):
    """Forward: the layer; backward: the signal copied through (the release's BatchNorm EB, spec §2.4)."""

    @staticmethod
    def forward(ctx, x, layer):
        return layer(x)

    @staticmethod
    def backward(ctx, p):
        return p, None


class _ProportionalAdd(torch.autograd.Function):
    """Forward: a + b; backward: each operand's share of the positive contributions."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a + b

    @staticmethod
    def backward(ctx, p):
        a, b = (t.clamp(min=0) for t in ctx.saved_tensors)
        total = a + b
        q = torch.where(total != 0, p / torch.where(total != 0, total, torch.ones_like(total)), torch.zeros_like(p))
        return a * q, b * q


class Plain:
    """The forward as PyTorch computes it (what the exporter sees, and autograd differentiates)."""

    def layer(self, module, x):
        return module(x)

    def add(self, a, b):
        return a + b


class Excitation(Plain):
    """The same forward with EB backward rules (paper Eq. 8; spec §2.1, §2.2, §2.4)."""

    def layer(self, module, x):
        if isinstance(module, nn.BatchNorm2d):
            return _IdentityBackward.apply(x, module)
        return _ExcitationFn.apply(x, module, _positive(module))

    def add(self, a, b):
        return _ProportionalAdd.apply(a, b)


def _positive(module):
    """``z⁺``: the layer with W⁺ and without bias (pooling layers are their own ``z⁺``)."""
    if isinstance(module, nn.Conv2d):
        w = module.weight.detach().clamp(min=0)
        return lambda v: F.conv2d(v, w, None, module.stride, module.padding, module.dilation, module.groups)
    if isinstance(module, nn.Linear):
        w = module.weight.detach().clamp(min=0)
        return lambda v: F.linear(v, w)
    return module


# -- models -------------------------------------------------------------------------------------------------------
class VGGLike(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ops = Plain()  # the forward's rule table: Plain() for export and autograd, Excitation() for EB
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        self.pool1 = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(8, 12, 3, padding=1, groups=4)
        self.pool2 = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)
        self.conv4 = nn.Conv2d(12, 16, 3, stride=2, padding=1, dilation=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.fc1, self.fc2 = nn.Linear(16 * 2 * 2, 20), nn.Linear(20, 6)

    def features(self, x):
        """The classifier's input."""
        ops = self.ops
        h = F.relu(ops.layer(self.conv1, x))
        h = self.pool1(F.relu(ops.layer(self.conv2, h)))
        h = ops.layer(self.pool2, F.relu(ops.layer(self.conv3, h)))
        h = self.pool3(F.relu(ops.layer(self.conv4, h)))
        return F.relu(ops.layer(self.fc1, torch.flatten(h, 1)))

    def forward(self, x):
        return self.ops.layer(self.fc2, self.features(x))


class ResNetLike(nn.Module):
    """Two residual blocks (an identity skip and a strided projection), BatchNorm, global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = Plain()
        self.stem, self.bn0 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(3, stride=2, padding=1)  # overlapping windows, as ResNet's stem
        self.c1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.c3, self.down = nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.Conv2d(8, 12, 1, stride=2)
        self.gap, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(12, 5)
        for bn in (self.bn0, self.bn1, self.bn2):
            bn.weight.data.uniform_(0.5, 1.5)
            bn.bias.data.uniform_(-0.1, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        ops = self.ops
        h = self.pool(F.relu(ops.layer(self.bn0, ops.layer(self.stem, x))))
        r = F.relu(ops.layer(self.bn1, ops.layer(self.c1, h)))
        h = ops.add(F.relu(ops.layer(self.bn2, ops.layer(self.c2, r))), h)
        h = ops.add(F.relu(ops.layer(self.c3, h)), F.relu(ops.layer(self.down, h)))
        return ops.layer(self.fc, torch.flatten(ops.layer(self.gap, h), 1))


def _folded(model: ResNetLike) -> ResNetLike:
    """A copy with every BatchNorm folded into the conv before it (what the exporter does in eval mode)."""
    copy = ResNetLike()
    copy.load_state_dict(model.state_dict())
    for conv, bn in ((copy.stem, copy.bn0), (copy.c1, copy.bn1), (copy.c2, copy.bn2)):
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.data = conv.weight.data * scale[:, None, None, None]
        conv.bias.data = (conv.bias.data - bn.running_mean) * scale + bn.bias.data
        bn.weight.data, bn.bias.data = torch.ones_like(bn.weight), torch.zeros_like(bn.bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
    return copy.eval()


def export(model: nn.Module, x, **kw) -> onnx.ModelProto:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"], **kw)
    return onnx.load_from_string(buffer.getvalue())


def torch_signal(model: nn.Module, x: torch.Tensor, target: int, ops: Plain) -> np.ndarray:
    """The input gradient of the target logit in float64, with the forward's rule table ``ops``."""
    xd = x.clone().double().requires_grad_()
    model.double().ops = ops
    try:
        (grad,) = torch.autograd.grad(model(xd)[:, target].sum(), xd)
    finally:
        model.float().ops = Plain()
    return grad.numpy()


def close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-4) -> None:
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    model = VGGLike().eval()
    x = torch.rand(2, 3, 16, 16)
    return model, x, export(model, x)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(1)
    model = ResNetLike().eval()
    x = torch.rand(2, 3, 12, 12)
    return model, x, export(model, x), export(model, x, training=torch.onnx.TrainingMode.PRESERVE)


def test_exports_have_the_ops_under_test(vgg, resnet):
    ops = {n.op_type for n in vgg[2].graph.node}
    assert {"MaxPool", "AveragePool", "Conv", "Gemm"} <= ops
    assert "BatchNormalization" not in {n.op_type for n in resnet[2].graph.node}
    unfolded = {n.op_type for n in resnet[3].graph.node}
    assert {"BatchNormalization", "GlobalAveragePool", "Add"} <= unfolded


#: float64 runs the rules one by one; float32 runs the CPU path, whose convolutional part is one onnxruntime graph
#: (:mod:`ebr_onnx.lowering`).
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["rules", "lowered"])


@DTYPES
@pytest.mark.parametrize("method", ["grad", "eb"])
def test_vgg_like(vgg, method, dtype):
    model, x, proto = vgg
    r = Explainer(proto, dtype=dtype).explain(x.numpy(), target=3, method=method)
    ref = torch_signal(model, x, 3, Plain() if method == "grad" else Excitation())
    close(r.signal, ref)
    assert method == "grad" or (r.signal >= 0).all()


@DTYPES
@pytest.mark.parametrize("folded", [True, False], ids=["bn_folded", "bn_node"])
@pytest.mark.parametrize("method", ["grad", "eb"])
def test_resnet_like(resnet, method, folded, dtype):
    model, x, proto_folded, proto_bn = resnet
    proto = proto_folded if folded else proto_bn
    ex = Explainer(proto, dtype=dtype)
    r = ex.explain(x.numpy(), target=[1, 4], method=method)
    lowered = describe(ex)["lowered_on_cpu"]  # of EB: the whole convolutional part, overlapping max pool included
    assert (lowered is not None and ex.graph.node_by_name[lowered["last"]].op_type == "Flatten") == (dtype == np.float32)
    assert ex.engine.kernels.holds("lowered") == (dtype == np.float32)
    reference_model = _folded(model) if folded and method == "eb" else model
    ops = Plain() if method == "grad" else Excitation()
    ref = np.concatenate([torch_signal(reference_model, x[i:i + 1], t, ops) for i, t in enumerate([1, 4])])
    close(r.signal, ref)


def test_resnet_like_caffe_add_rule(resnet):
    """``add_rule="caffe"`` (spec §2.5): the second residual Add's input 1 receives the whole signal, input 0 none."""
    x, proto = resnet[1].numpy(), resnet[3]
    second = [n.input for n in proto.graph.node if n.op_type == "Add"][1]
    caffe = Explainer(proto, dtype=np.float64, add_rule="caffe")
    proportional = Explainer(proto, dtype=np.float64)
    assert not caffe.explain(x, target=1, method="eb", layer=second[0]).signal.any()
    assert proportional.explain(x, target=1, method="eb", layer=second[0]).signal.any()
    r = caffe.explain(x, target=1, method="eb", layer=second[1])
    np.testing.assert_allclose(r.mass.layer, r.mass.top, rtol=1e-6)


@DTYPES
def test_vgg_like_contrastive(vgg, dtype):
    """``ceb``: the EB signal at fc2's input for W and for −W, subtracted, then EB below (independent torch code)."""
    model, x, proto = vgg
    r = Explainer(proto, dtype=dtype).explain(x.numpy(), target=2, method="ceb")
    m = model.double()
    m.ops = Excitation()
    xd = x.double().requires_grad_()
    h = m.features(xd)
    hd = h.detach()
    starts = []
    for sign in (1.0, -1.0):
        w = (sign * m.fc2.weight.detach()).clamp(min=0)[2]
        z = hd @ w
        starts.append(hd * w * torch.where(z != 0, 1 / z, torch.zeros(())).unsqueeze(1))
    (ref,) = torch.autograd.grad(h, xd, starts[0] - starts[1])
    model.float().ops = Plain()
    close(r.signal, ref.numpy())
    np.testing.assert_allclose(r.signal.reshape(2, -1).sum(1), 0, atol=1e-8 if dtype == np.float64 else 1e-6)


@pytest.fixture(scope="module")
def vgg_dynamo():
    pytest.importorskip("onnxscript")
    torch.manual_seed(2)
    model = VGGLike().eval()
    x = torch.rand(1, 3, 16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model, x, torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto


@pytest.mark.parametrize("method", ["grad", "eb"])
def test_dynamo_export(vgg_dynamo, method):
    """The default (dynamo) exporter's graph gives the same maps."""
    model, x, proto = vgg_dynamo
    r = Explainer(proto, dtype=np.float64).explain(x.numpy(), target=0, method=method)
    close(r.signal, torch_signal(model, x, 0, Plain() if method == "grad" else Excitation()))


@pytest.mark.parametrize("size", [3, 5])
def test_lrn_grad_matches_autograd(size, make_model, backprop):
    """The ONNX LRN operator's gradient against autograd of ``F.local_response_norm`` (the same definition for odd
    sizes)."""
    from onnx import helper

    node = helper.make_node("LRN", ["x"], ["y"], size=size, alpha=0.3, beta=0.75, bias=2.0)
    proto = make_model([node], {"x": [1, 7, 3, 3]}, ["y"])
    x = torch.rand(1, 7, 3, 3) * 4 - 2
    seed = torch.rand(1, 7, 3, 3, dtype=torch.float64) * 2 - 1
    got, _ = backprop(proto, {"x": x.numpy()}, seed.numpy(), "grad")
    xd = x.double().requires_grad_()
    (ref,) = torch.autograd.grad(F.local_response_norm(xd, size, alpha=0.3, beta=0.75, k=2.0), xd, seed)
    close(got["x"], ref.numpy(), rtol=1e-6)


# -- zennit (optional) ----------------------------------------------------------------------------------------------
class _ZennitOps(Plain):
    """Sums as zennit sees them: stacked operands through a ``Sum`` module (one module per Add: hooks keep state)."""

    def __init__(self, sums: nn.ModuleList) -> None:
        self.sums = iter(sums)

    def add(self, a, b):
        return next(self.sums)(torch.stack([a, b], dim=-1))


@pytest.mark.parametrize("which", ["vgg", "resnet"])
def test_eb_matches_zennit_zplus(which, vgg, resnet, zennit):
    """EB on ReLU nets is z⁺-LRP without biases: zennit's ZPlus (zero_params=['bias']) on convs and linears, Norm on
    average pooling and sums, Pass on BatchNorm; its stabilizer is 1e-6, hence the tolerance."""
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum
    from zennit.rules import Norm, Pass, ZPlus
    from zennit.types import AvgPool, Convolution, Linear

    model, x, proto = (vgg[0], vgg[1], vgg[2]) if which == "vgg" else (resnet[0], resnet[1], resnet[3])
    model.sums = nn.ModuleList([Sum(), Sum()])
    composite = LayerMapComposite([
        (Convolution, ZPlus(zero_params=["bias"])), (Linear, ZPlus(zero_params=["bias"])),
        (AvgPool, Norm()), (nn.AdaptiveAvgPool2d, Norm()), (Sum, Norm()), (nn.BatchNorm2d, Pass()),
    ])
    xr = x.clone().requires_grad_()
    model.ops = _ZennitOps(model.sums)
    try:
        with composite.context(model) as modified:
            (ref,) = torch.autograd.grad(modified(xr)[:, 1].sum(), xr)
    finally:
        model.ops = Plain()
        del model.sums
    r = Explainer(proto).explain(x.numpy(), target=1, method="eb")
    close(r.signal, ref.numpy(), rtol=1e-4)
