"""The study's PyTorch loop, the reference `scripts/benchmark.py` times jaxcnn against (kept out of the
installed package: only the benchmark and its tests use it; needs `pip install -e ".[bench]"`).

The data stay in host memory (uint8); every step slices its batch there, scales it to [0, 1] and
copies it to the device, then runs forward, backward and the optimizer step, as the original notebooks did.
"""

from __future__ import annotations

import os
import time

import jax
import ml_collections
import numpy as np

from jaxcnn.benchmark import Result
from jaxcnn.errors import ConfigError
from jaxcnn.train.init import model_input_shape

TORCH_METHOD = "pytorch eager"
TORCH_MISSING = "torch is not installed (pip install -e '.[bench]')"


def describe() -> str:
    import torch

    return f"torch {torch.__version__} on {torch_device()} ({torch.get_num_threads()} threads)"


def torch_device() -> str:
    """The device JAX computes on, as torch names it: `cuda` on a GPU backend (if torch sees one), else `cpu`."""
    import torch

    return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"


def torch_lenet(model_cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int]):
    """The study's LeNet-5 in PyTorch, layer for layer as `jaxcnn.models.lenet.LeNet5` (NCHW)."""
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "sigmoid": nn.Sigmoid}
    pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
    if model_cfg.activation not in acts or model_cfg.pooling not in pools:
        raise ConfigError(f"the PyTorch LeNet-5 has activations {', '.join(acts)} and poolings {', '.join(pools)}; "
                          f"got {model_cfg.activation!r}, {model_cfg.pooling!r}")
    act, pool = acts[model_cfg.activation], pools[model_cfg.pooling]
    height, width, channels = input_shape
    out_h, out_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
    extra = [layer for _ in range(model_cfg.extra_conv_layers) for layer in (nn.Conv2d(16, 16, 3, padding=1), act())]
    return nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=2), act(), pool(2),
        nn.Conv2d(6, 16, 5), act(), *extra, pool(2), nn.Flatten(),
        nn.Linear(16 * out_h * out_w, 120), act(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))


def torch_model(config: ml_collections.ConfigDict, num_classes: int):
    """The PyTorch twin of the config's model: the study's LeNet-5, or torchvision ResNet/AlexNet."""
    if config.model.name == "lenet5":
        return torch_lenet(config.model, num_classes, model_input_shape(config))
    if config.model.name in ("resnet18", "resnet34", "alexnet"):
        import torchvision

        return torchvision.models.get_model(config.model.name, weights=None, num_classes=num_classes)
    raise ConfigError(f"the PyTorch reference covers model.name lenet5, resnet18, resnet34, alexnet; "
                      f"not {config.model.name!r}")


def _torch_optimizer(cfg: ml_collections.ConfigDict, params):
    """The config's optimizer at its base learning rate (schedules do not change the speed)."""
    import torch

    if cfg.name == "sgd":
        return torch.optim.SGD(params, cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    optim = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
    return optim(params, cfg.learning_rate, weight_decay=cfg.weight_decay)


def benchmark_torch(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                    epochs: int, num_classes: int = 10) -> Result:
    """The study's PyTorch loop for `epochs` timed epochs, on `torch_device()` with all CPU threads.

    The data stay in host memory (uint8); every step slices its batch there, scales it to [0, 1]
    and copies it to the device, then runs forward, backward and the optimizer step. For the
    224-px models, as jaxcnn does on the device, the batch is converted to the config's channels and
    size (bilinear), normalised, and laid out channels-last; on CUDA it runs under bf16 autocast.
    """
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(config.seed)
    device = torch_device()
    batch_size = config.train.batch_size
    steps = len(labels) // batch_size
    if steps < 1:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the {len(labels)} training images")
    host_x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    host_y = torch.from_numpy(labels).long()
    height, width, channels = model_input_shape(config)
    big = config.model.name != "lenet5"
    memory_format = torch.channels_last if big else torch.contiguous_format
    model = torch_model(config, num_classes).to(device, memory_format=memory_format)
    mean = torch.tensor(config.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.data.std, device=device).view(1, -1, 1, 1)
    autocast = torch.autocast("cuda", torch.bfloat16, enabled=big and device == "cuda")

    def prepare(x):
        if not big:  # the study's LeNet loop: [0, 1] pixels as they are
            return x
        if x.shape[1] != channels:
            x = x.repeat(1, channels, 1, 1) if channels == 3 else x.mean(1, keepdim=True)
        if x.shape[2:] != (height, width):
            x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
        return ((x - mean) / std).contiguous(memory_format=memory_format)

    optimizer = _torch_optimizer(config.optim, model.parameters())
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)

    times, losses = [], []
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(len(labels), generator=generator)[: steps * batch_size].view(steps, batch_size)
        loss_sum = torch.zeros((), device=device)
        for idx in perm:
            x = prepare(host_x[idx].float().div_(255.0).to(device))
            y = host_y[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                loss = loss_fn(model(x), y)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        losses.append(loss_sum.item() / steps)  # .item() waits for the device
        times.append(time.perf_counter() - t0)
    return Result(TORCH_METHOD, steps * batch_size, tuple(times), tuple(losses), None)
