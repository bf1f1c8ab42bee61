"""Reading Caffe's two files: the text prototxt and the binary caffemodel (both a ``NetParameter``)."""

from __future__ import annotations

from pathlib import Path

from google.protobuf import message, text_format

from .errors import CaffeConversionError
from .schema import NetParameter


def _read(path: Path, mode: str) -> str | bytes:
    try:
        with open(path, mode) as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CaffeConversionError(f"{path}: cannot read: {exc}") from exc


def _reject_v1(net: NetParameter, path: Path) -> NetParameter:
    if len(net.layers):
        raise CaffeConversionError(
            f"{path}: uses the deprecated V1 'layers' format (first layer '{net.layers[0].name}'); "
            "upgrade it with Caffe's tools/upgrade_net_proto_text (or _binary) first"
        )
    return net


def read_prototxt(path: str | Path) -> NetParameter:
    """Parse a text-format net; fields outside the converter's schema are skipped."""
    path = Path(path)
    net = NetParameter()
    try:
        text_format.Parse(_read(path, "r"), net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        line, column = exc.GetLine(), exc.GetColumn()
        where = f"{path}:{line}:{column}" if line is not None else str(path)
        reason = str(exc).split(" : ", 1)[-1]
        raise CaffeConversionError(f"{where}: prototxt does not parse: {reason}") from exc
    return _reject_v1(net, path)


def read_caffemodel(path: str | Path) -> NetParameter:
    """Parse a binary caffemodel (a ``NetParameter`` whose layers carry ``blobs``)."""
    path = Path(path)
    net = NetParameter()
    try:
        net.ParseFromString(_read(path, "rb"))
    except message.DecodeError as exc:
        raise CaffeConversionError(f"{path}: not a binary caffemodel: {exc}") from exc
    return _reject_v1(net, path)
