"""3-D CNN video models (C3D, R(2+1)D, X3D-style gates, SlowFast pathways) exported from PyTorch, against PyTorch.

* ``grad`` equals autograd's gradient of the target logit (float64: 1e-5; the float32 CPU path, lowered: 1e-5 of
  the largest value);
* ``eb`` / ``ceb`` equal an independent z⁺ reference written layer by layer with autograd: each linear layer's
  backward is ``x⁺ ⊙ ∂/∂x⁺[Σ q ⊙ z] + x⁻ ⊙ ∂/∂x⁻[Σ q ⊙ z]`` with ``z = f(x⁺, W⁺) + f(x⁻, W⁻)`` (no bias) and
  ``q = p ⊘₀ z`` (EB where ``x ≥ 0``), BatchNorm passes the signal, a gate's product gives the gated operand the
  whole signal, a residual sum splits by the operands' positive parts — at the input and at an inner layer, for the
  legacy and the dynamo exporter;
* EB conserves the prior (the maps of each clip sum to 1), cEB sums to 0;
* maps keep time: (N, T', h, w), ``temporal`` (N, T'), and ``frame_maps()`` puts them on the input's frames;
* optionally (zennit installed, see ``tests/stubs``) ``eb`` equals zennit's ZPlus composite.
"""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import helper
from test_torch_reference import Plain as _Plain
from test_torch_reference import _IdentityBackward as _PassFn
from test_torch_reference import _ProportionalAdd as _AddFn

import ebr_onnx.lowering.ops as lowering_ops
from ebr_onnx import Explainer
from ebr_onnx.app.inspect import describe, format_report
from ebr_onnx.core.errors import EbrError
from ebr_onnx.methods.volume import volume_layout

torch = pytest.importorskip("torch")
nn, F = torch.nn, torch.nn.functional


# -- an independent z⁺ reference ------------------------------------------------------------------------------------
def _share(p, z):
    """``p ⊘₀ z``: 0 wherever ``z`` is 0."""
    return torch.where(z != 0, p / torch.where(z != 0, z, torch.ones_like(z)), torch.zeros_like(z))


class _ZPlusFn(torch.autograd.Function):
    """Forward: the layer. Backward: the z⁺ rule (Eq. 8 where the input is non-negative)."""

    @staticmethod
    def forward(ctx, x, layer, pos, neg):
        ctx.save_for_backward(x)
        ctx.pos, ctx.neg = pos, neg
        return layer(x)

    @staticmethod
    def backward(ctx, p):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            a = x.detach().clamp(min=0).requires_grad_()
            b = x.detach().clamp(max=0).requires_grad_()
            z = ctx.pos(a) + ctx.neg(b)
            ga, gb = torch.autograd.grad(z, (a, b), _share(p, z))
        return a.detach() * ga + b.detach() * gb, None, None, None


class _PoolFn(torch.autograd.Function):
    """Average pooling: Eq. 8 with unit weights, windows whose sum is ≤ 0 pass nothing."""

    @staticmethod
    def forward(ctx, x, layer):
        ctx.save_for_backward(x)
        ctx.layer = layer
        return layer(x)

    @staticmethod
    def backward(ctx, p):
        (x,) = ctx.saved_tensors
        with torch.enable_grad():
            xd = x.detach().requires_grad_()
            z = ctx.layer(xd)
            (g,) = torch.autograd.grad(z, xd, torch.where(z > 0, _share(p, z), torch.zeros_like(z)))
        return x * g, None


class _GateFn(torch.autograd.Function):
    """``x ⊙ g`` with ``g`` a gate: the gated operand takes the whole signal, the gate none."""

    @staticmethod
    def forward(ctx, x, g):
        return x * g

    @staticmethod
    def backward(ctx, p):
        return p, None


class Plain(_Plain):
    """The forward as PyTorch computes it (what the exporter sees and autograd differentiates), with gates."""

    def gate(self, x, g):
        return x * g


class Excitation(Plain):
    """The same forward with the z⁺ backward rules; ``seen`` keeps each linear layer's input."""

    def __init__(self) -> None:
        self.seen: dict = {}

    def layer(self, module, x):
        self.seen[module] = x
        if isinstance(module, (nn.BatchNorm3d, nn.MaxPool3d)):
            return _PassFn.apply(x, module) if isinstance(module, nn.BatchNorm3d) else module(x)
        if isinstance(module, (nn.AvgPool3d, nn.AdaptiveAvgPool3d)):
            return _PoolFn.apply(x, module)
        w = module.weight.detach()
        if isinstance(module, nn.Conv3d):
            conv = lambda k: lambda v: F.conv3d(v, k, None, module.stride, module.padding,  # noqa: E731
                                                module.dilation, module.groups)
            return _ZPlusFn.apply(x, module, conv(w.clamp(min=0)), conv(w.clamp(max=0)))
        return _ZPlusFn.apply(x, module, lambda v: F.linear(v, w.clamp(min=0)), lambda v: F.linear(v, w.clamp(max=0)))

    def gate(self, x, g):
        return _GateFn.apply(x, g)

    def add(self, a, b):
        return _AddFn.apply(a, b)


class Video(nn.Module):
    """A model whose forward goes through a rule table ``ops`` and, while ``record`` is set, keeps its ReLU outputs
    (``acts``)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = Plain()
        self.record = False
        self.acts: list = []

    def relu(self, x):
        out = F.relu(x)
        if self.record:
            self.acts.append(out)
        return out


def _init_bn(*norms: nn.BatchNorm3d) -> None:
    for bn in norms:
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.1, 0.3)
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2.0)


# -- models ---------------------------------------------------------------------------------------------------------
class C3DLike(Video):
    """3×3×3 convolutions, max pooling (spatial only, then over time; ceil_mode), an overlapping average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.p1 = nn.Conv3d(3, 6, 3, padding=1), nn.MaxPool3d((1, 2, 2))
        self.c2, self.p2 = nn.Conv3d(6, 8, 3, padding=1), nn.MaxPool3d(2, ceil_mode=True)
        self.c3 = nn.Conv3d(8, 8, 3, padding=(1, 1, 1), stride=(1, 1, 1), dilation=(1, 1, 1))
        self.p3 = nn.AvgPool3d(3, stride=2, padding=1, count_include_pad=False)
        self.fc1, self.fc2 = nn.Linear(8 * 2 * 2 * 2, 12), nn.Linear(12, 5)

    def forward(self, x):
        o = self.ops
        h = self.p1(self.relu(o.layer(self.c1, x)))
        h = o.layer(self.p2, self.relu(o.layer(self.c2, h)))
        h = o.layer(self.p3, self.relu(o.layer(self.c3, h)))
        return o.layer(self.fc2, self.relu(o.layer(self.fc1, torch.flatten(h, 1))))


class R2Plus1DLike(Video):
    """(2+1)-D convolutions (1×3×3 then 3×1×1) with BatchNorm, a residual block, a block strided in time and space
    with a 1×1×1 projection, global average pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.s1, self.b1 = nn.Conv3d(3, 6, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(6)
        self.t1, self.b2 = nn.Conv3d(6, 8, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(8)
        self.s2, self.b3 = nn.Conv3d(8, 8, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(8)
        self.t2, self.b4 = nn.Conv3d(8, 8, (3, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(8)
        self.s3, self.b5 = nn.Conv3d(8, 10, (1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1)), nn.BatchNorm3d(10)
        self.t3, self.b6 = nn.Conv3d(10, 12, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0)), nn.BatchNorm3d(12)
        self.down, self.b7 = nn.Conv3d(8, 12, 1, stride=2), nn.BatchNorm3d(12)
        self.gap, self.fc = nn.AdaptiveAvgPool3d(1), nn.Linear(12, 5)
        _init_bn(self.b1, self.b2, self.b3, self.b4, self.b5, self.b6, self.b7)

    def forward(self, x):
        o = self.ops
        h = self.relu(o.layer(self.b1, o.layer(self.s1, x)))
        h = self.relu(o.layer(self.b2, o.layer(self.t1, h)))
        r = self.relu(o.layer(self.b3, o.layer(self.s2, h)))
        h = self.relu(o.add(o.layer(self.b4, o.layer(self.t2, r)), h))
        r = self.relu(o.layer(self.b5, o.layer(self.s3, h)))
        h = self.relu(o.add(o.layer(self.b6, o.layer(self.t3, r)), o.layer(self.b7, o.layer(self.down, h))))
        return o.layer(self.fc, torch.flatten(o.layer(self.gap, h), 1))


class X3DLike(Video):
    """A depthwise 3×3×3 convolution, squeeze-excitation (pool → 1×1×1 convs → sigmoid gate), Swish/SiLU."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.b1 = nn.Conv3d(3, 8, (1, 3, 3), padding=(0, 1, 1)), nn.BatchNorm3d(8)
        self.dw, self.b2 = nn.Conv3d(8, 8, 3, padding=1, stride=(1, 2, 2), groups=8), nn.BatchNorm3d(8)
        self.se_pool, self.se1, self.se2 = nn.AdaptiveAvgPool3d(1), nn.Conv3d(8, 4, 1), nn.Conv3d(4, 8, 1)
        self.c2, self.b3 = nn.Conv3d(8, 10, 1), nn.BatchNorm3d(10)
        self.gap, self.fc = nn.AdaptiveAvgPool3d(1), nn.Linear(10, 5)
        _init_bn(self.b1, self.b2, self.b3)

    def forward(self, x):
        o = self.ops
        h = self.relu(o.layer(self.b1, o.layer(self.c1, x)))
        h = o.layer(self.b2, o.layer(self.dw, h))
        gate = torch.sigmoid(self.se2(F.relu(self.se1(self.se_pool(h)))))
        h = o.gate(h, gate)
        h = o.gate(h, torch.sigmoid(h))  # SiLU: x ⊙ σ(x)
        h = self.relu(o.layer(self.b3, o.layer(self.c2, h)))
        return o.layer(self.fc, torch.flatten(o.layer(self.gap, h), 1))


class SlowFastLike(Video):
    """A fast pathway on every frame, a slow one on every 4th, a time-strided lateral convolution from fast to slow
    concatenated on the slow pathway's channels, both pooled and concatenated for the classifier."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = nn.Conv3d(3, 4, (5, 3, 3), padding=(2, 1, 1))
        self.slow = nn.Conv3d(3, 6, (1, 3, 3), padding=(0, 1, 1))
        self.lateral = nn.Conv3d(4, 6, (5, 1, 1), stride=(4, 1, 1), padding=(2, 0, 0))
        self.fuse = nn.Conv3d(12, 8, (1, 3, 3), padding=(0, 1, 1))
        self.fast2 = nn.Conv3d(4, 4, (3, 3, 3), padding=1, stride=(1, 2, 2))
        self.pool_slow, self.pool_fast = nn.AdaptiveAvgPool3d(1), nn.AdaptiveAvgPool3d(1)
        self.fc = nn.Linear(12, 5)

    def forward(self, x):
        o = self.ops
        fast = self.relu(o.layer(self.fast, x))
        slow = self.relu(o.layer(self.slow, x[:, :, ::4]))
        slow = self.relu(o.layer(self.fuse, torch.cat([slow, self.relu(o.layer(self.lateral, fast))], dim=1)))
        fast = self.relu(o.layer(self.fast2, fast))
        pooled = torch.cat([torch.flatten(o.layer(self.pool_slow, slow), 1),
                            torch.flatten(o.layer(self.pool_fast, fast), 1)], dim=1)
        return o.layer(self.fc, pooled)


#: model → (class, input shape, the index of the ReLU whose output is the inner layer)
MODELS = {
    "c3d": (C3DLike, (2, 3, 8, 12, 12), 1),
    "r2plus1d": (R2Plus1DLike, (2, 3, 8, 12, 12), 2),
    "x3d": (X3DLike, (2, 3, 4, 10, 10), 0),
    "slowfast": (SlowFastLike, (2, 3, 8, 8, 8), 3),
}


def export(model: nn.Module, x, exporter: str, **kw) -> onnx.ModelProto:
    if exporter == "legacy_bn":
        exporter, kw = "legacy", {**kw, "training": torch.onnx.TrainingMode.PRESERVE}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            return torch.onnx.export(model, (x,), dynamo=True, verbose=False).model_proto
        buffer = io.BytesIO()
        torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], output_names=["logits"], **kw)
        return onnx.load_from_string(buffer.getvalue())


@pytest.fixture(scope="module")
def zoo():
    """Each model with seeded weights, a clip, its legacy and dynamo exports (made on first use)."""
    made: dict = {}

    def get(name: str, exporter: str):
        if name not in made:
            cls, shape, inner = MODELS[name]
            torch.manual_seed(len(made) + 3)
            made[name] = (cls().eval(), torch.rand(*shape), inner, {})
        model, x, inner, protos = made[name]
        if exporter not in protos:
            if exporter == "dynamo":
                pytest.importorskip("onnxscript")
            protos[exporter] = export(model, x, exporter)
        return model, x, inner, protos[exporter]

    return get


def _folded_copy(model: Video) -> Video:
    """A copy with every BatchNorm folded into the conv before it: what the legacy exporter writes in eval mode."""
    copy = type(model)()
    copy.load_state_dict(model.state_dict())
    names = dict(copy.named_modules())
    for name, bn in list(names.items()):
        if not isinstance(bn, nn.BatchNorm3d):
            continue
        conv = names[{"b1": "s1", "b2": "t1", "b3": "s2", "b4": "t2", "b5": "s3", "b6": "t3", "b7": "down"}[name]] \
            if isinstance(copy, R2Plus1DLike) else names[{"b1": "c1", "b2": "dw", "b3": "c2"}[name]]
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        conv.weight.data = conv.weight.data * scale[:, None, None, None, None]
        conv.bias.data = (conv.bias.data - bn.running_mean) * scale + bn.bias.data
        bn.weight.data, bn.bias.data = torch.ones_like(bn.weight), torch.zeros_like(bn.bias)
        bn.running_mean.zero_()
        bn.running_var.fill_(1 - bn.eps)
    return copy.eval()


def reference(model: Video, proto: onnx.ModelProto, x, target: int, method: str, inner: int | None) -> np.ndarray:
    """The signal at the input (``inner`` None) or at the ``inner``-th ReLU output, in float64, per clip."""
    folded = not any(n.op_type == "BatchNormalization" for n in proto.graph.node)
    net = _folded_copy(model) if folded and method != "grad" and any(
        isinstance(m, nn.BatchNorm3d) for m in model.modules()) else model
    net.double()
    net.record = True
    out = []
    try:
        for i in range(x.shape[0]):
            xd = x[i:i + 1].clone().double().requires_grad_()
            net.ops = Plain() if method == "grad" else Excitation()
            net.acts = []
            logits = net(xd)
            at = xd if inner is None else net.acts[inner]
            if method != "ceb":
                (g,) = torch.autograd.grad(logits[:, target].sum(), at)
            else:
                g = _contrastive(net, logits, at, target)
            out.append(g.detach().numpy())
    finally:
        net.float().ops = Plain()
        net.record, net.acts = False, []
        model.float()
    return np.concatenate(out)


def _contrastive(net: Video, logits, at, target: int):
    """cEB: the EB signals at the classifier's input for W and −W subtracted there, then EB below it."""
    fc = net.fc2 if isinstance(net, C3DLike) else net.fc
    h = net.ops.seen[fc]
    hd = h.detach()
    starts = []
    for sign in (1.0, -1.0):
        w = (sign * fc.weight.detach()).clamp(min=0)[target]
        z = hd @ w
        starts.append(hd * w * torch.where(z != 0, 1 / z, torch.zeros(())).unsqueeze(1))
    (g,) = torch.autograd.grad(h, at, starts[0] - starts[1])
    return g


def close(got: np.ndarray, ref: np.ndarray, rtol: float = 1e-5) -> None:
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * float(np.abs(ref).max()))


def inner_tensor(proto: onnx.ModelProto, index: int) -> str:
    return [n.output[0] for n in proto.graph.node if n.op_type == "Relu"][index]


DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["rules", "lowered"])
#: legacy: BatchNorm folded into the convolutions (eval mode); legacy_bn: kept as BatchNormalization nodes on 5-D
#: tensors (``training=PRESERVE``); dynamo: the default exporter (BatchNorm folded, global pooling as ReduceMean).
EXPORTERS = pytest.mark.parametrize("exporter", ["legacy", "legacy_bn", "dynamo"])


def test_exports_have_the_ops_under_test(zoo):
    ops = {name: {n.op_type for n in zoo(name, "legacy")[3].graph.node} for name in MODELS}
    assert {"Conv", "MaxPool", "AveragePool", "Gemm"} <= ops["c3d"]
    assert {"Add", "GlobalAveragePool"} <= ops["r2plus1d"] and "BatchNormalization" not in ops["r2plus1d"]
    assert {"Sigmoid", "Mul", "GlobalAveragePool"} <= ops["x3d"]
    assert {"Slice", "Concat"} <= ops["slowfast"]
    assert "ReduceMean" in {n.op_type for n in zoo("r2plus1d", "dynamo")[3].graph.node}  # over (T, H, W)
    assert "BatchNormalization" in {n.op_type for n in zoo("r2plus1d", "legacy_bn")[3].graph.node}
    maxpool = next(n for n in zoo("c3d", "legacy")[3].graph.node if n.op_type == "MaxPool" and
                   any(a.name == "ceil_mode" and a.i for a in n.attribute))
    assert len(helper.get_attribute_value(next(a for a in maxpool.attribute if a.name == "kernel_shape"))) == 3


@DTYPES
@EXPORTERS
@pytest.mark.parametrize("where", ["input", "inner"])
@pytest.mark.parametrize("method", ["grad", "eb"])
@pytest.mark.parametrize("name", list(MODELS))
def test_matches_reference(zoo, name, method, where, exporter, dtype):
    model, x, inner, proto = zoo(name, exporter)
    ex = Explainer(proto, dtype=dtype)
    layer = None if where == "input" else inner_tensor(proto, inner)
    r = ex.explain(x.numpy(), target=[1, 3], method=method, layer=layer)
    ref = np.concatenate([reference(model, proto, x[i:i + 1], t, method, None if where == "input" else inner)
                          for i, t in enumerate([1, 3])])
    close(r.signal, ref)
    if dtype == np.float32:
        assert ex.engine.kernels.holds("lowered")
    if method == "eb":
        assert r.maps.ndim == 4 and r.temporal.shape == r.maps.shape[:2]
        np.testing.assert_allclose(r.temporal.sum(axis=1), r.mass.layer, rtol=1e-5)
        if where == "input" and name != "x3d":
            np.testing.assert_allclose(r.mass.layer, r.mass.top, rtol=1e-5)  # conserved: the maps sum to 1
        else:  # a skip or another pathway bypasses the inner layer; X3D: see test_x3d_mass
            assert (r.mass.layer <= r.mass.top * (1 + 1e-5)).all()


@DTYPES
@EXPORTERS
@pytest.mark.parametrize("where", ["input", "inner"])
@pytest.mark.parametrize("name", list(MODELS))
def test_contrastive_matches_reference(zoo, name, where, exporter, dtype):
    model, x, inner, proto = zoo(name, exporter)
    layer = None if where == "input" else inner_tensor(proto, inner)
    r = Explainer(proto, dtype=dtype).explain(x.numpy(), target=2, method="ceb", layer=layer)
    ref = reference(model, proto, x, 2, "ceb", None if where == "input" else inner)
    close(r.signal, ref)
    if where == "input" and name != "x3d":
        np.testing.assert_allclose(r.mass.layer, 0, atol=1e-6)


def test_x3d_mass(zoo):
    """EB conserves the prior except where a unit carrying signal has ``Z = f(x, W⁺) = 0``: its activation comes from
    its bias alone, and Eq. 8 excludes the bias. In the X3D block every output of the depthwise convolution carries
    signal (the gate and SiLU pass it whatever its sign, no ReLU between), so those that read only zeros of the ReLU
    below (a region, or a whole channel, where it is off) hold signal with Z = 0: the lost mass is exactly theirs."""
    model, x, _, proto = zoo("x3d", "legacy")
    ex = Explainer(proto, dtype=np.float64)
    dw = next(n for n in ex.graph.nodes if n.op_type == "Conv" and n.attrs.get("group", 1) > 1)
    above = ex.explain(x.numpy(), target=1, method="eb", layer=dw.outputs[0])
    below = ex.explain(x.numpy(), target=1, method="eb", layer=dw.inputs[0])
    np.testing.assert_allclose(above.mass.layer, above.mass.top, rtol=1e-6)
    relu = ex.engine.runner.run(ex.engine.feeds(x.numpy()), [dw.inputs[0]])[dw.inputs[0]]
    w = torch.from_numpy(np.maximum(ex.graph.constant(dw.inputs[1]), 0).astype(np.float64))
    z = F.conv3d(torch.from_numpy(relu.astype(np.float64)), w, None, stride=tuple(dw.attrs["strides"]),
                 padding=tuple(dw.attrs["pads"][:3]), groups=dw.attrs["group"]).numpy()
    lost = np.where(z == 0, above.signal, 0).reshape(2, -1).sum(axis=1)
    assert (lost > 0.01).all()
    np.testing.assert_allclose(below.mass.layer, above.mass.layer - lost, rtol=1e-6)


def test_lowered_part_covers_the_convolutional_part(zoo):
    """On the CPU the whole walk below the classifier runs as one onnxruntime graph: 3-D convs, max and average
    pooling, residual sums, the gates and the Slice of the slow pathway."""
    for name in MODELS:
        ex = Explainer(zoo(name, "legacy")[3])
        lowered = describe(ex)["lowered_on_cpu"]
        path = ex.graph.nodes_between([ex.input_name], [ex.logits_tensor()])
        below = [n.op_type for n in path[:lowered["nodes"]]]
        assert "Gemm" not in below and below.count("Conv") == sum(n.op_type == "Conv" for n in path), name


# -- maps in time ---------------------------------------------------------------------------------------------------
def test_maps_keep_time_and_frame_maps(zoo):
    model, x, _, proto = zoo("c3d", "legacy")
    ex = Explainer(proto)
    at_input = ex.explain(x.numpy(), target=1, method="eb")
    assert at_input.maps.shape == (2, 8, 12, 12) and at_input.temporal.shape == (2, 8)
    np.testing.assert_array_equal(at_input.frame_index(), np.arange(8))
    np.testing.assert_allclose(at_input.frame_maps(), at_input.maps)
    # after the max pooling over time (2, stride 2): T' = 4, frames 2k and 2k + 1 share slice k
    layer = inner_tensor(proto, 2)
    r = ex.explain(x.numpy(), target=1, method="eb", layer=layer)
    assert r.maps.shape == (2, 4, 3, 3) and r.temporal.shape == (2, 4)
    np.testing.assert_allclose(r.temporal, r.maps.sum(axis=(2, 3)))
    np.testing.assert_array_equal(r.frame_index(), [0, 0, 1, 1, 2, 2, 3, 3])
    time, height, width = r.info.map_fields
    # time: conv 3 (pad 1), conv 3 (pad 1), max pool 2 (stride 2), conv 3 (pad 1) → 10 frames, 2 apart, from −4
    assert (time.stride, time.size, time.start) == (2, 10, -4)
    assert (height.stride, height.size, height.start) == (4, 18, -7)
    rows = height.nearest()
    assert rows.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    frames = r.frame_maps()
    assert frames.shape == (2, 8, 12, 12)
    np.testing.assert_allclose(frames[:, 2], r.maps[:, 1][:, rows][:, :, width.nearest()])
    np.testing.assert_allclose(r.frame_maps(pixels=False)[:, 5], r.maps[:, 2])
    np.testing.assert_allclose(r.frame_temporal(), r.temporal[:, [0, 0, 1, 1, 2, 2, 3, 3]])


def test_slow_pathway_frames(zoo):
    """The slow pathway sees every 4th frame: its slices sit over frames 0 and 4 (each frame: the nearest)."""
    model, x, _, proto = zoo("slowfast", "legacy")
    r = Explainer(proto).explain(x.numpy(), target=0, method="eb", layer=inner_tensor(proto, 3))
    assert r.maps.shape[:2] == (2, 2)
    np.testing.assert_array_equal(r.frame_index(), [0, 0, 0, 1, 1, 1, 1, 1])
    assert r.info.map_fields[0].stride == 4


def test_channels_last_input(zoo):
    """A clip given as (N, T, H, W, C) and transposed in the graph: the same signal, maps with time first."""

    class ChannelsLast(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x.permute(0, 4, 1, 2, 3))

    model, x, _, proto = zoo("c3d", "legacy")
    last = export(ChannelsLast(model), x.permute(0, 2, 3, 4, 1), "legacy")
    ex = Explainer(last)
    layout = volume_layout(ex.graph, ex.input_name)
    assert layout.describe() == "(N, T, H, W, C)" and layout.time_axis == 1
    r = ex.explain(x.permute(0, 2, 3, 4, 1).numpy(), target=1, method="eb")
    ref = Explainer(proto).explain(x.numpy(), target=1, method="eb")
    close(r.signal, ref.signal.transpose(0, 2, 3, 4, 1))
    close(r.maps, ref.maps)
    close(r.temporal, ref.temporal)


def test_inspect_reports_a_3d_cnn(zoo):
    report = describe(Explainer(zoo("r2plus1d", "legacy")[3]))
    video = report["video_cnn"]
    assert video["layout"] == "(N, C, T, H, W)" and video["time_axis"] == 2
    strides = {layer["time_stride"] for layer in video["layers"]}
    assert strides == {1, 2, None}   # the block strided in time; the global pooling: the whole clip
    assert video["declared_frames"] == 8
    text = format_report(report)
    assert "3-D CNN, time axis 2" in text and "time stride of each layer" in text


# -- bad input --------------------------------------------------------------------------------------------------------
def _free_time_model(make_model, stride: int, pads: int):
    """Conv 3×3×3 (time stride ``stride``, time pads ``pads``) → Relu → Conv 3×1×1 (stride ``stride``) → Relu →
    GlobalAveragePool → Flatten → MatMul, on (N, 2, T, 4, 4) with N and T free."""
    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((3, 2, 3, 3, 3)).astype(np.float32),
             "w2": rng.standard_normal((3, 3, 3, 1, 1)).astype(np.float32),
             "fw": rng.standard_normal((3, 4)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[pads, 1, 1, pads, 1, 1], strides=[stride, 1, 1],
                              name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2"], ["c2"], strides=[stride, 1, 1], name="conv2"),
             helper.make_node("Relu", ["c2"], ["r2"]), helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]), helper.make_node("MatMul", ["f", "fw"], ["y"])]
    return make_model(nodes, {"x": ["N", 2, "T", 4, 4]}, ["y"], inits)


def _one_line_error(ex: Explainer, x: np.ndarray) -> str:
    with pytest.raises(EbrError) as info:
        ex.explain(x, method="eb")
    message = str(info.value)
    assert "\n" not in message
    return message


def test_four_d_input_to_a_3d_model(make_model):
    ex = Explainer(_free_time_model(make_model, 1, 1))
    message = _one_line_error(ex, np.zeros((8, 2, 4, 4), np.float32))
    assert "3-D CNN" in message and "(N, C, T, H, W)" in message and "4-D" in message


def test_clip_shorter_than_the_temporal_receptive_field(make_model):
    ex = Explainer(_free_time_model(make_model, 1, 0))  # valid convolutions: 3 + 2 frames needed
    message = _one_line_error(ex, np.ones((1, 2, 4, 4, 4), np.float32))
    assert "temporal receptive field" in message and "'conv2'" in message and "at least 5 frames" in message
    ex.explain(np.ones((1, 2, 5, 4, 4), np.float32), method="eb")


def test_time_stride_leaves_no_frames(make_model):
    ex = Explainer(_free_time_model(make_model, 2, 1))  # conv1 keeps ⌈T/2⌉ frames, conv2 needs 3 of them
    message = _one_line_error(ex, np.ones((1, 2, 4, 4, 4), np.float32))
    assert "time strides" in message and "'conv2'" in message and "T' = 0" in message
    assert "at least 5 frames" in message


def test_declared_clip_length(zoo):
    model, x, _, proto = zoo("c3d", "legacy")
    message = _one_line_error(Explainer(proto), x.numpy()[:, :, :4])
    assert "T = 8" in message


# -- zennit (optional) ------------------------------------------------------------------------------------------------
class _ZennitOps(Plain):
    """Sums as zennit sees them: stacked operands through a ``Sum`` module (one module per sum)."""

    def __init__(self, sums) -> None:
        self.sums = iter(sums)

    def add(self, a, b):
        return next(self.sums)(torch.stack([a, b], dim=-1))


@pytest.mark.parametrize("name", ["c3d", "r2plus1d"])
def test_eb_matches_zennit_zplus(zoo, zennit, name):
    """EB is z⁺-LRP without biases: zennit's ZPlus (zero_params=['bias']) on 3-D convs and linears, Norm on average
    pooling, Pass on BatchNorm, and on residual sums Norm of the operands' positive parts (zennit's own Norm splits by
    the signed operands; ours by their positive parts, the z⁺ rule with unit weights), in float64. zennit's
    stabilizer adds 1e-6 to every denominator: where an average pooling's window mean is ~1e-3 that moves the
    signal by ~1e-3 relative, hence the tolerance (measured: 3.4e-4 at most, on 3 % of the C3D's input)."""
    from zennit.composites import LayerMapComposite
    from zennit.core import BasicHook, Stabilizer
    from zennit.layer import Sum
    from zennit.rules import NoMod, Norm, Pass, ZPlus
    from zennit.types import AvgPool, Convolution, Linear

    class PositiveNorm(BasicHook):
        def __init__(self, stabilizer: float = 1e-6) -> None:
            stable = Stabilizer.ensure(stabilizer)
            super().__init__(input_modifiers=[lambda v: v.clamp(min=0)], param_modifiers=[NoMod(param_keys=[])],
                             output_modifiers=[lambda v: v],
                             gradient_mapper=lambda grad, outputs: grad / stable(outputs[0]),
                             reducer=lambda inputs, grads: inputs[0] * grads[0])

    model, x, _, _ = zoo(name, "legacy")
    proto = export(model, x, "legacy", training=torch.onnx.TrainingMode.PRESERVE)  # BatchNorm kept as nodes
    sums = nn.ModuleList([Sum(), Sum()])
    model.sums = sums
    composite = LayerMapComposite([
        (Convolution, ZPlus(zero_params=["bias"])), (Linear, ZPlus(zero_params=["bias"])),
        (AvgPool, Norm()), (nn.AdaptiveAvgPool3d, Norm()), (Sum, PositiveNorm()), (nn.BatchNorm3d, Pass()),
    ])
    xr = x.clone().double().requires_grad_()
    model.double().ops = _ZennitOps(sums)
    try:
        with composite.context(model) as modified:
            (ref,) = torch.autograd.grad(modified(xr)[:, 1].sum(), xr)
    finally:
        model.float().ops = Plain()
        del model.sums
    r = Explainer(proto, dtype=np.float64).explain(x.numpy(), target=1, method="eb")
    close(r.signal, ref.numpy(), rtol=1e-3)


@pytest.mark.parametrize("flip_from", [0, 10**9], ids=["every-conv-flipped", "every-conv-transposed"])
@pytest.mark.parametrize("method", ["grad", "eb", "ceb"])
@pytest.mark.parametrize("name", ["c3d", "r2plus1d"])
def test_lowered_transpose_either_way(zoo, monkeypatch, name, method, flip_from):
    """The lowered walk's fᵀ of a 3-D convolution, by a Conv on the weight flipped in the graph or by a
    ConvTranspose (:data:`ebr_onnx.lowering.ops.FLIP_POSITIONS` picks per layer), against the reference."""
    monkeypatch.setattr(lowering_ops, "FLIP_POSITIONS", flip_from)
    model, x, _, proto = zoo(name, "legacy")
    ex = Explainer(proto, dtype=np.float32)
    r = ex.explain(x.numpy(), target=2, method=method)
    assert ex.engine.kernels.holds("lowered")
    close(r.signal, reference(model, proto, x, 2, method, None))
