"""A study's report from its run folders: results.csv, report.md, curves.png, confusion_matrices.png.

Finished runs are aggregated per variant over seeds (`jaxcnn.study.stats`), drawn
(`jaxcnn.study.figures`) and written up (`jaxcnn.study.report_md`). Diverged and failed runs are
listed with their messages and left out of every statistic.
"""

from __future__ import annotations

import csv
import os
import pathlib

from jaxcnn.files import atomic_path, write_atomic
from jaxcnn.study import figures, stats
from jaxcnn.study.report_md import markdown
from jaxcnn.study.runs import STATUSES, FinishedRun, RunRecord, load

RESULT_COLUMNS = ("variant", "seed", "status", *stats.STAT_KEYS, "num_params", "group_size", "backend", "workdir",
                  "message")


def write_report(study_dir: str | pathlib.Path, title: str, runs: list[RunRecord], question: str = "",
                 baselines: dict[str, str] | None = None) -> dict:
    """Write results.csv, report.md, curves.png and confusion_matrices.png into `study_dir`.

    Returns the per-variant aggregates: {"variants": {name: {"n", "seeds", "excluded",
    "test_accuracy_mean", "test_accuracy_std", "<summary key>_mean", "<summary key>_std", ...,
    "projected_100_epochs_s", "num_params", "group_size"}}, "ranking": [names, best first],
    "best": name, "runner_up": name, "distinguishable": bool, "comparisons": [...], "verdict": str}.
    Standard deviations are sample ones (ddof=1), None with fewer than 2 finished seeds.
    `baselines` (variant -> its baseline variant, e.g. `configs/ssl_init.py`'s BASELINES) adds
    "against_baseline": [{variant, baseline, difference, t, df, verdict, pretrain_time_s}] and its table.
    """
    if not runs:
        raise ValueError("write_report: no runs given")
    study_dir = pathlib.Path(study_dir)
    for r in runs:
        if r.status not in STATUSES:
            raise ValueError(f"run {r.variant!r} seed {r.seed} ({r.workdir}): status {r.status!r} "
                             f"is not one of {', '.join(STATUSES)}")
    finished = [load(r) for r in runs if r.status == "done"]
    study_dir.mkdir(parents=True, exist_ok=True)

    variants = list(dict.fromkeys(str(r.variant) for r in runs))
    by_variant = {v: [f for f in finished if str(f.record.variant) == v] for v in variants}
    result = stats.aggregate(runs, by_variant, baselines)
    _write_results_csv(study_dir / "results.csv", study_dir, runs, {id(f.record): f for f in finished})
    curves = figures.plot_curves(study_dir / "curves.png", title, by_variant)
    matrices = figures.plot_confusion_matrices(study_dir / "confusion_matrices.png", title, by_variant)
    write_atomic(study_dir / "report.md", markdown(title, question, runs, by_variant, result, curves, matrices))
    return result


def _write_results_csv(path: pathlib.Path, study_dir: pathlib.Path, runs: list[RunRecord],
                       finished: dict[int, FinishedRun]) -> None:
    """One row per run; numbers exactly as in summary.json (str of a float is its repr: no rounding)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for r in runs:
            run = finished.get(id(r))
            row = {"variant": r.variant, "seed": r.seed, "status": r.status, "message": r.message,
                   "workdir": os.path.relpath(pathlib.Path(r.workdir), study_dir)}
            if run is not None:
                row.update({k: run.value(k) for k in (*stats.STAT_KEYS, "num_params", "group_size", "backend")})
            writer.writerow(["" if row.get(c) is None else row[c] for c in RESULT_COLUMNS])
