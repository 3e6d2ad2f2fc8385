"""`scripts/study.py --jobs N`: runs trained at once, each in a process of its own, as a user runs them
(real processes, real signals): the same numbers as one at a time, a failed run reported while the
others go on, Ctrl-C/SIGTERM stopping every process with its saved epochs kept, bad values refused."""

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import pytest

from jaxcnn.errors import ConfigError
from jaxcnn.files import WorkdirLock
from jaxcnn.study import runner
from tests.helpers import ENV, ROOT, check_report_matches_run_folders, cli, one_error_line, read_csv

LENET = str(ROOT / "configs" / "lenet.py")
TINY = "data.max_train=1000,data.max_test=200,epochs=4,report.layer_profile=False"  # 10 steps an epoch
VARIANTS = ["3", "2", "maxpool"]
METRICS = ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate")


def study_args(workdir: pathlib.Path, jobs: str = "2") -> list[str]:
    return ["study.py", "--config", f"configs/lenet.py:{TINY}", "--workdir", str(workdir), "--variants",
            ",".join(VARIANTS), "--jobs", jobs]


@pytest.fixture(scope="module")
def one_at_a_time(tmp_path_factory):
    """The study trained one run after another in one process (--jobs 1) with the thread count each
    process of --jobs 2 has here (1), so that every number must come out the same."""
    workdir = tmp_path_factory.mktemp("one_at_a_time")
    proc = cli(*study_args(workdir, "1"), env={"PJRT_NPROC": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "training 1 runs at a time" not in proc.stdout and "[3/3] maxpool/seed_0 (2/3 runs in " in proc.stdout
    return workdir


def history(run_dir: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def assert_same_runs(workdir: pathlib.Path, reference: pathlib.Path) -> None:
    """Every run's metrics, epoch by epoch (each epoch once), and the report's numbers equal the
    reference study's: on the CPU, runs at one thread each are deterministic."""
    check_report_matches_run_folders(workdir, VARIANTS, 1)
    for variant in VARIANTS:
        got, want = (history(w / variant / "seed_0") for w in (workdir, reference))
        assert [h["epoch"] for h in got] == [h["epoch"] for h in want] == [1, 2, 3, 4]
        for g, w in zip(got, want):
            for key in METRICS:
                assert g[key] == pytest.approx(w[key], rel=1e-6), (variant, g["epoch"], key)
    for row, ref in zip(read_csv(workdir / "results.csv"), read_csv(reference / "results.csv"), strict=True):
        for key in ("variant", "seed", "status", "num_params", "group_size", "best_epoch"):
            assert row[key] == ref[key], key
        for key in ("final_test_accuracy", "best_test_accuracy", "final_train_accuracy", "overfitting_gap"):
            assert float(row[key]) == pytest.approx(float(ref[key]), rel=1e-6), key


def test_a_failed_run_is_one_line_the_others_go_on_and_equal_one_at_a_time(one_at_a_time, tmp_path):
    """--jobs 2 while another process holds one run's folder: that run fails in one line, the two others
    train (in parallel) and the report lists it as failed; the rerun trains it alone. Every number then
    equals the study trained one at a time."""
    (tmp_path / "study.json").write_text(json.dumps({"config": "lenet.py", "overrides": TINY}))
    busy = WorkdirLock(tmp_path / "2" / "seed_0")
    busy.acquire()
    try:
        proc = cli(*study_args(tmp_path))
    finally:
        busy.release()
    assert "2 runs at a time, each in a process of its own with 1 thread (--jobs 2)" in proc.stdout, proc.stdout
    failed = [line for line in proc.stdout.splitlines() if " failed: " in line]
    assert len(failed) == 1 and failed[0].startswith("  2/seed_0 failed: "), failed
    assert "is in use by pid" in failed[0], failed[0]
    assert "trained 2 runs in " in proc.stdout and "; 1 failed; report: " in proc.stdout
    assert "1 run(s) failed (2/seed_0)" in one_error_line(proc)
    statuses = {r["variant"]: r["status"] for r in read_csv(tmp_path / "results.csv")}
    assert statuses == {"3": "done", "2": "failed", "maxpool": "done"}
    done = {v: (tmp_path / v / "seed_0" / "metrics.jsonl").read_text() for v in ("3", "maxpool")}

    # the run left trains in the study's own process at one thread, as the reference (`--jobs 2` gives a
    # single run left a worker with both cores, and two threads round differently: 4e-6 relative in run 2)
    again = cli(*study_args(tmp_path, "1"), env={"PJRT_NPROC": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert "3 runs: 2 finished, 1 to train" in again.stdout
    assert {v: (tmp_path / v / "seed_0" / "metrics.jsonl").read_text() for v in done} == done  # not retrained
    assert_same_runs(tmp_path, one_at_a_time)


def _workers(study_pid: int) -> list[int]:
    """The run processes (`python -m jaxcnn.study.runner CONFIG STUDY_PID`) of a study process that are alive."""
    pids = []
    for proc in pathlib.Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"jaxcnn.study.runner" in cmdline and cmdline[-2:] == [str(study_pid).encode(), b""]:
            pids.append(int(proc.name))
    return pids


def _wait_for(condition, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.02)


def _interrupt(workdir: pathlib.Path, sig: signal.Signals, ready) -> subprocess.CompletedProcess:
    """Starts the study with --jobs 2, sends `sig` to it once `ready(its pid)`, and checks that it ends with one
    line and no run process left."""
    process = subprocess.Popen([sys.executable, str(ROOT / "scripts" / "study.py"), *study_args(workdir)[1:]],
                               cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(lambda: process.poll() is not None or ready(process.pid))
    assert process.poll() is None, "the study ended before the signal"
    process.send_signal(sig)
    out, err = process.communicate(timeout=120)
    proc = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert process.returncode == 130, err[-3000:]
    assert not _workers(process.pid)
    line = one_error_line(proc)
    assert line.startswith("error: interrupted; ") and line.endswith("rerun the same command to resume"), line
    return proc


def test_a_signal_stops_every_run_and_the_rerun_trains_only_what_is_left(one_at_a_time, tmp_path):
    """A study with one finished run and two to train: SIGTERM while both train (each past its first
    epoch), then on the rerun Ctrl-C (SIGINT) as soon as their processes start. Each time every run
    process stops and one line says so; the last rerun resumes the two from their saved epochs (every
    epoch trained once) and leaves the finished one alone; the numbers equal one at a time."""
    shutil.copytree(one_at_a_time / "3", tmp_path / "3")  # finished
    shutil.copy(one_at_a_time / "study.json", tmp_path)
    finished = (tmp_path / "3" / "seed_0" / "metrics.jsonl").read_text()
    metrics = lambda v: tmp_path / v / "seed_0" / "metrics.jsonl"
    epochs = lambda v: len(metrics(v).read_text().splitlines()) if metrics(v).exists() else 0
    at_signal = {}

    def training(pid):  # both past their first epoch; how far each is, noted
        at_signal.update({v: epochs(v) for v in ("2", "maxpool")})
        return all(at_signal.values())

    proc = _interrupt(tmp_path, signal.SIGTERM, training)
    assert "3 runs: 1 finished, 2 to train" in proc.stdout
    # a run with three of its four epochs to go (~0.4 s here) stops; one further on when signalled (it started
    # earlier than the other and ran ahead) may finish first: the study passes the signal on within ~0.1 s
    done = []
    for v, at in at_signal.items():
        if f"  {v}/seed_0 done in " in proc.stdout:
            assert at >= 2, (at_signal, proc.stdout)
            done.append(v)
        else:
            assert f"  {v}/seed_0 stopped: interrupted " in proc.stdout, (at_signal, proc.stdout)
            assert not (tmp_path / v / "seed_0" / "summary.json").exists()
    if not done:  # two runs left, in two worker processes
        proc = _interrupt(tmp_path, signal.SIGINT, lambda pid: len(_workers(pid)) == 2)
        # each run stopped; (rarely) one whose worker missed the signal while starting finishes instead, and its
        # worker, then idle, must still be released (it hung the study once, waiting for another run)
        assert proc.stdout.count(" stopped: ") + proc.stdout.count(" done in ") == 2, proc.stdout
        done += [line for line in proc.stdout.splitlines() if " done in " in line]

    done = len(done)
    # the runs left train in the study's own process at one thread, as the reference (`--jobs 2` would give a
    # single run left a worker with both cores, and two threads round differently: 3e-6 relative once)
    again = cli(*study_args(tmp_path, "1"), env={"PJRT_NPROC": "1"})
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"3 runs: {1 + done} finished, {2 - done} to train" in again.stdout
    assert (tmp_path / "3" / "seed_0" / "metrics.jsonl").read_text() == finished
    assert_same_runs(tmp_path, one_at_a_time)


@pytest.mark.parametrize("value, expected", [
    ("0", "jobs=0: the runs trained at once must be a whole number >= 1"),
    ("two", "flag --jobs=two: invalid literal for int() with base 10: 'two'"),
])
def test_a_bad_jobs_value_is_one_line(tmp_path, value, expected):
    assert one_error_line(cli(*study_args(tmp_path, value))) == f"error: {expected}"
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("jobs", [-1, 1.5, True, "2"])
def test_run_study_refuses_a_bad_jobs_value(tmp_path, jobs):
    with pytest.raises(ConfigError, match=r"jobs=.*: the runs trained at once must be a whole number >= 1"):
        runner.run_study(LENET, tmp_path, variants=["3"], overrides=TINY, jobs=jobs)


def test_jobs_and_group_yes_are_refused_together(tmp_path):
    with pytest.raises(ConfigError, match="jobs=2 trains each run in a process of its own; group=yes"):
        runner.run_study(LENET, tmp_path, variants=["3"], overrides=TINY, group="yes", jobs=2)


def test_default_jobs_is_one_per_core_on_the_cpu():
    assert runner.default_jobs() == len(os.sched_getaffinity(0))
    assert runner.default_jobs("yes") == 1
