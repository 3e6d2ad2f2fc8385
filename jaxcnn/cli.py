"""Running the scripts: user errors (bad config, unreadable image, divergence) end in one line."""

from __future__ import annotations

import sys
from collections.abc import Callable

from absl import app, flags, logging

from jaxcnn.config import ConfigError
from jaxcnn.data.images import ImageError
from jaxcnn.train.loop import TrainingDivergedError

USER_ERRORS = (ConfigError, ImageError, TrainingDivergedError)


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
            main(argv)
        except USER_ERRORS as e:
            sys.exit(f"error: {e}")

    app.run(wrapped, flags_parser=_parse_flags)
