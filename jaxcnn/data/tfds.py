"""TFDS datasets by name (`mnist`, `cifar10`, `cifar100`, ...), prepared once into a data dir.

TensorFlow is imported here only, lazily: keep it out of processes that import torch.
"""

from __future__ import annotations

import numpy as np

from jaxcnn.config import ConfigError
from jaxcnn.data.dataset import Dataset


def _load_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    images = np.asarray(data["image"], np.uint8)
    if images.ndim == 3:
        images = images[..., None]
    return images, np.asarray(data["label"], np.int32)


def load_tfds(name: str, data_dir: str, train_split: str, test_split: str) -> Dataset:
    """Loads a TFDS image-classification dataset into memory, downloading and preparing it once.

    Args:
      name: TFDS name, optionally with version (`mnist`, `cifar100:3.0.2`).
      data_dir: where TFDS keeps prepared data ("" = TFDS default).
      train_split, test_split: TFDS split names (slicing allowed, e.g. `train[:90%]`).

    Raises:
      ConfigError: unknown dataset, or one without `image` and `label` features.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except (tfds.core.registered.DatasetNotFoundError, AssertionError, ValueError) as e:
        first_line = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"data.source={name!r}: not a loadable TFDS dataset ({first_line.strip()})") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ConfigError(f"data.source={name!r}: TFDS dataset has features {list(features)}, "
                          "needs 'image' and 'label'")
    builder.download_and_prepare()
    class_names = tuple(features["label"].names)
    return Dataset(name, class_names, *_load_split(builder, train_split), *_load_split(builder, test_split))
