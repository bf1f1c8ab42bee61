"""Rewrites of a parsed ``NetParameter`` done before conversion (each returns a new message)."""

from __future__ import annotations

from collections.abc import Iterable

from .errors import CaffeConversionError
from .schema import BlobShape, LayerParameter, NetParameter, Phase


def _rule_matches(rule, phase: int, level: int, stages: frozenset[str]) -> bool:
    """Caffe's ``Net::StateMeetsRule``: the rule's phase, level range, stages (all present) and not-stages (none
    present) hold for the net state (``phase``, ``level``, ``stages``)."""
    return (
        (not rule.HasField("phase") or rule.phase == phase)
        and (not rule.HasField("min_level") or rule.min_level <= level)
        and (not rule.HasField("max_level") or rule.max_level >= level)
        and all(stage in stages for stage in rule.stage)
        and not any(stage in stages for stage in rule.not_stage)
    )


def _in_state(layer: LayerParameter, phase: int, level: int, stages: frozenset[str]) -> bool:
    """Caffe's ``Net::FilterNet``: include rules need one match, exclude rules need none."""
    if layer.include:
        return any(_rule_matches(rule, phase, level, stages) for rule in layer.include)
    return not any(_rule_matches(rule, phase, level, stages) for rule in layer.exclude)


def in_state(net: NetParameter, phase: str = "TEST", level: int = 0, stages: Iterable[str] = ()) -> NetParameter:
    """Keep the layers Caffe instantiates in this net state (pycaffe's ``caffe.TEST``/``caffe.TRAIN``, ``level``,
    ``stages``)."""
    number, wanted = Phase.values_by_name[phase].number, frozenset(stages)
    out = NetParameter()
    out.CopyFrom(net)
    del out.layer[:]
    out.layer.extend(layer for layer in net.layer if _in_state(layer, number, level, wanted))
    return out


def test_phase(net: NetParameter) -> NetParameter:
    """Keep the layers Caffe instantiates in the TEST phase (pycaffe's ``caffe.TEST``)."""
    return in_state(net, "TEST")


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


def with_frames(net: NetParameter, frames: int, steps: int | None = None) -> NetParameter:
    """Set the clip length to ``frames`` time steps.

    F, the first dim of the first input, is T·N frames: T steps of N interleaved streams (frame t·N + n is step t of
    stream n), where T is the LSTMs' step count ``steps`` (None: no LSTM, T = F, N = 1). N is kept: every
    Input/DummyData first dim equal to F (also the legacy ``num`` field) becomes ``frames``·N, and the leading dim
    of every Reshape at axis 0 becomes ``frames``·N where it is F, ``frames`` where it is T (upstream LRCN's
    ``(T, N, C)`` reshape). Dims given as 0 or -1 follow on their own.
    """
    out = NetParameter()
    out.CopyFrom(net)
    firsts = [shape.dim[0] for layer in out.layer for shape in _input_shapes(layer) if shape.dim]
    firsts += [num for layer in out.layer if layer.type == "DummyData" for num in layer.dummy_data_param.num]
    if not firsts:
        raise CaffeConversionError(f"net '{net.name}': no Input or DummyData shape to take the frame count from")
    old = firsts[0]
    steps = old if steps is None else steps
    if old % steps:
        raise CaffeConversionError(
            f"net '{net.name}': the LSTM runs {steps} steps but the first input has {old} frames, not a multiple "
            "of it, so --frames cannot tell steps from streams"
        )
    new = frames * (old // steps)
    for layer in out.layer:
        for shape in _input_shapes(layer):
            if shape.dim and shape.dim[0] == old:
                shape.dim[0] = new
        if layer.type == "DummyData":
            nums = layer.dummy_data_param.num
            nums[:] = [new if n == old else n for n in nums]
        dims = layer.reshape_param.shape.dim
        if layer.type == "Reshape" and layer.reshape_param.axis == 0 and dims:
            dims[0] = {old: new, steps: frames}.get(dims[0], dims[0])
    return out


def _first_reader(
    layers: list[LayerParameter], tops: set[str], ignored: frozenset[str]
) -> tuple[LayerParameter | None, str]:
    """The first of ``layers`` (not of an ``ignored`` type) that reads one of ``tops`` before it is rewritten."""
    live = set(tops)
    for layer in layers:
        read = live & set(layer.bottom)
        if read and layer.type not in ignored:
            return layer, sorted(read)[0]
        live -= set(layer.top)
    return None, ""


def drop_output_layers(
    net: NetParameter, types: frozenset[str], ignored: frozenset[str]
) -> tuple[NetParameter, list[str]]:
    """Remove the layers of ``types`` (ArgMax) whose tops no later layer reads, readers of ``ignored`` types aside.

    Returns the net and one note per removed layer. A layer of ``types`` whose top is read further on is an error:
    the explanation needs the scores, and nothing after an ArgMax has them.
    """
    out = NetParameter()
    out.CopyFrom(net)
    kept, notes = [], []
    layers = list(net.layer)
    for index, layer in enumerate(layers):
        if layer.type not in types:
            kept.append(layer)
            continue
        reader, blob = _first_reader(layers[index + 1 :], set(layer.top), ignored)
        if reader is not None:
            raise CaffeConversionError(
                f"layer '{layer.name}' ({layer.type}): only supported at the output (where it is dropped), "
                f"but layer '{reader.name}' ({reader.type}) reads its top '{blob}'"
            )
        scores = ", ".join(f"'{b}'" for b in layer.bottom)
        notes.append(
            f"layer '{layer.name}' ({layer.type}): dropped; the model outputs the scores {scores} instead "
            "(explanations start from the scores)"
        )
    del out.layer[:]
    out.layer.extend(kept)
    return out, notes
