"""What a bulk run did: the counts as the rows come back (the progress line on stderr,
as `imagesearch index` draws it), the summary on stdout, and the JSON report file with
every failed source and why."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

from imagesearch_cli.progress import Counts, Progress
from ingress.tools.bulk.rows import DUPLICATE, EXISTS, INDEXED
from ingress.tools.bulk.sources import Problem


@dataclass
class Summary:
    total: int
    progress: Progress | None = None
    counts: Counts = field(default_factory=Counts)
    failures: list[Problem] = field(default_factory=list)
    # (source, the source of this run with the same bytes).
    duplicates: list[tuple[str, str]] = field(default_factory=list)
    started_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.progress is not None:
            # One set of counts: the progress line shows what the summary will say.
            self.counts = self.progress.counts

    def add_problems(self, problems: list[Problem]) -> None:
        """Entries that named no source: failed without entering the pipeline."""
        self.failures.extend(problems)
        self.counts.failed += len(problems)
        self._tick()

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            outcome = row["outcome"]
            if outcome == INDEXED:
                self.counts.indexed += 1
            elif outcome in (EXISTS, DUPLICATE):
                # The image is in the index either way; a duplicate says which source put it there.
                self.counts.exists += 1
                if outcome == DUPLICATE:
                    self.duplicates.append((row["source"], row["reason"]))
            else:
                self.counts.failed += 1
                self.failures.append(Problem(row["source"], row["reason"] or "unknown error"))
        self._tick()

    def _tick(self) -> None:
        if self.progress is not None:
            self.progress.update()

    @property
    def not_done(self) -> int:
        return self.total - self.counts.finished

    @property
    def complete(self) -> bool:
        return not self.failures and self.not_done == 0

    @property
    def elapsed_s(self) -> float:
        return time.monotonic() - self._started

    def print(self, out: TextIO) -> None:
        counts = self.counts
        rate = counts.worked / self.elapsed_s if self.elapsed_s > 0 else 0.0
        print(
            f"indexed {counts.indexed}, already there {counts.exists}, failed {counts.failed} "
            f"(of {self.total}) in {self.elapsed_s:.1f} s, {rate:.1f} images/s",
            file=out,
        )
        if self.duplicates:
            print(f"duplicates within the run: {len(self.duplicates)}", file=out)
        if self.not_done:
            print(f"not done: {self.not_done}", file=out)
        if self.failures:
            print("failures:", file=out)
            for failure in sorted(self.failures, key=lambda f: f.label):
                print(f"  {failure.label}: {failure.reason}", file=out)

    def to_json(self, *, interrupted: bool, stopped: str | None) -> dict[str, Any]:
        counts = self.counts
        return {
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "elapsed_s": round(self.elapsed_s, 3),
            "sources": self.total,
            "indexed": counts.indexed,
            "already_there": counts.exists,
            "failed": counts.failed,
            "not_done": self.not_done,
            "interrupted": interrupted,
            "stopped": stopped,
            "failures": [{"source": f.label, "reason": f.reason} for f in self.failures],
            "duplicates": [{"source": s, "reason": why} for s, why in self.duplicates],
        }

    def write(self, path: Path, *, interrupted: bool = False, stopped: str | None = None) -> None:
        """The JSON report at path; written beside and renamed over, never half a file."""
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        data = self.to_json(interrupted=interrupted, stopped=stopped)
        partial.write_text(json.dumps(data, indent=1, ensure_ascii=False))
        os.replace(partial, path)
