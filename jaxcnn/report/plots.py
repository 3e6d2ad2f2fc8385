"""PNG figures of a run: learning curves, confusion matrix, prediction grid, time per layer."""

from __future__ import annotations

import pathlib
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.axes  # noqa: E402
import matplotlib.figure  # noqa: E402
import matplotlib.patches  # noqa: E402
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from jaxcnn.files import atomic_path  # noqa: E402
from jaxcnn.profile import OTHER, Profile  # noqa: E402
from jaxcnn.report.metrics import best_record  # noqa: E402


def learning_curves(history: Sequence[dict], path: pathlib.Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train vs test, with a dashed line at the best epoch (test accuracy);
    and the time of each epoch (training, and evaluating the test set)."""
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc, ax_time) = plt.subplots(1, 3, figsize=(15, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [h[f"{split}_loss"] for h in history], marker=".", label=split)
        ax_acc.plot(epochs, [h[f"{split}_accuracy"] for h in history], marker=".", label=split)
    best = best_record(history)  # the epoch whose checkpoint predict.py uses
    for ax in (ax_loss, ax_acc):
        ax.axvline(best["epoch"], color="gray", linestyle="--", linewidth=1,
                   label=f"best test accuracy (epoch {best['epoch']}: {best['test_accuracy']:.4f})")
    train_s = [h["epoch_time_s"] for h in history]
    ax_time.plot(epochs, train_s, marker=".", label=f"training (mean {np.mean(train_s):.2f} s)")
    ax_time.plot(epochs, [h["eval_time_s"] for h in history], marker=".", label="test evaluation")
    ax_time.set_ylim(bottom=0)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    ax_time.set(xlabel="epoch", ylabel="seconds", title="time per epoch (compilation not included)")
    for ax in (ax_loss, ax_acc, ax_time):
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


def short_name(name: str) -> str:
    """A class name's first synonym: ImageNet's "tench, Tinca tinca" -> "tench"."""
    return name.split(",")[0].strip() or name


def prediction_grid(images: np.ndarray, labels: Sequence[int | None] | np.ndarray, predictions: np.ndarray,
                    class_names: Sequence[str], path: pathlib.Path, title: str = "",
                    probabilities: np.ndarray | None = None) -> None:
    """Images with their predicted class: where the true class is known green if right, red with the
    true class if wrong; where it is not (`labels[i]` None or negative: an image file) in black.

    `probabilities`, (N,) top-1 probabilities or (N, classes), adds the predicted class's probability
    ("8 0.97"). Class names with commas (ImageNet's synonyms) show their first synonym; labels are
    wrapped to the tile. Drawn as one mosaic in one axes (36 separate axes made this the slowest figure
    of a run).
    """
    n = len(images)
    cols = int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / cols))
    h, w, c = images.shape[1:]
    gap, label_h = max(2, w // 8), max(6, h // 2)  # pixels between tiles, and above each for its label
    cell_h, cell_w = h + label_h + gap, w + gap
    mosaic = np.full((rows * cell_h, cols * cell_w, 3), 255, np.uint8)
    fig, ax = plt.subplots(figsize=(max(1.6 * cols, 4.0), 1.8 * rows + 0.4))  # wide enough for the title
    names = [short_name(name) for name in class_names]
    if probabilities is not None:
        probabilities = np.asarray(probabilities)
        if probabilities.ndim == 2:
            probabilities = probabilities[np.arange(n), np.asarray(predictions)]
    for i, (image, label, pred) in enumerate(zip(images, labels, predictions)):
        r, col = divmod(i, cols)
        top, left = r * cell_h + label_h, col * cell_w
        mosaic[top:top + h, left:left + w] = image if c == 3 else np.repeat(image, 3, axis=-1)
        known = label is not None and label >= 0
        text = names[pred] + ("" if probabilities is None else f" {probabilities[i]:.2f}")
        if known and label != pred:
            text += f" (true {names[label]})"
        color = "black" if not known else "green" if label == pred else "red"
        lines = textwrap.wrap(text, 18, break_on_hyphens=False)
        text = "\n".join(lines[:3]) + ("…" if len(lines) > 3 else "")  # 3 lines fit the label band
        ax.text(left + w / 2, top - 1, text, ha="center", va="bottom", fontsize=8 if len(lines) == 1 else 7,
                color=color, linespacing=1.0)
    ax.imshow(mosaic, interpolation="nearest")
    ax.axis("off")
    fig.suptitle(textwrap.fill(title, 48), fontsize=10)
    save_figure(fig, path)


def layer_costs(profile: Profile, path: pathlib.Path, title: str = "") -> None:
    """Forward + backward time of each layer (and the rest of the model) as horizontal bars, forward and
    backward stacked, coloured by kind (conv, dense, other), labelled with the share of the step."""
    rows = [*profile.layers, profile.other]
    colours = {"conv": "tab:blue", "dense": "tab:orange", OTHER: "tab:gray"}
    forward = np.array([1e3 * r.time_forward_s for r in rows])
    backward = np.maximum(np.array([1e3 * r.time_train_s for r in rows]) - forward, 0)
    y = np.arange(len(rows))[::-1]
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.35 * len(rows)))
    ax.barh(y, forward, color=[colours[r.kind] for r in rows], label="forward")
    ax.barh(y, backward, left=forward, color=[colours[r.kind] for r in rows], alpha=0.45, label="backward")
    for yi, r, total in zip(y, rows, forward + backward):
        ax.text(total, yi, f" {100 * profile.share(r):.0f} %", va="center", fontsize=8)
    ax.set_yticks(y, [f"{r.name} ({r.shape})" if r.shape else r.name for r in rows])
    ax.set_xlim(0, 1.15 * max(float((forward + backward).max()), 1e-9))
    ax.set(xlabel=f"ms per batch of {profile.batch_size} on {profile.backend} (dark: forward, light: backward)")
    handles = [matplotlib.patches.Patch(color=c, label=k) for k, c in colours.items()
               if any(r.kind == k for r in rows)]
    ax.legend(handles=handles, loc="lower right", fontsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(textwrap.fill(title, 70), fontsize=10)
    save_figure(fig, path)
