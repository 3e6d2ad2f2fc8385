"""The figures of a pretrained trunk (`jaxcnn.ssl.pretrain`): autoencoder reconstructions, the k-means
filters, the SimCLR loss per epoch."""

from __future__ import annotations

import pathlib

import numpy as np

from jaxcnn.report.plots import plt, save_figure, style_epoch_axis


def _grid(n_rows: int, n_cols: int, size: float = 1.0):
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(n_cols * size, n_rows * size), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes


def _show(ax, image: np.ndarray, title: str = "") -> None:
    image = np.clip(image, 0, 1)
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray", vmin=0, vmax=1)
    ax.set_title(title, fontsize=7)


def reconstruction_png(path: pathlib.Path, inputs: np.ndarray, recon: np.ndarray) -> None:
    fig, axes = _grid(2, len(inputs))
    for j in range(len(inputs)):
        _show(axes[0, j], inputs[j], "input" if j == 0 else "")
        _show(axes[1, j], recon[j], "reconstruction" if j == 0 else "")
    save_figure(fig, path)


def filters_png(path: pathlib.Path, kernel: np.ndarray) -> None:
    """One panel per filter (HWIO kernel), each scaled to its own min..max."""
    k = kernel.shape[-1]
    cols = min(k, 8)
    fig, axes = _grid(-(-k // cols), cols, 0.8)
    for j in range(k):
        f = kernel[..., j]
        _show(axes.flat[j], (f - f.min()) / max(float(f.max() - f.min()), 1e-12), str(j))
    save_figure(fig, path)


def loss_png(path: pathlib.Path, losses: list[float], name: str) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(1, len(losses) + 1), losses, marker=".")
    ax.set(xlabel="epoch", ylabel=name, title=f"pretraining loss ({name})")
    style_epoch_axis(ax)
    save_figure(fig, path)
