"""What ``Net::Init`` works out about a net before any data flows: the blobs in Caffe's order (in-place tops reuse
their bottom's blob), the net's inputs and outputs, the loss weights, which layers and bottoms need backward, and
which blobs share another blob's memory."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from converters.caffe.schema import LayerParameter, NetParameter

from .errors import NotOffered

#: Layer types whose tops share data and diff with their bottom (``ShareData``/``ShareDiff``): backward is a no-op.
SHARES_DATA_AND_DIFF = frozenset({"Reshape", "Flatten"})
#: Layer types whose tops share their bottom's data but keep their own diff.
SHARES_DATA = frozenset({"Split"})
#: Loss layers: loss weight 1 on top 0 unless the prototxt says otherwise (``LossLayer::LayerSetUp``).
LOSS_LAYERS = frozenset({"EuclideanLoss"})


@dataclass(frozen=True)
class LayerSpec:
    """One layer as the net runs it: its blobs by name, per-top loss weights, and the backward flags
    (``layer_need_backward_``, ``bottom_need_backward_``)."""

    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    loss_weights: tuple[float, ...]
    need_backward: bool
    bottom_need_backward: tuple[bool, ...]
    param: LayerParameter


@dataclass(frozen=True)
class NetLayout:
    """The net's layers and blobs in Caffe's order, its inputs (Input-layer tops), its outputs (tops no layer reads,
    sorted by name as Caffe's ``std::set`` gives them), and each blob that views another's memory: blob →
    (source blob, whether the diff is shared too)."""

    layers: tuple[LayerSpec, ...]
    blobs: tuple[str, ...]
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    shares: Mapping[str, tuple[str, bool]]

    def index(self, layer: str, call: str) -> int:
        """The position of ``layer`` (pycaffe's ``list(net._layer_names).index(name)``)."""
        for i, spec in enumerate(self.layers):
            if spec.name == layer:
                return i
        raise ValueError(f"{call}: {layer!r} is not a layer of the net; layers: "
                         f"{', '.join(s.name for s in self.layers)}")


def _allows_force_backward(layer_type: str, bottom: int) -> bool:
    """``Layer::AllowForceBackward``: never into the labels of a loss or the sequence markers of a recurrent layer."""
    if layer_type in ("LSTM", "RNN"):
        return bottom != 1
    if layer_type.endswith("Loss") and layer_type != "EuclideanLoss":
        return bottom != 1
    return True


def net_layout(net: NetParameter, param_counts: Mapping[str, int]) -> NetLayout:
    """``Net::Init`` for ``net`` (Splits already inserted); ``param_counts`` gives each layer's number of parameter
    blobs (a layer with a parameter whose ``lr_mult`` is not 0 needs backward)."""
    blobs: list[str] = []
    available: set[str] = set()
    need_blob: dict[str, bool] = {}
    inputs: list[str] = []
    shares: dict[str, tuple[str, bool]] = {}
    rows = []
    for layer in net.layer:
        need = False
        bottom_need = []
        for j, blob in enumerate(layer.bottom):
            if blob not in need_blob:
                raise NotOffered(f"caffe.Net: layer '{layer.name}'", f"unknown bottom blob '{blob}'")
            available.discard(blob)
            flag = need_blob[blob]
            if layer.propagate_down:
                flag = bool(layer.propagate_down[j])
            bottom_need.append(flag)
            need |= need_blob[blob]
        for j, blob in enumerate(layer.top):
            in_place = j < len(layer.bottom) and layer.bottom[j] == blob
            if not in_place:
                if blob in need_blob:
                    raise NotOffered(f"caffe.Net: layer '{layer.name}'",
                                     f"its top '{blob}' is produced by multiple sources")
                blobs.append(blob)
                need_blob[blob] = False
            available.add(blob)
            if layer.type == "Input":
                inputs.append(blob)
            if layer.type in SHARES_DATA_AND_DIFF | SHARES_DATA and not in_place:
                shares[blob] = (layer.bottom[0], layer.type in SHARES_DATA_AND_DIFF)
        for k in range(param_counts.get(layer.name, 0)):
            need |= (layer.param[k].lr_mult if k < len(layer.param) else 1.0) != 0
        if need:
            for blob in layer.top:
                need_blob[blob] = True
        weights = list(layer.loss_weight) or ([1.0] if layer.type in LOSS_LAYERS else [])
        rows.append([layer, need, bottom_need, tuple(weights[k] if k < len(weights) else 0.0
                                                      for k in range(len(layer.top)))])
    _prune_to_loss(rows)
    if net.force_backward:
        for row in rows:
            layer, row[1] = row[0], True
            row[2] = [flag or _allows_force_backward(layer.type, j) for j, flag in enumerate(row[2])]
    layers = tuple(LayerSpec(layer.name, layer.type, tuple(layer.bottom), tuple(layer.top), weights, need,
                             tuple(bottom_need), layer) for layer, need, bottom_need, weights in rows)
    return NetLayout(layers, tuple(blobs), tuple(inputs), tuple(sorted(available)), shares)


def _prune_to_loss(rows: list[list]) -> None:
    """``Net::Init``'s backward sweep: a layer none of whose tops reaches a loss, or all of whose tops skip
    propagation, does not run backward, and its bottoms need none (``rows`` updated in place)."""
    under_loss: set[str] = set()
    skip: set[str] = set()
    for row in reversed(rows):
        layer, need, bottom_need, weights = row
        contributes = any(weights[j] or blob in under_loss for j, blob in enumerate(layer.top))
        skips = all(blob in skip for blob in layer.top)
        if need and skips:
            need, bottom_need = False, [False] * len(bottom_need)
        if not contributes:
            need = False
        for j, blob in enumerate(layer.bottom):
            if contributes:
                under_loss.add(blob)
            else:
                bottom_need[j] = False
            if not bottom_need[j]:
                skip.add(blob)
        row[1], row[2] = need, bottom_need
