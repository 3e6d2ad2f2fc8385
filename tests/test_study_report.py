"""The study report over synthetic run folders written by jaxcnn.report.run's own writers (no training)."""

import csv
import math
import os
import pathlib
import re

import numpy as np
import pytest
from PIL import Image

from jaxcnn.report import run as run_outputs
from jaxcnn.report.run import read_per_class, summarize, write_history, write_outputs
from jaxcnn.study.report import write_report
from jaxcnn.study.runs import RunRecord
from jaxcnn.study.stats import seeds_needed

CLASSES = ("cat", "dog", "bird")
N_TEST = 60
EPOCHS = 4

# Final test accuracies per variant and seed. "a" is clearly above the rest; "b" and "c" overlap;
# "d" has one seed (spread unknown). Multiples of 1/60, so predictions can match them exactly.
ACCURACIES = {
    "a": [0.95, 0.9666666666666667, 0.9833333333333333],
    "b": [0.8, 0.8333333333333334, 0.7666666666666667],
    "c": [0.8166666666666667, 0.85, 0.7833333333333333],
    "d": [0.6],
}
GROUP_SIZE = {"a": 3}  # the other variants' summaries have no group_size (read as 1)
DIVERGED_MESSAGE = "training diverged: loss is NaN at epoch 2"
FAILED_MESSAGE = "RESOURCE_EXHAUSTED: out of memory"


def make_run(workdir: pathlib.Path, accuracy: float, seed: int, group_size: int | None = None) -> dict:
    """A finished run folder as `train_and_evaluate` leaves it, from a synthetic history and predictions."""
    workdir.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    history = []
    for epoch in range(1, EPOCHS + 1):
        progress = epoch / EPOCHS
        test_acc = accuracy if epoch == EPOCHS else accuracy * progress + 0.02 * rng.random()
        history.append({"epoch": epoch, "train_loss": 1.5 - progress + 0.1 * rng.random(),
                        "train_accuracy": min(1.0, test_acc + 0.03 * rng.random()),
                        "test_loss": 1.6 - progress + 0.1 * rng.random(), "test_accuracy": test_acc,
                        "learning_rate": 1e-3, "epoch_time_s": 0.5 + rng.random(), "eval_time_s": 0.1})
    write_history(workdir, history)
    summary = summarize(history, num_params=1234, compile_time_s=2.0 + rng.random())
    summary.update(variant=workdir.name, dataset="synthetic", backend="cpu", loop="python")
    if group_size is not None:
        summary["group_size"] = group_size
    labels = np.arange(N_TEST) % len(CLASSES)
    predictions = labels.copy()
    wrong = rng.choice(N_TEST, round((1 - accuracy) * N_TEST), replace=False)
    predictions[wrong] = (labels[wrong] + 1 + rng.integers(0, 2, len(wrong))) % len(CLASSES)
    images = np.zeros((N_TEST, 4, 4, 1), np.uint8)
    write_outputs(workdir, workdir.name, history, summary, CLASSES, images, labels, predictions, grid_size=4)
    return summary


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    runs, summaries = [], {}
    with pytest.MonkeyPatch.context() as mp:  # the runs' own PNGs are not read by the study report: skip them
        for figure in ("learning_curves", "confusion_matrix", "prediction_grid"):
            mp.setattr(run_outputs.plots, figure, lambda *args, **kwargs: None)
        for variant, accuracies in ACCURACIES.items():
            for seed, accuracy in enumerate(accuracies):
                workdir = root / "runs" / f"{variant}_s{seed}"
                summaries[variant, seed] = make_run(workdir, accuracy, seed, GROUP_SIZE.get(variant))
                runs.append(RunRecord(variant, seed, workdir))
        # A diverged run whose folder holds an outlier summary: it must not enter any statistic.
        make_run(root / "runs" / "b_s3", 0.1, 3)
    runs.insert(3, RunRecord("b", 3, root / "runs" / "b_s3", status="diverged", message=DIVERGED_MESSAGE))
    # A failed run that never made its folder.
    runs.append(RunRecord("c", 9, root / "runs" / "c_s9", status="failed", message=FAILED_MESSAGE))
    out = root / "report"
    result = write_report(out, "Synthetic study", runs, question="Is variant a better than the others?")
    return {"root": root, "out": out, "runs": runs, "summaries": summaries, "result": result,
            "md": (out / "report.md").read_text()}


def table_row(md: str, variant: str, nth: int = 0) -> str:
    """The `nth` markdown table row of `variant` (0: accuracy table, 1: time table)."""
    return [line for line in md.splitlines() if line.startswith(f"| {variant} |")][nth]


def accuracies(variant):
    return np.array(ACCURACIES[variant])


def test_results_csv_has_one_row_per_run_with_the_summary_numbers(study):
    with open(study["out"] / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["variant"], int(r["seed"])) for r in rows] == [(r.variant, r.seed) for r in study["runs"]]
    numeric = ("final_test_accuracy", "best_test_accuracy", "best_epoch", "epochs", "final_train_accuracy",
               "overfitting_gap", "test_loss_rise", "mean_epoch_time_s", "total_train_time_s", "compile_time_s",
               "num_params")
    for row, run in zip(rows, study["runs"]):
        assert row["workdir"] == os.path.relpath(run.workdir, study["out"])
        assert row["status"] == run.status
        if run.status != "done":
            assert row["message"] == run.message
            assert all(row[k] == "" for k in (*numeric, "group_size", "backend"))
            continue
        summary = study["summaries"][run.variant, run.seed]
        for key in numeric:
            assert float(row[key]) == summary[key], key  # exact: no rounding on the way
        assert int(row["group_size"]) == GROUP_SIZE.get(run.variant, 1)
        assert row["backend"] == "cpu"


def test_report_tables_show_mean_and_sample_std_over_seeds(study):
    md, stats = study["md"], study["result"]["variants"]
    for variant in ACCURACIES:
        summaries = [study["summaries"][variant, s] for s in range(len(ACCURACIES[variant]))]
        acc = accuracies(variant)
        std = f"{100 * np.std(acc, ddof=1):.2f}" if len(acc) > 1 else "–"
        row = table_row(md, variant)
        assert f"| {100 * np.mean(acc):.2f} ± {std} |" in row
        best = np.mean([s["best_test_accuracy"] for s in summaries])
        train = np.mean([s["final_train_accuracy"] for s in summaries])
        assert f"| {100 * best:.2f} |" in row and f"| {100 * train:.2f} |" in row
        epoch_time = np.mean([s["mean_epoch_time_s"] for s in summaries])
        times = table_row(md, variant, 1)
        assert f"| {epoch_time:.3f} s |" in times and f"| {100 * epoch_time:.1f} s |" in times
        assert times.endswith(f"| 1,234 | {GROUP_SIZE.get(variant, 1)} |")
        assert stats[variant]["n"] == len(acc)
        assert stats[variant]["test_accuracy_mean"] == pytest.approx(np.mean(acc), abs=1e-15)
        if len(acc) > 1:
            assert stats[variant]["test_accuracy_std"] == pytest.approx(np.std(acc, ddof=1), abs=1e-15)
        else:
            assert stats[variant]["test_accuracy_std"] is None
    assert "sample standard deviation" in md and "ddof = 1" in md


def test_ranking_orders_variants_by_mean_final_test_accuracy(study):
    expected = sorted(ACCURACIES, key=lambda v: -np.mean(ACCURACIES[v]))
    assert expected == ["a", "c", "b", "d"]
    assert study["result"]["ranking"] == expected
    assert study["result"]["best"] == "a"
    listed = re.findall(r"^\d+\. \*\*(\w+)\*\*", study["md"], flags=re.M)
    assert listed == expected


def test_separated_variants_are_significant_and_overlapping_ones_are_not(study):
    from scipy import stats as scipy_stats

    comparisons = {(c["a"], c["b"]): c for c in study["result"]["comparisons"]}
    assert comparisons["a", "c"]["verdict"] == "significant"
    assert comparisons["c", "b"]["verdict"] == "not significant"
    assert comparisons["b", "d"]["verdict"] == "unknown"  # d has one seed
    for a, b in (("a", "c"), ("c", "b")):  # t, df and p as scipy's Welch test gives them on the report's numbers
        ref = scipy_stats.ttest_ind(accuracies(a), accuracies(b), equal_var=False)
        assert comparisons[a, b]["t"] == pytest.approx(ref.statistic, rel=1e-12)
        assert comparisons[a, b]["df"] == pytest.approx(ref.df, rel=1e-12)
        assert comparisons[a, b]["p"] == pytest.approx(ref.pvalue, rel=1e-12)
    diff = np.mean(accuracies("a")) - np.mean(accuracies("c"))
    se = math.sqrt(np.var(accuracies("a"), ddof=1) / 3 + np.var(accuracies("c"), ddof=1) / 3)
    assert comparisons["a", "c"]["t"] == pytest.approx(diff / se)
    assert comparisons["a", "c"]["p"] < 0.05 < comparisons["c", "b"]["p"]
    assert comparisons["c", "b"]["seeds_needed"] == seeds_needed(accuracies("c"), accuracies("b")) > 3
    assert study["result"]["distinguishable"] is True
    md = study["md"]
    assert re.search(r"^\| a vs c \| \+[\d.]+ \| [\d.]+ \| [\d.]+ \| [\d.<]+ \| significant \(p < 0.05\) \|$", md,
                     re.M)
    assert re.search(r"^\| c vs b \| .* \| not significant; ~\d+ seeds would tell \|$", md, re.M)
    assert re.search(r"^\| b vs d \| .* \| spread unknown", md, re.M)
    assert "**a** has the highest mean final test accuracy" in md and "so the two are distinguishable" in md

    # b and c alone: the best (c) is not distinguishable from the runner-up (b).
    overlapping = [r for r in study["runs"] if r.variant in ("b", "c") and r.status == "done"]
    out = study["root"] / "overlap"
    result = write_report(out, "Overlap", overlapping)
    assert result["ranking"] == ["c", "b"] and result["distinguishable"] is False
    assert "not distinguishable" in (out / "report.md").read_text()


def test_unfinished_runs_are_listed_with_their_messages_and_excluded(study):
    md, stats = study["md"], study["result"]["variants"]
    section = md.split("## Runs that did not finish")[1].split("\n## ")[0]
    assert f"| b | 3 | diverged | {EPOCHS} | {DIVERGED_MESSAGE} |" in section
    assert f"| c | 9 | failed | 0 | {FAILED_MESSAGE} |" in section
    assert stats["b"]["n"] == 3 and stats["b"]["excluded"] == [3]
    assert stats["c"]["n"] == 3 and stats["c"]["excluded"] == [9]
    assert stats["b"]["test_accuracy_mean"] == pytest.approx(np.mean(accuracies("b")))
    assert table_row(md, "b").startswith("| b | 3 of 4 |")


def test_per_class_table_is_the_mean_over_seeds(study):
    md = study["md"]
    section = md.split("### a (seeds 0, 1, 2)")[1].split("\n### ")[0]
    per_class = [read_per_class(study["root"] / "runs" / f"a_s{s}") for s in range(3)]
    for i, name in enumerate(CLASSES):
        p, r, f1 = (np.mean([pc[k][i] for pc in per_class]) for k in ("precision", "recall", "f1"))
        assert f"| {name} | {p:.4f} | {r:.4f} | {f1:.4f} | 20 |" in section


def test_figures_are_valid_pngs(study):
    for name in ("curves.png", "confusion_matrices.png"):
        assert f"]({name})" in study["md"]
        with Image.open(study["out"] / name) as image:
            image.verify()
            assert image.format == "PNG" and min(image.size) > 100
    assert "±1 sample standard deviation" in study["md"]


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="no runs"):
        write_report(tmp_path / "report", "Empty", [])
    empty = tmp_path / "runs" / "x_s0"
    empty.mkdir(parents=True)
    with pytest.raises(ValueError, match=re.escape(str(empty))):
        write_report(tmp_path / "report", "Missing", [RunRecord("x", 0, empty)])
    with pytest.raises(ValueError, match="status 'crashed'"):
        write_report(tmp_path / "report", "Bad status", [RunRecord("x", 0, empty, status="crashed")])


def test_a_study_with_no_finished_run_still_reports(tmp_path):
    """A run marked diverged needs no summary.json; with nothing finished there is no ranking."""
    result = write_report(tmp_path / "report", "All diverged",
                          [RunRecord("x", 0, tmp_path / "x_s0", status="diverged", message="NaN loss")])
    assert result["ranking"] == [] and result["best"] is None and result["distinguishable"] is False
    md = (tmp_path / "report" / "report.md").read_text()
    assert "NaN loss" in md and "No run finished" in md


def test_confidence_intervals_and_too_few_seeds(study):
    from scipy import stats as scipy_stats

    a = study["result"]["variants"]["a"]
    low, high = scipy_stats.t.interval(0.95, 2, loc=np.mean(accuracies("a")), scale=scipy_stats.sem(accuracies("a")))
    assert a["test_accuracy_mean"] - a["test_accuracy_ci95"] == pytest.approx(low, rel=1e-12)
    assert a["test_accuracy_mean"] + a["test_accuracy_ci95"] == pytest.approx(high, rel=1e-12)
    assert f"| [{100 * low:.2f}, {100 * high:.2f}] |" in study["md"]
    # two seeds each: even a gap of 15 points at |t| > 7 is not called significant
    two = [r for r in study["runs"] if r.variant in ("a", "c") and r.status == "done" and r.seed < 2]
    out = study["root"] / "two_seeds"
    result = write_report(out, "Two seeds", two)
    head = result["comparisons"][0]
    assert head["verdict"] == "more seeds" and abs(head["t"]) > 2 and result["distinguishable"] is False
    assert "cannot be judged with fewer than 3 seeds per variant" in (out / "report.md").read_text()
