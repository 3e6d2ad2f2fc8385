"""The benchmark on a few hundred embedded MNIST digits: sane figures, and both sides really train."""

import json
import math

import pytest

from jaxcnn.benchmark import LOOPS, format_table, run_benchmark, training_set
from scripts.torch_reference import TORCH_METHOD, benchmark_torch
from tests.helpers import config_module, lenet

EPOCHS = 2


def tiny_config(max_train: int = 300):
    """configs/lenet.py:3 (Adam, ReLU, batch 100) on the first `max_train` training digits."""
    return lenet.get_config(f"3,data.max_train={max_train},data.max_test=100")


def check_result(result, images_per_epoch):
    assert result.images_per_epoch == images_per_epoch
    assert len(result.epoch_times_s) == len(result.train_losses) == EPOCHS
    assert all(t > 0 and math.isfinite(t) for t in result.epoch_times_s)
    assert result.images_per_s > 0 and math.isfinite(result.images_per_s)
    assert result.train_losses[-1] < result.train_losses[0], result.train_losses


def test_jax_epoch_strategies():
    report = run_benchmark(tiny_config(), epochs=EPOCHS, repeat=2)
    assert [r.method for r in report.results] == list(LOOPS)
    for r in report.results:
        check_result(r, 600)
        assert r.compile_time_s > 0
    assert report.faster_loop in LOOPS
    assert report.torch is None and report.torch_skipped == "not requested"
    table = format_table(report)
    assert "jax python" in table and "jax scan" in table and "600 images/epoch" in table
    assert f"faster epoch strategy on {report.backend}: {report.faster_loop}" in table
    data = json.loads(json.dumps(report.to_json()))
    assert {"setup", "machine", "backend", "device_kind", "results", "faster_loop", "torch_skipped"} <= set(data)
    assert {r["method"] for r in data["results"]} == set(LOOPS)
    assert all(r["vs_torch"] is None and r["images_per_s"] > 0 for r in data["results"])


def test_torch_reference():
    pytest.importorskip("torch")
    config = tiny_config(1000)  # PyTorch's default init starts slower: 10 steps per epoch
    dataset = training_set(config)
    result = benchmark_torch(config, dataset.train_images, dataset.train_labels, EPOCHS, dataset.num_classes)
    assert result.method == TORCH_METHOD and result.compile_time_s is None
    check_result(result, 1000)


def test_torch_reference_for_the_224px_models_resizes_like_jaxcnn():
    pytest.importorskip("torchvision")
    config = config_module("transfer").get_config("resnet18_scratch,data=embedded,data.max_train=16,data.max_test=8,batch_size=8,"
                               "data.image_size=[32,32],data.random_resized_crop=False,data.hflip=False")
    dataset = training_set(config)
    result = benchmark_torch(config, dataset.train_images, dataset.train_labels, 1, dataset.num_classes)
    assert result.images_per_epoch == 16 and math.isfinite(result.train_losses[0])
    assert result.train_losses[0] == pytest.approx(math.log(10), rel=0.5)  # a real 10-class loss
