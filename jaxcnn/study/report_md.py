"""A study's report.md: results and timing tables, unfinished runs, gains against baselines, the
ranking with its Welch comparisons and verdict, the figures, and per-class numbers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from jaxcnn.profile import METHOD, OTHER, Profile
from jaxcnn.report.markdown import MISSING, cell, duration, listing, number, p_value, percent, statistic, table
from jaxcnn.report.run import TEST_PREDICTIONS_CSV, confused_pairs, read_test_predictions
from jaxcnn.study.runs import STATUSES, FinishedRun, RunRecord, epochs_completed
from jaxcnn.study.stats import ALPHA, MIN_SEEDS, POWER, PROJECTED_EPOCHS, unique

VERDICT_TEXT = {"significant": f"significant (p < {ALPHA:g})", "not significant": "not significant",
                "more seeds": f"needs ≥ {MIN_SEEDS} seeds per variant", "unknown": "spread unknown (fewer than 2 seeds)"}


def _verdict_cell(c: dict[str, Any]) -> str:
    need = c.get("seeds_needed")
    return VERDICT_TEXT[c["verdict"]] + (f"; ~{need} seeds would tell" if need else "")


def markdown(title: str, question: str, runs: list[RunRecord], by_variant: dict[str, list[FinishedRun]],
             result: dict, curves: bool, matrices: bool) -> str:
    """report.md from the runs, their aggregates (`jaxcnn.study.stats.aggregate`) and which figures exist."""
    stats = result["variants"]
    finished = [f for done in by_variant.values() for f in done]
    counts = {s: sum(r.status == s for r in runs) for s in STATUSES}
    datasets = listing(unique([f.summary.get("dataset") for f in finished]), "")
    backends = listing(unique([f.summary.get("backend") for f in finished]), "")
    lines = [f"# {title}", ""]
    if question:
        lines += ["## Question", "", question.strip(), ""]
    lines += [
        f"{len(runs)} runs of {len(by_variant)} variants: {counts['done']} finished, {counts['diverged']} diverged, "
        f"{counts['failed']} failed. Dataset: {datasets}; backend: {backends}. Per-run numbers: "
        "[results.csv](results.csv).", "",
        "Every number below is over a variant's finished seeds only: the mean, and after ± the sample "
        "standard deviation over seeds (ddof = 1; – where fewer than 2 seeds finished); the 95 % confidence "
        "interval of the mean is from the t distribution (n − 1 degrees of freedom). Accuracies are "
        "in percent, at the final epoch unless marked best.", "",
    ]
    lines += _settings_section(by_variant)
    lines += ["## Results", ""]
    lines += _results_table(stats)
    lines.append("")
    lines += _times_table(stats)
    lines += [
        "", "Times are means over seeds: training time per epoch (without evaluation), its sum over the "
        f"epochs, and {PROJECTED_EPOCHS} × the time per epoch (compile time not included). A group size "
        "above 1 means the run was trained together with others in one vmapped program; its time per "
        "epoch is then the group's wall time divided by the group size.", "",
    ]
    lines += _backends_section(by_variant)
    lines += _layers_section(by_variant)
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
    lines += _test_images_section(by_variant)
    lines += _per_class_section(by_variant)
    return "\n".join(lines)


# Settings named under "Shared by all" when every variant has the same value (those that differ go in the table).
SHARED_SHOWN = ("model.name", "model.init", "data.source", "data.classes", "train.epochs", "train.batch_size",
                "optim.name", "optim.learning_rate", "optim.schedule")
NOT_SETTINGS = ("variant", "seed", "mesh", "data.dir", "ssl.pretrain_dir", "train.log_every")  # plus below
NOT_SETTINGS_PREFIXES = ("checkpoint.", "report.")


def _settings_section(by_variant: dict[str, list[FinishedRun]]) -> list[str]:
    """What each variant sets differently, from its first finished run's config.json, and the main
    settings every variant shares."""
    configs = {v: done[0].config for v, done in by_variant.items() if done and done[0].config}
    if not configs:
        return []
    keys = [k for k in dict.fromkeys(k for c in configs.values() for k in c)
            if k not in NOT_SETTINGS and not k.startswith(NOT_SETTINGS_PREFIXES)]
    differ = [k for k in keys if len({json.dumps(c.get(k)) for c in configs.values()}) > 1]
    shared = [k for k in SHARED_SHOWN if k in keys and k not in differ]
    value = lambda x: MISSING if x is None else json.dumps(x) if isinstance(x, (list, dict)) else x  # noqa: E731
    lines = ["## Variants", ""]
    if differ:
        lines += ["What each variant sets differently (from its runs' config.json):", ""]
        lines += table(["variant", *differ], [[v, *(value(c.get(k)) for k in differ)] for v, c in configs.items()])
        lines.append("")
    if shared:
        lines += ["Shared by all: " + ", ".join(f"{k} = {cell(value(configs[next(iter(configs))][k]))}"
                                                for k in shared) + ".", ""]
    return lines


def _results_table(stats: dict[str, dict]) -> list[str]:
    """Accuracy and overfitting per variant (– throughout where no seed finished)."""
    header = ("variant", "seeds", "epochs", "test accuracy % (final)", "95 % CI of the mean", "best test accuracy %",
              "best epoch", "train accuracy % (final)", "overfitting: train − test (points)",
              "overfitting: test-loss rise above its minimum")
    return table(header, [
        [v, f"{s['n']}" + (f" of {s['n'] + len(s['excluded'])}" if s["excluded"] else ""),
         number(s["epochs_mean"], ".0f"), percent(s["test_accuracy_mean"], s["test_accuracy_std"], with_std=True),
         _interval(s["test_accuracy_mean"], s["test_accuracy_ci95"]),
         percent(s["best_test_accuracy_mean"]), number(s["best_epoch_mean"], ".0f" if float(s["best_epoch_mean"] or 0).is_integer() else ".1f"),
         percent(s["final_train_accuracy_mean"]), number(_points(s["overfitting_gap_mean"]), "+.2f"),
         number(s["test_loss_rise_mean"], ".4f")]
        for v, s in stats.items()])


def _times_table(stats: dict[str, dict]) -> list[str]:
    """Timing and size per variant (– throughout where no seed finished)."""
    header = ("variant", "time per epoch", "total training time", "projected for 100 epochs", "compile time",
              "parameters", "group size")
    return table(header, [
        [v, number(s["mean_epoch_time_s_mean"], ".3f", " s"), number(s["total_train_time_s_mean"], ".1f", " s"),
         duration(s["projected_100_epochs_s"]), number(s["compile_time_s_mean"], ".1f", " s"),
         listing(s["num_params"], ","), listing(s["group_size"])]
        for v, s in stats.items()])


def _backends_section(by_variant: dict[str, list[FinishedRun]]) -> list[str]:
    """CPU vs GPU: per variant and backend (from each finished run's summary.json), the mean training time
    per epoch over that backend's seeds, projected to 100 epochs, and the speed-up over the CPU; only
    when the finished runs span more than one backend."""
    finished = [f for done in by_variant.values() for f in done]
    backends = list(dict.fromkeys(b for f in finished if (b := f.summary.get("backend"))))
    if len(backends) < 2:
        return []
    rows = []
    for v, done in by_variant.items():
        times, runs = {}, {}
        for b in backends:
            runs[b] = [f for f in done if f.summary.get("backend") == b and f.value("mean_epoch_time_s") is not None]
            if runs[b]:
                times[b] = float(np.mean([f.value("mean_epoch_time_s") for f in runs[b]]))
        for b, t in times.items():
            device = listing(unique([f.summary.get("machine") if f.summary.get("device") in (None, b)
                                     else f.summary.get("device") for f in runs[b]]))
            speedup = number(times["cpu"] / t, ".2f", "×") if "cpu" in times else MISSING
            rows.append([v, b, device, ", ".join(str(f.record.seed) for f in runs[b]), number(t, ".3f", " s"),
                         duration(PROJECTED_EPOCHS * t), listing(unique([f.value("group_size") for f in runs[b]])),
                         speedup])
    return ["## CPU vs GPU", "",
            f"This study's finished runs trained on {len(backends)} backends ({', '.join(backends)}; each run's "
            "summary.json records its backend and device). Per variant and backend: the mean over that backend's "
            f"seeds of the training time per epoch (without evaluation or compile), {PROJECTED_EPOCHS} × it, and "
            "the speed-up = the CPU's time per epoch ÷ this backend's (– without CPU runs of the variant). "
            "A group size above 1 means vmapped training (the default on GPU/TPU): time per epoch is the group's "
            "wall time ÷ its size. The times table above averages every seed, whichever backend it ran on. "
            "Runs on a second backend come from adding seeds there (README, \"CPU vs GPU\").", "",
            *table(("variant", "backend", "device", "seeds", "time per epoch", f"projected for {PROJECTED_EPOCHS} "
                    "epochs", "group size", "speed-up vs CPU"), rows), ""]


def _interval(mean: float | None, half_width: float | None) -> str:
    """[low, high] in percent; – without a spread."""
    if mean is None or half_width is None:
        return MISSING
    return f"[{percent(mean - half_width)}, {percent(mean + half_width)}]"


def _points(x: float | None) -> float | None:
    return None if x is None else 100 * x


def _failed_section(runs: list[RunRecord]) -> list[str]:
    bad = [r for r in runs if r.status != "done"]
    if not bad:
        return []
    return ["## Runs that did not finish", "", "These runs are left out of every statistic in this report.", "",
            *table(("variant", "seed", "status", "epochs completed", "message"),
                   [[r.variant, r.seed, r.status, epochs_completed(r), r.message or MISSING] for r in bad]), ""]


def _baseline_section(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    return ["## Against the baseline", "",
            "Each variant's mean final test accuracy minus its baseline's (points), Welch's t-test over seeds "
            f"(significant at p < {ALPHA:g}, see Ranking), and the time its initialisation took "
            "(pretraining, mean over seeds; 0 for none).", "",
            *table(("variant", "baseline", "gain (points)", "Welch t", "df", "p", "verdict", "pretraining time"),
                   [[c["a"], c["b"], f"{100 * c['difference']:+.2f}", statistic(c["t"]), statistic(c["df"]),
                     p_value(c["p"]), _verdict_cell(c), number(c["pretrain_time_s"], ".1f", " s")]
                    for c in rows]), ""]


def _ranking_section(result: dict, stats: dict[str, dict]) -> list[str]:
    ranking = result["ranking"]
    lines = ["## Ranking", ""]
    if not ranking:
        return lines + [result["verdict"], ""]
    lines += ["Variants by mean final test accuracy:", ""]
    for i, v in enumerate(ranking, 1):
        s = stats[v]
        lines.append(f"{i}. **{cell(v)}**: {percent(s['test_accuracy_mean'], s['test_accuracy_std'], True)} % "
                     f"({s['n']} seed{'s' * (s['n'] != 1)})")
    lines.append("")
    if len(ranking) > 1:
        lines += [
            "Each difference is tested with Welch's t-test over the seeds' final test accuracies "
            "(t = (mean₁ − mean₂) / √(s₁²/n₁ + s₂²/n₂), df by Welch–Satterthwaite, two-sided p from the t "
            f"distribution; `scipy.stats.ttest_ind(equal_var=False)`). It is *significant* at p < {ALPHA:g}. "
            f"With fewer than {MIN_SEEDS} seeds on a side the test has too few degrees of freedom to judge "
            "(the 5 % critical |t| is 12.7 at df = 1): run more seeds. For a difference that is not significant, "
            "the seeds per variant that would tell a difference of its size (5 % level, "
            f"{100 * POWER:.0f} % power) are given. With fewer than 2 seeds on a side the spread is unknown.", ""]
        for kind, heading in (("adjacent", "Adjacent pairs in the ranking"), ("best", "The best against each other")):
            rows = [[f"{c['a']} vs {c['b']}", f"{100 * c['difference']:+.2f}", statistic(c["t"]),
                     statistic(c["df"]), p_value(c["p"]), _verdict_cell(c)]
                    for c in result["comparisons"] if c["kind"] == kind]
            header = ("comparison", "difference (points)", "Welch t", "df", "p", "verdict")
            lines += [f"{heading}:", "", *table(header, rows), ""]
    return lines + [f"**Verdict.** {result['verdict']}", ""]


def _per_class_section(by_variant: dict[str, list[FinishedRun]]) -> list[str]:
    lines = ["## Per class", "", "Final model; precision, recall and F1 are means over the variant's finished seeds "
             "(from each run's per_class.csv for the test set and per_class_train.csv for the training images, "
             "evaluated like the test set: no augmentation), images per run. A train F1 far above the test F1: "
             "that class is overfitted.", ""]
    for v, done in by_variant.items():
        runs = [f for f in done if f.per_class]
        if not runs:
            continue
        names = runs[0].per_class["class"]
        for f in runs:
            if f.per_class["class"] != names or (f.per_class_train and f.per_class_train["class"] != names):
                raise ValueError(f"variant {v!r}: classes of {f.record.workdir} differ from those of "
                                 f"{runs[0].record.workdir}")
        keys = ("precision", "recall", "f1", "support")
        mean = {k: np.mean([f.per_class[k] for f in runs], axis=0) for k in keys}
        rows = [[name, *(f"{mean[k][i]:.4f}" for k in keys[:3]), f"{mean['support'][i]:g}"]
                for i, name in enumerate(names)]
        header = ("class", "test precision", "test recall", "test F1", "test images")
        if all(f.per_class_train for f in runs):  # runs of earlier versions have the test set only
            train = {k: np.mean([f.per_class_train[k] for f in runs], axis=0) for k in keys}
            rows = [[*row, *(f"{train[k][i]:.4f}" for k in keys[:3]), f"{train['support'][i]:g}",
                     f"{train['f1'][i] - mean['f1'][i]:+.4f}"] for i, row in enumerate(rows)]
            header += ("train precision", "train recall", "train F1", "train images", "F1 gap (train − test)")
        seeds = ", ".join(str(f.record.seed) for f in runs)
        lines += [f"### {v} (seed{'s' * (len(runs) != 1)} {seeds})", "", *table(header, rows), ""]
        confusion = [f.confusion for f in runs if f.confusion is not None]
        pairs = confused_pairs(np.sum(confusion, axis=0), names, 3) if confusion else []
        if pairs:
            lines += ["Most confused (test, summed over seeds): " + "; ".join(
                f"{t} as {p}: {n} images ({share} of {t})" for t, p, n, share in pairs) + ".", ""]
    return lines


def _test_images_section(by_variant: dict[str, list[FinishedRun]]) -> list[str]:
    """The predictions of the final models on the test images the runs' configs name (`report.test_index`),
    from each run's test_predictions.csv: per variant, how many seeds got each right, and what each predicted."""
    finished = [f for done in by_variant.values() for f in done if (f.record.workdir / TEST_PREDICTIONS_CSV).is_file()]
    indices = list(dict.fromkeys(i for f in finished for i in (f.config or {}).get("report.test_index", [])))
    if not indices:
        return []
    predictions = {id(f): read_test_predictions(f.record.workdir) for f in finished}
    truth = {i: next((p[i][0] for p in predictions.values() if i in p), None) for i in indices}
    rows = []
    for v, done in by_variant.items():
        runs = [f for f in done if id(f) in predictions]
        if not runs:
            continue
        cells = []
        for i in indices:
            got = [predictions[id(f)][i] for f in runs if i in predictions[id(f)]]
            right = sum(p[1] == p[0] for p in got)
            cells.append(f"{right} of {len(got)} right: " + ", ".join(f"{p[1]} ({p[2]:.2f})" for p in got)
                         if got else MISSING)
        rows.append([v, *cells])
    header = ("variant", *(f"test image {i} (true: {truth[i]})" if truth[i] is not None
                           else f"test image {i} (not in the test set)" for i in indices))
    return ["## Individual test images", "",
            "The final models' predictions (with their probability, seed by seed) on the test images the config "
            "names (`report.test_index`; each run's test_predictions.csv has every test image, and "
            "`scripts/predict.py --workdir RUN --test_index 199` shows one with its top-k).", "",
            *table(header, rows), ""]


def _layers_section(by_variant: dict[str, list[FinishedRun]]) -> list[str]:
    """Time per layer across variants (each run's summary.json `layer_profile`, means over seeds): what an
    extra layer, another pooling or activation costs; only where runs hold a profile."""
    profiles = {v: [Profile.from_json(f.summary["layer_profile"]) for f in done if "layer_profile" in f.summary]
                for v, done in by_variant.items()}
    profiles = {v: p for v, p in profiles.items() if p}
    if not profiles:
        return []
    deepest = sorted(profiles.values(), key=lambda ps: -len(ps[0].layers))  # its layer order for the columns
    names = list(dict.fromkeys(x.name for ps in deepest for x in ps[0].layers))
    rows = []
    for v, ps in profiles.items():
        def mean(f):
            return float(np.mean([f(p) for p in ps]))
        per_layer = {name: mean(lambda p: next((1e3 * x.time_train_s for x in p.layers if x.name == name),
                                               np.nan)) for name in names}
        flops = ps[0].model.flops_forward + ps[0].model.flops_backward
        rows.append([v, f"{ps[0].model.params:,}", f"{flops / 1e6:,.1f}",
                     f"{mean(lambda p: 1e3 * p.model.time_train_s):.3f}",
                     *(f"{100 * mean(lambda p: p.by_kind()[k]):.0f} %" for k in ("conv", "dense", OTHER)),
                     *(MISSING if np.isnan(per_layer[n]) else f"{per_layer[n]:.3f}" for n in names)])
    batch = listing(unique([p.batch_size for ps in profiles.values() for p in ps]))
    return ["## Time per layer", "",
            f"Forward + backward of the model and of each conv/dense layer alone, in ms per batch of {batch} "
            "(means over the seeds' profiles; each run's summary.md has its table and layers.png). The shares "
            "are of the model's forward + backward: conv layers, dense layers, and the rest (activations, "
            f"pooling, loss). {METHOD}", "",
            *table(("variant", "parameters", "MFLOP fwd+bwd", "ms model", "conv", "dense", "other",
                    *(f"ms {n}" for n in names)), rows), ""]
