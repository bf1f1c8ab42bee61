"""Progress on stderr with tqdm: one bar over a run's clips, advanced during each clip's explanation."""
from __future__ import annotations

import sys
import threading
from types import TracebackType

from tqdm import tqdm


class ClipProgress:
    """A bar over ``total`` clips (None: unknown) that :meth:`within` moves by fractions of a clip while one is
    explained (the methods report their chunks). Off when ``quiet`` or when stderr is not a terminal; on an error
    the bar is cleared, so the error's line starts clean."""

    def __init__(self, desc: str, total: int | None, quiet: bool = False) -> None:
        self._bar = tqdm(desc=desc, total=total, unit="clip", disable=quiet or not sys.stderr.isatty(),
                         bar_format=None if total else "{desc}: {n:.1f} {unit}s [{elapsed}, {rate_fmt}]")
        self._done = 0
        self._lock = threading.Lock()

    def within(self, fraction: float) -> None:
        """The current clip is ``fraction`` (0–1) done."""
        self._bar.n = self._done + min(max(fraction, 0.0), 1.0)
        self._bar.refresh()

    def clip_done(self) -> None:
        """One more clip is done (from any thread)."""
        with self._lock:
            self._done += 1
            self._bar.n = self._done
            self._bar.refresh()

    def __enter__(self) -> ClipProgress:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if kind is not None:
            self._bar.leave = False
        self._bar.close()
