"""The per-layer profile (jaxcnn.profile): which layers it finds, their FLOPs against a count made here in
NumPy, and that its times add up; the run's copy of it is checked in tests/test_train.py."""

import json
import re

import numpy as np
import pytest

from jaxcnn import profile
from jaxcnn.models import build_model, count_params
from tests.helpers import cli, config_module

lenet = config_module("lenet")
pooling = config_module("pooling")


def taps(size: int, kernel: int, stride: int, pad: int) -> int:
    """(output position, kernel tap) pairs of a 1-D convolution that land inside the input, not in the padding."""
    out = (size + 2 * pad - kernel) // stride + 1
    return sum(0 <= o * stride - pad + t < size for o in range(out) for t in range(kernel))


def conv_flops(n, size, c_in, c_out, kernel, stride, pad):
    """Multiply-adds inside the image (2 FLOPs each) plus the bias add at every output."""
    out = (size + 2 * pad - kernel) // stride + 1
    return 2 * n * c_in * c_out * taps(size, kernel, stride, pad) ** 2 + n * out * out * c_out


def dense_flops(n, d_in, d_out):
    return 2 * n * d_in * d_out + n * d_out


@pytest.fixture(scope="module")
def conv4_profile():
    """LeNet-5 with two extra 3×3 convs (variant conv4) at a batch of 20: quick, every layer kind. XLA's own
    convolutions (model.conv=xla): the CPU small-conv path computes the padded taps too (jaxcnn.models.conv)."""
    config = lenet.get_config("conv4,batch_size=20,model.conv=xla")
    return profile.profile_config(config, 10, min_time_s=0.02, min_repeats=3), config


def test_layers_shapes_parameters_and_flops_match_a_count(conv4_profile):
    p, config = conv4_profile
    n = 20
    assert [(x.name, x.kind, x.shape) for x in p.layers] == [
        ("conv1", "conv", "5×5 1→6"), ("conv2", "conv", "5×5 6→16"), ("extra.0", "conv", "3×3 16→16"),
        ("extra.1", "conv", "3×3 16→16"), ("fc1", "dense", "400→120"), ("fc2", "dense", "120→84"),
        ("fc3", "dense", "84→10")]
    assert [x.params for x in p.layers] == [156, 2416, 2320, 2320, 48120, 10164, 850]
    assert p.model.params == sum(x.params for x in p.layers) == 66_346 and p.other.params == 0
    expected = [conv_flops(n, 28, 1, 6, 5, 1, 2), conv_flops(n, 14, 6, 16, 5, 1, 0),
                conv_flops(n, 10, 16, 16, 3, 1, 1), conv_flops(n, 10, 16, 16, 3, 1, 1),
                dense_flops(n, 400, 120), dense_flops(n, 120, 84), dense_flops(n, 84, 10)]
    np.testing.assert_allclose([x.flops_forward for x in p.layers], expected, rtol=1e-6)
    # backward: the weight gradient costs the forward's multiply-adds, the input gradient as much again
    # (the first layer has none: nothing before it needs it)
    ratio = np.array([x.flops_backward for x in p.layers]) / np.array([x.flops_forward for x in p.layers])
    np.testing.assert_allclose(ratio, [1, 2, 2, 2, 2, 2, 2], rtol=0.02)
    assert p.model.flops_forward >= sum(expected)


def test_times_and_shares_add_up(conv4_profile):
    p, _ = conv4_profile
    for x in (*p.layers, p.model):
        assert 0 < x.time_forward_s and 0 < x.time_train_s
    shares = [p.share(x) for x in (*p.layers, p.other)]
    assert sum(shares) == pytest.approx(1.0) and min(shares) >= 0
    assert sum(p.by_kind().values()) == pytest.approx(1.0)
    assert profile.Profile.from_json(p.to_json()) == p
    text = profile.format_text(p, "conv4")
    assert "extra.1" in text and f"conv layers {100 * p.by_kind()['conv']:.0f} %" in text


def test_a_model_with_dropout_and_batchnorm_rngs_profiles():
    config = config_module("ssl_init").get_config("random,data=embedded,batch_size=8")
    p = profile.profile_config(config, 10, min_time_s=0.01, min_repeats=1)
    assert [x.kind for x in p.layers].count("conv") == 3 and p.model.time_train_s > 0


def test_strided_conv_and_three_channel_inputs_of_the_pooling_cnn():
    config = pooling.get_config("stride,data=embedded,classes=[0,1,2],batch_size=8")  # 32×32×3 on the device
    p = profile.profile_config(config, 3, min_time_s=0.01, min_repeats=1)
    assert [(x.name, x.shape) for x in p.layers] == [("conv1", "5×5 3→32 /4"), ("conv2", "3×3 32→64"),
                                                    ("fc", "4096→3")]
    assert p.layers[0].flops_forward == pytest.approx(conv_flops(8, 32, 3, 32, 5, 4, 2), rel=1e-6)
    model = build_model(config.model, 3, (32, 32, 3), 0)
    assert p.model.params == count_params(model) == 33_219


def test_benchmark_layers_prints_the_profile_without_training(tmp_path):
    out = tmp_path / "layers.json"
    proc = cli("benchmark.py", "--config", "configs/lenet.py:conv3,batch_size=10", "--layers", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    p = profile.Profile.from_json(json.loads(out.read_text()))
    assert [x.name for x in p.layers] == ["conv1", "conv2", "extra.0", "fc1", "fc2", "fc3"] and p.batch_size == 10
    assert proc.stdout.startswith("LeNet-5, variant conv3: Adam, ReLU, lr 0.001, avg pooling, +1 conv")
    for x in p.layers:  # each layer's row: name, shape, parameters, FLOPs and times as in the JSON
        assert re.search(rf"^{re.escape(x.name)} +{x.shape} +{x.params:,} +{x.flops_forward / 1e6:,.2f} "
                         rf"+{x.flops_backward / 1e6:,.2f} +{1e3 * x.time_forward_s:.3f} +{1e3 * x.time_train_s:.3f} ",
                         proc.stdout, re.M), x
    assert profile.summary_line(p) in proc.stdout
    assert not (tmp_path / "checkpoints").exists()
    # beside it, the PyTorch twin's layers (torch is in the dev install), timed in the same rounds
    theirs = profile.Profile.from_json(json.loads(out.read_text())["torch"])
    assert [(y.name, y.kind, y.params) for y in theirs.layers] == [(x.name, x.kind, x.params) for x in p.layers]
    assert theirs.model.params == p.model.params and theirs.batch_size == 10 and theirs.backend == "torch cpu"
    for x, y in zip((*p.layers, p.other, p.model), (*theirs.layers, theirs.other, theirs.model)):
        assert y.time_train_s > 0 or y.name == "other"
        assert re.search(rf"^{re.escape(x.name)} +{1e3 * x.time_forward_s:.3f} +{1e3 * y.time_forward_s:.3f} "
                         rf"+{1e3 * x.time_train_s:.3f} +{1e3 * y.time_train_s:.3f} +", proc.stdout, re.M), x.name
    model_row = re.search(r"^model .* ([\d.]+)×$", proc.stdout, re.M)
    assert float(model_row[1]) == pytest.approx(theirs.model.time_train_s / p.model.time_train_s, abs=0.006)

