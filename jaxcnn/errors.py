"""The errors a user can cause or meet (bad input, no network, a busy or damaged workdir, Ctrl-C).

`jaxcnn.cli` prints any `UserError` as one line; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors that end a script with one line (`error: ...`) instead of a traceback."""


class DownloadError(UserError):
    """A dataset or weights could not be downloaded (no network, server refused); says what to do instead."""


class WorkdirError(UserError):
    """A workdir is in use by another process, or holds files that cannot be used (damaged, foreign)."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped a run; what was saved and how to resume is in the message."""

    exit_code = 130


def first_line(e: BaseException) -> str:
    """`Type: first non-empty line of the message` (a library's error message can be 50 lines)."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    text = text.split(" See full TensorStore details")[0]  # Orbax appends a repr of the whole store
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
