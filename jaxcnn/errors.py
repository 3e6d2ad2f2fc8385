"""The errors a user can cause or meet (bad input, no network, a busy or damaged workdir, Ctrl-C).

`jaxcnn.cli` prints any `UserError` as one line; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Base of the errors that end a script with one line (`error: ...`) instead of a traceback."""


class ConfigError(UserError):
    """A config, variant, key or value the user gave is not valid.

    Not a ValueError on purpose: ml_collections' config flag re-wraps ValueErrors raised by
    `get_config` into a traceback text; this one reaches `jaxcnn.cli` and is printed as one line.
    """


class ImageError(UserError, ValueError):
    """An image file that cannot be read; the message names the file."""


class ConversionError(UserError, ValueError):
    """The source weights do not fit the target model; the message lists every bad key."""


class TrainingDivergedError(UserError, RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DownloadError(UserError):
    """A dataset or weights could not be downloaded (no network, server refused); says what to do instead."""


class WorkdirError(UserError):
    """A workdir is in use by another process, or holds files that cannot be used (damaged, foreign)."""


class DistributedError(UserError):
    """A multi-process run that cannot start or go on: a process that does not join or died, a coordinator
    that cannot be reached, processes launched with different settings, a workdir they do not share."""


class Interrupted(UserError):
    """Ctrl-C or SIGTERM stopped a run; what was saved and how to resume is in the message."""

    exit_code = 130


class DamagedCheckpoint(WorkdirError):
    """A checkpoint that does not restore, or whose arrays do not match their checksum."""


def first_line(e: BaseException) -> str:
    """`Type: first non-empty line of the message` (a library's error message can be 50 lines)."""
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    text = text.split(" See full TensorStore details")[0]  # Orbax appends a repr of the whole store
    return f"{type(e).__name__}: {text[:200]}" if text else type(e).__name__
