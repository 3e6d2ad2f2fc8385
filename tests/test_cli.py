"""The scripts as a user runs them: every mistake ends in one `error:` line (no traceback), nothing
is written for a rejected command, and `--help` succeeds."""

from __future__ import annotations

import concurrent.futures
import json

import pytest

from tests.helpers import cli, one_error_line, train_cli

BAD_CONFIGS = {
    "syntax.py": "x = (\n",
    "no_get_config.py": "X = 1\n",
    "raises.py": "raise RuntimeError('broken on import')\n",
}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every independent command at once (each is mostly Python start-up): name -> CompletedProcess."""
    tmp = tmp_path_factory.mktemp("cli")
    for name, text in BAD_CONFIGS.items():
        (tmp / name).write_text(text)
    w = str(tmp / "never")
    commands = {
        "missing_config": ("train.py", "--config", str(tmp / "missing.py"), "--workdir", w),
        "syntax_error": ("train.py", "--config", f"{tmp / 'syntax.py'}:3", "--workdir", w),
        "no_get_config": ("train.py", "--config", str(tmp / "no_get_config.py"), "--workdir", w),
        "raises_on_import": ("study.py", "--config", str(tmp / "raises.py"), "--workdir", w),
        "extra_arguments": ("train.py", "--config", "configs/lenet.py:3", "--workdir", w, "extra", "args"),
        "help": ("train.py", "--help"),
        "predict_epoch_0": ("predict.py", "--workdir", w, "--epoch", "0", "x.png"),
        "predict_top_k": ("predict.py", "--workdir", w, "--top_k", "-1", "x.png"),
        "predict_out_dir": ("predict.py", "--workdir", w, "--out", str(tmp / "missing" / "x.png"), "x.png"),
        "export_epoch_0": ("export.py", "--workdir", w, "--epoch", "0"),
        "study_bad_value": ("study.py", "--config", "configs/lenet.py:model.activation=gelu", "--workdir", w,
                            "--variants", "3"),
    }
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {k: pool.submit(cli, *v) for k, v in commands.items()}
        results = {k: f.result() for k, f in futures.items()}
    assert not (tmp / "never").exists()  # no rejected command wrote anything
    return tmp, results


@pytest.mark.parametrize("name, expected", [
    ("missing_config", "missing.py does not exist"),
    ("syntax_error", "syntax.py, line 1: '(' was never closed"),
    ("no_get_config", "no_get_config.py defines no get_config(arg) function"),
    ("raises_on_import", "raises.py fails to load: RuntimeError: broken on import"),
    ("extra_arguments", "unexpected arguments: extra args"),
    ("predict_epoch_0", "--epoch=0"),
    ("predict_top_k", "--top_k=-1"),
    ("predict_out_dir", "missing/x.png: the folder"),
    ("export_epoch_0", "--epoch=0"),
    ("study_bad_value", "model.activation"),
])
def test_a_mistake_is_one_line(outcomes, name, expected):
    _, results = outcomes
    line = one_error_line(results[name])
    assert expected in line, line


def test_help_succeeds_and_lists_the_flags(outcomes):
    _, results = outcomes
    proc = results["help"]
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "--config" in proc.stdout and "--workdir" in proc.stdout


def test_a_rejected_config_leaves_the_workdir_free_for_the_corrected_command(tmp_path):
    """It used to write config.json before validating, and then refused the corrected command."""
    workdir = tmp_path / "run"
    assert "model.activation" in one_error_line(train_cli(workdir, "3,smoke,model.activation=gelu"))
    assert not workdir.exists()
    proc = train_cli(workdir, "3,smoke,epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((workdir / "config.json").read_text())["model"]["activation"] == "relu"
