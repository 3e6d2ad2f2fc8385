"""Child process of tests/test_tfds.py: TFDS's own `mnist` and `cifar100` builders prepare datasets
from local files, through jaxcnn's loader, then jaxcnn's checks run on the prepared data.

Only the download is replaced (it needs a network): `DownloadManager.download_and_extract` returns
local files in the layout the builders read (MNIST's IDX files; CIFAR-100's binary version), and the
reachability check in front of it passes. Everything else is TFDS's real code: the builder, its
parsing, PNG encoding, TFRecord shards, dataset_info, then `as_dataset`.

    python tests/tfds_local.py DATA_DIR RESULTS_JSON

The files are written from real images: the embedded MNIST digits, tiled to MNIST's 60,000/10,000
(the builder reads exactly that many); for CIFAR-100 the same digits padded to 32×32 RGB, digit d
stored as fine label FINE[d] (digits 0, 1, 2 are the pooling study's classes 0, 55, 58: apple,
otter, pickup_truck), with CIFAR-100's real class-name files.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import struct
import sys
import traceback

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
FINE = np.array([0, 55, 58, 3, 4, 5, 6, 7, 8, 9])


def write_mnist(folder: pathlib.Path, mnist) -> dict[str, pathlib.Path]:
    def images(path, x):
        path.write_bytes(struct.pack(">IIII", 2051, len(x), 28, 28) + x.astype(np.uint8).tobytes())

    def labels(path, y):
        path.write_bytes(struct.pack(">II", 2049, len(y)) + y.astype(np.uint8).tobytes())

    folder.mkdir(parents=True)
    files = {k: folder / k for k in ("train_data", "train_labels", "test_data", "test_labels")}
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = getattr(mnist, f"{split}_images")[..., 0], getattr(mnist, f"{split}_labels")
        images(files[f"{split}_data"], np.resize(x, (n, 28, 28)))
        labels(files[f"{split}_labels"], np.resize(y, n))
    return files


def cifar_images(x: np.ndarray) -> np.ndarray:
    """28×28 gray digits -> 32×32 RGB (padded; a different gain per channel)."""
    x = np.pad(x[..., 0], ((0, 0), (2, 2), (2, 2)))
    return np.stack([x, (x * 0.8).astype(np.uint8), (x * 0.6).astype(np.uint8)], -1)


def write_cifar100(folder: pathlib.Path, mnist) -> pathlib.Path:
    base = folder / "cifar-100-binary"
    base.mkdir(parents=True)
    for split, name in (("train", "train.bin"), ("test", "test.bin")):
        x, y = cifar_images(getattr(mnist, f"{split}_images")), FINE[getattr(mnist, f"{split}_labels")]
        records = np.concatenate([np.stack([y // 5, y], 1).astype(np.uint8),  # coarse, fine
                                  x.transpose(0, 3, 1, 2).reshape(len(x), -1)], 1)  # CHW, as CIFAR stores it
        (base / name).write_bytes(records.tobytes())
    for name in ("coarse_label_names.txt", "fine_label_names.txt"):
        (base / name).write_text((REPO / "tests" / "data" / "cifar100" / name).read_text())
    return folder


def fingerprints(images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Order-free identity of a split: TFDS shuffles examples when it writes its shards."""
    return sorted(hashlib.md5(x.tobytes() + bytes([int(y)])).hexdigest() for x, y in zip(images, labels))


def main(data_dir: str, results_path: str) -> None:
    import tensorflow_datasets as tfds

    import jaxcnn.data.tfds
    from jaxcnn.config import default_config
    from jaxcnn.data import load_dataset
    from jaxcnn.data.embedded import load_mnist5k
    from jaxcnn.errors import ConfigError
    from jaxcnn.data.tfds import load_tfds

    mnist = load_mnist5k()
    local = pathlib.Path(data_dir).parent / "local_downloads"
    mnist_files = write_mnist(local / "mnist", mnist)
    cifar_dir = write_cifar100(local / "cifar100", mnist)
    served = []

    def download_and_extract(self, urls):  # the download step: local files instead of the network
        served.append(urls)
        if isinstance(urls, dict):  # mnist: {"train_data": URL, ...}
            return {k: mnist_files[k] for k in urls}
        assert urls.endswith("cifar-100-binary.tar.gz"), urls
        return cifar_dir

    tfds.download.DownloadManager.download_and_extract = download_and_extract
    jaxcnn.data.tfds.check_reachable = lambda *args, **kwargs: None  # the network check of the download

    def data(**kw):
        config = default_config().data
        for k, v in kw.items():
            setattr(config, k, v)
        config.dir = data_dir
        return config

    def check_mnist_prepared_by_the_real_builder():
        dataset = load_tfds("mnist", data_dir, "train", "test")
        assert dataset.class_names == tuple(str(c) for c in range(10)), dataset.class_names
        assert dataset.train_images.shape == (60000, 28, 28, 1) and dataset.train_images.dtype == np.uint8
        assert dataset.test_images.shape == (10000, 28, 28, 1)
        for split, n in (("train", 60000), ("test", 10000)):
            images = np.resize(getattr(mnist, f"{split}_images"), (n, 28, 28, 1))
            labels = np.resize(getattr(mnist, f"{split}_labels"), n)
            got = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
            assert fingerprints(*got) == fingerprints(images, labels), f"{split}: not the files' images"
        assert (pathlib.Path(data_dir) / "mnist" / "3.0.1" / "dataset_info.json").is_file()
        assert len(served) == 1

    def check_prepared_once_then_read_without_download():
        for source in ("mnist", "tfds:mnist"):
            dataset = load_dataset(data(source=source))
            assert dataset.name == "mnist" and len(dataset.train_labels) == 60000
        assert len(served) == 1, served  # prepared data is reused, never downloaded again

    def check_classes_and_limits():
        dataset = load_dataset(data(source="tfds:mnist", classes=(7, 2, 5), max_train=50, max_test=20))
        assert dataset.class_names == ("7", "2", "5")
        assert dataset.train_images.shape == (50, 28, 28, 1) and set(dataset.train_labels) <= {0, 1, 2}
        assert dataset.test_images.shape == (20, 28, 28, 1)

    def check_cifar100_prepared_by_the_real_builder():
        dataset = load_dataset(data(source="cifar100"))
        assert dataset.num_classes == 100 and dataset.image_shape == (32, 32, 3)
        assert dataset.class_names[:3] == ("apple", "aquarium_fish", "baby")
        for split in ("train", "test"):
            x, y = getattr(mnist, f"{split}_images"), getattr(mnist, f"{split}_labels")
            got = getattr(dataset, f"{split}_images"), getattr(dataset, f"{split}_labels")
            assert fingerprints(*got) == fingerprints(cifar_images(x), FINE[y]), split
        subset = load_dataset(data(source="cifar100", classes=(0, 55, 58)))
        assert subset.class_names == ("apple", "otter", "pickup_truck")
        assert len(subset.train_labels) == int(np.isin(mnist.train_labels, [0, 1, 2]).sum())

    def check_bad_names_and_splits():
        for source, named in (("tfds:no_such_dataset_xyz", "no_such_dataset_xyz"),
                              ("tfds:mnist:9.9.9", "mnist:9.9.9"),
                              ("tfds:mnist/no_such_config", "mnist/no_such_config"),
                              ("tfds:no such name", "no such name")):
            try:
                load_dataset(data(source=source))
            except ConfigError as e:
                assert named in str(e), str(e)
            else:
                raise AssertionError(f"{source}: no ConfigError")
        try:
            load_dataset(data(source="mnist", test_split="validation"))
        except ConfigError as e:
            assert "data.test_split='validation' is not a split of mnist" in str(e), str(e)
            assert "its splits: train, test" in str(e) or "its splits: test, train" in str(e), str(e)
        else:
            raise AssertionError("bad split: no ConfigError")

    def check_a_failed_download_is_one_line_and_leaves_nothing():
        """A connection that breaks mid-download: what it leaves (a partial `.tmp.` file, TFDS's
        `incomplete.*` folders, empty folders) is removed, and the error is one line."""
        from jaxcnn.errors import DownloadError

        def broken(self, urls):
            partial = pathlib.Path(self._download_dir) / "mnist" / "train-images.gz.tmp.0123"
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_bytes(b"partial")
            raise tfds.download.DownloadError("Failed to get url https://...: connection reset by peer")

        other = pathlib.Path(data_dir).parent / "failing"
        working = tfds.download.DownloadManager.download_and_extract
        tfds.download.DownloadManager.download_and_extract = broken
        try:
            load_tfds("mnist", str(other), "train", "test")
        except DownloadError as e:
            assert str(e).startswith("downloading TFDS dataset 'mnist' failed (DownloadError: Failed to get url"), e
            assert "data=embedded" in str(e), e
        else:
            raise AssertionError("no DownloadError")
        finally:
            tfds.download.DownloadManager.download_and_extract = working
        assert not other.exists(), sorted(map(str, other.rglob("*")))

    results = {}
    for name, fn in list(locals().items()):
        if name.startswith("check_"):
            try:
                fn()
                results[name] = "ok"
            except BaseException:  # noqa: BLE001 - reported to the test
                results[name] = traceback.format_exc()
    pathlib.Path(results_path).write_text(json.dumps(results))


if __name__ == "__main__":
    main(*sys.argv[1:3])
