"""Files that survive a kill or a full disk: atomic writes, readable-or-absent JSON, workdir locks."""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
from collections.abc import Iterator
from typing import Any

from jaxcnn.errors import WorkdirError


@contextlib.contextmanager
def atomic_path(path: str | pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields a temporary path beside `path`; once the block has written it, it replaces `path` in one
    step (`os.replace`), so a kill or a full disk leaves the old file or the new one, never a torn one."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | pathlib.Path, data: str | bytes) -> None:
    """Writes `data` (text as UTF-8) to `path` atomically (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def write_json(path: str | pathlib.Path, value: Any) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


def read_json(path: str | pathlib.Path) -> Any | None:
    """The JSON in `path`, or None when the file is missing, empty or not valid JSON (damaged)."""
    try:
        return json.loads(pathlib.Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def read_json_lines(path: str | pathlib.Path) -> list[Any]:
    """The JSON objects of a JSON-lines file; lines that are not JSON (a torn last line after a kill,
    damage) are skipped: callers rebuild the file from what the checkpoints hold."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class WorkdirLock:
    """An exclusive lock on a workdir (`WORKDIR/.lock`, `fcntl.flock`), so that two processes never
    train into one workdir. The kernel drops it when the process ends, however it ends; the file
    names the holder for the error the second process prints."""

    NAME = ".lock"

    def __init__(self, workdir: str | pathlib.Path):
        self.path = pathlib.Path(workdir) / self.NAME
        self._file = None

    def acquire(self) -> None:
        """Raises WorkdirError naming the holder when another process holds the lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise WorkdirError(f"{self.path.parent} is in use by {holder}; wait for it to finish or use "
                               "another --workdir") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{datetime.datetime.now().isoformat(timespec='seconds')} ({' '.join(sys.argv)[:200]})\n")
        f.flush()
        self._file = f

    def release(self) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None
