"""What a run leaves in its workdir besides checkpoints: metrics files, figures, summary.md."""

from __future__ import annotations

import csv
import json
import os
import pathlib
import platform
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxcnn import faults
from jaxcnn.files import atomic_path, read_json_lines, write_atomic, write_json
from jaxcnn.profile import HEADER, METHOD, Profile, rows, summary_line
from jaxcnn.report import plots
from jaxcnn.report.markdown import MISSING, table
from jaxcnn.report.metrics import best_record, confusion_matrix, per_class_report

METRICS_JSONL = "metrics.jsonl"
SUMMARY_JSON = "summary.json"
PER_CLASS_CSV = "per_class.csv"
PER_CLASS_TRAIN_CSV = "per_class_train.csv"  # the same for the final model on the training images
TEST_PREDICTIONS_CSV = "test_predictions.csv"  # per test image: true class, predicted class, its probability
TEST_IMAGES_PNG = "test_images.png"  # the test images of report.test_index, labelled
LAYERS_PNG = "layers.png"
CONFUSION_CSV = "confusion_matrix.csv"
COLUMNS = ("epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate",
           "epoch_time_s", "eval_time_s")


def read_history(workdir: pathlib.Path) -> list[dict[str, Any]]:
    """metrics.jsonl as one row per epoch, in epoch order: rows are keyed by their epoch number (a
    repeated epoch keeps its last row) and a torn last line (a kill mid-write) is skipped."""
    rows = {row["epoch"]: row for row in read_json_lines(workdir / METRICS_JSONL) if "epoch" in row}
    return [rows[epoch] for epoch in sorted(rows)]


def read_summary(workdir: pathlib.Path) -> dict[str, Any]:
    """summary.json as written by `write_outputs`."""
    return json.loads((workdir / SUMMARY_JSON).read_text())


def read_per_class(workdir: pathlib.Path, name: str = PER_CLASS_CSV) -> dict[str, list]:
    """per_class.csv (or `name`: PER_CLASS_TRAIN_CSV): {"class": names, "precision"/"recall"/"f1": floats,
    "support": ints}."""
    with open(workdir / name, newline="") as f:
        rows = list(csv.DictReader(f))
    return {"class": [r["class"] for r in rows],
            **{k: [float(r[k]) for r in rows] for k in ("precision", "recall", "f1")},
            "support": [int(r["support"]) for r in rows]}


CONFUSION_CORNER = "true \\ predicted"  # confusion_matrix.csv's first cell


def read_confusion_matrix(workdir: pathlib.Path) -> np.ndarray:
    """confusion_matrix.csv: counts, rows = true class, columns = predicted class; a header row and a
    first column of class names (runs of earlier versions wrote the bare counts)."""
    with open(workdir / CONFUSION_CSV, newline="") as f:
        rows = list(csv.reader(f))
    if rows and rows[0] and rows[0][0] == CONFUSION_CORNER:
        rows = [row[1:] for row in rows[1:]]
    return np.array(rows, dtype=np.int64).reshape(len(rows), -1)


def write_history(workdir: pathlib.Path, history: Sequence[dict[str, Any]]) -> None:
    """metrics.jsonl (one JSON object per epoch) and metrics.csv with the same numbers, each replaced
    atomically."""
    write_atomic(workdir / METRICS_JSONL, "".join(json.dumps(h) + "\n" for h in history))
    with atomic_path(workdir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def machine_name() -> str:
    """OS, architecture, CPU model and core count, e.g. `Linux x86_64, AMD EPYC, 2 CPUs`."""
    cpu = platform.processor()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), cpu)
    return f"{platform.system()} {platform.machine()}, {cpu or 'unknown CPU'}, {os.cpu_count()} CPUs"


def summarize(history: Sequence[dict[str, Any]], num_params: int, compile_time_s: float) -> dict[str, Any]:
    """Best and final accuracy, overfitting, timing, from the per-epoch history."""
    final = history[-1]
    best = best_record(history)
    min_loss = min(h["test_loss"] for h in history)
    return {
        "epochs": final["epoch"],
        "final_test_accuracy": final["test_accuracy"],
        "final_train_accuracy": final["train_accuracy"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "overfitting_gap": final["train_accuracy"] - final["test_accuracy"],
        "test_loss_rise": final["test_loss"] - min_loss,
        "mean_epoch_time_s": float(np.mean([h["epoch_time_s"] for h in history])),
        "total_train_time_s": float(np.sum([h["epoch_time_s"] for h in history])),
        "compile_time_s": compile_time_s,
        "num_params": num_params,
    }


def write_outputs(workdir: pathlib.Path, title: str, history: Sequence[dict[str, Any]], summary: dict[str, Any],
                  class_names: Sequence[str], test_images: np.ndarray, test_labels: np.ndarray,
                  predictions: np.ndarray, grid_size: int, confidences: np.ndarray | None = None,
                  train: tuple[np.ndarray, np.ndarray] | None = None, test_index: Sequence[int] = ()) -> None:
    """Figures, per-class reports and summary.md for the final model's test predictions (with their
    `confidences`, the probabilities of the predicted classes: test_predictions.csv) and, given `train` =
    (labels, predictions), its predictions on the training images; the test images `test_index` shown one by
    one; summary.json, which marks a finished run, comes last."""
    matrix = confusion_matrix(test_labels, predictions, len(class_names))
    report = per_class_report(matrix)
    plots.learning_curves(history, workdir / "learning_curves.png", title)
    faults.at("figures", history[-1]["epoch"])
    plots.confusion_matrix(matrix, class_names, workdir / "confusion_matrix.png", f"{title}: test, final model")
    # the misclassified test images first (what a student looks at), then correct ones to fill the grid
    wrong = np.flatnonzero(predictions != test_labels)
    shown = np.concatenate([wrong, np.flatnonzero(predictions == test_labels)])[:grid_size]
    caption = (f"{min(len(wrong), grid_size)} of the {len(wrong)} misclassified test images"
               + (", then correct ones" if len(wrong) < len(shown) else ""))
    plots.prediction_grid(test_images[shown], test_labels[shown], predictions[shown], class_names,
                          workdir / "predictions.png", f"{title}: {caption} (predicted class and its probability)",
                          None if confidences is None else confidences[shown])
    per_class = _write_per_class(workdir / PER_CLASS_CSV, class_names, report)
    per_class_train = None
    if train is not None:
        train_matrix = confusion_matrix(*train, len(class_names))
        per_class_train = _write_per_class(workdir / PER_CLASS_TRAIN_CSV, class_names, per_class_report(train_matrix))
        summary["final_model_train_accuracy"] = float(np.trace(train_matrix) / max(train_matrix.sum(), 1))
    with atomic_path(workdir / CONFUSION_CSV) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([CONFUSION_CORNER, *class_names])
        writer.writerows([name, *map(int, row)] for name, row in zip(class_names, matrix))
    individual = []
    if confidences is not None:
        with atomic_path(workdir / TEST_PREDICTIONS_CSV) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["index", "true", "predicted", "probability"])
            writer.writerows([i, class_names[t], class_names[p], f"{c:.6f}"]
                             for i, (t, p, c) in enumerate(zip(test_labels, predictions, confidences)))
        individual = _individual(test_index, test_labels, predictions, confidences, class_names)
        shown = [i for i in test_index if 0 <= i < len(test_labels)]
        if shown:
            plots.prediction_grid(test_images[shown], test_labels[shown], predictions[shown], class_names,
                                  workdir / TEST_IMAGES_PNG,
                                  f"test image{'s' * (len(shown) > 1)} {', '.join(map(str, shown))}",
                                  confidences[shown])
    profile = Profile.from_json(summary["layer_profile"]) if "layer_profile" in summary else None
    if profile is not None:
        plots.layer_costs(profile, workdir / LAYERS_PNG, f"{title}: time per layer")
    confused = confused_pairs(matrix, class_names)
    write_atomic(workdir / "summary.md", _summary_markdown(title, summary, per_class, confused, per_class_train,
                                                           profile, individual))
    write_json(workdir / SUMMARY_JSON, summary)


def _individual(indices: Sequence[int], labels: np.ndarray, predictions: np.ndarray, confidences: np.ndarray,
                class_names: Sequence[str]) -> list[list[Any]]:
    """Rows (index, true, predicted, probability, right?) for the test images `indices`; one outside the test set
    says so."""
    rows = []
    for i in indices:
        if not 0 <= i < len(labels):
            rows.append([i, f"not in the test set (0..{len(labels) - 1})", MISSING, MISSING, MISSING])
            continue
        rows.append([i, class_names[labels[i]], class_names[predictions[i]], f"{confidences[i]:.3f}",
                     "yes" if labels[i] == predictions[i] else "no"])
    return rows


def read_test_predictions(workdir: pathlib.Path) -> dict[int, tuple[str, str, float]]:
    """test_predictions.csv: {index: (true class, predicted class, its probability)}."""
    with open(workdir / TEST_PREDICTIONS_CSV, newline="") as f:
        return {int(r["index"]): (r["true"], r["predicted"], float(r["probability"])) for r in csv.DictReader(f)}


def _write_per_class(path: pathlib.Path, class_names: Sequence[str], report: dict[str, np.ndarray]) -> list[list]:
    """per_class.csv's rows (class, precision, recall, F1, support), written atomically and returned."""
    rows = [[name, *(f"{report[k][i]:.4f}" for k in ("precision", "recall", "f1")), int(report["support"][i])]
            for i, name in enumerate(class_names)]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "precision", "recall", "f1", "support"])
        writer.writerows(rows)
    return rows


def confused_pairs(matrix: np.ndarray, class_names: Sequence[str], most: int = 5) -> list[list[Any]]:
    """The `most` largest off-diagonal cells of a confusion matrix: [true, predicted, count, % of the true class]."""
    off = matrix.astype(np.int64).copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:most]
    totals = np.maximum(matrix.sum(axis=1), 1)
    return [[class_names[i], class_names[j], int(off[i, j]), f"{100 * off[i, j] / totals[i]:.1f} %"]
            for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]


def _summary_markdown(title: str, s: dict[str, Any], per_class: Sequence[Sequence[Any]],
                      confused: Sequence[Sequence[Any]] = (), per_class_train: Sequence[Sequence[Any]] | None = None,
                      profile: Profile | None = None, individual: Sequence[Sequence[Any]] = ()) -> str:
    """summary.md: the summary's numbers, the per-class rows (as in per_class.csv and per_class_train.csv),
    the most confused pairs, the time per layer, the figures."""
    metrics = [
        (f"final test accuracy (epoch {s['epochs']})", f"{s['final_test_accuracy']:.4f}"),
        (f"best test accuracy (epoch {s['best_epoch']})", f"{s['best_test_accuracy']:.4f}"),
        ("final train accuracy (running mean over the last epoch)", f"{s['final_train_accuracy']:.4f}"),
        *((("final model on the training images", f"{s['final_model_train_accuracy']:.4f}"),)
          if "final_model_train_accuracy" in s else ()),
        ("overfitting gap (train − test accuracy, final)", f"{s['overfitting_gap']:+.4f}"),
        ("test loss rise above its minimum", f"{s['test_loss_rise']:.4f}"),
        ("time per epoch (training, mean)", f"{s['mean_epoch_time_s']:.2f} s"),
        ("total training time", f"{s['total_train_time_s']:.1f} s"),
        ("compile time", f"{s['compile_time_s']:.1f} s"),
        ("parameters", f"{s['num_params']:,}"),
        *((("device", s["device"] if s["device"] == s["backend"] else f"{s['backend']}: {s['device']}"),)
          if "device" in s else ()),
        *((("machine", s["machine"]),) if "machine" in s else ()),
    ]
    if per_class_train is None:
        per_class_section = ["## Per class (test, final model)", "",
                             *table(("class", "precision", "recall", "F1", "support"), per_class)]
    else:
        per_class_section = [
            "## Per class (final model: test images, and training images without augmentation)", "",
            *table(("class", "test precision", "test recall", "test F1", "test images", "train precision",
                    "train recall", "train F1", "train images"),
                   [[*test, *train[1:]] for test, train in zip(per_class, per_class_train)]),
            "", "A train F1 far above the test F1 is that class overfitted."]
    layers = []
    if profile is not None:
        layers = ["", "## Time per layer", "", *table(HEADER, rows(profile)), "", summary_line(profile),
                  METHOD, "", f"![time per layer]({LAYERS_PNG})"]
    return "\n".join([
        f"# {title}", "", *table(("metric", "value"), metrics),
        "", *per_class_section,
        *(("", "## Most confused (test, final model)", "",
           *table(("true", "predicted as", "images", "share of the true class"), confused)) if confused else ()),
        *(("", "## Individual test images (final model)", "",
           *table(("test index", "true", "predicted", "probability", "right"), individual),
           *(("", f"![individual test images]({TEST_IMAGES_PNG})") if any(r[4] != MISSING for r in individual)
             else ())) if individual else ()),
        *layers,
        "", "![learning curves](learning_curves.png)", "", "![confusion matrix](confusion_matrix.png)",
        "", "![predictions: misclassified test images first](predictions.png)", ""])
