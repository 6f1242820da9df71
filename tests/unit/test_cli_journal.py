"""The resume journal of `imagesearch index`, and its progress line."""

from __future__ import annotations

import io
import json
from pathlib import Path

from imagesearch_cli.journal import Journal
from imagesearch_cli.progress import Counts, Progress, describe

SERVICE = "http://127.0.0.1:8000"


def _identity(name: str, size: int = 10, version: str = "1") -> dict[str, object]:
    return {"source": name, "size": size, "version": version}


def test_done_sources_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal.open(path, SERVICE) as journal:
        journal.record(_identity("/a.jpg"), "indexed", "id-a")
        journal.record(_identity("/b.jpg"), "exists", "id-b")
        journal.record(_identity("/c.jpg"), "failed", reason="415 unsupported_media_type: no")
        journal.record(_identity("/d.jpg"), "indexed", "id-d")
        journal.record(_identity("/d.jpg"), "failed", reason="later it broke")
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines[0]["service"] == SERVICE and lines[0]["id"] == "id-a"
    assert lines[2]["reason"].startswith("415")

    reopened = Journal.open(path, SERVICE + "/")
    assert reopened.done(_identity("/a.jpg")) and reopened.done(_identity("/b.jpg"))
    assert not reopened.done(_identity("/c.jpg"))  # failures are tried again
    assert not reopened.done(_identity("/d.jpg"))  # the latest line wins
    # A changed file is a new source.
    assert not reopened.done(_identity("/a.jpg", size=11))
    assert not reopened.done(_identity("/a.jpg", version="2"))
    assert len(reopened) == 2
    reopened.close()
    # Another service has indexed none of it.
    other = Journal.open(path, "http://elsewhere:8000")
    assert not other.done(_identity("/a.jpg"))
    other.close()


def test_torn_and_foreign_lines_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "j.jsonl"
    with Journal.open(path, SERVICE) as journal:
        journal.record(_identity("/a.jpg"), "indexed", "id-a")
    with path.open("a") as f:
        f.write('["not", "an", "entry"]\n{"service": "http://127.0.0.1:8000", "sour')
    with Journal.open(path, SERVICE) as journal:
        assert journal.done(_identity("/a.jpg")) and len(journal) == 1
        journal.record(_identity("/b.jpg"), "indexed", "id-b")
    # Appending after a torn line starts a fresh line, and the new entry is readable.
    with Journal.open(path, SERVICE) as journal:
        assert journal.done(_identity("/b.jpg"))


def test_no_journal_writes_nothing(tmp_path: Path) -> None:
    journal = Journal.open(None, SERVICE)
    journal.record(_identity("/a.jpg"), "indexed", "id-a")
    assert journal.done(_identity("/a.jpg"))  # within the run only
    journal.close()
    assert list(tmp_path.iterdir()) == []


def test_progress_line_rate_and_eta() -> None:
    counts = Counts(indexed=6, exists=2, skipped=10, failed=2)
    # 10 sources worked on in 5 s (skips take no time): 2/s; 80 left -> 40 s.
    assert counts.worked == 10
    assert describe(counts, 100, 5.0) == (
        "20/100  2.0/s  ETA 0:40  new 6  there 2  skipped 10  failed 2"
    )
    assert "ETA ?" in describe(Counts(), 5, 0.0)
    assert "ETA 1:01:40" in describe(Counts(indexed=1), 3701, 1.0)


def test_progress_output_on_a_terminal_and_in_a_log() -> None:
    now = [0.0]
    bar = io.StringIO()
    progress = Progress(total=4, stream=bar, bar=True, clock=lambda: now[0])
    progress.update()
    progress.counts.indexed = 4
    now[0] = 2.0
    progress.update()
    progress.close()
    text = bar.getvalue()
    assert text.startswith("\r[") and "4/4" in text and "100%" in text and text.endswith("\n")

    log = io.StringIO()
    plain = Progress(total=4, stream=log, bar=False, every_s=10.0, clock=lambda: now[0])
    plain.counts.indexed = 1
    plain.update()  # too soon after the start
    now[0] = 20.0
    plain.update()
    plain.close()
    assert log.getvalue().splitlines() == [describe(plain.counts, 4, 18.0)]
