"""A study's statistics over seeds: per-variant means and sample standard deviations, the ranking by
mean final test accuracy, Welch's t of each gap against the seed spread, and the verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn.report.markdown import percent, statistic
from jaxcnn.study.runs import FinishedRun, RunRecord

SPREAD_T = 2.0  # |Welch t| above this: the difference "exceeds the seed spread"
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
            "distinguishable": bool(head and head["verdict"] == "exceeds"), "comparisons": comparisons,
            "verdict": _verdict(ranking, stats, head),
            "against_baseline": [{**_compare(v, b, by_variant), "pretrain_time_s": stats[v]["pretrain_time_s_mean"]}
                                 for v, b in (baselines or {}).items()
                                 if v in variants and b in variants and stats[v]["n"] and stats[b]["n"]]}


def unique(values: Sequence[Any]) -> Any:
    """The one value other than None, a list of the distinct ones if several, None if none."""
    distinct = list(dict.fromkeys(v for v in values if v is not None))
    return distinct[0] if len(distinct) == 1 else (distinct or None)


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


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(np.mean(values))
    return mean, (float(np.std(values, ddof=1)) if len(values) >= 2 else None)


def _variant_stats(done: list[FinishedRun], records: list[RunRecord]) -> dict[str, Any]:
    stats: dict[str, Any] = {"n": len(done), "seeds": [f.record.seed for f in done],
                             "excluded": [r.seed for r in records if r.status != "done"]}
    for key in STAT_KEYS:
        values = [f.summary[key] for f in done if f.summary.get(key) is not None]
        stats[f"{key}_mean"], stats[f"{key}_std"] = _mean_std(values)
    stats["test_accuracy_mean"] = stats["final_test_accuracy_mean"]
    stats["test_accuracy_std"] = stats["final_test_accuracy_std"]
    epoch_time = stats["mean_epoch_time_s_mean"]
    stats["projected_100_epochs_s"] = None if epoch_time is None else PROJECTED_EPOCHS * epoch_time
    stats["num_params"] = unique([f.value("num_params") for f in done])
    stats["group_size"] = unique([f.value("group_size") for f in done])
    return stats


def _compare(a: str, b: str, by_variant: dict[str, list[FinishedRun]]) -> dict[str, Any]:
    xa = [f.summary["final_test_accuracy"] for f in by_variant[a]]
    xb = [f.summary["final_test_accuracy"] for f in by_variant[b]]
    welch = welch_t(xa, xb)
    t, df = welch if welch else (None, None)
    verdict = "unknown" if t is None else ("exceeds" if abs(t) > SPREAD_T else "within")
    return {"a": a, "b": b, "difference": float(np.mean(xa) - np.mean(xb)), "t": t, "df": df, "verdict": verdict}


def _comparisons(ranking: list[str], by_variant: dict[str, list[FinishedRun]]) -> list[dict[str, Any]]:
    """Each adjacent pair in the ranking ("adjacent"), then the best against each other one ("best")."""
    adjacent = [{**_compare(a, b, by_variant), "kind": "adjacent"} for a, b in zip(ranking, ranking[1:])]
    best = [{**_compare(ranking[0], b, by_variant), "kind": "best"} for b in ranking[1:]]
    return adjacent + best


def _verdict(ranking: list[str], stats: dict[str, dict], head: dict | None) -> str:
    """One sentence: the best variant and whether its lead over the runner-up exceeds the seed spread."""
    if not ranking:
        return "No run finished, so there is no ranking."
    best = ranking[0]
    acc = f"{percent(stats[best]['test_accuracy_mean'])} %"
    if head is None:
        return f"Only **{best}** has finished runs ({acc} mean final test accuracy), so there is nothing to compare."
    lead = f"its lead of {100 * head['difference']:.2f} points over the runner-up **{head['b']}**"
    if head["verdict"] == "exceeds":
        tail = (f"exceeds the seed spread (Welch |t| = {statistic(abs(head['t']))} > {SPREAD_T:g}), "
                "so the two are distinguishable")
    elif head["verdict"] == "within":
        tail = (f"is within the seed spread (Welch |t| = {statistic(abs(head['t']))} ≤ {SPREAD_T:g}), "
                "so the two are not distinguishable with these seeds")
    else:
        tail = ("cannot be weighed against the seed spread, which is unknown with fewer than 2 seeds, "
                "so the two are not shown to be distinguishable")
    return f"**{best}** has the highest mean final test accuracy ({acc}); {lead} {tail}."
