"""The benchmark on a few hundred embedded MNIST digits: sane figures, and both sides really train."""

import json
import math
import subprocess
import sys
import time

import pytest

from jaxcnn.benchmark import (LOADED_CORES, LOOPS, Contender, LoadMeter, Report, Result, format_table, measure,
                              run_benchmark, training_set)
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


def test_methods_are_interleaved_with_a_rotating_order_after_the_warm_up():
    calls = []
    contenders = [Contender(name, 100, None, lambda i, name=name: calls.append((name, i)) or 1.0 / i)
                  for name in ("a", "b", "c")]
    results = measure(contenders, epochs=3, warmup=1)
    assert calls == [("a", 1), ("b", 1), ("c", 1),  # warm-up, untimed
                     ("a", 2), ("b", 2), ("c", 2), ("b", 3), ("c", 3), ("a", 3), ("c", 4), ("a", 4), ("b", 4)]
    assert [len(r.epoch_times_s) for r in results] == [3, 3, 3]
    assert results[0].train_losses == (1 / 2, 1 / 3, 1 / 4)


def test_a_sample_taken_while_another_process_computes_is_flagged_and_left_out():
    """A real busy process beside the sample: LoadMeter sees its CPU; the median skips that sample. (Not compared
    with a sample without it: under the parallel suite the other worker may keep both cores busy in either.)"""
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 20: pass"])
    try:
        time.sleep(0.3)  # let it start
        with LoadMeter() as busy:
            time.sleep(1.0)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy.other_cores > LOADED_CORES + 0.3
    result = Result("x", 100, (1.0, 5.0, 1.2), (1.0, 0.9, 0.8), None, (0.0, busy.other_cores, 0.1))
    assert result.loaded == (False, True, False)
    assert result.kept_times_s == (1.0, 1.2) and result.epoch_time_s == pytest.approx(1.1)
    everything_loaded = Result("y", 100, (1.0, 3.0, 2.0), (1.0,) * 3, None, (1.0, 1.0, 1.0))
    assert everything_loaded.epoch_time_s == 2.0  # all loaded: all used, and the table warns
    report = Report("setup", "machine", "cpu", "cpu", (result, everything_loaded), None)
    text = format_table(report)
    assert "1/3" in text and "3/3" in text and "every sample of some method was taken under load" in text
