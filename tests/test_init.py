"""`model.init=torch`: initial weights distributed as PyTorch's, layer by layer, and BatchNorm running
statistics updated as PyTorch's; `model.init=flax` keeps Flax's (and is told apart by the same tests)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats
import torch
import torchvision
from flax import nnx

from jaxcnn.config import stored_config
from jaxcnn.errors import ConfigError
from jaxcnn.convert import torch_key
from jaxcnn.models import build_model, model_config, model_module
from jaxcnn.models.layers import BatchNorm
from tests.helpers import config_module

P_MIN = 1e-3  # Kolmogorov–Smirnov: the same distribution passes (fixed seeds: deterministic)
SMALL_MODELS = [("lenet5", dict(extra_conv_layers=1, activation="tanh"), (28, 28, 1)),
                ("pooling_cnn", dict(pooling="none", first_stride=4), (32, 32, 3)),
                ("ssl_cnn", {}, (28, 28, 1))]


def _layers(model: nnx.Module) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Conv/Linear layers by path: kernel in PyTorch's layout (O, I, kh, kw) or (O, I), and bias."""
    out = {}
    for path, layer in nnx.iter_graph(model):
        if isinstance(layer, (nnx.Conv, nnx.Linear)):
            kernel = np.asarray(layer.kernel[...])
            kernel = kernel.transpose(3, 2, 0, 1) if kernel.ndim == 4 else kernel.T
            bias = None if layer.bias is None else np.asarray(layer.bias[...])
            out[".".join(map(str, path))] = kernel, bias
    return out


def _torch_layer(kernel_shape: tuple[int, ...], bias: bool, seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The PyTorch layer of this shape, as PyTorch initialises it."""
    torch.manual_seed(seed)
    if len(kernel_shape) == 4:
        out_c, in_c, kh, kw = kernel_shape
        layer = torch.nn.Conv2d(in_c, out_c, (kh, kw), bias=bias)
    else:
        layer = torch.nn.Linear(kernel_shape[1], kernel_shape[0], bias=bias)
    return layer.weight.detach().numpy(), None if layer.bias is None else layer.bias.detach().numpy()


def _seeds_of(name: str, keys: dict, shape: tuple, init: str, seeds: int):
    cfg = model_config(name, init=init)
    cfg.update(keys)
    return [_layers(build_model(cfg, 10, shape, seed)) for seed in range(seeds)]


def _same_distribution(ours: np.ndarray, theirs: np.ndarray) -> float:
    """KS p-value on at most 20,000 values of each (enough to see a 10 % wider spread; with millions,
    the last bits of either generator would be found out)."""
    rng = np.random.default_rng(0)
    sample = lambda x: rng.choice(x.ravel(), min(x.size, 20_000), replace=False)  # noqa: E731
    return scipy.stats.ks_2samp(sample(ours), sample(theirs)).pvalue


@pytest.mark.parametrize("name,keys,shape", SMALL_MODELS, ids=[m[0] for m in SMALL_MODELS])
def test_torch_init_is_pytorchs_per_layer(name, keys, shape):
    """Per layer over many seeds: the same distribution as PyTorch's own layer of that shape (KS test),
    within its bounds ±1/√fan_in and filling them; Flax's init fails the same test."""
    seeds = 40
    ours, flax_init = _seeds_of(name, keys, shape, "torch", seeds), _seeds_of(name, keys, shape, "flax", 4)
    for path, (kernel, bias) in ours[0].items():
        theirs = [_torch_layer(kernel.shape, bias is not None, 1000 + s) for s in range(seeds)]
        fan_in = int(np.prod(kernel.shape[1:]))
        bound = np.float32(1 / np.sqrt(fan_in))  # as the float32 weights hold it
        for i, what in enumerate(("kernel", "bias") if bias is not None else ("kernel",)):
            a = np.concatenate([seed[path][i].ravel() for seed in ours])
            b = np.concatenate([t[i].ravel() for t in theirs])
            assert _same_distribution(a, b) > P_MIN, f"{name} {path}.{what}"
            assert np.abs(a).max() <= bound and np.abs(a).max() > 0.9 * bound, f"{name} {path}.{what}"
            assert np.std(a) == pytest.approx(np.std(b), rel=0.1), f"{name} {path}.{what}"
        if path.startswith(("conv", "fc", "head")) or kernel.size >= 150:
            flax_kernels = np.concatenate([seed[path][0].ravel() for seed in flax_init])
            assert _same_distribution(flax_kernels, np.concatenate([t[0].ravel() for t in theirs[:4]])) < P_MIN, path
    # different seeds, different weights; one seed, the same weights
    assert not np.array_equal(ours[0][path][0], ours[1][path][0])
    assert np.array_equal(_seeds_of(name, keys, shape, "torch", 1)[0][path][0], ours[0][path][0])


@pytest.mark.parametrize("name", ["resnet18", "alexnet"])
def test_torch_init_is_torchvisions(name):
    """ResNet-18 (kaiming-normal fan-out convolutions, BatchNorm 1/0, a default Linear) and AlexNet
    (PyTorch's defaults) against torchvision's own models with random weights, layer by layer."""
    seeds = 2
    ours = _seeds_of(name, {}, (64, 64, 3), "torch", seeds)
    theirs = []
    for seed in range(seeds):
        torch.manual_seed(100 + seed)
        theirs.append({k: v.detach().numpy() for k, v in
                       torchvision.models.get_model(name, weights=None, num_classes=10).state_dict().items()})
    for path, (kernel, bias) in ours[0].items():
        for leaf, i in [("kernel", 0)] + ([("bias", 1)] if bias is not None else []):
            key = torch_key((*path.split("."), leaf), model_module(name).TORCH_NAMES)
            a = np.concatenate([seed[path][i].ravel() for seed in ours])
            b = np.concatenate([t[key].ravel() for t in theirs])
            assert ours[0][path][i].shape == theirs[0][key].shape, path
            assert _same_distribution(a, b) > P_MIN, f"{name} {key}"
    model = build_model(model_config(name, init="torch"), 10, (64, 64, 3), 0)
    for _, layer in nnx.iter_graph(model):
        if isinstance(layer, BatchNorm):
            assert layer.unbiased_running_var
            np.testing.assert_array_equal(layer.scale[...], 1.0)
            np.testing.assert_array_equal(layer.bias[...], 0.0)


@pytest.mark.parametrize("init", ["torch", "flax"])
def test_batchnorm_running_statistics(init):
    """Three training batches then evaluation: with model.init=torch the running mean and variance
    and the outputs equal torch.nn.BatchNorm2d's (unbiased running variance); Flax's differ."""
    model = build_model(model_config("ssl_cnn", init=init), 10, (28, 28, 1), 0)
    bn = model.trunk.bns[0]
    reference = torch.nn.BatchNorm2d(bn.num_features)
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = (rng.normal(size=(6, 5, 5, bn.num_features)) * 3 + 1).astype(np.float32)
        y = np.asarray(bn(x, use_running_average=False))
        reference.train()
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1)
        np.testing.assert_allclose(y, expected, atol=2e-5)  # both normalise with the biased batch variance
    np.testing.assert_allclose(bn.mean[...], reference.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    same_var = np.allclose(bn.var[...], reference.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert same_var == (init == "torch")
    reference.eval()
    x = rng.normal(size=(2, 5, 5, bn.num_features)).astype(np.float32)
    same_eval = np.allclose(np.asarray(bn(x, use_running_average=True)),
                            reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).detach().numpy().transpose(0, 2, 3, 1),
                            atol=2e-5)
    assert same_eval == (init == "torch")


def test_lab_configs_start_as_pytorch_and_init_is_checked():
    for name, variants in [("lenet", ["0", "6", "best"]), ("pooling", ["max", "stride"]),
                           ("ssl_init", ["random", "kmeans"]),
                           ("transfer", ["alexnet_scratch", "resnet18_scratch", "resnet18_finetune"])]:
        for variant in variants:
            assert config_module(name).get_config(variant).model.init == "torch", (name, variant)
    lenet = config_module("lenet")
    assert lenet.get_config("3,model.init=flax").model.init == "flax"
    # switching the architecture keeps the initialisation asked for
    assert lenet.get_config("3,model.name=ssl_cnn").model.init == "torch"
    with pytest.raises(ConfigError, match=r"^config model.init='jax' is not valid; valid values: torch, flax$"):
        build_model(lenet.get_config("3,model.init=jax").model, 10, (28, 28, 1), 0)
    # runs stored before model.init existed were Flax-initialised: read so
    stored = lenet.get_config("3").to_dict()
    del stored["model"]["init"]
    assert stored_config(stored).model.init == "flax"
