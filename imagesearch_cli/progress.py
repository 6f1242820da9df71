"""Progress of an index run on stderr: a bar redrawn in place on a terminal, or a plain
line now and then when stderr is a log file or a pipe."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TextIO

BAR_WIDTH = 24


@dataclass
class Counts:
    indexed: int = 0  # uploaded (or fetched by URL) and stored now
    exists: int = 0  # the service had it already: nothing uploaded
    skipped: int = 0  # the journal says an earlier run did it: not even read
    failed: int = 0

    @property
    def finished(self) -> int:
        return self.indexed + self.exists + self.skipped + self.failed

    @property
    def worked(self) -> int:
        """Finished by this run's work: journal skips take no time, and would inflate the
        rate."""
        return self.finished - self.skipped


def duration(seconds: float) -> str:
    """`m:ss`, or `h:mm:ss` from an hour on. Also the ETA of ingress.tools.reindex: this
    module imports the standard library only, and the client may not import the service."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def describe(counts: Counts, total: int, elapsed_s: float) -> str:
    rate = counts.worked / elapsed_s if elapsed_s > 0 else 0.0
    remaining = max(0, total - counts.finished)
    eta = duration(remaining / rate) if rate > 0 else "?"
    parts = [
        f"{counts.finished}/{total}",
        f"{rate:.1f}/s",
        f"ETA {eta}",
        f"new {counts.indexed}",
        f"there {counts.exists}",
    ]
    if counts.skipped:
        parts.append(f"skipped {counts.skipped}")
    if counts.failed:
        parts.append(f"failed {counts.failed}")
    return "  ".join(parts)


@dataclass
class Progress:
    total: int
    stream: TextIO
    bar: bool  # redraw in place (a terminal) or print plain lines
    every_s: float = 10.0  # plain lines: at most one this often
    redraw_s: float = 0.1  # the bar: at most this often, and once more at the end
    clock: Callable[[], float] = time.monotonic
    counts: Counts = field(default_factory=Counts)
    _start: float = field(init=False)
    _last: float = field(init=False)

    def __post_init__(self) -> None:
        self._start = self._last = self.clock()
        if self.bar:
            self._last = float("-inf")  # draw the first state at once

    def line(self) -> str:
        return describe(self.counts, self.total, self.clock() - self._start)

    def update(self, force: bool = False) -> None:
        now = self.clock()
        if self.bar:
            if not force and now - self._last < self.redraw_s and self.counts.finished < self.total:
                return
            self._last = now
            done = self.counts.finished / self.total if self.total else 1.0
            filled = int(done * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(f"\r[{bar}] {done:4.0%}  {self.line()}\033[K")
            self.stream.flush()
        elif now - self._last >= self.every_s:
            self._last = now
            self.stream.write(self.line() + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self.bar:
            self.update(force=True)
            self.stream.write("\n")
            self.stream.flush()
