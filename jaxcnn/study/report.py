"""A study's report from its run folders: results.csv, report.md, curves.png, confusion_matrices.png.

Each run is one (variant, seed) trained by `jaxcnn.train.loop.train_and_evaluate` into its own folder
(see `jaxcnn.report.run` for what that folder holds). Finished runs are aggregated per variant over
seeds (mean, sample standard deviation); variants are ranked by mean final test accuracy and each
gap is compared with the seed spread by Welch's t statistic. Diverged and failed runs are listed
with their messages and left out of every statistic.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn.report import plots  # sets the Agg backend before pyplot is imported
from jaxcnn.files import atomic_path, write_atomic
from jaxcnn.report.run import SUMMARY_JSON, read_confusion_matrix, read_history, read_per_class, read_summary

import matplotlib.pyplot as plt  # noqa: E402  (after plots: Agg)

STATUSES = ("done", "diverged", "failed")
SPREAD_T = 2.0  # |Welch t| above this: the difference "exceeds the seed spread"
PROJECTED_EPOCHS = 100

# Per-run numbers copied from summary.json, in results.csv order.
STAT_KEYS = ("final_test_accuracy", "best_test_accuracy", "best_epoch", "epochs", "final_train_accuracy",
             "overfitting_gap", "test_loss_rise", "mean_epoch_time_s", "total_train_time_s", "compile_time_s",
             "pretrain_time_s")
RESULT_COLUMNS = ("variant", "seed", "status", "final_test_accuracy", "best_test_accuracy", "best_epoch", "epochs",
                  "final_train_accuracy", "overfitting_gap", "test_loss_rise", "mean_epoch_time_s",
                  "total_train_time_s", "compile_time_s", "pretrain_time_s", "num_params", "group_size", "backend", "workdir", "message")
CURVE_PANELS = (("test_accuracy", "test accuracy"), ("test_loss", "test loss (cross-entropy)"),
                ("train_accuracy", "train accuracy"), ("train_loss", "train loss (cross-entropy)"))


@dataclasses.dataclass
class RunRecord:
    """One run of a study: which variant and seed, its folder, and how it ended."""
    variant: str
    seed: int
    workdir: pathlib.Path
    status: str = "done"  # "done" | "diverged" | "failed"
    message: str = ""  # error message for diverged/failed runs


@dataclasses.dataclass
class _Run:
    """A finished run's files."""
    record: RunRecord
    summary: dict[str, Any]
    history: list[dict[str, Any]]
    per_class: dict[str, list] | None
    confusion: np.ndarray | None


def write_report(study_dir, title: str, runs: list[RunRecord], question: str = "",
                 baselines: dict[str, str] | None = None) -> dict:
    """Write results.csv, report.md, curves.png and confusion_matrices.png into `study_dir`.

    Returns the per-variant aggregates: {"variants": {name: {"n", "seeds", "excluded",
    "test_accuracy_mean", "test_accuracy_std", "<summary key>_mean", "<summary key>_std", ...,
    "projected_100_epochs_s", "num_params", "group_size"}}, "ranking": [names, best first],
    "best": name, "runner_up": name, "distinguishable": bool, "comparisons": [...], "verdict": str}.
    Standard deviations are sample ones (ddof=1), None with fewer than 2 finished seeds.
    `baselines` (variant -> its baseline variant, e.g. `configs/ssl_init.py`'s BASELINES) adds
    "against_baseline": [{variant, baseline, difference, t, df, verdict, pretrain_time_s}] and its table.
    """
    if not runs:
        raise ValueError("write_report: no runs given")
    study_dir = pathlib.Path(study_dir)
    for r in runs:
        if r.status not in STATUSES:
            raise ValueError(f"run {r.variant!r} seed {r.seed} ({r.workdir}): status {r.status!r} "
                             f"is not one of {', '.join(STATUSES)}")
    finished = [_load(r) for r in runs if r.status == "done"]
    study_dir.mkdir(parents=True, exist_ok=True)

    variants = list(dict.fromkeys(str(r.variant) for r in runs))
    by_variant = {v: [f for f in finished if str(f.record.variant) == v] for v in variants}
    stats = {v: _variant_stats(by_variant[v], [r for r in runs if str(r.variant) == v]) for v in variants}
    ranking = sorted((v for v in variants if stats[v]["n"]), key=lambda v: -stats[v]["test_accuracy_mean"])
    comparisons = _comparisons(ranking, by_variant)
    best = ranking[0] if ranking else None
    runner_up = ranking[1] if len(ranking) > 1 else None
    head = next((c for c in comparisons if c["a"] == best and c["b"] == runner_up), None)
    result = {"variants": stats, "ranking": ranking, "best": best, "runner_up": runner_up,
              "distinguishable": bool(head and head["verdict"] == "exceeds"), "comparisons": comparisons,
              "verdict": _verdict(ranking, stats, head),
              "against_baseline": [{**_compare(v, b, by_variant), "pretrain_time_s": stats[v]["pretrain_time_s_mean"]}
                                   for v, b in (baselines or {}).items()
                                   if v in variants and b in variants and stats[v]["n"] and stats[b]["n"]]}

    _write_results_csv(study_dir / "results.csv", study_dir, runs, {id(f.record): f for f in finished})
    curves = _plot_curves(study_dir / "curves.png", title, variants, by_variant)
    matrices = _plot_confusion_matrices(study_dir / "confusion_matrices.png", title, variants, by_variant)
    write_atomic(study_dir / "report.md", _markdown(title, question, runs, variants, by_variant, result, curves,
                                                    matrices))
    return result


# ---------------------------------------------------------------- reading and aggregating


def _load(record: RunRecord) -> _Run:
    workdir = pathlib.Path(record.workdir)
    where = f"run {record.variant!r} seed {record.seed} ({workdir})"
    if not (workdir / SUMMARY_JSON).is_file():
        raise ValueError(f"{where} is marked done but {workdir} has no {SUMMARY_JSON}")
    try:
        summary = read_summary(workdir)
    except ValueError as e:
        raise ValueError(f"{where}: unreadable {SUMMARY_JSON}: {e}") from None
    per_class = read_per_class(workdir) if (workdir / "per_class.csv").is_file() else None
    confusion = read_confusion_matrix(workdir) if (workdir / "confusion_matrix.csv").is_file() else None
    return _Run(record, summary, read_history(workdir), per_class, confusion)


def _value(summary: dict[str, Any], key: str) -> Any:
    return summary.get("group_size", 1) if key == "group_size" else summary.get(key)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) >= 2 else None)


def _unique(values: Sequence[Any]) -> Any:
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else (distinct or None)


def _variant_stats(done: list[_Run], records: list[RunRecord]) -> dict[str, Any]:
    stats: dict[str, Any] = {"n": len(done), "seeds": [f.record.seed for f in done],
                             "excluded": [r.seed for r in records if r.status != "done"]}
    for key in STAT_KEYS:
        values = [f.summary[key] for f in done if f.summary.get(key) is not None]
        stats[f"{key}_mean"], stats[f"{key}_std"] = _mean_std(values)
    stats["test_accuracy_mean"] = stats["final_test_accuracy_mean"]
    stats["test_accuracy_std"] = stats["final_test_accuracy_std"]
    epoch_time = stats["mean_epoch_time_s_mean"]
    stats["projected_100_epochs_s"] = None if epoch_time is None else PROJECTED_EPOCHS * epoch_time
    stats["num_params"] = _unique([_value(f.summary, "num_params") for f in done])
    stats["group_size"] = _unique([_value(f.summary, "group_size") for f in done])
    return stats


def welch_t(a: Sequence[float], b: Sequence[float]) -> tuple[float, float] | None:
    """Welch's t statistic of mean(a) − mean(b) and its Welch–Satterthwaite degrees of freedom;
    None when either side has fewer than 2 values (no spread to compare with)."""
    if len(a) < 2 or len(b) < 2:
        return None
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    diff = float(np.mean(a) - np.mean(b))
    se2 = float(va + vb)
    if se2 == 0:
        return (0.0 if diff == 0 else math.copysign(math.inf, diff)), math.nan
    df = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return diff / math.sqrt(se2), float(df)


def _compare(a: str, b: str, by_variant: dict[str, list[_Run]]) -> dict[str, Any]:
    xa = [f.summary["final_test_accuracy"] for f in by_variant[a]]
    xb = [f.summary["final_test_accuracy"] for f in by_variant[b]]
    welch = welch_t(xa, xb)
    t, df = welch if welch else (None, None)
    verdict = "unknown" if t is None else ("exceeds" if abs(t) > SPREAD_T else "within")
    return {"a": a, "b": b, "difference": float(np.mean(xa) - np.mean(xb)), "t": t, "df": df, "verdict": verdict}


def _comparisons(ranking: list[str], by_variant: dict[str, list[_Run]]) -> list[dict[str, Any]]:
    """Each adjacent pair in the ranking ("adjacent"), then the best against each other one ("best")."""
    adjacent = [{**_compare(a, b, by_variant), "kind": "adjacent"} for a, b in zip(ranking, ranking[1:])]
    best = [{**_compare(ranking[0], b, by_variant), "kind": "best"} for b in ranking[1:]]
    return adjacent + best


# ---------------------------------------------------------------- results.csv


def _write_results_csv(path: pathlib.Path, study_dir: pathlib.Path, runs: list[RunRecord],
                       finished: dict[int, _Run]) -> None:
    """One row per run; numbers exactly as in summary.json (str of a float is its repr: no rounding)."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(RESULT_COLUMNS)
        for r in runs:
            run = finished.get(id(r))
            row = {"variant": r.variant, "seed": r.seed, "status": r.status, "message": r.message,
                   "workdir": os.path.relpath(pathlib.Path(r.workdir), study_dir)}
            if run is not None:
                row.update({k: _value(run.summary, k) for k in (*STAT_KEYS, "num_params", "group_size", "backend")})
            writer.writerow(["" if row.get(c) is None else row[c] for c in RESULT_COLUMNS])


# ---------------------------------------------------------------- figures


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _plot_curves(path: pathlib.Path, title: str, variants: list[str], by_variant: dict[str, list[_Run]]) -> bool:
    """Mean over seeds per epoch with a ±1 sample-std band, all variants overlaid; False if no history."""
    shown = [v for v in variants if any(f.history for f in by_variant[v])]
    if not shown:
        return False
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    for v, color in zip(shown, _colors(len(shown))):
        histories = [f.history for f in by_variant[v] if f.history]
        epochs = sorted({h["epoch"] for history in histories for h in history})
        for ax, (key, _) in zip(axes.flat, CURVE_PANELS):
            per_epoch = [[h[key] for history in histories for h in history if h["epoch"] == e] for e in epochs]
            mean = np.array([np.mean(x) for x in per_epoch])
            std = np.array([np.std(x, ddof=1) if len(x) >= 2 else np.nan for x in per_epoch])
            ax.plot(epochs, mean, marker=".", markersize=4, color=color, label=f"{v} (n={len(histories)})")
            ax.fill_between(epochs, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
    for ax, (key, label) in zip(axes.flat, CURVE_PANELS):
        ax.set(xlabel="epoch", ylabel=label.split(" (")[0], title=label)
        plots.style_epoch_axis(ax)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", title="variant (seeds)", fontsize=9)
    fig.suptitle(f"{title}: mean over seeds, band ±1 std")
    plots.save_figure(fig, path, rect=(0, 0, 0.86, 1))
    return True


def _summed_confusion(v: str, done: list[_Run]) -> tuple[np.ndarray, list[str]] | None:
    runs = [f for f in done if f.confusion is not None]
    if not runs:
        return None
    shape = runs[0].confusion.shape
    for f in runs:
        if f.confusion.shape != shape:
            raise ValueError(f"variant {v!r}: confusion matrix of {f.record.workdir} is {f.confusion.shape}, "
                             f"that of {runs[0].record.workdir} is {shape}")
    names = next((f.per_class["class"] for f in runs if f.per_class), None) or [str(i) for i in range(shape[0])]
    return sum(f.confusion for f in runs), names


def _plot_confusion_matrices(path: pathlib.Path, title: str, variants: list[str],
                             by_variant: dict[str, list[_Run]]) -> bool:
    """One panel per variant: counts summed over seeds, row-normalised; False if no matrix."""
    panels = [(v, m) for v in variants if (m := _summed_confusion(v, by_variant[v])) is not None]
    if not panels:
        return False
    k = max(len(names) for _, (_, names) in panels)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    size = max(3.5, 0.36 * k + 1.4)
    height = size * rows + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, height), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (v, (matrix, names)) in zip(axes.flat, panels):
        n = sum(f.confusion is not None for f in by_variant[v])
        plots.draw_confusion_matrix(ax, matrix, names, f"{v} ({n} seed{'s' * (n != 1)})", cell_text="percent",
                                    fontsize=7 if k <= 12 else 5)
    fig.suptitle(f"{title}: test confusion matrices, summed over seeds, % of each true class")
    plots.save_figure(fig, path, rect=(0, 0, 1, 1 - 0.5 / height))
    return True


# ---------------------------------------------------------------- report.md


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _pct(x: float | None, std: float | None = None, with_std: bool = False) -> str:
    if x is None:
        return "–"
    if not with_std:
        return f"{100 * x:.2f}"
    return f"{100 * x:.2f} ± " + ("–" if std is None else f"{100 * std:.2f}")


def _num(x: float | None, fmt: str, unit: str = "") -> str:
    return "–" if x is None else f"{x:{fmt}}{unit}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds:.0f} s ({seconds / 60:.1f} min)"
    return f"{seconds:.0f} s ({seconds / 3600:.1f} h)"


def _listing(value: Any, fmt: str = "") -> str:
    if value is None:
        return "–"
    values = value if isinstance(value, list) else [value]
    return " / ".join(f"{x:{fmt}}" for x in values)


def _t_text(t: float | None) -> str:
    if t is None:
        return "–"
    return ("−∞" if t < 0 else "∞") if math.isinf(t) else f"{t:.2f}"


VERDICT_TEXT = {"exceeds": "exceeds the seed spread", "within": "within the seed spread",
                "unknown": "spread unknown (fewer than 2 seeds)"}


def _verdict(ranking: list[str], stats: dict[str, dict], head: dict | None) -> str:
    if not ranking:
        return "No run finished, so there is no ranking."
    best = ranking[0]
    acc = f"{_pct(stats[best]['test_accuracy_mean'])} %"
    if head is None:
        return f"Only **{best}** has finished runs ({acc} mean final test accuracy), so there is nothing to compare."
    lead = f"its lead of {100 * head['difference']:.2f} points over the runner-up **{head['b']}**"
    if head["verdict"] == "exceeds":
        tail = (f"exceeds the seed spread (Welch |t| = {_t_text(abs(head['t']))} > {SPREAD_T:g}), "
                "so the two are distinguishable")
    elif head["verdict"] == "within":
        tail = (f"is within the seed spread (Welch |t| = {_t_text(abs(head['t']))} ≤ {SPREAD_T:g}), "
                "so the two are not distinguishable with these seeds")
    else:
        tail = ("cannot be weighed against the seed spread, which is unknown with fewer than 2 seeds, "
                "so the two are not shown to be distinguishable")
    return f"**{best}** has the highest mean final test accuracy ({acc}); {lead} {tail}."


def _markdown(title: str, question: str, runs: list[RunRecord], variants: list[str],
              by_variant: dict[str, list[_Run]], result: dict, curves: bool, matrices: bool) -> str:
    stats = result["variants"]
    finished = [f for v in variants for f in by_variant[v]]
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    datasets = _listing(_unique([f.summary.get("dataset") for f in finished]), "")
    backends = _listing(_unique([f.summary.get("backend") for f in finished]), "")
    lines = [f"# {title}", ""]
    if question:
        lines += ["## Question", "", question.strip(), ""]
    lines += [
        f"{len(runs)} runs of {len(variants)} variants: {counts['done']} finished, {counts['diverged']} diverged, "
        f"{counts['failed']} failed. Dataset: {datasets}; backend: {backends}. Per-run numbers: "
        "[results.csv](results.csv).", "",
        "Every number below is over a variant's finished seeds only: the mean, and after ± the sample "
        "standard deviation over seeds (ddof = 1; – where fewer than 2 seeds finished). Accuracies are "
        "in percent, at the final epoch unless marked best.", "",
        "## Results", "",
        "| variant | seeds | epochs | test accuracy % (final) | best test accuracy % | best epoch | "
        "train accuracy % (final) | overfitting: train − test (points) | overfitting: test-loss rise above "
        "its minimum |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = stats[v]
        seeds = f"{s['n']}" + (f" of {s['n'] + len(s['excluded'])}" if s["excluded"] else "")
        if not s["n"]:
            lines.append(f"| {_cell(v)} | {seeds} |" + " – |" * 7)
            continue
        lines.append(
            f"| {_cell(v)} | {seeds} | {_num(s['epochs_mean'], '.0f')} "
            f"| {_pct(s['test_accuracy_mean'], s['test_accuracy_std'], with_std=True)} "
            f"| {_pct(s['best_test_accuracy_mean'])} | {_num(s['best_epoch_mean'], '.1f')} "
            f"| {_pct(s['final_train_accuracy_mean'])} | {_num(_scaled(s['overfitting_gap_mean']), '+.2f')} "
            f"| {_num(s['test_loss_rise_mean'], '.4f')} |")
    lines += [
        "", "| variant | time per epoch | total training time | projected for 100 epochs | compile time "
        "| parameters | group size |",
        "|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        s = stats[v]
        if not s["n"]:
            lines.append(f"| {_cell(v)} |" + " – |" * 6)
            continue
        lines.append(
            f"| {_cell(v)} | {_num(s['mean_epoch_time_s_mean'], '.3f', ' s')} "
            f"| {_num(s['total_train_time_s_mean'], '.1f', ' s')} | {_duration(s['projected_100_epochs_s'])} "
            f"| {_num(s['compile_time_s_mean'], '.1f', ' s')} | {_listing(s['num_params'], ',')} "
            f"| {_listing(s['group_size'])} |")
    lines += [
        "", "Times are means over seeds: training time per epoch (without evaluation), its sum over the "
        f"epochs, and {PROJECTED_EPOCHS} × the time per epoch (compile time not included). A group size "
        "above 1 means the run was trained together with others in one vmapped program; its time per "
        "epoch is then the group's wall time divided by the group size.", "",
    ]
    lines += _failed_section(runs)
    lines += _baseline_section(result["against_baseline"])
    lines += _ranking_section(result, stats)
    lines += ["## Learning curves", ""]
    if curves:
        lines += ["![learning curves](curves.png)", "",
                  "*Test accuracy, test loss, train accuracy and train loss per epoch, one colour per variant: "
                  "the line is the mean over seeds, the shaded band ±1 sample standard deviation over seeds "
                  "(no band where fewer than 2 seeds reached that epoch). Train numbers are running means "
                  "over each epoch; test numbers are of the model at the epoch's end.*", ""]
    else:
        lines += ["No finished run has a metrics.jsonl.", ""]
    lines += ["## Confusion matrices", ""]
    if matrices:
        lines += ["![confusion matrices](confusion_matrices.png)", "",
                  "*Test set, final model; one panel per variant with the counts summed over its seeds, "
                  "each row normalised: cells are the percent of a true class (row) predicted as each "
                  "class (column).*", ""]
    else:
        lines += ["No finished run has a confusion_matrix.csv.", ""]
    lines += _per_class_section(variants, by_variant)
    return "\n".join(lines)


def _scaled(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _failed_section(runs: list[RunRecord]) -> list[str]:
    bad = [r for r in runs if r.status != "done"]
    if not bad:
        return []
    lines = ["## Runs that did not finish", "",
             "These runs are left out of every statistic in this report.", "",
             "| variant | seed | status | epochs completed | message |", "|---|---|---|---|---|"]
    for r in bad:
        history = read_history(pathlib.Path(r.workdir)) if pathlib.Path(r.workdir).is_dir() else []
        lines.append(f"| {_cell(r.variant)} | {r.seed} | {r.status} | {len(history)} | {_cell(r.message) or '–'} |")
    return lines + [""]


def _baseline_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    lines = ["## Against the baseline", "",
             "Each variant's mean final test accuracy minus its baseline's (points), Welch's t over seeds "
             f"(|t| > {SPREAD_T:g}: the gain exceeds the seed spread), and the time its initialisation took "
             "(pretraining, mean over seeds; 0 for none).", "",
             "| variant | baseline | gain (points) | Welch t | verdict | pretraining time |", "|---|---|---|---|---|---|"]
    for c in rows:
        lines.append(f"| {_cell(c['a'])} | {_cell(c['b'])} | {100 * c['difference']:+.2f} | {_t_text(c['t'])} "
                     f"| {VERDICT_TEXT[c['verdict']]} | {_num(c['pretrain_time_s'], '.1f', ' s')} |")
    return lines + [""]


def _ranking_section(result: dict, stats: dict[str, dict]) -> list[str]:
    ranking = result["ranking"]
    lines = ["## Ranking", ""]
    if not ranking:
        return lines + [result["verdict"], ""]
    lines += ["Variants by mean final test accuracy:", ""]
    for i, v in enumerate(ranking, 1):
        s = stats[v]
        lines.append(f"{i}. **{_cell(v)}**: {_pct(s['test_accuracy_mean'], s['test_accuracy_std'], True)} % "
                     f"({s['n']} seed{'s' * (s['n'] != 1)})")
    lines.append("")
    if len(ranking) > 1:
        lines += [
            "A difference *exceeds the seed spread* when Welch's t = (mean₁ − mean₂) / √(s₁²/n₁ + s₂²/n₂), "
            f"with s the sample standard deviation of the final test accuracy over seeds, has |t| > {SPREAD_T:g}. "
            "That is a rough rule: with few seeds (small df, the Welch–Satterthwaite degrees of freedom) "
            "a |t| just above 2 is weak evidence (the two-sided 5 % critical value is 4.30 at df = 2 and "
            "2.78 at df = 4). With fewer than 2 seeds on either side the spread is unknown.", ""]
        for kind, heading in (("adjacent", "Adjacent pairs in the ranking"), ("best", "The best against each other")):
            lines += [f"{heading}:", "", "| comparison | difference (points) | Welch t | df | verdict |",
                      "|---|---|---|---|---|"]
            for c in result["comparisons"]:
                if c["kind"] == kind:
                    df = "–" if c["df"] is None or math.isnan(c["df"]) else f"{c['df']:.1f}"
                    lines.append(f"| {_cell(c['a'])} vs {_cell(c['b'])} | {100 * c['difference']:+.2f} "
                                 f"| {_t_text(c['t'])} | {df} | {VERDICT_TEXT[c['verdict']]} |")
            lines.append("")
    return lines + [f"**Verdict.** {result['verdict']}", ""]


def _per_class_section(variants: list[str], by_variant: dict[str, list[_Run]]) -> list[str]:
    lines = ["## Per class", "", "Test set, final model; precision, recall and F1 are means over the "
             "variant's finished seeds (from each run's per_class.csv), support is per run.", ""]
    for v in variants:
        runs = [f for f in by_variant[v] if f.per_class]
        if not runs:
            continue
        names = runs[0].per_class["class"]
        for f in runs:
            if f.per_class["class"] != names:
                raise ValueError(f"variant {v!r}: classes of {f.record.workdir} differ from those of "
                                 f"{runs[0].record.workdir}")
        mean = {k: np.mean([f.per_class[k] for f in runs], axis=0) for k in ("precision", "recall", "f1", "support")}
        seeds = ", ".join(str(f.record.seed) for f in runs)
        lines += [f"### {v} (seed{'s' * (len(runs) != 1)} {seeds})", "",
                  "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for i, name in enumerate(names):
            lines.append(f"| {_cell(name)} | {mean['precision'][i]:.4f} | {mean['recall'][i]:.4f} "
                         f"| {mean['f1'][i]:.4f} | {mean['support'][i]:g} |")
        lines.append("")
    return lines
