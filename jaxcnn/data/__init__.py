"""Datasets: sources (embedded, TFDS, folder) to uint8 arrays, and device-side batching."""

from __future__ import annotations

import ml_collections

from jaxcnn.data.dataset import Dataset, label_subset, select_classes, truncate
from jaxcnn.errors import ConfigError

SOURCES = ("embedded", "tfds:NAME", "NAME (a TFDS dataset)", "folder:PATH")


def load_dataset(data: ml_collections.ConfigDict) -> Dataset:
    """Loads the dataset `data.source` names, with the class subset and size limits applied.

    Folder images are converted to `data.image_size`/`data.channels` on reading; other sources
    keep their stored size, and the device-side preprocessing converts them per batch.
    """
    source = data.source
    if source == "embedded":
        from jaxcnn.data.embedded import load_mnist5k

        dataset = load_mnist5k()
    elif source.startswith("folder:"):
        from jaxcnn.data.folder import load_folder

        dataset = load_folder(source[len("folder:"):], tuple(data.image_size), data.channels)
    elif source.removeprefix("tfds:"):
        from jaxcnn.data.tfds import load_tfds

        dataset = load_tfds(source.removeprefix("tfds:"), data.dir, data.train_split, data.test_split)
    else:
        raise ConfigError(f"data.source={source!r} is not valid; valid sources: {', '.join(SOURCES)}")
    if data.classes:
        dataset = select_classes(dataset, data.classes)
    dataset = truncate(dataset, data.max_train, data.max_test)
    # Optional keys (configs/ssl_init.py): train on a labeled fraction of the training images.
    return label_subset(dataset, data.get("label_fraction", 1.0), data.get("label_seed", 0))
