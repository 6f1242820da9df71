"""An exclusive lock across processes on one file, for the embedded LanceDB store's
table creation and index upkeep, which every replica on a node may attempt at once."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import IO


class FileLock:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._file: IO[bytes] | None = None

    def acquire(self, blocking: bool = True) -> bool:
        """Take the lock; with `blocking`, wait for it (run that in a thread), else
        return False at once when another process holds it. The OS drops the lock if
        the process dies. Without fcntl (Windows) it is always taken: creation there
        relies on catching "already exists"."""
        self._path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self._path, "ab")  # noqa: SIM115 - held until release()
        if sys.platform != "win32":
            import fcntl

            try:
                fcntl.flock(file.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                file.close()
                return False
            except BaseException:
                file.close()
                raise
        self._file = file
        return True

    def release(self) -> None:
        if self._file is not None:
            # Closing the file drops the flock.
            self._file.close()
            self._file = None
