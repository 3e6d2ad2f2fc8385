"""PNG figures of a run: learning curves, confusion matrix, prediction grid."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402
import matplotlib.figure  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn.files import atomic_path  # noqa: E402
from jaxcnn.report.metrics import best_record  # noqa: E402


def learning_curves(history: Sequence[dict], path: pathlib.Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs test; a dashed line marks the best epoch (test accuracy)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker=".", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker=".", label=split)
    best = best_record(history)  # the epoch whose checkpoint predict.py uses
    for ax in (ax_loss, ax_acc):
        ax.axvline(best["epoch"], color="gray", linestyle="--", linewidth=1,
                   label=f"best test accuracy (epoch {best['epoch']}: {best['test_accuracy']:.4f})")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (ax_loss, ax_acc):
        style_epoch_axis(ax)
        ax.legend()
    fig.suptitle(title)
    save_figure(fig, path)


def style_epoch_axis(ax: matplotlib.axes.Axes) -> None:
    """Integer epoch ticks and a light grid, as on every per-epoch plot."""
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.grid(alpha=0.3)


def save_figure(fig: matplotlib.figure.Figure, path: pathlib.Path,
                rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    """Tight layout (of the axes within `rect`, in figure fractions), 100 dpi PNG, figure closed."""
    fig.tight_layout(rect=rect)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def confusion_matrix(matrix: np.ndarray, class_names: Sequence[str], path: pathlib.Path, title: str = "") -> None:
    """Counts with row-normalised colours; rows true, columns predicted."""
    k = len(class_names)
    size = max(4.0, 0.45 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    # wrapped to the figure's width (about 8 characters an inch at the title's size): a run's title is long
    draw_confusion_matrix(ax, matrix, class_names, textwrap.fill(title or "confusion matrix (test)", int(8 * size)))
    save_figure(fig, path)


def draw_confusion_matrix(ax: matplotlib.axes.Axes, matrix: np.ndarray, class_names: Sequence[str], title: str,
                          cell_text: str = "count", fontsize: float = 8) -> None:
    """A confusion matrix on `ax` with row-normalised colours; rows true, columns predicted. Each cell
    (up to 30 classes) shows its `cell_text`: "count", or "percent" of its row."""
    k = len(class_names)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:
        for i in range(k):
            for j in range(k):
                text = str(matrix[i, j]) if cell_text == "count" else f"{100 * rates[i, j]:.0f}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize,
                        color="white" if rates[i, j] > 0.5 else "black")
        ax.set_xticks(range(k), class_names, rotation=90 if k > 10 else 0)
        ax.set_yticks(range(k), class_names)
    ax.set(xlabel="predicted", ylabel="true", title=title)


def prediction_grid(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], path: pathlib.Path, title: str = "") -> None:
    """Test images with predicted (and, where wrong, true) class: green correct, red wrong.

    Drawn as one mosaic in one axes (36 separate axes made this the slowest figure of a run).
    """
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = images.shape[1:]
    gap, label_h = max(2, w // 8), max(6, h // 2)  # pixels between tiles, and above each for its label
    cell_h, cell_w = h + label_h + gap, w + gap
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(max(1.6 * cols, 4.0), 1.8 * rows + 0.4))  # wide enough for the title
    for i, (image, label, pred) in enumerate(zip(images, labels, predictions)):
        r, col = divmod(i, cols)
        top, left = r * cell_h + label_h, col * cell_w
        mosaic[top:top + h, left:left + w] = image if c == 3 else np.repeat(image, 3, axis=-1)
        ok = label == pred
        text = class_names[pred] if ok else f"{class_names[pred]} (true {class_names[label]})"
        ax.text(left + w / 2, top - 1, text, ha="center", va="bottom", fontsize=8, color="green" if ok else "red")
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(textwrap.fill(title, 48), fontsize=10)
    save_figure(fig, path)
