"""What several test modules share: the repository's config files, its scripts run as a user runs
them (a subprocess), and the check that a study's report matches its run folders."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import subprocess
import sys
from types import ModuleType

import numpy as np
import pytest

from jaxcnn.config import load_config_module

ROOT = pathlib.Path(__file__).resolve().parent.parent
# The runs started here compute on the backend the test process uses (their results are compared with in-process runs).
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
SMALL = ("3,data.max_train=500,data.max_test=200,epochs=3,optim.schedule=cosine,"
         "report.layer_profile=False")  # a 3-epoch LeNet run (the profile: tests/test_train.py)


def config_module(name: str) -> ModuleType:
    """configs/NAME.py as a module (its `get_config`, `VARIANTS`, ...)."""
    return load_config_module(ROOT / "configs" / f"{name}.py")


lenet = config_module("lenet")


def cli(script: str, *args: str, fault: str | None = None, timeout: int = 300,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Runs scripts/SCRIPT as a user would, optionally with a fault point (`jaxcnn.faults`) and further
    environment variables `env`."""
    env = dict(ENV, **(env or {}), **({"JAXCNN_FAULT": fault} if fault else {}))
    return subprocess.run([sys.executable, str(ROOT / "scripts" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def train_cli(workdir: pathlib.Path, arg: str = SMALL, **kw) -> subprocess.CompletedProcess:
    return cli("train.py", "--config", f"configs/lenet.py:{arg}", "--workdir", str(workdir), **kw)


_SOURCES = {}


def torch_source(spec: str):
    """`load_source(spec, pretrained=False)` (random weights, no download) with random BatchNorm running
    statistics and affine parameters (fresh ones are 0/1, which would hide them), once per process."""
    if spec not in _SOURCES:
        import torch

        from jaxcnn.convert.sources import load_source

        torch.manual_seed(0)
        src = load_source(spec, pretrained=False)
        with torch.no_grad():
            for m in src.torch_model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.5, 0.5)
                    m.running_var.uniform_(0.5, 2.0)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.5, 0.5)
        src.state_dict = {k: v.detach().numpy() for k, v in src.torch_model.state_dict().items()}
        _SOURCES[spec] = src
    return _SOURCES[spec]


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a failed command, which must print no traceback."""
    assert proc.returncode != 0, proc.stdout[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    errors = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-4000:]
    return errors[0]


def read_csv(path: pathlib.Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def check_report_matches_run_folders(study_dir: pathlib.Path, variants, seeds: int) -> list[dict[str, str]]:
    """results.csv lists every variant × seed, done, with the numbers of its summary.json; report.md
    names each; the figures exist. Returns the rows."""
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
    _check_variant_settings(study_dir, report, variants)
    _check_per_class_and_layers(study_dir, report, variants, seeds)
    return rows


def _check_per_class_and_layers(study_dir: pathlib.Path, report: str, variants, seeds: int) -> None:
    """report.md's per-class tables hold the means over seeds of the runs' per_class.csv and
    per_class_train.csv (F1 and the gap), and its time-per-layer table the means of their summaries' profiles."""
    from jaxcnn.profile import Profile
    from jaxcnn.report.run import PER_CLASS_TRAIN_CSV, read_per_class

    runs = {v: [study_dir / v / f"seed_{s}" for s in range(seeds)] for v in variants}
    for v, folders in runs.items():
        section = report.split(f"\n### {v} (seed")[1].split("\n### ")[0].split("\n## ")[0]
        test = [read_per_class(f) for f in folders]
        train = [read_per_class(f, PER_CLASS_TRAIN_CSV) for f in folders]
        for i, name in enumerate(test[0]["class"]):
            f1, train_f1 = (np.mean([pc["f1"][i] for pc in x]) for x in (test, train))
            line = next(line for line in section.splitlines() if line.startswith(f"| {name} | "))
            cells = line.strip("| ").split(" | ")
            assert float(cells[3]) == pytest.approx(f1, abs=1e-4)
            assert float(cells[7]) == pytest.approx(train_f1, abs=1e-4)
            assert cells[-1] == f"{train_f1 - f1:+.4f}"
    # the individual test images of the configs' report.test_index: each seed's prediction, from test_predictions.csv
    indices = json.loads((study_dir / variants[0] / "seed_0" / "config.json").read_text())["report"]["test_index"]
    if indices:
        section = report.split("## Individual test images\n", 1)[1].split("\n## ", 1)[0]
        for v, folders in runs.items():
            cells = next(line for line in section.splitlines() if line.startswith(f"| {v} | ")).strip("| ").split(" | ")
            for i, cell in zip(indices, cells[1:]):
                got = [next(r for r in read_csv(f / "test_predictions.csv") if r["index"] == str(i)) for f in folders]
                right = sum(r["true"] == r["predicted"] for r in got)
                assert cell == f"{right} of {seeds} right: " + ", ".join(
                    f"{r['predicted']} ({float(r['probability']):.2f})" for r in got), (v, i)
    else:
        assert "## Individual test images" not in report
    summaries = {v: [json.loads((f / "summary.json").read_text()) for f in folders] for v, folders in runs.items()}
    if not any("layer_profile" in x for ss in summaries.values() for x in ss):
        assert "## Time per layer" not in report
        return
    section = report.split("## Time per layer\n", 1)[1].split("\n## ", 1)[0]
    for v, ss in summaries.items():
        profiles = [Profile.from_json(x["layer_profile"]) for x in ss]
        line = next(line for line in section.splitlines() if line.startswith(f"| {v} | "))
        cells = line.strip("| ").split(" | ")
        assert cells[1] == f"{profiles[0].model.params:,}"
        assert cells[3] == f"{np.mean([1e3 * p.model.time_train_s for p in profiles]):.3f}"
        assert cells[4] == f"{100 * np.mean([p.by_kind()['conv'] for p in profiles]):.0f} %"


def _check_variant_settings(study_dir: pathlib.Path, report: str, variants) -> None:
    """report.md's "## Variants" table holds, per variant, the values of its seed_0/config.json, and only
    keys whose values differ between variants."""
    from jaxcnn.config import flatten_config, stored_config

    section = report.split("## Variants\n", 1)[1].split("\n## ", 1)[0]
    configs = {v: flatten_config(stored_config(json.loads((study_dir / v / "seed_0" / "config.json").read_text())))
               for v in variants}
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    if len(variants) == 1:
        assert not lines and "Shared by all: model.name = " in section
        return
    keys = lines[0].strip("| ").split(" | ")[1:]
    assert keys, section
    for key in keys:
        assert len({json.dumps(c[key]) for c in configs.values()}) > 1, key
    for line, v in zip(lines[1:], variants):
        cells = line.strip("| ").split(" | ")
        assert cells[0] == v
        for key, text in zip(keys, cells[1:]):
            value = configs[v][key]
            assert text == (json.dumps(value) if isinstance(value, (list, dict)) else str(value)), (v, key)
