"""Running the scripts: user errors (bad config, unreadable image, divergence, no network), Ctrl-C
and environment faults (disk full, permissions) end in one line, never a traceback."""

from __future__ import annotations

import errno
import inspect
import logging as std_logging
import os
import signal
import sys
from collections.abc import Callable

from absl import app, flags, logging

from jaxcnn.config import load_config_module
from jaxcnn.errors import ConfigError, Interrupted, UserError

HELP_FLAGS = ("--help", "-h", "-?", "--helpshort", "--helpfull")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None


# Multi-host training (JAX's multi-controller model): every host runs the same command; these flags
# (or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID) call jax.distributed.initialize()
# before any computation. --distributed alone lets JAX detect Slurm, Open MPI or a TPU pod.
flags.DEFINE_string("coordinator_address", os.environ.get("JAX_COORDINATOR_ADDRESS"),
                    "Multi-host: host:port of process 0 (all processes pass the same).")
flags.DEFINE_integer("num_processes", _env_int("JAX_NUM_PROCESSES"), "Multi-host: number of processes.")
flags.DEFINE_integer("process_id", _env_int("JAX_PROCESS_ID"), "Multi-host: this process's id, 0..num_processes-1.")
flags.DEFINE_bool("distributed", False, "Multi-host: call jax.distributed.initialize() (cluster auto-detection "
                  "unless the flags above are given).")


def initialize_distributed() -> None:
    """`jax.distributed.initialize(...)` when asked for by the flags; checks they are complete."""
    f = flags.FLAGS
    given = {k: f[k].value for k in ("coordinator_address", "num_processes", "process_id")}
    if not f.distributed and all(v is None for v in given.values()):
        return
    if any(v is not None for v in given.values()) and any(v is None for v in given.values()):
        missing = ", ".join(f"--{k}" for k, v in given.items() if v is None)
        raise ConfigError(f"multi-host launch needs --coordinator_address, --num_processes and --process_id "
                          f"together (or none, with --distributed on Slurm/Open MPI/TPU); missing: {missing}")
    import jax

    jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})


def _config_file_arg(argv: list[str]) -> str | None:
    """The file part of `--config FILE[:ARG]` / `--config=FILE[:ARG]` in argv, if any."""
    for i, arg in enumerate(argv):
        if arg in ("--config", "-config") and i + 1 < len(argv):
            return argv[i + 1].split(":", 1)[0]
        if arg.startswith(("--config=", "-config=")):
            return arg.split("=", 1)[1].split(":", 1)[0]
    return None


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        path = _config_file_arg(argv)
        if path:  # one line for a missing file, a syntax error or no get_config (absl prints a traceback)
            load_config_module(path)
        return flags.FLAGS(argv)
    except ConfigError as e:  # raised by a config file's get_config while the --config flag is parsed
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # a --config.a.b=v override naming no such key
        text = str(e.args[0]).replace("\\'", "'").replace("\\n", "\n")
        detail = "; ".join(line.strip().strip("'") for line in text.splitlines() if line.strip())
        sys.exit(f"error: a --config.KEY=VALUE override names no such key: {detail}")
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort or --helpfull to see help on flags.")


def _stop_on_sigterm() -> None:
    """SIGTERM (a scheduler's preemption, `kill`) stops a run like Ctrl-C: saved epochs kept, one line."""
    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _quiet_library_echoes() -> None:
    """When one read or write of a checkpoint fails, Orbax closes its event loop while TensorStore
    still has reads or writes in flight: as they finish, their callbacks find the loop closed
    ("Event loop is closed"), the sibling coroutines are never awaited ("Exception ignored in:
    <coroutine ...>") and asyncio logs "exception was never retrieved", a traceback apiece. The
    failure itself is reported in one line; drop those echoes, and only those."""
    std_logging.getLogger("asyncio").setLevel(std_logging.CRITICAL)
    default = sys.unraisablehook

    def hook(unraisable):
        echo = inspect.iscoroutine(unraisable.object) or (
            isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed")
        if not echo:
            default(unraisable)

    sys.unraisablehook = hook


def environment_error(e: OSError) -> str:
    """One line for an OSError: what failed on which file, and what to do."""
    if e.errno == errno.ENOSPC:
        where = f" at {e.filename}" if e.filename else ""
        return (f"disk full{where}: {e.strerror or e}; free space and rerun the same command "
                "(finished epochs are kept)")
    return f"{e.strerror or e}: {e.filename}" if e.filename else str(e)


def run(main: Callable[[list[str]], None], positional: bool = False) -> None:
    """`absl.app.run(main)` with quiet Orbax logging and one-line errors for user mistakes, Ctrl-C
    and environment faults. `positional`: whether `main` takes arguments after the flags."""
    if any(arg in HELP_FLAGS for arg in sys.argv[1:]):  # absl's own --help exits with status 1
        app.usage(shorthelp="--helpfull" not in sys.argv, writeto_stdout=True, exitcode=0)

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.ERROR)  # Orbax logs every save at INFO and read-only opens at WARNING
        _stop_on_sigterm()
        _quiet_library_echoes()
        try:
            if len(argv) > 1 and not positional:
                raise ConfigError(f"unexpected arguments: {' '.join(argv[1:])} (flags are --name=value)")
            initialize_distributed()
            main(argv)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(getattr(e, "exit_code", 1))
        except KeyboardInterrupt:
            print(f"error: {Interrupted('interrupted; rerun the same command to resume')}", file=sys.stderr)
            sys.exit(Interrupted.exit_code)
        except OSError as e:
            print(f"error: {environment_error(e)}", file=sys.stderr)
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 - libraries (Orbax, TensorStore) wrap a full disk in their own types
            if "No space left on device" not in str(e):
                raise
            print(f"error: {environment_error(OSError(errno.ENOSPC, 'No space left on device'))} "
                  f"({type(e).__name__})", file=sys.stderr)
            sys.exit(1)

    app.run(wrapped, flags_parser=_parse_flags)
