"""The study runner: every variant and seed run (grouped), one report, skips and resumes, bad input."""

import csv
import json
import pathlib
import subprocess
import sys
import textwrap

import pytest

from jaxcnn.config import ConfigError
from jaxcnn.study import runner

REPO = pathlib.Path(__file__).resolve().parents[1]
LENET = str(REPO / "configs" / "lenet.py")
SMALL = "data.max_train=400,data.max_test=200,epochs=2"


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_report_matches_run_folders(study_dir, variants, seeds):
    rows = read_csv(study_dir / "results.csv")
    assert [(r["variant"], int(r["seed"])) for r in rows] == [(v, s) for v in variants for s in range(seeds)]
    report = (study_dir / "report.md").read_text()
    for row in rows:
        assert row["status"] == "done", row
        summary = json.loads((study_dir / row["variant"] / f"seed_{row['seed']}" / "summary.json").read_text())
        for key in ("final_test_accuracy", "best_test_accuracy", "mean_epoch_time_s", "num_params"):
            assert float(row[key]) == pytest.approx(summary[key], rel=1e-12), key
        assert summary["seed"] == int(row["seed"]) and summary["variant"] == row["variant"]
        assert f"| {row['variant']} |" in report
    for png in ("curves.png", "confusion_matrices.png"):
        assert (study_dir / png).stat().st_size > 1000
    return rows


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


def test_an_interrupted_study_resumes_its_unfinished_runs(tmp_path, monkeypatch):
    calls = []
    real = runner.train_group

    def interrupt_second_group(configs, workdirs, *args):
        calls.append(list(workdirs))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(configs, workdirs, *args)

    monkeypatch.setattr(runner, "train_group", interrupt_second_group)
    with pytest.raises(KeyboardInterrupt):
        runner.run_study(LENET, tmp_path, seeds=1, variants=["3", "maxpool"], overrides=SMALL, progress=False,
                         log=lambda *_: None)
    monkeypatch.undo()
    assert (tmp_path / "3" / "seed_0" / "summary.json").exists()
    assert not (tmp_path / "maxpool" / "seed_0" / "summary.json").exists()
    result = runner.run_study(LENET, tmp_path, seeds=1, variants=["3", "maxpool"], overrides=SMALL,
                              progress=False, log=lambda *_: None)
    assert result["trained"] == 1
    rows = check_report_matches_run_folders(tmp_path, ["3", "maxpool"], 1)
    assert [r["group_size"] for r in rows] == ["1", "1"]  # group="auto" on the CPU: one at a time


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


MOCK_CIFAR = textwrap.dedent(r'''
    import sys
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds
    from jaxcnn.study.runner import run_study

    metadata, config, workdir = sys.argv[1:4]
    rng = np.random.default_rng(0)
    served = {}
    for split, n in (("train", 200), ("test", 60)):
        labels = rng.choice([0, 55, 58, 7], n)  # 7: a class outside the subset, dropped
        # class-dependent colour plus noise: learnable in a few steps
        palette = {0: (200, 40, 40), 55: (40, 200, 40), 58: (40, 40, 200), 7: (128, 128, 128)}
        colour = np.array([palette[c] for c in labels], np.float64)
        images = np.clip(colour[:, None, None, :] + rng.normal(0, 40, (n, 32, 32, 3)), 0, 255).astype(np.uint8)
        served[split] = images, labels

    def as_dataset_fn(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
        images, labels = served[str(split)]
        return tf.data.Dataset.from_tensor_slices({
            "image": images, "label": labels.astype(np.int64), "coarse_label": (labels // 5).astype(np.int64),
            "id": np.array([f"id{i}".encode() for i in range(len(labels))])})

    with tfds.testing.mock_data(policy=tfds.testing.MockPolicy.USE_FILES, data_dir=metadata,
                                as_dataset_fn=as_dataset_fn):
        run_study(config, workdir, seeds=2, overrides="epochs=1,batch_size=20,model.hidden=8", progress=False)
''')


def test_pooling_study_on_mock_cifar100(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(MOCK_CIFAR)
    proc = subprocess.run([sys.executable, str(script), str(REPO / "tests" / "data" / "tfds_metadata"),
                           str(REPO / "configs" / "pooling.py"), str(tmp_path / "study")],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    rows = check_report_matches_run_folders(tmp_path / "study", ["stride", "max", "avg"], 2)
    assert {int(r["num_params"]) for r in rows} == {4851}  # h = 8 (h = 32: 33,219, see test_pooling)
    assert all(float(r["final_test_accuracy"]) > 0.6 for r in rows), [r["final_test_accuracy"] for r in rows]
    report = (tmp_path / "study" / "report.md").read_text()
    assert "cifar100" in report
    for name in ("apple", "otter", "pickup_truck"):  # class names of the subset, kept in the per-class tables
        assert name in report
