"""The resume journal: one JSON line per finished source, appended as each finishes.

A later run against the same service skips every source the journal says was indexed
(or already there) without reading or hashing it again, as long as its size and
version (mtime, ETag) are unchanged. Failures are written too, for the record, but are
always tried again. Each line is flushed when written, so an interrupted run loses at
most the sources that were in flight; a torn last line is ignored when read.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

DEFAULT_JOURNAL = ".imagesearch-index.jsonl"
# Outcomes that mean "this source is in the index": no need to look at it again.
DONE = frozenset({"indexed", "exists"})


def _key(service: str, identity: dict[str, Any]) -> tuple[str, str, Any, Any]:
    return (service, str(identity["source"]), identity.get("size"), identity.get("version"))


class Journal:
    """Open with `Journal.open(path, service_url)`; None path means no journal."""

    def __init__(self, path: Path | None, service: str) -> None:
        self.path = path
        self.service = service.rstrip("/")
        self._done: set[tuple[str, str, Any, Any]] = set()
        self._file: IO[str] | None = None

    @classmethod
    def open(cls, path: Path | None, service: str) -> Journal:
        journal = cls(path, service)
        if path is not None:
            torn = journal._load(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            journal._file = path.open("a", encoding="utf-8")
            if torn:
                # A run killed mid-line: end that line, or the next entry joins it.
                journal._file.write("\n")
        return journal

    def _load(self, path: Path) -> bool:
        """Read earlier runs' entries; True when the file ends inside a line."""
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return False
        for line in text.splitlines():
            try:
                entry = json.loads(line)
                key = _key(str(entry["service"]), entry)
                outcome = str(entry["outcome"])
            except (ValueError, KeyError, TypeError):
                continue  # a line torn by a kill, or not ours
            if outcome in DONE:
                self._done.add(key)
            else:
                # A later failure of the same unchanged source: it is not done any more.
                self._done.discard(key)
        return bool(text) and not text.endswith("\n")

    def done(self, identity: dict[str, Any]) -> bool:
        """True when an earlier run indexed this very source on this service."""
        return _key(self.service, identity) in self._done

    def __len__(self) -> int:
        return len(self._done)

    def record(
        self,
        identity: dict[str, Any],
        outcome: str,
        image_id: str | None = None,
        reason: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "service": self.service,
            **identity,
            "outcome": outcome,
            "id": image_id,
            "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if reason is not None:
            entry["reason"] = reason
        if outcome in DONE:
            self._done.add(_key(self.service, identity))
        if self._file is not None:
            self._file.write(json.dumps(entry, ensure_ascii=False) + "\n")
            self._file.flush()
            # Not fsync per line: a crash of the machine may lose the tail, and the
            # service-side check then catches those sources cheaply anyway.

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Journal:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def journal_path(option: str | None, disabled: bool) -> Path | None:
    if disabled:
        return None
    return Path(option or DEFAULT_JOURNAL)
