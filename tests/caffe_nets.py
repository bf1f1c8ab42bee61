"""Helpers to write tiny Caffe nets (prototxt + caffemodel through the converter's schema) and run them."""

from __future__ import annotations

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
