"""Datasets: sources (embedded, TFDS, folder) to uint8 arrays, and device-side batching."""

from __future__ import annotations

import ml_collections

from jaxcnn.data.dataset import Dataset, label_subset, select_classes, truncate
from jaxcnn.errors import ConfigError

SOURCES = ("embedded", "tfds:NAME", "NAME (a TFDS dataset)", "folder:PATH")


KNOWN_NAMES = {"embedded": "the embedded MNIST subset", "mnist": "MNIST", "cifar10": "CIFAR-10",
               "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST"}
NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")


def describe_data(data: ml_collections.ConfigDict) -> str:
    """The data a config trains on, in words, without loading it: `three classes (0, 55, 58) of CIFAR-100`,
    `the embedded MNIST subset`, `the image folder /data/signs`."""
    source = data.source
    if source.startswith("folder:"):
        name = f"the image folder {source[len('folder:'):]}"
    else:
        base = source.removeprefix("tfds:").split(":")[0].split("/")[0]
        name = KNOWN_NAMES.get(base, base)
    if not data.classes:
        return name
    count = len(data.classes)
    return (f"{NUMBERS[count] if count < len(NUMBERS) else count} classes ({', '.join(map(str, data.classes))}) "
            f"of {name}")


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
