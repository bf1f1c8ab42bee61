"""The geometry of convolutions and pooling windows (strides, pads, dilations, groups, output sizes) on 1, 2 or 3
spatial axes, and the parts W⁺/W⁻ of a weight that the EB rules use."""
from __future__ import annotations

import itertools
from typing import Any, Iterator

from .errors import EbrError
from .graph import Node

#: The numbers of spatial axes a convolution or pooling window may have (1-D runs as 2-D with a unit height).
SPATIAL_AXES = (1, 2, 3)


def weight_part(xp, w: Any, which: str) -> Any:
    """``"all"``: W; ``"pos"``: W⁺ = max(W, 0); ``"neg"``: W⁻ = min(W, 0)."""
    return w if which == "all" else xp.maximum(w, 0) if which == "pos" else xp.minimum(w, 0)


def window_pads(node: Node, size: list[int], kernel: list[int], strides: list[int], dilations: list[int]
                ) -> list[int]:
    """The begin and end pads of a Conv or pooling node (``[b_1, …, b_k, e_1, …, e_k]``, ONNX order), with
    ``auto_pad`` resolved as onnxruntime does (SAME_UPPER: the smaller half first)."""
    spatial = len(size)
    pads = list(node.attr("pads", [0] * (2 * spatial)))
    auto_pad = node.attr("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * spatial)
        for a in range(spatial):
            out = -(-size[a] // strides[a])
            total = max(0, (out - 1) * strides[a] + (kernel[a] - 1) * dilations[a] + 1 - size[a])
            small, big = total // 2, total - total // 2
            pads[a], pads[a + spatial] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * spatial)
    return pads


class ConvGeometry:
    """Strides, pads, dilations and groups of an ONNX Conv (or pooling window) on NC + 1, 2 or 3 spatial axes.

    1-D windows get a unit height, so ``dims`` (the length of ``kernel``, ``strides``, ``dilations``, ``size`` and
    ``out``) is 2 for 1-D and 2-D, 3 for 3-D; ``pads`` holds the begins then the ends (``[top, left, bottom, right]``
    in 2-D, ``[front, top, left, back, bottom, right]`` in 3-D)."""

    def __init__(self, node: Node, x_shape: tuple[int, ...], w_shape: tuple[int, ...]) -> None:
        spatial = len(x_shape) - 2
        if spatial not in SPATIAL_AXES:
            raise_unsupported_conv(node, spatial)
        kernel = list(w_shape[2:])
        strides = list(node.attr("strides", [1] * spatial))
        dilations = list(node.attr("dilations", [1] * spatial))
        size = list(x_shape[2:])
        pads = window_pads(node, size, kernel, strides, dilations)
        if spatial == 1:
            kernel, strides, dilations, size = [1] + kernel, [1] + strides, [1] + dilations, [1] + size
            pads = [0, pads[0], 0, pads[1]]
        self.spatial = spatial
        self.dims = len(kernel)
        self.kernel, self.strides, self.dilations, self.size = kernel, strides, dilations, size
        self.pads = pads
        self.group = int(node.attr("group", 1))
        self.out = [(size[a] + self.begins[a] + self.ends[a] - (kernel[a] - 1) * dilations[a] - 1) // strides[a] + 1
                    for a in range(self.dims)]

    @property
    def begins(self) -> list[int]:
        return self.pads[:self.dims]

    @property
    def ends(self) -> list[int]:
        return self.pads[self.dims:]

    def window(self, *offset: int) -> tuple[slice, ...]:
        """The slices of the padded input that kernel offset ``offset`` (one index per spatial axis) reads for all
        output positions."""
        return tuple(slice(k * d, k * d + s * (o - 1) + 1, s)
                     for k, s, d, o in zip(offset, self.strides, self.dilations, self.out))

    def offsets(self) -> Iterator[tuple[int, ...]]:
        """Every kernel offset, in row-major window order."""
        return itertools.product(*(range(k) for k in self.kernel))

    def reach(self) -> list[int]:
        """How far the output's windows reach into the padded input along each axis."""
        return [(o - 1) * s + (k - 1) * d + 1 for o, s, k, d in zip(self.out, self.strides, self.kernel,
                                                                    self.dilations)]


def raise_unsupported_conv(node: Node, spatial: int) -> None:
    raise EbrError(f"Conv node {node.name!r} is {spatial}-D; ebr_onnx supports 1-D, 2-D and 3-D convolutions")
