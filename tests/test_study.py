"""The study runner: every variant and seed run (grouped), one report, skips and resumes, bad input."""

import json
import pathlib
import subprocess
import sys

import pytest

from jaxcnn.errors import ConfigError
from jaxcnn.study import runner
from tests.helpers import check_report_matches_run_folders, cli

REPO = pathlib.Path(__file__).resolve().parents[1]
LENET = str(REPO / "configs" / "lenet.py")
SMALL = "data.max_train=400,data.max_test=200,epochs=2"


@pytest.fixture(scope="module")
def lenet_study(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("lenet_study")
    result = runner.run_study(LENET, workdir, seeds=2, variants=["3", "2", "maxpool"], overrides=SMALL,
                              group="yes", progress=False, log=lambda *_: None)
    return workdir, result


def test_runner_trains_every_variant_and_seed_and_reports_them(lenet_study):
    workdir, result = lenet_study
    assert result["trained"] == 6
    rows = check_report_matches_run_folders(workdir, ["3", "2", "maxpool"], 2)
    # 3 and 2 (Adam/ReLU at two learning rates) trained as one group of four; maxpool apart
    groups = {r["variant"]: int(r["group_size"]) for r in rows}
    assert groups == {"3": 4, "2": 4, "maxpool": 2}
    # seeds differ: the two seeds of a variant are different models
    acc = {(r["variant"], r["seed"]): r["final_test_accuracy"] for r in rows}
    assert acc[("3", "0")] != acc[("3", "1")]
    assert result["ranking"][0] in ("3", "2", "maxpool") and len(result["ranking"]) == 3


def test_rerun_skips_finished_runs_and_adds_new_seeds(lenet_study, monkeypatch):
    workdir, _ = lenet_study
    before = (workdir / "3" / "seed_0" / "metrics.jsonl").read_text()
    trained = []
    real = runner.train_group
    monkeypatch.setattr(runner, "train_group", lambda configs, workdirs, *a: trained.extend(workdirs) or real(
        configs, workdirs, *a))
    again = runner.run_study(LENET, workdir, seeds=2, variants=["3", "2", "maxpool"], overrides=SMALL,
                             progress=False, log=lambda *_: None)
    assert again["trained"] == 0 and not trained
    assert (workdir / "3" / "seed_0" / "metrics.jsonl").read_text() == before


def test_a_killed_study_resumes_its_unfinished_runs(tmp_path):
    """SIGKILL while the first run writes its figures (after its last epoch): the rerun finishes
    that run from its checkpoint and trains the other; every run ends done, every epoch once."""
    args = ("study.py", "--config", f"configs/lenet.py:{SMALL}", "--workdir", str(tmp_path), "--variants",
            "3,maxpool", "--jobs", "1")  # the fault kills the study process itself (tests/test_jobs.py: workers)
    killed = cli(*args, fault="figures:2:SIGKILL")
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (tmp_path / "3" / "seed_0" / "summary.json").exists()
    assert not (tmp_path / "maxpool" / "seed_0").exists()
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 runs: 0 finished, 2 to train" in proc.stdout
    rows = check_report_matches_run_folders(tmp_path, ["3", "maxpool"], 1)
    assert [r["group_size"] for r in rows] == ["1", "1"]  # group="auto" on the CPU: one at a time
    for variant in ("3", "maxpool"):
        metrics = (tmp_path / variant / "seed_0" / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in metrics] == [1, 2]


def test_bad_input_is_refused_and_nothing_is_overwritten(lenet_study, tmp_path):
    workdir, _ = lenet_study
    no_variants = tmp_path / "plain.py"
    no_variants.write_text("from jaxcnn.config import default_config\n\ndef get_config(arg=None):\n"
                           "    return default_config()\n")
    with pytest.raises(ConfigError, match="plain.py declares no variants"):
        runner.run_study(str(no_variants), tmp_path / "a", seeds=1)
    with pytest.raises(ConfigError, match=r"unknown variant\(s\) 11 .*valid variants: 0, 1, 2"):
        runner.run_study(LENET, tmp_path / "b", seeds=1, variants=["3", "11"])
    with pytest.raises(ConfigError, match="seeds=0: a study needs at least 1 seed"):
        runner.run_study(LENET, tmp_path / "c", seeds=0)
    with pytest.raises(ConfigError, match="group='maybe' is not valid; valid values: auto, yes, no"):
        runner.run_study(LENET, tmp_path / "d", seeds=1, group="maybe")
    assert not any((tmp_path / d).exists() for d in "abcd")  # nothing written on bad input

    before = {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()}
    pooling = str(REPO / "configs" / "pooling.py")
    with pytest.raises(ConfigError, match="holds the study 'lenet.py'"):
        runner.run_study(pooling, workdir, seeds=1, overrides="data=embedded,classes=[0,1,2]")
    with pytest.raises(ConfigError, match="holds the study 'lenet.py' with overrides"):
        runner.run_study(LENET, workdir, seeds=1, overrides="epochs=3")
    assert {p: p.read_bytes() for p in workdir.rglob("*") if p.is_file()} == before


def test_the_script_gives_one_line_errors(tmp_path):
    proc = subprocess.run([sys.executable, "scripts/study.py", "--config", "configs/lenet.py", "--workdir",
                           str(tmp_path), "--seeds", "0"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "error: seeds=0: a study needs at least 1 seed"
