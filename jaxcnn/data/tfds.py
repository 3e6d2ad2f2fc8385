"""TFDS datasets by name (`mnist`, `cifar10`, `cifar100`, ...), prepared once into a data dir.

TensorFlow is imported here only, lazily: keep it out of processes that import torch.
Offline, a dataset that is not prepared yet fails in seconds with one line (TFDS itself retries an
unreachable server for minutes), and a failed download leaves no partial files behind.
"""

from __future__ import annotations

import pathlib
import shutil

import numpy as np

from jaxcnn.data.dataset import Dataset
from jaxcnn.download import check_reachable, download_failed
from jaxcnn.errors import ConfigError, first_line

OFFLINE_ADVICE = ("use data=embedded, or set data.dir to a folder where the dataset is already prepared "
                  "(`tfds build NAME --data_dir DIR` on a machine with a network)")


def _load_split(builder, split: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    try:
        data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1, shuffle_files=False))
    except (ValueError, KeyError, AssertionError) as e:
        raise ConfigError(f"{key}={split!r} is not a split of {builder.name} ({first_line(e)}); "
                          f"its splits: {', '.join(builder.info.splits)}") from None
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
        text = next((line for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"data.source={name!r}: not a loadable TFDS dataset ({text.strip()})") from None
    features = builder.info.features
    if "image" not in features or "label" not in features:
        raise ConfigError(f"data.source={name!r}: TFDS dataset has features {list(features)}, "
                          "needs 'image' and 'label'")
    if not builder.is_prepared():
        _download_and_prepare(builder, name)
    class_names = tuple(features["label"].names)
    return Dataset(name, class_names, *_load_split(builder, train_split, "data.train_split"),
                   *_load_split(builder, test_split, "data.test_split"))


def _download_and_prepare(builder, name: str) -> None:
    """`builder.download_and_prepare()` after a quick check that its servers answer; on failure
    (or Ctrl-C) removes what the attempt left (`*.tmp.*` downloads, `incomplete.*` folders, new
    empty folders) and raises DownloadError."""
    import tensorflow_datasets as tfds

    what = f"TFDS dataset {name!r}"
    try:
        urls = list(builder.url_infos or ())  # what TFDS will download (its registered checksums)
    except Exception:  # noqa: BLE001 - datasets without registered URLs: TFDS reports its own failure
        urls = []
    check_reachable(urls, what, OFFLINE_ADVICE)
    root = pathlib.Path(builder.data_dir_root)
    before = set(root.rglob("*")) if root.exists() else set()
    existed = root.exists()
    try:
        builder.download_and_prepare()
    except BaseException as e:
        _remove_partial(root, before, existed)
        if isinstance(e, (tfds.download.DownloadError, ConnectionError, TimeoutError)) or \
                type(e).__module__.startswith(("requests", "urllib3")):
            raise download_failed(what, e, OFFLINE_ADVICE) from None
        raise


def _remove_partial(root: pathlib.Path, before: set[pathlib.Path], existed: bool) -> None:
    """Removes the partial files and the empty folders a failed preparation created under `root`."""
    if not root.exists():
        return
    for path in sorted(set(root.rglob("*")) - before, key=lambda p: len(p.parts), reverse=True):
        if ".tmp." in path.name or path.name.startswith("incomplete.") or ".incomplete" in path.name:
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    if not existed and not any(root.iterdir()):
        root.rmdir()
