"""Rewrites of a parsed ``NetParameter`` done before conversion (each returns a new message)."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import CaffeConversionError
from .schema import BlobShape, LayerParameter, NetParameter, Phase

_TEST = Phase.values_by_name["TEST"].number


def _rule_matches(rule) -> bool:
    """A NetStateRule matches Caffe's TEST state (level 0, no stages) when all its conditions hold."""
    return (
        (not rule.HasField("phase") or rule.phase == _TEST)
        and (not rule.HasField("min_level") or rule.min_level <= 0)
        and (not rule.HasField("max_level") or rule.max_level >= 0)
        and not rule.stage
    )


def _in_test_phase(layer: LayerParameter) -> bool:
    """Caffe's ``Net::StateMeetsRule``: include rules need one match, exclude rules need none."""
    if layer.include:
        return any(_rule_matches(rule) for rule in layer.include)
    return not any(_rule_matches(rule) for rule in layer.exclude)


def test_phase(net: NetParameter) -> NetParameter:
    """Keep the layers Caffe instantiates in the TEST phase (pycaffe's ``caffe.TEST``)."""
    out = NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layer for layer in net.layer if _in_test_phase(layer))
    return out


def _legacy_shapes(net: NetParameter) -> list[list[int]]:
    if net.input_shape:
        return [list(shape.dim) for shape in net.input_shape]
    dims = list(net.input_dim)
    if len(dims) != 4 * len(net.input):
        raise CaffeConversionError(
            f"net '{net.name}': {len(net.input)} legacy inputs need 4 input_dim values each, got {len(dims)}"
        )
    return [dims[4 * i : 4 * i + 4] for i in range(len(net.input))]


def upgrade_inputs(net: NetParameter) -> NetParameter:
    """Turn the legacy net-level ``input`` + ``input_shape``/``input_dim`` into a leading Input layer, as Caffe does."""
    out = NetParameter()
    out.CopyFrom(net)
    if not net.input:
        return out
    shapes = _legacy_shapes(net)
    if len(shapes) != len(net.input):
        raise CaffeConversionError(f"net '{net.name}': {len(net.input)} inputs but {len(shapes)} input shapes")
    layer = LayerParameter(name="input", type="Input", top=list(net.input))
    layer.input_param.shape.extend(BlobShape(dim=dims) for dims in shapes)
    del out.input[:], out.input_shape[:], out.input_dim[:], out.layer[:]
    out.layer.extend([layer, *net.layer])
    return out


def _input_shapes(layer: LayerParameter) -> Iterable:
    if layer.type == "Input":
        return layer.input_param.shape
    if layer.type == "DummyData":
        return layer.dummy_data_param.shape
    return ()


def with_frames(net: NetParameter, frames: int) -> NetParameter:
    """Replace the hard-coded time/batch size T (the first dim of the first input) by ``frames``.

    Changed: the first dim of every Input/DummyData shape equal to T (also the legacy ``num`` field)
    and every Reshape dim equal to T. The LSTM's T follows from its input's shape.
    """
    out = NetParameter()
    out.CopyFrom(net)
    firsts = [shape.dim[0] for layer in out.layer for shape in _input_shapes(layer) if shape.dim]
    firsts += [num for layer in out.layer if layer.type == "DummyData" for num in layer.dummy_data_param.num]
    if not firsts:
        raise CaffeConversionError(f"net '{net.name}': no Input or DummyData shape to take the frame count from")
    old = firsts[0]
    for layer in out.layer:
        for shape in _input_shapes(layer):
            if shape.dim and shape.dim[0] == old:
                shape.dim[0] = frames
        if layer.type == "DummyData":
            nums = layer.dummy_data_param.num
            nums[:] = [frames if n == old else n for n in nums]
        if layer.type == "Reshape":
            dims = layer.reshape_param.shape.dim
            dims[:] = [frames if d == old else d for d in dims]
    return out
