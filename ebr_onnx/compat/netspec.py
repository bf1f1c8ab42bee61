"""The net definition as pycaffe's ``Net(...)`` instantiates it (``Net::Init``): the prototxt read and upgraded, the
layers of the requested state kept (``FilterNet``), what this interface does not offer refused, and Caffe's Split
layers inserted where a blob feeds several layers (``InsertSplits``)."""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from converters.caffe.netspec import in_state, upgrade_inputs
from converters.caffe.parse import read_prototxt
from converters.caffe.schema import LayerParameter, NetParameter

from .errors import NotOffered

#: Layer types that read data themselves (files, databases, Python code): the blobs are filled from NumPy here.
DATA_LAYERS = frozenset({"Data", "ImageData", "HDF5Data", "HDF5Output", "MemoryData", "WindowData", "Python",
                         "VideoData", "AnnotatedData"})
#: Layer types this interface runs itself (the converter emits nothing for them).
HOST_LAYERS = frozenset({"EuclideanLoss", "Silence"})
#: Layer types only training uses (the release's nets carry a dummy EuclideanLoss, which is offered).
TRAINING_LAYERS = frozenset({"Accuracy", "ContrastiveLoss", "HingeLoss", "InfogainLoss", "MultinomialLogisticLoss",
                             "SigmoidCrossEntropyLoss", "SoftmaxWithLoss"})


def load_net(prototxt: str | Path, phase: str, level: int = 0, stages: Iterable[str] = ()) -> NetParameter:
    """The layers ``Net(prototxt, phase, level, stages)`` builds, in Caffe's order, Split layers included."""
    net = in_state(upgrade_inputs(read_prototxt(prototxt)), phase, level, stages)
    check_offered(net, phase)
    return insert_splits(net)


def check_offered(net: NetParameter, phase: str) -> None:
    """Refuse, naming the layer, what this interface cannot run like Caffe."""
    for layer in net.layer:
        where = f"caffe.Net: layer '{layer.name}' ({layer.type})"
        if layer.type in DATA_LAYERS:
            raise NotOffered(where, "data layers other than Input and DummyData (fill an Input or DummyData blob "
                                    "from NumPy)")
        if layer.type in TRAINING_LAYERS:
            raise NotOffered(where, "training (losses other than the release's dummy EuclideanLoss, accuracy)")
        if layer.type == "ArgMax":
            raise NotOffered(where, "ArgMax layers (read the scores blob and take np.argmax)")
        if phase == "TRAIN" and layer.type == "Dropout":
            raise NotOffered(where, "random TRAIN-phase dropout (build the net with caffe.TEST, or remove the layer "
                                    "as the EB release advises)")
        if phase == "TRAIN" and layer.type == "BatchNorm" and not (
                layer.batch_norm_param.HasField("use_global_stats") and layer.batch_norm_param.use_global_stats):
            raise NotOffered(where, "TRAIN-phase batch statistics (set use_global_stats: true, or use caffe.TEST)")


def split_layer_name(layer: str, blob: str, top_index: int) -> str:
    """Caffe's ``SplitLayerName``."""
    return f"{blob}_{layer}_{top_index}_split"


def split_blob_name(layer: str, blob: str, top_index: int, split_index: int) -> str:
    """Caffe's ``SplitBlobName``."""
    return f"{blob}_{layer}_{top_index}_split_{split_index}"


def insert_splits(net: NetParameter) -> NetParameter:
    """Caffe's ``InsertSplits`` (``insert_splits.cpp``): a top read by more than one bottom (a top with a non-zero
    ``loss_weight`` counts as one more reader) is copied by a Split layer placed right after its producer, one Split
    top per reader, in reader order; a loss weight moves to the Split's first top."""
    layers = list(net.layer)
    last_top: dict[str, tuple[int, int]] = {}
    source: dict[tuple[int, int], tuple[int, int]] = {}
    readers: dict[tuple[int, int], int] = {}
    loss: dict[tuple[int, int], float] = {}
    for i, layer in enumerate(layers):
        for j, blob in enumerate(layer.bottom):
            if blob not in last_top:
                raise NotOffered(f"caffe.Net: layer '{layer.name}'", f"its bottom '{blob}' is no earlier layer's top "
                                                                     "(Caffe: unknown bottom blob)")
            source[(i, j)] = last_top[blob]
            readers[last_top[blob]] = readers.get(last_top[blob], 0) + 1
        for j, blob in enumerate(layer.top):
            last_top[blob] = (i, j)
        for j in range(min(len(layer.loss_weight), len(layer.top))):
            top = last_top[layer.top[j]]
            loss[top] = layer.loss_weight[j]
            if loss[top]:
                readers[top] = readers.get(top, 0) + 1
    out = NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    taken: dict[tuple[int, int], int] = {}
    for i, layer in enumerate(layers):
        copy = out.layer.add()
        copy.CopyFrom(layer)
        for j, blob in enumerate(layer.bottom):
            top = source[(i, j)]
            if readers.get(top, 0) > 1:
                copy.bottom[j] = split_blob_name(layers[top[0]].name, blob, top[1], taken.get(top, 0))
                taken[top] = taken.get(top, 0) + 1
        for j, blob in enumerate(layer.top):
            count = readers.get((i, j), 0)
            if count > 1:
                out.layer.add().CopyFrom(_split_layer(layer.name, blob, j, count, loss.get((i, j), 0.0)))
                if loss.get((i, j), 0.0):
                    del copy.loss_weight[:]
                    taken[(i, j)] = taken.get((i, j), 0) + 1
    return out


def _split_layer(layer: str, blob: str, top_index: int, count: int, loss_weight: float) -> LayerParameter:
    """Caffe's ``ConfigureSplitLayer``."""
    split = LayerParameter(name=split_layer_name(layer, blob, top_index), type="Split", bottom=[blob],
                           top=[split_blob_name(layer, blob, top_index, k) for k in range(count)])
    if loss_weight:
        split.loss_weight.extend([loss_weight] + [0.0] * (count - 1))
    return split
