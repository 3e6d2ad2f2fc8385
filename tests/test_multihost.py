"""Multi-host training for real: several `scripts/train.py` processes on this machine form one JAX cluster
(`jax.distributed.initialize` with a coordinator on a free loopback port, gloo CPU collectives), as on
several hosts. Runs must end equal to a single-process run whatever the topology (processes × devices),
resume across topologies after a SIGKILL, and every launch fault must end in one line within a bounded time."""

from __future__ import annotations

import json
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.helpers import ENV, ROOT, one_error_line, train_cli

# 2 epochs of 10 steps; batch 40 splits over 1, 2 or 4 devices
ARG = "3,data.max_train=400,data.max_test=100,epochs=2,batch_size=40,report.layer_profile=False"
TIMEOUTS = ("--initialization_timeout=20", "--heartbeat_timeout=10")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workdir: str | pathlib.Path, n: int, arg: str = ARG, devices: int = 1, extra: dict | None = None,
           faults: dict | None = None, cwd: dict | None = None, timeout: int = 120,
           script: str = "train.py") -> list[subprocess.CompletedProcess]:
    """Starts the README's one-machine command as processes 0..n-1 (`devices` CPU devices each) and waits
    for all of them. `extra`, `faults`, `cwd`: per process id, more flags, a `JAXCNN_FAULT`, a working folder."""
    port = free_port()
    procs = []
    for i in range(n):
        env = dict(ENV, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        if (faults or {}).get(i):
            env["JAXCNN_FAULT"] = faults[i]
        args = [sys.executable, str(ROOT / "scripts" / script), "--config", f"{ROOT}/configs/lenet.py:{arg}",
                "--workdir", str(workdir), "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(n),
                "--process_id", str(i), *TIMEOUTS, *(extra or {}).get(i, ())]
        procs.append(subprocess.Popen(args, cwd=(cwd or {}).get(i, ROOT), env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    t0 = time.monotonic()
    results = []
    for p in procs:
        out, err = p.communicate(timeout=max(1, timeout - (time.monotonic() - t0)))
        results.append(subprocess.CompletedProcess(p.args, p.returncode, out, err))
        results[-1].pid = p.pid
    return results


def check_ok(results: list[subprocess.CompletedProcess]) -> None:
    for i, r in enumerate(results):
        assert r.returncode == 0, f"process {i}: {r.stderr[-3000:]}"


def metrics(workdir: pathlib.Path) -> list[dict]:
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


def params(workdir: pathlib.Path, epoch: int) -> dict[str, np.ndarray]:
    from tests.test_faults import params as restore

    return restore(workdir, epoch)


def assert_equal_runs(a: pathlib.Path, b: pathlib.Path, epochs: int = 2) -> None:
    """Same metrics rows (each epoch once) and parameters, to float32 reduction-order rounding."""
    ma, mb = metrics(a), metrics(b)
    assert [r["epoch"] for r in mb] == list(range(1, epochs + 1))
    for ra, rb in zip(ma, mb):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert rb[k] == pytest.approx(ra[k], rel=1e-5, abs=1e-6), (k, ra, rb)
    pa, pb = params(a, epochs), params(b, epochs)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_allclose(pb[k], pa[k], rtol=1e-4, atol=1e-5, err_msg=k)
    sa, sb = (json.loads((w / "summary.json").read_text()) for w in (a, b))
    assert sb["final_test_accuracy"] == pytest.approx(sa["final_test_accuracy"], abs=0.011)  # one test image


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> pathlib.Path:
    """The uninterrupted single-process run (1 device) with the same global batch."""
    workdir = tmp_path_factory.mktemp("multihost") / "one"
    proc = train_cli(workdir, ARG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_killed_two_process_run_resumes_as_two_and_as_one_process(reference, tmp_path):
    # 2 processes × 1 device; process 1 is SIGKILLed after epoch 2's metrics (epoch 1 is checkpointed):
    # process 0 must stop by itself, in one line, within the heartbeat timeout
    killed = tmp_path / "killed"
    t0 = time.monotonic()
    p0, p1 = launch(killed, 2, faults={1: "metrics_written:2:SIGKILL"})
    assert p1.returncode == -9, p1.stderr[-3000:]
    line = one_error_line(p0)
    assert line.startswith("error: process 0 of 2 stops") and "rerun the same command on every process" in line, line
    assert time.monotonic() - t0 < 60
    # resume as 2 processes × 2 devices (a 4-device mesh) and as 1 process × 1 device: both equal the reference
    as_two, as_one = tmp_path / "as_two", tmp_path / "as_one"
    shutil.copytree(killed, as_two)
    shutil.copytree(killed, as_one)
    results = launch(as_two, 2, devices=2)
    check_ok(results)
    assert_equal_runs(reference, as_two)
    # only process 0 writes the run's files: it alone took the workdir's lock; every process checkpointed
    assert f"pid {results[0].pid} " in (as_two / ".lock").read_text()
    assert "final test accuracy" in results[1].stdout and not list(as_two.glob(".jaxcnn-shared-check-*"))
    proc = train_cli(as_one, ARG)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_equal_runs(reference, as_one)


def test_a_study_trains_each_run_across_both_processes(reference, tmp_path):
    """scripts/study.py with the same flags: one run at a time spanning the processes; process 0 writes the
    study's files and the report once every process is done; the run equals the single-process one."""
    results = launch(tmp_path, 2, ARG.split(",", 1)[1], script="study.py",  # overrides only: no variant
                     extra={i: ("--variants", "3", "--seeds", "1") for i in (0, 1)})
    check_ok(results)
    assert_equal_runs(reference, tmp_path / "3" / "seed_0")
    assert "report:" in results[0].stdout and "report:" not in results[1].stdout
    assert (tmp_path / "report.md").is_file() and (tmp_path / "results.csv").read_text().count("\n3,0,done,") == 1


def test_coordinator_killed_stops_the_others_in_one_line(tmp_path):
    t0 = time.monotonic()
    p0, p1 = launch(tmp_path / "w", 2, faults={0: "metrics_written:1:SIGKILL"})
    assert p0.returncode == -9
    line = one_error_line(p1)
    assert line.startswith("error: process 1 of 2 stops") and "rerun the same command on every process" in line, line
    assert time.monotonic() - t0 < 60


def test_launch_faults_end_in_one_line(tmp_path):
    port = free_port()
    common = ("--config", f"configs/lenet.py:{ARG}", "--workdir", str(tmp_path / "w"), *TIMEOUTS)

    def alone(*flags, timeout=60):
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "scripts/train.py", *common, *flags], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=timeout)
        return one_error_line(proc), time.monotonic() - t0

    line, _ = alone("--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", "2")
    assert line == "error: --process_id=2 is out of range for --num_processes=2: use 0..1, a different one on each process"
    line, _ = alone("--coordinator_address", "127.0.0.1", "--num_processes", "2", "--process_id", "0")
    assert "--coordinator_address='127.0.0.1' is not valid: use HOST:PORT" in line
    # process 0 must serve the coordinator on its own address; the others must reach it in time
    line, _ = alone("--coordinator_address", "192.0.2.1:1234", "--num_processes", "2", "--process_id", "0")
    assert "192.0.2.1:1234 is not an address of this host" in line
    line, seconds = alone("--coordinator_address", f"127.0.0.1:{port}", "--num_processes", "2", "--process_id", "1",
                          "--initialization_timeout=2")
    assert f"cannot reach the coordinator at --coordinator_address=127.0.0.1:{port} within 2 s" in line, line
    assert seconds < 30
    assert not (tmp_path / "w").exists()


def test_mismatched_process_count_ends_in_one_line_each(tmp_path):
    results = launch(tmp_path / "w", 2, extra={1: ("--num_processes", "3")})
    for r in results:
        assert one_error_line(r) == ("error: the processes were started with different --num_processes: "
                                     "process 0 with 2, process 1 with 3; give every process the same")
    assert not (tmp_path / "w").exists()


def test_workdir_not_shared_ends_in_one_line_each(tmp_path):
    # the same relative --workdir from two working folders: two different folders, as on two hosts without
    # a shared file system
    hosts = [tmp_path / "host0", tmp_path / "host1"]
    for h in hosts:
        h.mkdir()
    results = launch("run", 2, cwd=dict(enumerate(hosts)))
    for r in results:
        line = one_error_line(r)
        assert "--workdir run is not shared between the processes" in line and "process 1" in line, line
    assert [list(h.iterdir()) for h in hosts] == [[], []]  # the token is gone, nothing else was written
