"""A corpus of small but faithful architectures, for measuring which ONNX ops reach ebr_onnx's rules.

Fifteen PyTorch architectures are written here (random weights, random BatchNorm statistics, a few channels, small
inputs) and exported with the legacy exporter (``dynamo=False``, opset 17), except ``mish_net``, exported with the
dynamo exporter at opset 21, where PyTorch 2.13 writes the ``Mish`` and ``GroupNormalization`` ops (the legacy
exporter writes Mish as Softplus, Tanh, Mul and GroupNorm as Reshape, InstanceNormalization, Reshape at any
opset). Five Keras architectures are read from ``tests/fixtures/keras/corpus/``, made once by
``tools/make_keras_corpus.py`` in a TensorFlow virtualenv. The whole corpus exports in a few seconds.

:func:`build_corpus` exports the PyTorch models into a folder and returns every model with an input to explain.
``tests/test_op_coverage.py`` and ``tools/op_coverage.py`` share it.

The architectures (what each one puts on the signal path):

* ``resnet`` — ResNet: stem conv + BatchNorm + ReLU + max pool, a basic block and a strided bottleneck block with
  projection shortcuts, global average pool, linear head.
* ``mobilenetv3`` — MobileNetV3: hard-swish stem, inverted residuals with depthwise convs and squeeze-excitation
  (average pool → 1×1 convs → ReLU → hard-sigmoid → channel scale), hard-swish head with dropout.
* ``efficientnet`` — EfficientNet: MBConv blocks (expansion, depthwise conv, SiLU, squeeze-excitation with SiLU and
  sigmoid, projection, residual), SiLU head.
* ``convnext`` — ConvNeXt: patchify stem with a channels-first LayerNorm, blocks of depthwise 7×7 conv → permute to
  channels-last → LayerNorm → MLP with GELU → layer scale → permute back → residual, a LayerNorm + strided-conv
  downsampling, mean pool, LayerNorm head.
* ``crnn`` — CRNN text recogniser: conv stack collapsing the height, image width read as time, bidirectional LSTM,
  per-column classifier, CTC-style ``(T, N, C)`` log-probabilities.
* ``conformer`` — conformer-style audio encoder on log-mel frames: 2-D conv subsampling, macaron feed-forward halves
  with Swish, multi-head self-attention, convolution module (pointwise conv, GLU, depthwise conv, BatchNorm, Swish),
  LayerNorms, mean over time, classifier.
* ``unet`` — U-Net segmenter: two encoder levels, a bottleneck, one ConvTranspose and one Upsample (Resize) decoder
  level with skip Concats, a 1×1 conv giving per-pixel class scores.
* ``cnn_lstm`` — video classifier: per-frame CNN (frames on the batch axis, T free), LSTM, per-step classifier.
* ``cnn_gru`` — the same with a bidirectional GRU.
* ``audio1d`` — raw-waveform classifier: reflect Pad, a conv STFT (cos and sin kernels), magnitude (Pow, Add, Sqrt),
  decibels (Clip, Log, Max against the peak minus a top dB, ReduceMax), 1-D conv stack, global max over time.
* ``vgg_bn`` — VGG with BatchNorm nodes kept (exported with ``TrainingMode.PRESERVE`` from eval mode, which keeps
  BatchNormalization nodes in inference form), two FC layers with dropout.
* ``densenet`` — DenseNet: dense blocks of BN-ReLU-Conv layers whose outputs are concatenated, a transition with
  average pooling (BatchNorm nodes kept as in ``vgg_bn``).
* ``norm_net`` — a net with InstanceNorm and GroupNorm (written by the legacy exporter as Reshape,
  InstanceNormalization, Reshape, Mul, Add) and LeakyReLU.
* ``mish_net`` — an embedding net with GroupNorm + Mish and BatchNorm + SiLU blocks and a cosine classifier
  (``F.normalize``: ReduceL2, Clip, Expand, Div; a MatMul by the normalised class centres, scaled).
* ``vit`` — ViT: patch-embedding conv, class token Concat, position embedding, pre-norm blocks with multi-head
  attention (Einsum scores, Softmax) and a tanh-GELU MLP, LayerNorm head on the class token.

Keras (``tests/fixtures/keras/corpus/``, channels-last inputs; ``tools/make_keras_corpus.py`` describes them):
``keras_mobilenet`` (depthwise convs, hard-swish, squeeze-excitation, BatchNorm folded by tf2onnx),
``keras_resnet`` (residual blocks), ``keras_audio_lstm`` (Conv1D over log-mel frames, a ReLU LSTM left as an
ONNX Loop and unrolled on load into LSTM cells, per-step classifier), ``keras_transformer`` (LayerNormalization
written out by tf2onnx, multi-head attention, tanh-GELU), ``keras_unet`` (Conv2DTranspose, bilinear UpSampling2D,
skip Concatenate).
"""
from __future__ import annotations

import io
import math
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

KERAS_CORPUS = Path(__file__).parent / "fixtures" / "keras" / "corpus"


@dataclass(frozen=True)
class CorpusModel:
    """One exported model of the corpus and an input to explain it on."""

    name: str
    framework: str  # "PyTorch" or "Keras"
    path: Path
    inputs: np.ndarray
    classes: int
    recurrent: bool = False

    @property
    def channel_axis(self) -> int:
        """The input's channel axis: PyTorch's inputs are channels-first, Keras's channels-last."""
        return 1 if self.framework == "PyTorch" else -1


def _torch():
    import torch

    return torch


# -- the PyTorch architectures --------------------------------------------------------------------------------------
def _architectures() -> dict[str, Callable[[], tuple]]:
    """name → a function making ``(module, input, opset, export options, recurrent)``. Kept in a function so that
    importing this module does not import torch."""
    torch = _torch()
    nn, F = torch.nn, torch.nn.functional

    def conv_bn(c_in, c_out, k=3, stride=1, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out)]
        return nn.Sequential(*layers, act()) if act is not None else nn.Sequential(*layers)

    # ResNet ------------------------------------------------------------------------------------------------------
    class BasicBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = conv_bn(c, c), conv_bn(c, c, act=None)

        def forward(self, x):
            return F.relu(self.b(self.a(x)) + x)

    class Bottleneck(nn.Module):
        def __init__(self, c_in, mid, c_out, stride):
            super().__init__()
            self.a = conv_bn(c_in, mid, 1)
            self.b = conv_bn(mid, mid, 3, stride)
            self.c = conv_bn(mid, c_out, 1, act=None)
            self.down = conv_bn(c_in, c_out, 1, stride, act=None)

        def forward(self, x):
            return F.relu(self.c(self.b(self.a(x))) + self.down(x))

    class ResNet(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
            self.layer1, self.layer2 = BasicBlock(8), Bottleneck(8, 4, 16, 2)
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            h = self.layer2(self.layer1(self.stem(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    # MobileNetV3 -------------------------------------------------------------------------------------------------
    class SqueezeExcite(nn.Module):
        def __init__(self, c, squeeze, act=nn.ReLU, gate=nn.Hardsigmoid):
            super().__init__()
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
            self.act, self.gate = act(), gate()

        def forward(self, x):
            s = F.adaptive_avg_pool2d(x, 1)
            return x * self.gate(self.fc2(self.act(self.fc1(s))))

    class InvertedResidual(nn.Module):
        def __init__(self, c_in, exp, c_out, k, stride, se, act):
            super().__init__()
            self.expand = conv_bn(c_in, exp, 1, act=act) if exp != c_in else nn.Identity()
            self.dw = conv_bn(exp, exp, k, stride, groups=exp, act=act)
            self.se = SqueezeExcite(exp, max(2, exp // 4)) if se else nn.Identity()
            self.project = conv_bn(exp, c_out, 1, act=None)
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            h = self.project(self.se(self.dw(self.expand(x))))
            return h + x if self.residual else h

    class MobileNetV3(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.stem = conv_bn(3, 8, 3, 2, act=nn.Hardswish)
            self.blocks = nn.Sequential(
                InvertedResidual(8, 8, 8, 3, 2, True, nn.ReLU),
                InvertedResidual(8, 24, 12, 3, 2, False, nn.ReLU),
                InvertedResidual(12, 32, 12, 5, 1, True, nn.Hardswish),
            )
            self.last = conv_bn(12, 32, 1, act=nn.Hardswish)
            self.head = nn.Sequential(nn.Linear(32, 40), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(40, classes))

        def forward(self, x):
            h = self.last(self.blocks(self.stem(x)))
            return self.head(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    # EfficientNet ------------------------------------------------------------------------------------------------
    class MBConv(nn.Module):
        def __init__(self, c_in, c_out, expand, k, stride):
            super().__init__()
            mid = c_in * expand
            self.expand = conv_bn(c_in, mid, 1, act=nn.SiLU) if expand != 1 else nn.Identity()
            self.dw = conv_bn(mid, mid, k, stride, groups=mid, act=nn.SiLU)
            self.se = SqueezeExcite(mid, max(1, c_in // 4), act=nn.SiLU, gate=nn.Sigmoid)
            self.project = conv_bn(mid, c_out, 1, act=None)
            self.residual = stride == 1 and c_in == c_out

        def forward(self, x):
            h = self.project(self.se(self.dw(self.expand(x))))
            return h + x if self.residual else h

    class EfficientNet(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.stem = conv_bn(3, 8, 3, 2, act=nn.SiLU)
            self.blocks = nn.Sequential(MBConv(8, 8, 1, 3, 1), MBConv(8, 12, 4, 3, 2), MBConv(12, 12, 4, 5, 1))
            self.head = conv_bn(12, 32, 1, act=nn.SiLU)
            self.fc = nn.Sequential(nn.Dropout(0.2), nn.Linear(32, classes))

        def forward(self, x):
            h = self.head(self.blocks(self.stem(x)))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))

    # ConvNeXt ----------------------------------------------------------------------------------------------------
    class LayerNorm2d(nn.LayerNorm):
        """LayerNorm over the channels of an NCHW tensor (permute to channels-last and back)."""

        def forward(self, x):
            return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)

    class ConvNeXtBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
            self.norm = nn.LayerNorm(c, eps=1e-6)
            self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
            self.gamma = nn.Parameter(torch.full((c,), 0.5))

        def forward(self, x):
            h = self.dw(x).permute(0, 2, 3, 1)
            h = self.gamma * self.pw2(F.gelu(self.pw1(self.norm(h))))
            return x + h.permute(0, 3, 1, 2)

    class ConvNeXt(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), LayerNorm2d(8, eps=1e-6))
            self.stage1 = ConvNeXtBlock(8)
            self.down = nn.Sequential(LayerNorm2d(8, eps=1e-6), nn.Conv2d(8, 16, 2, 2))
            self.stage2 = ConvNeXtBlock(16)
            self.norm, self.fc = nn.LayerNorm(16, eps=1e-6), nn.Linear(16, classes)

        def forward(self, x):
            h = self.stage2(self.down(self.stage1(self.stem(x))))
            return self.fc(self.norm(h.mean((-2, -1))))

    # CRNN --------------------------------------------------------------------------------------------------------
    class CRNN(nn.Module):
        def __init__(self, classes=6):
            super().__init__()
            self.cnn = nn.Sequential(
                nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),               # 16×32 → 8×16
                nn.Conv2d(8, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d((2, 1)),   # → 4×16
                nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d((4, 2)),        # → 1×8
            )
            self.rnn = nn.LSTM(16, 8, bidirectional=True)
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            f = self.cnn(x).squeeze(2).permute(2, 0, 1)  # (W, N, C): columns as time
            y, _ = self.rnn(f)
            return F.log_softmax(self.fc(y), dim=-1)     # (T, N, classes), as CTC wants

    # Conformer ---------------------------------------------------------------------------------------------------
    class FeedForward(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.net = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(0.1),
                                     nn.Linear(4 * d, d), nn.Dropout(0.1))

        def forward(self, x):
            return x + 0.5 * self.net(x)

    class SelfAttention(nn.Module):
        def __init__(self, d, heads, einsum=False):
            super().__init__()
            self.heads, self.einsum = heads, einsum
            self.qkv, self.out = nn.Linear(d, 3 * d), nn.Linear(d, d)

        def forward(self, x):
            n, t, d = x.shape
            q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
            if self.einsum:
                scores = torch.einsum("nhid,nhjd->nhij", q, k) / math.sqrt(d // self.heads)
            else:
                scores = q @ k.transpose(-2, -1) / math.sqrt(d // self.heads)
            h = scores.softmax(-1) @ v
            return self.out(h.transpose(1, 2).reshape(n, t, d))

    class ConvModule(nn.Module):
        def __init__(self, d, k=7):
            super().__init__()
            self.norm = nn.LayerNorm(d)
            self.pw1, self.dw = nn.Conv1d(d, 2 * d, 1), nn.Conv1d(d, d, k, padding=k // 2, groups=d)
            self.bn, self.pw2 = nn.BatchNorm1d(d), nn.Conv1d(d, d, 1)

        def forward(self, x):
            h = F.glu(self.pw1(self.norm(x).transpose(1, 2)), dim=1)
            h = self.pw2(F.silu(self.bn(self.dw(h))))
            return x + h.transpose(1, 2)

    class ConformerBlock(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.ff1, self.ff2 = FeedForward(d), FeedForward(d)
            self.attn_norm, self.attn = nn.LayerNorm(d), SelfAttention(d, heads)
            self.conv, self.norm = ConvModule(d), nn.LayerNorm(d)

        def forward(self, x):
            x = self.ff1(x)
            x = x + self.attn(self.attn_norm(x))
            return self.norm(self.ff2(self.conv(x)))

    class Conformer(nn.Module):
        def __init__(self, classes=5, d=16):
            super().__init__()
            self.subsample = nn.Sequential(nn.Conv2d(1, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1), nn.ReLU())
            self.proj = nn.Linear(4 * 4, d)
            self.block = ConformerBlock(d, 2)
            self.fc = nn.Linear(d, classes)

        def forward(self, x):                        # (N, 1, time 32, mel 16)
            h = self.subsample(x)                    # (N, 4, 8, 4)
            h = self.proj(h.permute(0, 2, 1, 3).flatten(2))   # (N, 8, d)
            return self.fc(self.block(h).mean(1))

    # U-Net -------------------------------------------------------------------------------------------------------
    def double_conv(c_in, c_out):
        return nn.Sequential(conv_bn(c_in, c_out), conv_bn(c_out, c_out))

    class UNet(nn.Module):
        def __init__(self, classes=3):
            super().__init__()
            self.enc1, self.enc2, self.mid = double_conv(3, 4), double_conv(4, 8), double_conv(8, 16)
            self.up2 = nn.ConvTranspose2d(16, 8, 2, stride=2)
            self.dec2 = double_conv(16, 8)
            self.up1 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                                     nn.Conv2d(8, 4, 1))
            self.dec1 = double_conv(8, 4)
            self.out = nn.Conv2d(4, classes, 1)

        def forward(self, x):
            e1 = self.enc1(x)
            e2 = self.enc2(F.max_pool2d(e1, 2))
            m = self.mid(F.max_pool2d(e2, 2))
            d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
            d1 = self.dec1(torch.cat([self.up1(d2), e1], 1))
            return self.out(d1)

    # video CNN + RNN ---------------------------------------------------------------------------------------------
    class FrameCNN(nn.Module):
        def __init__(self, features=12):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                     nn.Flatten(), nn.Linear(8 * 4 * 4, features), nn.ReLU())

        def forward(self, frames):  # (T, 3, 16, 16) → (T, 1, features)
            return self.net(frames).unsqueeze(1)

    class CnnLstm(nn.Module):
        def __init__(self, classes=4):
            super().__init__()
            self.cnn, self.rnn, self.fc = FrameCNN(), nn.LSTM(12, 8), nn.Linear(8, classes)

        def forward(self, frames):
            y, _ = self.rnn(self.cnn(frames))
            return self.fc(y)                        # (T, 1, classes)

    class CnnGru(nn.Module):
        def __init__(self, classes=4):
            super().__init__()
            self.cnn, self.rnn = FrameCNN(), nn.GRU(12, 8, bidirectional=True)
            self.fc = nn.Linear(16, classes)

        def forward(self, frames):
            y, _ = self.rnn(self.cnn(frames))
            return self.fc(y)

    # raw audio ---------------------------------------------------------------------------------------------------
    class Audio1d(nn.Module):
        """Waveform → |STFT| in dB (a fixed cos/sin conv, as torchaudio's amplitude_to_DB with top_db) → 1-D CNN."""

        def __init__(self, classes=5, n_fft=32, hop=16, top_db=60.0):
            super().__init__()
            self.n_fft, self.hop, self.top_db = n_fft, hop, top_db
            bins = n_fft // 2 + 1
            t = torch.arange(n_fft, dtype=torch.float32)
            window = torch.hann_window(n_fft)
            freqs = torch.arange(bins, dtype=torch.float32)[:, None]
            self.register_buffer("cos", (window * torch.cos(2 * math.pi * freqs * t / n_fft))[:, None])
            self.register_buffer("sin", (window * -torch.sin(2 * math.pi * freqs * t / n_fft))[:, None])
            self.net = nn.Sequential(nn.Conv1d(bins, 12, 3, padding=1), nn.BatchNorm1d(12), nn.ReLU(),
                                     nn.MaxPool1d(2), nn.Conv1d(12, 16, 3, padding=1), nn.ReLU())
            self.fc = nn.Linear(16, classes)

        def forward(self, wave):                    # (N, 1, samples)
            x = F.pad(wave, (self.n_fft // 2, self.n_fft // 2), mode="reflect")
            re, im = F.conv1d(x, self.cos, stride=self.hop), F.conv1d(x, self.sin, stride=self.hop)
            magnitude = torch.sqrt(re.pow(2) + im.pow(2))
            db = 20.0 * torch.log10(torch.clamp(magnitude, min=1e-5))
            db = torch.max(db, db.amax(dim=(-2, -1), keepdim=True) - self.top_db)
            h = self.net(db)
            return self.fc(h.amax(-1))

    # VGG with BatchNorm ------------------------------------------------------------------------------------------
    class VGGBN(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.features = nn.Sequential(conv_bn(3, 8), conv_bn(8, 8), nn.MaxPool2d(2),
                                          conv_bn(8, 16), conv_bn(16, 16), nn.MaxPool2d(2))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 32), nn.ReLU(), nn.Dropout(),
                                            nn.Linear(32, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, classes))

        def forward(self, x):
            return self.classifier(self.features(x))

    # DenseNet ----------------------------------------------------------------------------------------------------
    class DenseLayer(nn.Module):
        def __init__(self, c_in, growth):
            super().__init__()
            self.net = nn.Sequential(nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, 2 * growth, 1, bias=False),
                                     nn.BatchNorm2d(2 * growth), nn.ReLU(),
                                     nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False))

        def forward(self, x):
            return torch.cat([x, self.net(x)], 1)

    class DenseNet(nn.Module):
        def __init__(self, classes=5, growth=4):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
            self.block1 = nn.Sequential(DenseLayer(8, growth), DenseLayer(12, growth))
            self.transition = nn.Sequential(nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 1, bias=False),
                                            nn.AvgPool2d(2))
            self.block2 = nn.Sequential(DenseLayer(8, growth), DenseLayer(12, growth))
            self.norm, self.fc = nn.BatchNorm2d(16), nn.Linear(16, classes)

        def forward(self, x):
            h = self.block2(self.transition(self.block1(self.stem(x))))
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(F.relu(self.norm(h)), 1), 1))

    # InstanceNorm / GroupNorm ------------------------------------------------------------------------------------
    class NormNet(nn.Module):
        def __init__(self, classes=5):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.ReLU(),
                nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.LeakyReLU(0.1))
            self.fc = nn.Linear(16, classes)

        def forward(self, x):
            return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.net(x), 1), 1))

    # Mish / SiLU, cosine classifier ------------------------------------------------------------------------------
    class MishNet(nn.Module):
        def __init__(self, classes=5, scale=16.0):
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Mish(),
                                     conv_bn(8, 16, stride=2, act=nn.SiLU),
                                     nn.Conv2d(16, 16, 3, 2, 1), nn.GroupNorm(4, 16), nn.Mish())
            self.embed = nn.Linear(16, 12)
            self.centres = nn.Parameter(torch.randn(classes, 12))
            self.scale = scale

        def forward(self, x):
            e = F.normalize(self.embed(torch.flatten(F.adaptive_avg_pool2d(self.net(x), 1), 1)), dim=1)
            return self.scale * (e @ F.normalize(self.centres, dim=1).t())

    # ViT ---------------------------------------------------------------------------------------------------------
    class ViTBlock(nn.Module):
        def __init__(self, d, heads):
            super().__init__()
            self.norm1, self.attn = nn.LayerNorm(d), SelfAttention(d, heads, einsum=True)
            self.norm2 = nn.LayerNorm(d)
            self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(approximate="tanh"), nn.Linear(2 * d, d))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, classes=5, d=16, patch=4, tokens=16):
            super().__init__()
            self.patch = nn.Conv2d(3, d, patch, patch)
            self.cls = nn.Parameter(0.02 * torch.randn(1, 1, d))
            self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, d))
            self.block = ViTBlock(d, 2)
            self.norm, self.fc = nn.LayerNorm(d), nn.Linear(d, classes)

        def forward(self, x):
            h = self.patch(x).flatten(2).transpose(1, 2)           # (N, tokens, d)
            h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], 1) + self.pos
            return self.fc(self.norm(self.block(h)[:, 0]))

    image = (2, 3, 32, 32)
    small = (2, 3, 16, 16)
    video = {"input_names": ["frames"], "dynamic_axes": {"frames": {0: "T"}}}
    return {
        "resnet": lambda: (ResNet(), image, 17, {}, False),
        "mobilenetv3": lambda: (MobileNetV3(), image, 17, {}, False),
        "efficientnet": lambda: (EfficientNet(), image, 17, {}, False),
        "convnext": lambda: (ConvNeXt(), image, 17, {}, False),
        "crnn": lambda: (CRNN(), (1, 1, 16, 32), 17, {}, True),
        "conformer": lambda: (Conformer(), (2, 1, 32, 16), 17, {}, False),
        "unet": lambda: (UNet(), (1, 3, 16, 16), 17, {}, False),
        "cnn_lstm": lambda: (CnnLstm(), (6, 3, 16, 16), 17, video, True),
        "cnn_gru": lambda: (CnnGru(), (6, 3, 16, 16), 17, video, True),
        "audio1d": lambda: (Audio1d(), (2, 1, 256), 17, {}, False),
        "vgg_bn": lambda: (VGGBN(), small, 17, {"training": torch.onnx.TrainingMode.PRESERVE}, False),
        "densenet": lambda: (DenseNet(), small, 17, {"training": torch.onnx.TrainingMode.PRESERVE}, False),
        "norm_net": lambda: (NormNet(), small, 17, {}, False),
        "mish_net": lambda: (MishNet(), small, 21, {"dynamo": True}, False),
        "vit": lambda: (ViT(), small, 17, {}, False),
    }


TORCH_MODELS = ("resnet", "mobilenetv3", "efficientnet", "convnext", "crnn", "conformer", "unet", "cnn_lstm",
                "cnn_gru", "audio1d", "vgg_bn", "densenet", "norm_net", "mish_net", "vit")


def _randomise_norms(module) -> None:
    """Random BatchNorm statistics and affine parameters (fresh ones are the identity)."""
    torch = _torch()
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.3)
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
        elif isinstance(m, (torch.nn.GroupNorm, torch.nn.InstanceNorm2d, torch.nn.LayerNorm)) and m.weight is not None:
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.1, 0.3)


def _quiet_dynamo() -> None:
    """The dynamo exporter logs a warning per torchvision op it cannot register (torchvision is not installed)."""
    import logging

    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)


def export_torch(name: str, folder: Path, seed: int = 0) -> CorpusModel:
    """Build architecture ``name`` with seeded random weights, export it to ``folder/<name>.onnx``."""
    torch = _torch()
    torch.manual_seed(seed)
    module, shape, opset, options, recurrent = _architectures()[name]()
    _randomise_norms(module)
    module.eval()
    x = torch.rand(*shape)
    if name == "audio1d":
        x = 2 * x - 1
    options = dict(options)
    with torch.no_grad():
        y = module(x)
    classes = y.shape[1] if y.ndim == 4 else y.shape[-1]
    path = folder / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if options.pop("dynamo", False):
            _quiet_dynamo()
            proto = torch.onnx.export(module, (x,), dynamo=True, opset_version=opset, verbose=False,
                                      input_names=["x"], output_names=["logits"]).model_proto
            path.write_bytes(proto.SerializeToString())
        else:
            buffer = io.BytesIO()
            torch.onnx.export(module, (x,), buffer, dynamo=False, opset_version=opset,
                              input_names=options.pop("input_names", ["x"]), output_names=["logits"], **options)
            path.write_bytes(buffer.getvalue())
    return CorpusModel(name, "PyTorch", path, x.numpy(), int(classes), recurrent)


def keras_models() -> list[CorpusModel]:
    """The Keras corpus fixtures (``<name>.onnx`` with its input in ``<name>.npz``)."""
    out = []
    for path in sorted(KERAS_CORPUS.glob("*.onnx")):
        data = np.load(path.with_suffix(".npz"))
        out.append(CorpusModel(path.stem, "Keras", path, data["inputs"], int(data["output"].shape[-1]),
                               bool(data["recurrent"])))
    return out


def build_corpus(folder: Path, names: tuple[str, ...] = TORCH_MODELS) -> list[CorpusModel]:
    """Every corpus model: the PyTorch ones exported into ``folder``, then the committed Keras ones."""
    folder.mkdir(parents=True, exist_ok=True)
    return [export_torch(name, folder) for name in names] + keras_models()


def signal_path_ops(model: CorpusModel | str | Path) -> dict[str, int]:
    """The op types on the signal path from the model input to the logits (after Loop/Scan are unrolled, as the
    explainer sees the model) and how often each occurs."""
    from ebr_onnx import Explainer

    ex = Explainer(model.path if isinstance(model, CorpusModel) else model)
    ops = Counter(n.op_type for n in ex.graph.nodes_between([ex.input_name], [ex.logits_tensor()]))
    return dict(sorted(ops.items()))
