"""A study's statistics over seeds: per-variant means, sample standard deviations and 95 % confidence
intervals, the ranking by mean final test accuracy, Welch's t-test of each gap (scipy), and the verdict.

A difference is *significant* at p < 0.05 (two-sided Welch's t-test). With fewer than 3 seeds on a side
the test has too few degrees of freedom to mean much: the comparison says it needs more seeds. A gap
that is not significant comes with the seeds per variant that would tell a difference of its size
(two-sample, 5 % level, 80 % power, normal approximation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from jaxcnn.report.markdown import p_value, percent, statistic
from jaxcnn.study.runs import FinishedRun, RunRecord

ALPHA = 0.05  # two-sided significance level
MIN_SEEDS = 3  # fewer seeds on a side: the comparison needs more seeds
POWER = 0.8  # for the seeds a non-significant difference would need
PROJECTED_EPOCHS = 100

# Per-run numbers copied from summary.json, in results.csv order.
STAT_KEYS = ("final_test_accuracy", "best_test_accuracy", "best_epoch", "epochs", "final_train_accuracy",
             "overfitting_gap", "test_loss_rise", "mean_epoch_time_s", "total_train_time_s", "compile_time_s",
             "pretrain_time_s")


def aggregate(runs: list[RunRecord], by_variant: dict[str, list[FinishedRun]],
              baselines: dict[str, str] | None = None) -> dict[str, Any]:
    """The per-variant aggregates, ranking, comparisons and verdict (see `jaxcnn.study.report.write_report`)
    of the variants of `by_variant` (its finished runs), in its order."""
    variants = list(by_variant)
    stats = {v: _variant_stats(by_variant[v], [r for r in runs if str(r.variant) == v]) for v in variants}
    ranking = sorted((v for v in variants if stats[v]["n"]), key=lambda v: -stats[v]["test_accuracy_mean"])
    comparisons = _comparisons(ranking, by_variant)
    best = ranking[0] if ranking else None
    runner_up = ranking[1] if len(ranking) > 1 else None
    head = next((c for c in comparisons if c["a"] == best and c["b"] == runner_up), None)
    return {"variants": stats, "ranking": ranking, "best": best, "runner_up": runner_up,
            "distinguishable": bool(head and head["verdict"] == "significant"), "comparisons": comparisons,
            "verdict": _verdict(ranking, stats, head),
            "against_baseline": [{**_compare(v, b, by_variant), "pretrain_time_s": stats[v]["pretrain_time_s_mean"]}
                                 for v, b in (baselines or {}).items()
                                 if v in variants and b in variants and stats[v]["n"] and stats[b]["n"]]}


def unique(values: Sequence[Any]) -> Any:
    """The one value other than None, a list of the distinct ones if several, None if none."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else (distinct or None)


def welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """Welch's t-test of mean(a) − mean(b) (`scipy.stats.ttest_ind(equal_var=False)`): (t, df, two-sided
    p); None when either side has fewer than 2 values (no spread to compare with). Two sides without
    any spread: t = ±inf and p = 0 when the means differ, t = 0 and p = 1 when they do not."""
    if len(a) < 2 or len(b) < 2:
        return None
    if np.var(a) == 0 and np.var(b) == 0:
        diff = float(np.mean(a) - np.mean(b))
        return (math.copysign(math.inf, diff), math.nan, 0.0) if diff else (0.0, math.nan, 1.0)
    result = scipy_stats.ttest_ind(a, b, equal_var=False)
    return float(result.statistic), float(result.df), float(result.pvalue)


def seeds_needed(a: Sequence[float], b: Sequence[float]) -> int | None:
    """Seeds per variant at which a difference of the observed size would be significant with
    probability `POWER` (n = 2 (z₁₋α/₂ + z_power)² s² / d², s² the mean of the two variances);
    None when the observed difference is 0 or has no spread."""
    diff = float(np.mean(a) - np.mean(b))
    variance = (np.var(a, ddof=1) + np.var(b, ddof=1)) / 2
    if diff == 0 or not variance > 0:
        return None
    z = scipy_stats.norm.ppf(1 - ALPHA / 2) + scipy_stats.norm.ppf(POWER)
    return max(MIN_SEEDS, math.ceil(2 * z ** 2 * variance / diff ** 2))


def _mean_std_ci(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """Mean, sample standard deviation and the half-width of the mean's 95 % confidence interval
    (t distribution, n − 1 degrees of freedom); None where fewer than 2 values give no spread."""
    if not values:
        return None, None, None
    mean = float(np.mean(values))
    if len(values) < 2:
        return mean, None, None
    std = float(np.std(values, ddof=1))
    return mean, std, float(scipy_stats.t.ppf(1 - ALPHA / 2, len(values) - 1) * std / math.sqrt(len(values)))


def _variant_stats(done: list[FinishedRun], records: list[RunRecord]) -> dict[str, Any]:
    stats: dict[str, Any] = {"n": len(done), "seeds": [f.record.seed for f in done],
                             "excluded": [r.seed for r in records if r.status != "done"]}
    for key in STAT_KEYS:
        values = [f.summary[key] for f in done if f.summary.get(key) is not None]
        stats[f"{key}_mean"], stats[f"{key}_std"], stats[f"{key}_ci95"] = _mean_std_ci(values)
    stats["test_accuracy_mean"] = stats["final_test_accuracy_mean"]
    stats["test_accuracy_std"] = stats["final_test_accuracy_std"]
    stats["test_accuracy_ci95"] = stats["final_test_accuracy_ci95"]
    epoch_time = stats["mean_epoch_time_s_mean"]
    stats["projected_100_epochs_s"] = None if epoch_time is None else PROJECTED_EPOCHS * epoch_time
    stats["num_params"] = unique([f.value("num_params") for f in done])
    stats["group_size"] = unique([f.value("group_size") for f in done])
    return stats


def _compare(a: str, b: str, by_variant: dict[str, list[FinishedRun]]) -> dict[str, Any]:
    xa = [f.summary["final_test_accuracy"] for f in by_variant[a]]
    xb = [f.summary["final_test_accuracy"] for f in by_variant[b]]
    test = welch(xa, xb)
    t, df, p = test if test else (None, None, None)
    if test is None:
        verdict = "unknown"
    elif min(len(xa), len(xb)) < MIN_SEEDS:
        verdict = "more seeds"
    else:
        verdict = "significant" if p < ALPHA else "not significant"
    return {"a": a, "b": b, "difference": float(np.mean(xa) - np.mean(xb)), "t": t, "df": df, "p": p,
            "verdict": verdict, "seeds_needed": seeds_needed(xa, xb) if verdict == "not significant" else None}


def _comparisons(ranking: list[str], by_variant: dict[str, list[FinishedRun]]) -> list[dict[str, Any]]:
    """Each adjacent pair in the ranking ("adjacent"), then the best against each other one ("best")."""
    adjacent = [{**_compare(a, b, by_variant), "kind": "adjacent"} for a, b in zip(ranking, ranking[1:])]
    best = [{**_compare(ranking[0], b, by_variant), "kind": "best"} for b in ranking[1:]]
    return adjacent + best


def _verdict(ranking: list[str], stats: dict[str, dict], head: dict | None) -> str:
    """One sentence: the best variant and whether its lead over the runner-up is significant."""
    if not ranking:
        return "No run finished, so there is no ranking."
    best = ranking[0]
    acc = f"{percent(stats[best]['test_accuracy_mean'])} %"
    if head is None:
        return f"Only **{best}** has finished runs ({acc} mean final test accuracy), so there is nothing to compare."
    lead = f"its lead of {100 * head['difference']:.2f} points over the runner-up **{head['b']}**"
    p = p_value(head["p"])
    test = (f"Welch's t = {statistic(head['t'])}, df = {statistic(head['df'])}, p {p if p.startswith('<') else '= ' + p}"
            if head["t"] is not None else "")
    if head["verdict"] == "significant":
        tail = f"is significant ({test}; significant below {ALPHA:g}), so the two are distinguishable"
    elif head["verdict"] == "not significant":
        need = head["seeds_needed"]
        tail = (f"is not significant ({test} ≥ {ALPHA:g}), so the two are not distinguishable with these seeds"
                + (f"; about {need} seeds per variant would tell a difference of this size" if need else ""))
    elif head["verdict"] == "more seeds":
        tail = (f"cannot be judged with fewer than {MIN_SEEDS} seeds per variant ({test}), so the two are not "
                "shown to be distinguishable; run more seeds")
    else:
        tail = ("cannot be weighed against the seed spread, which is unknown with fewer than 2 seeds, "
                "so the two are not shown to be distinguishable")
    return f"**{best}** has the highest mean final test accuracy ({acc}); {lead} {tail}."
