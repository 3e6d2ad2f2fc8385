"""The study runner: every variant of a config file over several seeds, then one report.

    run_study("configs/pooling.py", "runs/pooling", seeds=5)

Runs live in `WORKDIR/<variant>/seed_<n>`. Finished runs are skipped and unfinished ones resume
from their checkpoints, so an interrupted study continues where it stopped. Pending runs that
share an architecture and optimizer family (`jaxcnn.train.trainer.group_key`) can train together
as one vmapped program (`group="yes"`) or one at a time (`"no"`). `"auto"` groups on accelerators
and not on the CPU, where a vmapped LeNet step measured 2.6× slower per run than single runs
(XLA's CPU convolutions with a stacked kernel), see README. On the CPU, `jobs=N` trains N runs at
once instead, in N worker processes (`python -m jaxcnn.study.runner`, each handed one run after
another) whose XLA thread pools hold cores // N threads (`PJRT_NPROC`), so that they share the cores
without oversubscribing them.
"""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import jax
from jax.experimental import multihost_utils
import ml_collections

from jaxcnn.config import load_config_module, validate
from jaxcnn.data import Dataset, describe_data, load_dataset
from jaxcnn.errors import ConfigError, Interrupted, TrainingDivergedError, UserError, WorkdirError, first_line
from jaxcnn.files import WorkdirLock, read_json, write_atomic, write_json
from jaxcnn.report.markdown import duration
from jaxcnn.study.report import write_report
from jaxcnn.study.runs import RunRecord
from jaxcnn.train import init
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.loop import SignalCatcher, train_group
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
    arg: str = ""  # the config file's argument that gives `config`: `VARIANT,seed=N[,overrides]`

    @property
    def name(self) -> str:
        return f"{self.variant}/seed_{self.seed}"


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
            runs.append(PlannedRun(name, seed, module.get_config(arg), workdir / name / f"seed_{seed}", arg))
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


def usable_cpus() -> int:
    """The cores this process may run on (its affinity mask, e.g. under taskset or a container's cpuset)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_jobs(group: str = "auto") -> int:
    """Runs trained at once when --jobs is not given: one per usable core on the CPU (each process then
    computes on one thread); 1 on GPU/TPU, where runs group into one program instead, with --group=yes,
    and in a multi-host launch."""
    if group == "yes" or jax.default_backend() != "cpu" or jax.process_count() > 1:
        return 1
    return usable_cpus()


def _train_members(members: Sequence[PlannedRun], dataset: Dataset | None, progress: bool, log) -> None:
    """Trains runs as one group (or one run); a run whose loss diverged is marked so in its folder."""
    results = train_group([r.config for r in members], [r.workdir for r in members], dataset, progress)
    for run, result in zip(members, results):
        if isinstance(result, TrainingDivergedError):
            if jax.process_index() == 0:
                write_atomic(run.workdir / DIVERGED, str(result) + "\n")
            log(f"  {run.name} diverged: {result}")


def _eta(t0: float, done: int, total: int) -> str:
    """The study's progress over its runs: so far, and the rest at the pace so far."""
    if not done:
        return ""
    elapsed = time.perf_counter() - t0
    return f" ({done}/{total} runs in {duration(elapsed)}; about {duration(elapsed / done * (total - done))} left)"


class _Signals(SignalCatcher):
    """Counts Ctrl-C and SIGTERM while worker processes train (the study process passes each one on)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def _handler(self, signum, frame):
        self.count += 1


class _Worker:
    """A process (`python -m jaxcnn.study.runner`) that trains the runs handed to it one after another, so
    that imports, datasets and compiled initialisers are paid once per process, not once per run. A run
    goes in as a JSON line on its stdin, its outcome comes back as one on its stdout; its stderr (notes,
    tracebacks) goes to a file."""

    def __init__(self, config_path: str, env: dict[str, str]):
        fd, name = tempfile.mkstemp(prefix="jaxcnn-study-worker-", suffix=".log")
        self.log = pathlib.Path(name)
        with os.fdopen(fd, "wb") as err:  # a session of its own: Ctrl-C reaches the study process only
            self.process = subprocess.Popen(
                [sys.executable, "-m", "jaxcnn.study.runner", str(pathlib.Path(config_path).resolve()),
                 str(os.getpid())], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, env=env,
                start_new_session=True)
        os.set_blocking(self.process.stdout.fileno(), False)
        self.run: PlannedRun | None = None
        self.start = 0.0
        self.signalled = 0  # the Ctrl-C/SIGTERMs passed on to it
        self.keep_log = False
        self._pending = b""

    def give(self, run: PlannedRun) -> None:
        self.run, self.start = run, time.perf_counter()
        try:
            self.process.stdin.write((json.dumps({"arg": run.arg, "workdir": str(run.workdir)}) + "\n").encode())
            self.process.stdin.flush()
        except BrokenPipeError:  # it has ended: reported as the end of this run
            pass

    def poll(self, signals: int, log) -> list[str]:
        """Passes on the signals the study received since the last call (`signals`: how many so far), logs
        the runs it has ended since (`_outcome`) and returns their lines ("" for a run that finished)."""
        for _ in range(signals - self.signalled):
            self.process.send_signal(signal.SIGTERM)
        self.signalled = signals
        code = self.process.poll()  # before reading: what it wrote before it ended is read now
        try:
            self._pending += os.read(self.process.stdout.fileno(), 1 << 16)
        except BlockingIOError:
            pass
        *lines, self._pending = self._pending.split(b"\n")
        outcomes = [json.loads(line) for line in lines if line.strip()]
        if code is not None and self.run is not None and not outcomes:  # it ended inside a run
            if signals and code in (Interrupted.exit_code, -signal.SIGTERM):  # before it could say so
                outcomes = [{"status": "stopped", "message": "its finished epochs are kept"}]
            else:
                self.keep_log = True
                how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
                outcomes = [{"status": "failed", "message": f"its process ended ({how}; its output: {self.log})"}]
        ended = []
        for outcome in outcomes:
            ended.append(_outcome(self, outcome, log))
            self.run = None
        return ended

    def close(self) -> None:
        """No more runs: it exits once its stdin ends."""
        if not self.process.stdin.closed:
            self.process.stdin.close()

    def end(self) -> None:
        """After it exited: its pipes closed, its output file deleted unless it tells of a failure."""
        self.close()
        self.process.stdout.close()
        if not self.keep_log:
            self.log.unlink()


def _worker_env(threads: int) -> dict[str, str]:
    """The environment of a worker: XLA's CPU thread pool (sized from PJRT_NPROC when the client is
    created; measured: XLA_FLAGS' --xla_cpu_multi_thread_eigen=false leaves it at one thread per core in
    jax 0.10) and the BLAS/OpenMP pools NumPy may use, each `threads` wide."""
    env = dict(os.environ, PJRT_NPROC=str(threads))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env[name] = str(threads)
    if jax.default_backend() != "cpu":  # processes that share an accelerator take its memory as they need it
        env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    return env


def _train_in_processes(pending: Sequence[PlannedRun], config_path: str, jobs: int, log) -> list[str]:
    """Trains the pending runs in `jobs` worker processes, one run each at a time. A run that fails is
    reported in one line and the others go on; Ctrl-C or SIGTERM is passed on to every worker, whose run
    stops at its next step boundary with its finished epochs saved (a second one stops it at once), then
    Interrupted is raised. Returns one line per run that failed."""
    threads = max(1, usable_cpus() // jobs)
    env = _worker_env(threads)
    log(f"training {jobs} runs at a time, each in a process of its own with {threads} "
        f"thread{'s' if threads > 1 else ''} (--jobs {jobs})")
    queue, workers, failed, t0 = list(pending), [], [], time.perf_counter()
    ended = finished = 0
    with _Signals() as signals:
        try:
            while True:
                if not signals.count:
                    while len(workers) < min(jobs, len(queue) + sum(w.run is not None for w in workers)):
                        workers.append(_Worker(config_path, env))  # also in place of one that ended
                    for worker in workers:
                        if worker.run is None and queue:
                            run = queue.pop(0)
                            log(f"[{len(pending) - len(queue)}/{len(pending)}] {run.name}"
                                f"{_eta(t0, ended, len(pending))}")
                            worker.give(run)
                        elif worker.run is None:
                            worker.close()
                else:  # interrupted: no more runs, so a worker whose run ended exits (it waits on its stdin)
                    for worker in workers:
                        if worker.run is None:
                            worker.close()
                if not workers:
                    break
                time.sleep(0.1)
                for worker in list(workers):
                    for line in worker.poll(signals.count, log):
                        ended, finished = ended + 1, finished + (not line)
                        if line and not signals.count:
                            failed.append(line)
                    if worker.process.returncode is not None:
                        workers.remove(worker)
                        worker.end()
        except BaseException:  # a bug here: the workers stop as on Ctrl-C, their finished epochs saved
            for worker in workers:
                worker.process.send_signal(signal.SIGTERM)
                worker.process.wait()
                worker.end()
            raise
    if signals.count:
        raise Interrupted(f"interrupted; {finished} of {len(pending)} runs finished, the others keep their saved "
                          "epochs; rerun the same command to resume")
    return failed


def _outcome(worker: _Worker, outcome: dict, log) -> str:
    """Logs how a worker's run ended; returns a line for a run that did not finish (or diverge), else ""."""
    run, seconds = worker.run, time.perf_counter() - worker.start
    status, message = outcome["status"], outcome.get("message", "")
    if status == "done":
        summary = read_json(run.workdir / "summary.json") or {}
        log(f"  {run.name} done in {duration(seconds)}: test accuracy "
            f"{summary.get('final_test_accuracy', float('nan')):.4f}")
        return ""
    if status == "diverged":
        log(f"  {run.name} diverged: {message}")
        return ""
    if outcome.get("traceback"):
        worker.keep_log = True
        message += f" (traceback in {worker.log})"
    line = f"{run.name} {status}: {message}"
    log(f"  {line}")
    return line


def run_study(config_path: str, workdir: str | pathlib.Path, seeds: int = 1, variants: Sequence[str] | None = None,
              overrides: str = "", group: str = "auto", max_group: int = 0, progress: bool = True,
              log=print, jobs: int = 1) -> dict:
    """Trains every pending run of the study, then writes report.md and results.csv.

    Args:
      jobs: runs trained at once, each in a process of its own (`default_jobs`: one per core on the CPU);
        1 trains them here, one after another or (`group`) as vmapped groups.

    Returns:
      `write_report`'s aggregates, plus `wall_time_s` (this invocation), `trained` (runs trained now)
      and `failed` (one line per run whose process failed; with jobs > 1 the others go on).
    """
    if max_group < 0:
        raise ConfigError(f"max_group={max_group} must be >= 0 (0: no limit)")
    if group not in GROUP_CHOICES:
        raise ConfigError(f"group={group!r} is not valid; valid values: {', '.join(GROUP_CHOICES)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r}: the runs trained at once must be a whole number >= 1")
    if jobs > 1 and group == "yes":
        raise ConfigError(f"jobs={jobs} trains each run in a process of its own; group=yes trains runs together "
                          "in one: use one of them")
    if jobs > 1 and jax.process_count() > 1:
        raise ConfigError(f"jobs={jobs}: a multi-host study trains one run at a time across all processes; "
                          "use jobs=1")
    grouped = group == "yes" or (group == "auto" and jax.default_backend() != "cpu" and jobs == 1)
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
        claim = _check_claim(workdir, config_path, overrides)  # again, locked
        if jax.process_index() == 0:  # multi-host: process 0 writes the study's files, as a run's
            write_json(workdir / STUDY_JSON, claim)
        log(f"{len(runs)} runs: {len(runs) - len(pending)} finished, {len(pending)} to train")
        init.pretrain_missing([r.config for r in pending], progress, log)  # trunks first, each once, cached
        t0, failed = time.perf_counter(), []
        if jobs > 1 and pending:
            failed = _train_in_processes(pending, config_path, min(jobs, len(pending)), log)
        else:
            groups = group_runs(pending, max_group) if grouped else [[run] for run in pending]
            done = 0
            for i, members in enumerate(groups, 1):
                log(f"[{i}/{len(groups)}] {', '.join(r.name for r in members)}{_eta(t0, done, len(pending))}")
                _train_members(members, datasets[_data_key(members[0])], progress, log)
                done += len(members)
        wall = time.perf_counter() - t0
        if jax.process_count() > 1:  # every process done (process 0 has written the runs' files), then the report
            multihost_utils.sync_global_devices("jaxcnn study: runs trained")
            if jax.process_index() != 0:
                return {"wall_time_s": wall, "trained": len(pending), "failed": []}
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
    result.update(wall_time_s=wall, trained=len(pending) - len(failed), failed=failed)
    log(f"trained {len(pending) - len(failed)} runs in {wall:.1f} s{f'; {len(failed)} failed' if failed else ''}; "
        f"report: {workdir / 'report.md'}")
    return result


def _stop_with(parent: int) -> None:
    """Stops this process as SIGTERM does (a run at its next step boundary, finished epochs saved) once
    the study process `parent` is gone, however it ended."""
    def watch():
        while os.getppid() == parent:
            time.sleep(1)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _work(argv: list[str]) -> None:
    """`python -m jaxcnn.study.runner CONFIG_FILE PARENT_PID`: a worker of `run_study` with jobs > 1. Reads
    a JSON line per run from stdin ({"arg": the config file's argument, "workdir": the run's folder}), trains
    it and writes its outcome as a JSON line to stdout ({"status": done | diverged | failed | stopped,
    "message": ...}); ends with stdin. Anything else it prints goes to stderr."""
    config_path, parent = argv[1:]
    _stop_with(int(parent))
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # what the runs print stays off the channel
    module = load_config_module(config_path)
    datasets: dict[str, Dataset] = {}

    def report(**outcome) -> None:
        try:
            channel.write(json.dumps(outcome) + "\n")
            channel.flush()
        except BrokenPipeError:  # the study process is gone (`_stop_with` stops this one too)
            pass

    while line := sys.stdin.readline():
        task = json.loads(line)
        try:
            config = module.get_config(task["arg"])
            run = PlannedRun(config.variant, config.seed, config, pathlib.Path(task["workdir"]), task["arg"])
            if _data_key(run) not in datasets:
                datasets[_data_key(run)] = load_dataset(config.data)
            _train_members([run], datasets[_data_key(run)], False, lambda *_: None)
        except Interrupted as e:
            report(status="stopped", message=str(e))
            raise
        except UserError as e:
            report(status="failed", message=str(e))
        except Exception as e:  # noqa: BLE001 - a bug in one run: the worker reports it and goes on
            traceback.print_exc()
            report(status="failed", message=first_line(e), traceback=True)
        else:
            diverged = run.workdir / DIVERGED
            if diverged.exists():
                report(status="diverged", message=diverged.read_text().strip())
            else:
                report(status="done")


if __name__ == "__main__":
    from jaxcnn.cli import run as run_script

    run_script(_work, positional=True)
