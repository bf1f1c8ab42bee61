"""The CNN part of a recurrent method, in chunks of frames: the boundary values (the first pass) and Eq. 9 from the
boundary down to the layer (the second pass), each chunk capturing only what its rules read; the chunks' captures
are kept from the first pass when they fit in :data:`KEEP_BYTES`. Frames, captures, the boundary and the signals are
arrays of the engine's module: on a GPU they stay on the device from the upload of the clip to the layer's signal."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ..core.engine import Engine
from ..core.errors import ForwardRejected
from ..core.request import Progress
from ..core.walk import walk
from .plan import Plan, part_tensors

#: The CNN captures of all chunks are kept between the two CNN passes when they take at most this many bytes (a
#: 16-frame VGG-16 clip's captures down to the input take ~860 MB: kept, the CNN runs once instead of twice; the
#: walk of that chunk would hold them anyway).
KEEP_BYTES = 1 << 30
#: The share of a recurrent call's progress reported for the CNN's first pass (the second, with the walk, does more).
FIRST_PASS_SHARE = 0.3


class CnnPass:
    """The CNN part in frame chunks: the boundary values (first pass) and the walk from the boundary to the layer
    (second pass, reusing the first pass's captures when they fit in :data:`KEEP_BYTES`)."""

    def __init__(self, engine: Engine, p: Plan, layers: Sequence[str], mode: str, frames: Any,
                 feeds: Mapping[str, np.ndarray], progress: Progress | None = None) -> None:
        """``layers``: the layer's tensor, or its copies in a CNN run once per frame (their signals are stacked in
        time order on a new leading axis); ``progress`` is told the share of the call done after each chunk."""
        self.engine, self.p, self.layer, self.mode, self.frames, self.feeds = engine, p, layers[0], mode, \
            frames, feeds
        self.count = int(frames.shape[0])
        graph = engine.graph
        if p.cnn is None:
            self.targets = [p.boundary]
        else:
            self.targets = list(layers) if set(layers) <= part_tensors(p.cnn) else [p.frames]
        self.nodes = [] if self.targets == [p.boundary] else graph.nodes_between(self.targets, [p.boundary])
        self.below = [] if self.targets == list(layers) else graph.nodes_between([self.layer], [p.frames])
        self.kept: list[dict[str, Any]] | None = None
        self._boundary: Any = None
        # set when the CNN part only runs on all frames at once (a batch size fixed at export, one copy per frame)
        self.whole = len(self.targets) > 1
        #: The warnings of the CNN walks, in the order they were met.
        self.warnings: list[str] = []
        self._progress = progress

    def _report(self, fraction: float) -> None:
        if self._progress is not None:
            self._progress(fraction)

    def chunks(self) -> list[slice]:
        size = self.count if self.whole else self.engine.batch_size
        return [slice(s, min(s + size, self.count)) for s in range(0, self.count, size)]

    def _chunk_feeds(self, chunk: slice) -> dict[str, Any]:
        return {**self.feeds, self.p.frames: self.frames[chunk]}

    def _shapes(self, feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
        part = self.p.cnn.graph
        return part.concrete_shapes({k: tuple(np.shape(feeds[k])) for k in self.p.cnn.inputs})

    def _captures(self, shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
        """What the CNN rules read."""
        return self.engine.capture_plan(self.nodes, self.mode, shapes)

    def boundary_values(self) -> Any:
        """The boundary for all frames, computed chunk by chunk (keeping the CNN rules' captures if small)."""
        if self._boundary is not None:
            return self._boundary
        if self.p.cnn is None:
            self._boundary = self.frames
            return self._boundary
        try:
            self._run_chunks()
        except ForwardRejected:  # the CNN part takes all frames at once (a batch size fixed at export)
            if self.whole or len(self.chunks()) == 1:
                raise
            self.whole = True
            self._run_chunks()
        return self._boundary

    def _run_chunks(self) -> None:
        parts, kept, size = [], [], 0
        chunks = self.chunks()
        for i, chunk in enumerate(chunks):
            self._report(FIRST_PASS_SHARE * i / len(chunks))
            feeds = self._chunk_feeds(chunk)
            captures = self._captures(self._shapes(feeds))
            values = self.p.cnn.run(feeds, [self.p.boundary] + captures, keep_on_device=True)
            parts.append(values[self.p.boundary] if self.p.boundary in captures else values.pop(self.p.boundary))
            size += sum(int(v.nbytes) for v in values.values())
            if size <= KEEP_BYTES:
                kept.append(values)
            else:
                kept.clear()  # they do not all fit: none is kept (the walk re-runs each chunk)
        self.kept = kept if len(kept) == len(parts) else None
        self._boundary = parts[0] if len(parts) == 1 else self.engine.xp.concatenate(parts)

    def _walk(self, i: int, chunk: slice, start: Any) -> Any:
        """Eq. 9 on one chunk of frames, with the first pass's captures or a new run of the CNN part."""
        engine = self.engine
        feeds = self._chunk_feeds(chunk)
        shapes = self._shapes(feeds)
        captures = self._captures(shapes)
        if self.kept is not None:
            values, self.kept[i] = self.kept[i], {}  # each chunk is walked once: its captures go as the walk goes
        else:
            values = self.p.cnn.run(feeds, [self.p.boundary] + captures, keep_on_device=True)  # the 1st pass's session
        ctx = engine.context(self.mode, {**values, self.p.frames: feeds[self.p.frames]}, shapes,
                                owns_values=True)
        del values
        got = walk(ctx, self.nodes, {self.p.boundary: engine.xp.asarray(start[chunk])}, keep=set(self.targets),
                   reach=engine.graph.signal_tensors(self.targets), release=True)
        self.warnings.extend(ctx.warnings)
        xp = engine.xp
        parts = [xp.zeros(ctx.shape(t), engine.dtype) if got.get(t) is None else got[t] for t in self.targets]
        self._report(FIRST_PASS_SHARE + (1 - FIRST_PASS_SHARE) * (chunk.stop / self.count))
        return parts[0] if len(parts) == 1 else xp.stack(parts)

    def backward(self, start: Any) -> Any:
        """Eq. 9 from the boundary to the layer, per chunk of frames; then through the input's reshapes if needed
        (an array of the engine's module)."""
        engine, xp = self.engine, self.engine.xp
        if not self.nodes:
            signal = start
        else:
            try:
                parts = [self._walk(i, chunk, start) for i, chunk in enumerate(self.chunks())]
                signal = parts[0] if len(parts) == 1 else xp.concatenate(parts)
            except ForwardRejected:  # the CNN part takes all frames at once (a batch size fixed at export)
                if self.whole or len(self.chunks()) == 1:
                    raise
                self.whole, self.kept = True, None
                signal = self._walk(0, self.chunks()[0], start)
        if self.below:
            shapes = engine.shapes_for(self.feeds)
            ctx = engine.context(self.mode, dict(self.feeds), shapes)
            got = walk(ctx, self.below, {self.p.frames: xp.asarray(signal)}, keep={self.layer}).get(self.layer)
            self.warnings.extend(ctx.warnings)
            signal = got
        return signal
