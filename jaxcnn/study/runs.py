"""A study's runs: how each ended (`RunRecord`) and, for a finished one, what its folder holds (`FinishedRun`).

Each run is one (variant, seed) trained by `jaxcnn.train.loop.train_and_evaluate` into its own folder
(see `jaxcnn.report.run` for what that folder holds).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from jaxcnn.config import flatten_config, stored_config
from jaxcnn.files import read_json
from jaxcnn.report.run import (CONFUSION_CSV, PER_CLASS_CSV, PER_CLASS_TRAIN_CSV, SUMMARY_JSON, read_confusion_matrix,
                               read_history, read_per_class, read_summary)

STATUSES = ("done", "diverged", "failed")


@dataclasses.dataclass
class RunRecord:
    """One run of a study: which variant and seed, its folder, and how it ended."""
    variant: str
    seed: int
    workdir: pathlib.Path
    status: str = "done"  # "done" | "diverged" | "failed"
    message: str = ""  # error message for diverged/failed runs


@dataclasses.dataclass
class FinishedRun:
    """A finished run's files."""
    record: RunRecord
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    per_class: dict[str, list] | None
    confusion: np.ndarray | None
    config: dict[str, Any] | None = None  # its config.json, flattened with today's keys (`stored_config`)
    per_class_train: dict[str, list] | None = None  # the final model on the training images (per_class_train.csv)

    def value(self, key: str) -> Any:
        """A summary.json number; group_size is 1 where the summary has none (trained alone)."""
        return self.summary.get("group_size", 1) if key == "group_size" else self.summary.get(key)


def load(record: RunRecord) -> FinishedRun:
    """The files of a run marked done; ValueError if its summary.json is missing or unreadable."""
    workdir = pathlib.Path(record.workdir)
    where = f"run {record.variant!r} seed {record.seed} ({workdir})"
    if not (workdir / SUMMARY_JSON).is_file():
        raise ValueError(f"{where} is marked done but {workdir} has no {SUMMARY_JSON}")
    try:
        summary = read_summary(workdir)
    except ValueError as e:
        raise ValueError(f"{where}: unreadable {SUMMARY_JSON}: {e}") from None
    per_class = read_per_class(workdir) if (workdir / PER_CLASS_CSV).is_file() else None
    per_class_train = (read_per_class(workdir, PER_CLASS_TRAIN_CSV) if (workdir / PER_CLASS_TRAIN_CSV).is_file()
                       else None)
    confusion = read_confusion_matrix(workdir) if (workdir / CONFUSION_CSV).is_file() else None
    stored = read_json(workdir / "config.json")
    config = flatten_config(stored_config(stored)) if isinstance(stored, dict) else None
    return FinishedRun(record, summary, read_history(workdir), per_class, confusion, config, per_class_train)


def epochs_completed(record: RunRecord) -> int:
    """How many epochs an unfinished run's metrics.jsonl holds (0 without a folder)."""
    workdir = pathlib.Path(record.workdir)
    return len(read_history(workdir)) if workdir.is_dir() else 0
