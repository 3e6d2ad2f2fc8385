"""The study runner: every variant of a config file over several seeds, then one report.

    run_study("configs/pooling.py", "runs/pooling", seeds=5)

Runs live in `WORKDIR/<variant>/seed_<n>`. Finished runs are skipped and unfinished ones resume
from their checkpoints, so an interrupted study continues where it stopped. Pending runs that
share an architecture and optimizer family (`jaxcnn.train.trainer.group_key`) can train together
as one vmapped program (`group="yes"`) or one at a time (`"no"`). `"auto"` groups on accelerators
and not on the CPU, where a vmapped LeNet step measured 2.6× slower per run than single runs
(XLA's CPU convolutions with a stacked kernel), see README.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import jax
import ml_collections

from jaxcnn.config import load_config_module, validate
from jaxcnn.data import Dataset, describe_data, load_dataset
from jaxcnn.errors import ConfigError, TrainingDivergedError, WorkdirError
from jaxcnn.files import WorkdirLock, read_json, write_atomic, write_json
from jaxcnn.report.markdown import duration
from jaxcnn.study.report import write_report
from jaxcnn.study.runs import RunRecord
from jaxcnn.train import init
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.loop import train_group
from jaxcnn.train.trainer import check_trainable, group_key

GROUP_CHOICES = ("auto", "yes", "no")
STUDY_JSON = "study.json"
DIVERGED = "diverged.txt"  # in a run folder: the message of the divergence that ended it


@dataclass
class PlannedRun:
    """One run of a study as planned: variant, seed, its config and folder."""

    variant: str
    seed: int
    config: ml_collections.ConfigDict
    workdir: pathlib.Path


def study_variants(module: ModuleType, path: str | pathlib.Path, names: Sequence[str] | None = None) -> list[str]:
    """The variants a config file declares (its `VARIANTS` dict), or the `names` chosen from them."""
    declared = list(getattr(module, "VARIANTS", None) or {})
    if not declared:
        raise ConfigError(f"config file {path} declares no variants (a VARIANTS dict of name -> overrides); "
                          "a study needs at least one")
    if not names:
        return declared
    unknown = [n for n in names if n not in declared]
    if unknown:
        raise ConfigError(f"unknown variant(s) {', '.join(unknown)} in {path}; valid variants: {', '.join(declared)}")
    return list(dict.fromkeys(names))


def plan_study(module: ModuleType, config_path: str, workdir: str | pathlib.Path, seeds: int,
               variants: Sequence[str] | None = None, overrides: str = "") -> list[PlannedRun]:
    """The runs of a study: each variant × seeds 0..seeds-1, config `VARIANT,seed=N[,overrides]`."""
    if not isinstance(seeds, int) or seeds < 1:
        raise ConfigError(f"seeds={seeds!r}: a study needs at least 1 seed")
    names = study_variants(module, config_path, variants)
    workdir = pathlib.Path(workdir)
    runs = []
    for name in names:
        for seed in range(seeds):
            arg = ",".join(p for p in (name, f"seed={seed}", overrides) if p)
            runs.append(PlannedRun(name, seed, module.get_config(arg), workdir / name / f"seed_{seed}"))
    return runs


def _check_claim(workdir: pathlib.Path, config_path: str, overrides: str) -> dict[str, str]:
    """study.json names the study a workdir holds; another study's workdir is refused (read-only).
    Returns the study.json this study writes."""
    path = workdir / STUDY_JSON
    study = {"config": pathlib.Path(config_path).name, "overrides": overrides}
    old = read_json(path)
    if path.exists() and not isinstance(old, dict):
        raise WorkdirError(f"{path} is damaged (not JSON); write {json.dumps(study)} into it to continue this "
                           "study, or use another --workdir")
    if old is not None:
        if {k: old.get(k) for k in study} != study:
            raise ConfigError(f"{workdir} holds the study {old.get('config')!r} with overrides "
                              f"{old.get('overrides')!r}, not {study['config']!r} with {overrides!r}; "
                              "use another --workdir (nothing was changed)")
    elif workdir.exists() and any(p.name != WorkdirLock.NAME for p in workdir.iterdir()):
        raise ConfigError(f"{workdir} is not empty and holds no {STUDY_JSON}; use an empty or new --workdir")
    return study


def run_state(run: PlannedRun) -> tuple[str, int]:
    """("done" | "diverged" | "pending", finished epochs)."""
    if (run.workdir / DIVERGED).exists():
        return "diverged", 0
    summary = read_json(run.workdir / "summary.json")
    if isinstance(summary, dict) and summary.get("epochs") == run.config.train.epochs:
        return "done", run.config.train.epochs
    if not (run.workdir / "checkpoints").exists():
        return "pending", 0
    checkpoints = Checkpoints(run.workdir, read_only=True)
    try:
        return "pending", checkpoints.latest_epoch() or 0
    finally:
        checkpoints.close()


def group_runs(runs: Sequence[PlannedRun], max_group: int = 0) -> list[list[PlannedRun]]:
    """Pending runs in groups that can train as one program: same `group_key`, same finished epochs."""
    groups: dict[tuple[str, int], list[PlannedRun]] = {}
    for run in runs:
        groups.setdefault((group_key(run.config), run_state(run)[1]), []).append(run)
    out = []
    for members in groups.values():
        size = max_group or len(members)
        out.extend(members[i:i + size] for i in range(0, len(members), size))
    return out


def _data_key(run: PlannedRun) -> str:
    return run.config.data.to_json()


def _check_runs(runs: Sequence[PlannedRun]) -> dict[str, Dataset]:
    """Validates every run's config, loads each dataset once and checks that each run can train on
    it (`check_trainable`); returns the datasets by `_data_key`. Raises ConfigError naming the run."""
    datasets: dict[str, Dataset] = {}
    for run in runs:
        try:
            validate(run.config)
            if _data_key(run) not in datasets:
                datasets[_data_key(run)] = load_dataset(run.config.data)
            dataset = datasets[_data_key(run)]
            check_trainable(run.config, len(dataset.train_labels), dataset.num_classes)
        except ConfigError as e:
            raise ConfigError(f"variant {run.variant!r}: {e} (nothing was written)") from None
    return datasets


def run_study(config_path: str, workdir: str | pathlib.Path, seeds: int = 1, variants: Sequence[str] | None = None,
              overrides: str = "", group: str = "auto", max_group: int = 0, progress: bool = True,
              log=print) -> dict:
    """Trains every pending run of the study, then writes report.md and results.csv.

    Returns:
      `write_report`'s aggregates, plus `wall_time_s` (this invocation) and `trained` (runs trained now).
    """
    if max_group < 0:
        raise ConfigError(f"max_group={max_group} must be >= 0 (0: no limit)")
    if group not in GROUP_CHOICES:
        raise ConfigError(f"group={group!r} is not valid; valid values: {', '.join(GROUP_CHOICES)}")
    grouped = group == "yes" or (group == "auto" and jax.default_backend() != "cpu")
    module = load_config_module(config_path)
    runs = plan_study(module, config_path, workdir, seeds, variants, overrides)
    workdir = pathlib.Path(workdir)
    _check_claim(workdir, config_path, overrides)
    pending = [run for run in runs if run_state(run)[0] == "pending"]
    datasets = _check_runs(pending)  # their configs, data and models, before anything is written
    lock = WorkdirLock(workdir)
    if jax.process_index() == 0:
        lock.acquire()
    try:
        write_json(workdir / STUDY_JSON, _check_claim(workdir, config_path, overrides))  # again, locked
        log(f"{len(runs)} runs: {len(runs) - len(pending)} finished, {len(pending)} to train")
        init.pretrain_missing([r.config for r in pending], progress, log)  # trunks first, each once, cached
        groups = group_runs(pending, max_group) if grouped else [[run] for run in pending]
        t0, done = time.perf_counter(), 0
        for i, members in enumerate(groups, 1):
            names = ", ".join(f"{r.variant}/seed_{r.seed}" for r in members)
            elapsed = time.perf_counter() - t0
            # the study's progress over its runs: so far, and the rest at the pace so far
            left = elapsed / done * (len(pending) - done) if done else 0.0
            eta = f" ({done}/{len(pending)} runs in {duration(elapsed)}; about {duration(left)} left)" if done else ""
            log(f"[{i}/{len(groups)}] {names}{eta}")
            results = train_group([r.config for r in members], [r.workdir for r in members],
                                  datasets[_data_key(members[0])], progress)
            done += len(members)
            for run, result in zip(members, results):
                if isinstance(result, TrainingDivergedError):
                    write_atomic(run.workdir / DIVERGED, str(result) + "\n")
                    log(f"  {run.variant}/seed_{run.seed} diverged: {result}")
        wall = time.perf_counter() - t0
        records = []
        for run in runs:
            state = run_state(run)[0]
            message = (run.workdir / DIVERGED).read_text().strip() if state == "diverged" else ""
            records.append(RunRecord(run.variant, run.seed, run.workdir, state if state != "pending" else "failed",
                                     message or ("not finished" if state == "pending" else "")))
        # the question about the data the runs use (`{data}` in a config's QUESTION)
        question = getattr(module, "QUESTION", "").replace("{data}", describe_data(runs[0].config.data))
        result = write_report(workdir, f"Study {pathlib.Path(config_path).name}", records, question,
                              getattr(module, "BASELINES", None))
    finally:
        lock.release()
    result.update(wall_time_s=wall, trained=len(pending))
    log(f"trained {len(pending)} runs in {wall:.1f} s; report: {workdir / 'report.md'}")
    return result
