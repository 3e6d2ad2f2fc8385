"""TFDS for real: the `mnist` and `cifar100` builders prepare datasets from local files (only the
download is replaced, see tests/tfds_local.py), then the documented commands train on them with
nothing replaced; offline, an unprepared dataset fails in seconds with one line.

TensorFlow is never imported in this process (importing it before torch segfaults here): the
preparation runs in a child process, the commands as subprocesses.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest

from tests.helpers import ENV, ROOT as REPO, check_report_matches_run_folders, cli, one_error_line

CHECKS = ["check_mnist_prepared_by_the_real_builder", "check_prepared_once_then_read_without_download",
          "check_classes_and_limits", "check_cifar100_prepared_by_the_real_builder", "check_bad_names_and_splits",
          "check_a_failed_download_is_one_line_and_leaves_nothing"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(TFDS data dir with mnist and cifar100 prepared by their builders, the child's check results)."""
    root = tmp_path_factory.mktemp("tfds")
    data_dir, results = root / "tensorflow_datasets", root / "results.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "tfds_local.py"), str(data_dir), str(results)],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0 or not results.exists():
        pytest.fail(f"TFDS child process failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return data_dir, json.loads(results.read_text())


@pytest.mark.parametrize("check", CHECKS)
def test_tfds_builders_prepare_local_files(prepared, check):
    _, results = prepared
    assert results.get(check) == "ok", results.get(check, sorted(results))


def test_train_command_on_prepared_full_mnist(prepared, tmp_path):
    """The README's `data=mnist` command, nothing replaced: reads the prepared data, no network."""
    data_dir, _ = prepared
    proc = cli("train.py", "--config", f"configs/lenet.py:3,data=mnist,data.dir={data_dir},epochs=1,"
               "data.max_train=3000,data.max_test=1000", "--workdir", str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    # 30 steps from PyTorch's initialisation (the config's): 0.60 measured; chance is 0.1
    assert summary["dataset"] == "mnist" and summary["final_test_accuracy"] > 0.45, summary


def test_pooling_study_on_prepared_cifar100(prepared, tmp_path):
    """The README's pooling study (CIFAR-100 classes 0, 55, 58 by default), nothing replaced."""
    data_dir, _ = prepared
    proc = cli("study.py", "--config", f"configs/pooling.py:data.dir={data_dir},epochs=1,batch_size=20,"
               "model.hidden=8", "--workdir", str(tmp_path / "study"), "--seeds", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = check_report_matches_run_folders(tmp_path / "study", ["stride", "max", "avg"], 2)
    assert {int(r["num_params"]) for r in rows} == {4851}  # hidden 8 (32: 33,219, see test_pooling)
    assert all(float(r["final_test_accuracy"]) > 0.6 for r in rows), [r["final_test_accuracy"] for r in rows]
    report = (tmp_path / "study" / "report.md").read_text()
    assert "cifar100" in report
    for name in ("apple", "otter", "pickup_truck"):  # the subset's class names, kept in the per-class tables
        assert name in report


def _online(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(_online("storage.googleapis.com"), reason="this machine reaches the TFDS servers")
def test_offline_unprepared_dataset_fails_in_seconds_with_one_line_and_leaves_nothing(tmp_path):
    data_dir, workdir = tmp_path / "tfds", tmp_path / "run"
    t0 = time.perf_counter()
    proc = cli("train.py", "--config", f"configs/lenet.py:3,data=mnist,data.dir={data_dir}", "--workdir",
               str(workdir))
    seconds = time.perf_counter() - t0
    line = one_error_line(proc)
    assert line.startswith("error: cannot download TFDS dataset 'mnist': storage.googleapis.com is unreachable")
    assert "data=embedded" in line and "data.dir" in line
    assert seconds < 60, seconds  # TFDS alone retries for 206 s here
    assert not data_dir.exists() and not workdir.exists()


def test_offline_weight_downloads_fail_in_seconds_with_one_line(tmp_path):
    if _online("huggingface.co") or _online("download.pytorch.org"):
        pytest.skip("this machine reaches the weight servers")
    for source in ("torchvision:alexnet", "timm:resnet18.a1_in1k"):
        proc = cli("convert_weights.py", "--source", source, "--out", str(tmp_path / "w"))
        line = one_error_line(proc)
        assert f"cannot download the weights of {source}" in line and "--checkpoint FILE" in line, line
        assert not (tmp_path / "w").exists()
