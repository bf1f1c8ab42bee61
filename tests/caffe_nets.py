"""Helpers to write tiny Caffe nets (prototxt + caffemodel through the converter's schema) and run them, and the
NumPy transcriptions of Caffe's forward code that more than one test file checks against."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from converters.caffe.schema import NetParameter

SHARED = Path(__file__).resolve().parents[2] / "shared"


def layer(name: str, kind: str, bottoms: Iterable[str] = (), tops: Iterable[str] | None = None,
          params: str = "") -> str:
    """One ``layer { … }`` block; ``tops`` defaults to the layer name."""
    lines = [f'  name: "{name}"', f'  type: "{kind}"']
    lines += [f'  bottom: "{b}"' for b in bottoms]
    lines += [f'  top: "{t}"' for t in (tops if tops is not None else [name])]
    return "layer {\n" + "\n".join(lines) + ("\n  " + params if params else "") + "\n}\n"


def input_layer(name: str, shape: Iterable[int]) -> str:
    dims = " ".join(f"dim: {d}" for d in shape)
    return layer(name, "Input", params=f"input_param {{ shape {{ {dims} }} }}")


def caffemodel_bytes(weights: Mapping[str, list[np.ndarray]]) -> bytes:
    """A binary NetParameter holding each named layer's blobs (with ``shape``, as current Caffe writes them)."""
    net = NetParameter()
    for name, blobs in weights.items():
        stored = net.layer.add(name=name)
        for array in blobs:
            blob = stored.blobs.add()
            blob.shape.SetInParent()  # a 0-axis blob (PReLU's shared slope) still has a shape
            blob.shape.dim.extend(np.shape(array))
            blob.data.extend(np.asarray(array, np.float32).ravel().tolist())
    return net.SerializeToString()


def write_net(
    directory: Path, prototxt: str, weights: Mapping[str, list[np.ndarray]] | None = None
) -> tuple[Path, Path | None]:
    """Write ``net.prototxt`` (and ``net.caffemodel`` when weights are given) into ``directory``."""
    proto = directory / "net.prototxt"
    proto.write_text(prototxt)
    if weights is None:
        return proto, None
    model = directory / "net.caffemodel"
    model.write_bytes(caffemodel_bytes(weights))
    return proto, model


def run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray], tensors: Iterable[str] = ()) -> dict[str, np.ndarray]:
    """Run ``model`` in onnxruntime; graph outputs plus the named intermediate ``tensors`` are returned."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    infos = {info.name: info for info in exposed.graph.value_info}
    present = {out.name for out in exposed.graph.output}
    exposed.graph.output.extend(infos[name] for name in tensors if name not in present)
    session = ort.InferenceSession(exposed.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [out.name for out in session.get_outputs()]
    return dict(zip(names, session.run(names, {k: np.asarray(v, np.float32) for k, v in feeds.items()})))


# --- NumPy transcriptions of Caffe's forward code ------------------------------------------------------------------


def caffe_conv(x, w, b, stride, pad, dilation, group):
    """conv_layer.cpp via im2col: zero padding, dilated kernel, groups; output floor((H + 2p - ext) / s) + 1."""
    n, _, height, width = x.shape
    out_c, cg, kh, kw = w.shape
    ext = [dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1]
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    ho = (height + 2 * pad[0] - ext[0]) // stride[0] + 1
    wo = (width + 2 * pad[1] - ext[1]) // stride[1] + 1
    og = out_c // group
    y = np.zeros((n, out_c, ho, wo), np.float64)
    for g in range(group):
        xs, ws = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for i in range(ho):
            for j in range(wo):
                r, c = i * stride[0], j * stride[1]
                patch = xs[:, :, r : r + ext[0] : dilation[0], c : c + ext[1] : dilation[1]]
                y[:, g * og : (g + 1) * og, i, j] = np.einsum("nchw,ochw->no", patch, ws)
    return y + (0 if b is None else b[None, :, None, None])


def caffe_pool(x, method, kernel, stride, pad):
    """pooling_layer.cpp Forward_cpu, line by line (ceil rounding, the end-padding rule, AVE's pool_size)."""
    height, width = x.shape[2:]
    pooled = []
    for size, k, s, p in zip((height, width), kernel, stride, pad):
        out = int(math.ceil(float(size + 2 * p - k) / s)) + 1
        if p and (out - 1) * s >= size + p:
            out -= 1
        pooled.append(out)
    y = np.zeros(x.shape[:2] + tuple(pooled), np.float64)
    for ph in range(pooled[0]):
        for pw in range(pooled[1]):
            hstart, wstart = ph * stride[0] - pad[0], pw * stride[1] - pad[1]
            if method == "MAX":
                hend, wend = min(hstart + kernel[0], height), min(wstart + kernel[1], width)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].max(axis=(2, 3))
            else:
                hend, wend = min(hstart + kernel[0], height + pad[0]), min(wstart + kernel[1], width + pad[1])
                pool_size = (hend - hstart) * (wend - wstart)
                hstart, wstart = max(hstart, 0), max(wstart, 0)
                hend, wend = min(hend, height), min(wend, width)
                y[:, :, ph, pw] = x[:, :, hstart:hend, wstart:wend].sum(axis=(2, 3)) / pool_size
    return y


def caffe_lstm(x, cont, w_xc, b_c, w_hc, act):
    """lstm_unit_layer.cpp (the release's ReLU variant or upstream tanh) over Caffe's unrolled LSTM net."""
    steps, batch, _ = x.shape
    hidden = w_hc.shape[1]
    h, c = np.zeros((batch, hidden)), np.zeros((batch, hidden))
    sigmoid = lambda v: 1.0 / (1.0 + np.exp(-v))  # noqa: E731
    out = []
    for t in range(steps):
        gates = (h * cont[t][:, None]) @ w_hc.T + (x[t] @ w_xc.T + b_c)
        a_i, a_f, a_o, a_g = np.split(gates, 4, axis=1)
        i, f, o, g = sigmoid(a_i), sigmoid(a_f), sigmoid(a_o), act(a_g)
        c = cont[t][:, None] * f * c + i * g
        h = o * act(c)
        out.append(h)
    return np.stack(out)
