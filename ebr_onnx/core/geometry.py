"""The geometry of convolutions and pooling windows (strides, pads, dilations, groups, output sizes), and the parts
W⁺/W⁻ of a weight that the EB rules use."""
from __future__ import annotations

from typing import Any

from .errors import EbrError
from .graph import Node


def weight_part(xp, w: Any, which: str) -> Any:
    """``"all"``: W; ``"pos"``: W⁺ = max(W, 0); ``"neg"``: W⁻ = min(W, 0)."""
    return w if which == "all" else xp.maximum(w, 0) if which == "pos" else xp.minimum(w, 0)


class ConvGeometry:
    """Strides, pads, dilations and groups of an ONNX Conv on NCHW (1-D convs get a unit height)."""

    def __init__(self, node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
        spatial = len(x_shape) - 2
        if spatial not in (1, 2):
            raise_unsupported_conv(node, spatial)
        kernel = list(w_shape[2:])
        strides = list(node.attr("strides", [1] * spatial))
        dilations = list(node.attr("dilations", [1] * spatial))
        pads = list(node.attr("pads", [0] * (2 * spatial)))
        auto_pad = node.attr("auto_pad", "NOTSET")
        size = list(x_shape[2:])
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            pads = [0] * (2 * spatial)
            for a in range(spatial):
                out = -(-size[a] // strides[a])
                total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size[a])
                small, big = total // 2, total - total // 2
                pads[a], pads[a + spatial] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
        elif auto_pad == "VALID":
            pads = [0] * (2 * spatial)
        if spatial == 1:
            kernel, strides, dilations, size = [1] + kernel, [1] + strides, [1] + dilations, [1] + size
            pads = [0, pads[0], 0, pads[1]]
        self.spatial = spatial
        self.kernel, self.strides, self.dilations, self.size = kernel, strides, dilations, size
        self.pads = pads  # top, left, bottom, right
        self.group = int(node.attr("group", 1))
        self.out = [
            (size[a] + pads[a] + pads[a + 2] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1 for a in range(2)
        ]

    def window(self, i: int, j: int) -> tuple[slice, slice]:
        """The slice of the padded input that kernel offset (i, j) reads for all output positions."""
        (sh, sw), (dh, dw), (oh, ow) = self.strides, self.dilations, self.out
        return (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))


def raise_unsupported_conv(node: Node, spatial: int) -> None:
    raise EbrError(f"Conv node {node.name!r} is {spatial}-D; ebr_onnx supports 1-D and 2-D convolutions")
