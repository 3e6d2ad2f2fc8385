"""A study's figures: learning curves over seeds (curves.png) and summed confusion matrices
(confusion_matrices.png), one colour or panel per variant."""

from __future__ import annotations

import math
import pathlib

import numpy as np

from jaxcnn.report.plots import draw_confusion_matrix, plt, save_figure, style_epoch_axis
from jaxcnn.study.runs import FinishedRun

CURVE_PANELS = (("test_accuracy", "test accuracy"), ("test_loss", "test loss (cross-entropy)"),
                ("train_accuracy", "train accuracy"), ("train_loss", "train loss (cross-entropy)"))


def plot_curves(path: pathlib.Path, title: str, by_variant: dict[str, list[FinishedRun]]) -> bool:
    """Mean over seeds per epoch with a ±1 sample-std band, all variants overlaid; False if no history."""
    shown = [v for v, done in by_variant.items() if any(f.history for f in done)]
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
        style_epoch_axis(ax)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center right", title="variant (seeds)", fontsize=9)
    fig.suptitle(f"{title}: mean over seeds, band ±1 std")
    save_figure(fig, path, rect=(0, 0, 0.86, 1))
    return True


def plot_confusion_matrices(path: pathlib.Path, title: str, by_variant: dict[str, list[FinishedRun]]) -> bool:
    """One panel per variant: counts summed over seeds, row-normalised; False if no matrix."""
    panels = [(v, m) for v, done in by_variant.items() if (m := _summed_confusion(v, done)) is not None]
    if not panels:
        return False
    k = max(len(names) for _, (_, names) in panels)
    cols = min(4, len(panels))
    rows = math.ceil(len(panels) / cols)
    size = max(3.5, 0.36 * k + 1.4)
    # each row 0.7 inch taller than wide: room for its "predicted" label below and the next row's title
    # above (square panels otherwise let tight_layout overlap them)
    height = (size + 0.7) * rows + 0.5
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, height), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (v, (matrix, names)) in zip(axes.flat, panels):
        n = sum(f.confusion is not None for f in by_variant[v])
        draw_confusion_matrix(ax, matrix, names, f"{v} ({n} seed{'s' * (n != 1)})", cell_text="percent",
                              fontsize=7 if k <= 12 else 5)
    fig.suptitle(f"{title}: test confusion matrices, summed over seeds, % of each true class")
    save_figure(fig, path, rect=(0, 0, 1, 1 - 0.5 / height))
    return True


def _colors(n: int) -> list:
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _summed_confusion(v: str, done: list[FinishedRun]) -> tuple[np.ndarray, list[str]] | None:
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
