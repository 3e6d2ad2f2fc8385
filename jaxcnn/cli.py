"""Running the scripts: user errors (bad config, unreadable image, divergence) end in one line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from absl import app, flags, logging

from jaxcnn.config import ConfigError
from jaxcnn.data.images import ImageError
from jaxcnn.train.loop import TrainingDivergedError

USER_ERRORS = (ConfigError, ImageError, TrainingDivergedError)


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


def _parse_flags(argv: list[str]) -> list[str]:
    try:
        return flags.FLAGS(argv)
    except ConfigError as e:  # raised by a config file's get_config while the --config flag is parsed
        sys.exit(f"error: {e}")
    except (AttributeError, KeyError) as e:  # a --config.a.b=v override naming no such key
        text = str(e.args[0]).replace("\\'", "'").replace("\\n", "\n")
        detail = "; ".join(line.strip().strip("'") for line in text.splitlines() if line.strip())
        sys.exit(f"error: a --config.KEY=VALUE override names no such key: {detail}")
    except flags.Error as e:
        sys.exit(f"error: {e}\nPass --helpshort or --helpfull to see help on flags.")


def run(main: Callable[[list[str]], None]) -> None:
    """`absl.app.run(main)` with quiet Orbax logging and one-line errors for user mistakes."""

    def wrapped(argv: list[str]) -> None:
        logging.set_verbosity(logging.ERROR)  # Orbax logs every save at INFO and read-only opens at WARNING
        try:
            initialize_distributed()
            main(argv)
        except USER_ERRORS as e:
            sys.exit(f"error: {e}")

    app.run(wrapped, flags_parser=_parse_flags)
