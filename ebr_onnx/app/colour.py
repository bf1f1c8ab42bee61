"""One colour scale for all the pictures of a video: map values → colours, and the colour bar that says how.

Signed maps (cEB, cEB-R, gradients) use a scale symmetric around 0 (``RdBu_r``: positive warm, negative cool, 0
white); non-negative display (EB, EB-R) clips negatives at 0 and runs from 0 (``inferno``). The limit is a robust
maximum over every frame of the video: the :data:`PERCENTILE`-th percentile of ``|m|`` over the map cells that are not
zero, so one outlying cell does not wash out every other frame; values beyond the limit saturate.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

#: The percentile of the non-zero ``|m|`` over a video's maps that is the colour scale's limit.
PERCENTILE = 99.5
#: Colormap levels: an odd number, so that 0 of a signed scale is a level of its own (drawn with weight 0).
_LEVELS = 255


@lru_cache(maxsize=4)
def _lookup_table(cmap: str) -> np.ndarray:
    """The colormap sampled at the levels, float32 ``(levels, 3)`` in ``[0, 1]``."""
    return matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, _LEVELS))[:, :3].astype(np.float32)


@dataclass(frozen=True)
class ColourScale:
    """Values in ``[-limit, limit]`` (``signed``) or ``[0, limit]`` map to the colormap; beyond saturate.
    ``rule`` says how ``limit`` was chosen (recorded in summary.json)."""

    limit: float
    signed: bool
    rule: str = "given"

    @classmethod
    def robust(cls, maps: Iterable[np.ndarray], signed: bool, percentile: float = PERCENTILE) -> ColourScale:
        """The scale of a video: the ``percentile`` of the non-zero ``|m|`` over all its maps (negatives ignored
        when not ``signed``); 1 when every value is zero."""
        values = [np.abs(m[m != 0] if signed else m[m > 0]).ravel() for m in (np.asarray(x) for x in maps)]
        pool = np.concatenate(values) if values else np.zeros(0)
        limit = float(np.percentile(pool, percentile)) if pool.size else 0.0
        rule = f"{percentile:g}th percentile of the non-zero |map| over all frames"
        return cls(limit if limit > 0 else 1.0, signed, rule)

    @property
    def cmap(self) -> str:
        return "RdBu_r" if self.signed else "inferno"

    def unit(self, m: np.ndarray) -> np.ndarray:
        """``m / limit`` clipped to ``[-1, 1]`` (signed) or ``[0, 1]``, float32."""
        u = np.asarray(m, dtype=np.float32) / np.float32(self.limit)
        return np.clip(u, -1.0 if self.signed else 0.0, 1.0)

    def levels(self, unit: np.ndarray) -> np.ndarray:
        """The colormap level (uint8, 0–254) of unit values (from :meth:`unit`)."""
        position = (unit + 1.0) / 2.0 if self.signed else unit
        return np.clip(np.rint(position * (_LEVELS - 1)), 0, _LEVELS - 1).astype(np.uint8)

    def level_values(self) -> np.ndarray:
        """The unit value of each level, float32."""
        position = np.linspace(0.0, 1.0, _LEVELS, dtype=np.float32)
        return 2.0 * position - 1.0 if self.signed else position

    def colours(self, unit: np.ndarray) -> np.ndarray:
        """RGB float32 in ``[0, 1]`` of unit values (from :meth:`unit`), through the levels' lookup table."""
        return _lookup_table(self.cmap)[self.levels(unit)]

    def palette(self) -> list[int]:
        """The colormap's levels as a Pillow palette (R, G, B, R, …)."""
        return np.rint(_lookup_table(self.cmap) * 255).astype(np.uint8).ravel().tolist()

    def ticks(self) -> list[float]:
        return [-self.limit, 0.0, self.limit] if self.signed else [0.0, self.limit / 2, self.limit]

    def bar(self, height: int, width: int = 14) -> np.ndarray:
        """A vertical colour bar with its tick values written beside it, uint8 RGB ``(height, width + labels, 3)``
        on white; the top is the limit."""
        top, bottom = (1.0, -1.0) if self.signed else (1.0, 0.0)
        column = self.colours(np.linspace(top, bottom, height, dtype=np.float32))
        strip = np.repeat(column[:, None, :], width, axis=1)
        font = label_font()
        labels = [f"{v:.3g}" if v else "0" for v in self.ticks()]
        label_width = max(int(font.getlength(t)) for t in labels) + 6
        image = Image.new("RGB", (width + label_width, height), "white")
        image.paste(Image.fromarray(np.rint(strip * 255).astype(np.uint8)), (0, 0))
        draw = ImageDraw.Draw(image)
        for text, row in zip(labels[::-1], (0, height // 2, height - 1)):
            y = min(max(row - 5, 0), height - 11)
            draw.line([(width, row), (width + 3, row)], fill="black")
            draw.text((width + 5, y), text, fill="black", font=font)
        return np.asarray(image)


@lru_cache(maxsize=1)
def label_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's bundled font (no system fonts needed)."""
    return ImageFont.load_default()
