"""scripts/torch_study.py: the study's variants trained by PyTorch on jaxcnn's split, set beside a jaxcnn study."""

from __future__ import annotations

import pytest

from tests.helpers import cli, one_error_line, read_csv

pytest.importorskip("torch")
CONFIG = "configs/lenet.py:data.max_train=200,data.max_test=100,epochs=1"


def test_pytorch_runs_resume_and_sit_beside_the_jaxcnn_study(tmp_path):
    out, study = tmp_path / "pytorch.csv", tmp_path / "study"
    proc = cli("torch_study.py", "--config", CONFIG, "--variants", "3,6", "--seeds", "2", "--out", str(out),
               "--threads", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_csv(out)
    assert [(r["variant"], r["seed"]) for r in rows] == [("3", "0"), ("3", "1"), ("6", "0"), ("6", "1")]
    accuracy = {(r["variant"], r["seed"]): float(r["test_accuracy"]) for r in rows}
    assert all(0.0 <= a <= 1.0 and a * 100 == pytest.approx(round(a * 100)) for a in accuracy.values())  # of 100
    # the jaxcnn study of the same config beside it; the finished PyTorch runs are not trained again
    assert cli("study.py", "--config", CONFIG, "--workdir", str(study), "--variants", "3", "--seeds", "2").returncode == 0
    proc = cli("torch_study.py", "--config", CONFIG, "--variants", "3,6", "--seeds", "2", "--out", str(out),
               "--compare", str(study))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test accuracy" not in proc.stderr  # nothing retrained
    assert read_csv(out) == rows
    table = proc.stdout.strip().splitlines()
    assert table[0].startswith("| variant | PyTorch: test acc (final) | seeds | jaxcnn (")
    three = table[2].split(" | ")
    assert three[0] == "| 3" and three[2] == "2" and three[4] == "2" and three[3].endswith("%")
    assert table[3].split(" | ")[4] == "0"  # variant 6 has no jaxcnn runs there


def test_bad_input_is_one_line(tmp_path):
    args = ("--config", CONFIG, "--seeds", "1", "--out", str(tmp_path / "o.csv"))
    assert "unknown variant '33'" in one_error_line(cli("torch_study.py", *args, "--variants", "33"))
    assert "is not a jaxcnn study workdir" in one_error_line(
        cli("torch_study.py", *args, "--variants", "3", "--compare", str(tmp_path)))
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    assert "is not a PyTorch study file" in one_error_line(
        cli("torch_study.py", "--config", CONFIG, "--variants", "3", "--out", str(tmp_path / "other.csv")))
    assert "without augmentation" in one_error_line(
        cli("torch_study.py", "--config", "configs/lenet.py", "--variants", "best", "--out",
            str(tmp_path / "b.csv")))
