"""The study's PyTorch loop, the reference `scripts/benchmark.py` times jaxcnn against (kept out of the
installed package: only the benchmark and its tests use it; needs `pip install -e ".[bench]"`).

The data stay in host memory (uint8); every step slices its batch there, scales it to [0, 1] and
copies it to the device, then runs forward, backward and the optimizer step, as the original notebooks did.
"""

from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from jaxcnn.benchmark import Contender, Result, measure
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


ACTIVATIONS = ("relu", "tanh", "elu", "sigmoid")  # jaxcnn.models.layers.ACTIVATIONS, by name
TORCHVISION = ("resnet18", "resnet34", "alexnet")


def _activation(name: str):
    from torch import nn

    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "elu": nn.ELU, "sigmoid": nn.Sigmoid}
    if name not in acts:
        raise ConfigError(f"the PyTorch twins have activations {', '.join(acts)}; got {name!r}")
    return acts[name]()


def _pool(kind: str, size: int):
    from torch import nn

    pools = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}
    if kind not in pools:
        raise ConfigError(f"the PyTorch twins have poolings {', '.join(pools)}; got {kind!r}")
    return pools[kind](size)  # stride = size, floor mode: as jaxcnn.models.layers.pool


def torch_lenet(model_cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int]):
    """The study's LeNet-5 in PyTorch, layer for layer as `jaxcnn.models.lenet.LeNet5` (NCHW), with its
    module names (conv1, conv2, extra.N, fc1, fc2, fc3)."""
    from torch import nn

    height, width, channels = input_shape
    out_h, out_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2

    class LeNet5(nn.Module):
        def __init__(self):
            super().__init__()
            self.act, self.pool = _activation(model_cfg.activation), _pool(model_cfg.pooling, 2)
            self.conv1 = nn.Conv2d(channels, 6, 5, padding=2)
            self.conv2 = nn.Conv2d(6, 16, 5)
            self.extra = nn.ModuleList(nn.Conv2d(16, 16, 3, padding=1) for _ in range(model_cfg.extra_conv_layers))
            self.fc1 = nn.Linear(16 * out_h * out_w, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)
            self.flattened = {"fc1": (out_h, out_w)}  # dense layers after a flatten: the map's (height, width)

        def forward(self, x):
            x = self.pool(self.act(self.conv1(x)))
            x = self.act(self.conv2(x))
            for conv in self.extra:
                x = self.act(conv(x))
            x = self.pool(x).flatten(1)
            return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    return LeNet5()


def torch_pooling_cnn(model_cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int]):
    """The pooling study's CNN in PyTorch, as `jaxcnn.models.pooling.PoolingCNN` (conv1, conv2, fc)."""
    from torch import nn

    from jaxcnn.models.pooling import POOL_SIZE

    height, width, channels = input_shape
    hidden, stride = model_cfg.hidden, model_cfg.first_stride
    out_h, out_w = (height - 1) // stride + 1, (width - 1) // stride + 1
    if model_cfg.pooling != "none":
        out_h, out_w = out_h // POOL_SIZE, out_w // POOL_SIZE

    class PoolingCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = _activation(model_cfg.activation)
            self.pool = nn.Identity() if model_cfg.pooling == "none" else _pool(model_cfg.pooling, POOL_SIZE)
            self.conv1 = nn.Conv2d(channels, hidden, 5, stride=stride, padding=2)
            self.conv2 = nn.Conv2d(hidden, 2 * hidden, 3, padding=1)
            self.fc = nn.Linear(2 * hidden * out_h * out_w, num_classes)
            self.flattened = {"fc": (out_h, out_w)}

        def forward(self, x):
            x = self.pool(self.act(self.conv2(self.act(self.conv1(x)))))
            return self.fc(x.flatten(1))

    return PoolingCNN()


def torch_ssl_cnn(model_cfg: ml_collections.ConfigDict, num_classes: int, input_shape: tuple[int, int, int]):
    """The SSL study's CNN in PyTorch, as `jaxcnn.models.ssl_cnn.SSLCNN`: trunk.convs.N, trunk.bns.N
    (BatchNorm2d, momentum 0.1, eps 1e-5), head1 and head2 (or the probe's head)."""
    from torch import nn

    from jaxcnn.models.ssl_cnn import HEAD_DROPOUT, LEAKY_SLOPE

    height, width, channels = input_shape
    widths = tuple(model_cfg.widths)
    out_h, out_w = height >> len(widths), width >> len(widths)
    features = widths[-1] * out_h * out_w

    class Trunk(nn.Module):
        def __init__(self):
            super().__init__()
            ins = (channels, *widths[:-1])
            self.convs = nn.ModuleList(nn.Conv2d(i, o, 3, padding=1) for i, o in zip(ins, widths))
            self.bns = nn.ModuleList(nn.BatchNorm2d(o, momentum=0.1, eps=1e-5) for o in widths)
            self.act, self.pool, self.dropout = nn.LeakyReLU(LEAKY_SLOPE), nn.MaxPool2d(2), nn.Dropout(model_cfg.dropout)

        def forward(self, x):
            for conv, bn in zip(self.convs, self.bns):
                x = self.dropout(self.pool(self.act(bn(conv(x)))))
            return x

    class SSLCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.trunk = Trunk()
            self.probe = model_cfg.probe
            if self.probe:
                self.head = nn.Linear(features, num_classes)
            else:
                self.head1 = nn.Linear(features, model_cfg.hidden)
                self.act, self.head_dropout = nn.LeakyReLU(LEAKY_SLOPE), nn.Dropout(HEAD_DROPOUT)
                self.head2 = nn.Linear(model_cfg.hidden, num_classes)
            self.flattened = {"head" if self.probe else "head1": (out_h, out_w)}

        def forward(self, x):
            x = self.trunk(x).flatten(1)
            if self.probe:
                return self.head(x)
            return self.head2(self.head_dropout(self.act(self.head1(x))))

    return SSLCNN()


TWINS = {"lenet5": torch_lenet, "pooling_cnn": torch_pooling_cnn, "ssl_cnn": torch_ssl_cnn}


def torch_model(config: ml_collections.ConfigDict, num_classes: int):
    """The PyTorch twin of the config's model: the study's LeNet-5, pooling CNN and SSL CNN (module
    names as jaxcnn's, see `twin_state_dict`), or torchvision ResNet/AlexNet."""
    if config.model.name in TWINS:
        return TWINS[config.model.name](config.model, num_classes, model_input_shape(config))
    if config.model.name in TORCHVISION:
        import torchvision

        return torchvision.models.get_model(config.model.name, weights=None, num_classes=num_classes)
    raise ConfigError(f"the PyTorch reference covers model.name {', '.join((*TWINS, *TORCHVISION))}; "
                      f"not {config.model.name!r}")


def twin_state_dict(model, twin) -> dict[str, np.ndarray]:
    """The parameters and BatchNorm statistics of the jaxcnn NNX `model` as its twin's state dict
    (numpy; the key and layout rules of `jaxcnn.convert`, inverted): conv kernels HWIO -> OIHW,
    dense kernels transposed, BatchNorm scale/bias/mean/var -> weight/bias/running_mean/running_var.
    jaxcnn flattens NHWC maps in H, W, C order and PyTorch NCHW maps in C, H, W order, so the rows
    of each dense layer after a flatten (`twin.flattened`: its name -> the map's height and width) are
    permuted. Keys the model lacks (`num_batches_tracked`) keep the twin's values."""
    from flax import nnx

    from jaxcnn.convert import torch_key

    flattened = getattr(twin, "flattened", {})
    out = {k: v.detach().cpu().numpy() for k, v in twin.state_dict().items()}
    for path, variable in nnx.to_flat_state(nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))):
        value = np.asarray(variable.get_value() if hasattr(variable, "get_value") else variable.value)
        module, leaf = ".".join(map(str, path[:-1])), str(path[-1])
        if leaf == "kernel" and value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif leaf == "kernel" and module in flattened:
            height, width = flattened[module]
            value = value.reshape(height, width, -1, value.shape[-1]).transpose(3, 2, 0, 1).reshape(value.shape[-1], -1)
        elif leaf == "kernel":
            value = value.T
        key = torch_key(path)
        if key not in out or out[key].shape != value.shape:
            raise ValueError(f"{'.'.join(map(str, path))} {value.shape} has no twin: {key} "
                             f"{out[key].shape if key in out else 'missing'}")
        out[key] = value
    return out


def copy_to_twin(model, twin) -> None:
    """Loads the jaxcnn NNX `model`'s parameters and BatchNorm statistics into its PyTorch `twin`
    (every key of the twin, strictly; kept in the twin's dtype)."""
    import torch

    state = {k: torch.from_numpy(np.array(v)) for k, v in twin_state_dict(model, twin).items()}
    twin.load_state_dict(state, strict=True)


def torch_optimizer(cfg: ml_collections.ConfigDict, params, steps_per_epoch: int, epochs: int):
    """The PyTorch equivalent of `jaxcnn.train.optim.make_optimizer`: (optimizer, scheduler), the
    scheduler stepped once per step. SGD (momentum, Nesterov, L2 weight decay added to the
    gradient), Adam (L2) or AdamW (decoupled); schedules constant, step (StepLR), cosine
    (CosineAnnealingLR to 0) after a linear warmup from 0 over `warmup_epochs` (LambdaLR, then
    SequentialLR)."""
    import torch
    from torch.optim import lr_scheduler

    if cfg.name == "sgd":
        optimizer = torch.optim.SGD(params, cfg.learning_rate, momentum=cfg.momentum, nesterov=cfg.nesterov,
                                    weight_decay=cfg.weight_decay)
    else:
        optim = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        optimizer = optim(params, cfg.learning_rate, weight_decay=cfg.weight_decay)
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        main = lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    elif cfg.schedule == "step":
        main = lr_scheduler.StepLR(optimizer, int(cfg.decay_epochs * steps_per_epoch), cfg.decay_factor)
    elif cfg.schedule == "cosine":
        main = lr_scheduler.CosineAnnealingLR(optimizer, max(1, epochs * steps_per_epoch - warmup))
    else:
        raise ConfigError(f"config optim.schedule={cfg.schedule!r} has no PyTorch equivalent here")
    if not warmup:
        return optimizer, main
    ramp = lr_scheduler.LambdaLR(optimizer, lambda step: step / warmup)
    return optimizer, lr_scheduler.SequentialLR(optimizer, [ramp, main], [warmup])


def torch_preprocess(config: ml_collections.ConfigDict, device: str = "cpu", memory_format=None):
    """A function of NCHW float batches in [0, 1] that does what jaxcnn's device preprocessing does: the
    config's channels (repeated gray, or luma weights for RGB -> gray), size (bilinear) and, where the config
    asks for it, normalisation (the LeNet study keeps [0, 1] pixels as they are)."""
    import torch
    import torch.nn.functional as F

    height, width, channels = model_input_shape(config)
    mean = torch.tensor(config.data.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(config.data.std, device=device).view(1, -1, 1, 1)
    normalise = set(config.data.mean) != {0.0} or set(config.data.std) != {1.0}
    luma = torch.tensor([0.299, 0.587, 0.114], device=device).view(1, 3, 1, 1)
    memory_format = memory_format or torch.contiguous_format

    def prepare(x):
        if x.shape[1] != channels:
            x = x.repeat(1, channels, 1, 1) if channels == 3 else (x * luma).sum(1, keepdim=True)
        if x.shape[2:] != (height, width):
            x = F.interpolate(x, (height, width), mode="bilinear", align_corners=False)
        if normalise:
            x = (x - mean) / std
        return x.contiguous(memory_format=memory_format)

    return prepare


def torch_contender(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                    num_classes: int = 10) -> Contender:
    """The study's PyTorch loop, set up to run epochs (`jaxcnn.benchmark.measure` times them), on
    `torch_device()` with all CPU threads.

    The data stay in host memory (uint8); every step slices its batch there, scales it to [0, 1]
    and copies it to the device, then runs forward, backward, the optimizer step and the scheduler
    step (`torch_optimizer`). As jaxcnn does on the device, the batch is converted to the config's
    channels (luma weights for RGB -> gray) and size (bilinear) and normalised, where the config
    asks for it (the LeNet study: [0, 1] pixels as they are); the torchvision models are laid out
    channels-last and on CUDA run under bf16 autocast; on the CPU a config with `model.dtype=bfloat16` runs
    under bf16 autocast too.
    """
    import torch

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(config.seed)
    device = torch_device()
    batch_size = config.train.batch_size
    steps = len(labels) // batch_size
    if steps < 1:
        raise ConfigError(f"train.batch_size={batch_size} is larger than the {len(labels)} training images")
    host_x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    host_y = torch.from_numpy(labels).long()
    big = config.model.name in TORCHVISION
    memory_format = torch.channels_last if big else torch.contiguous_format
    model = torch_model(config, num_classes).to(device, memory_format=memory_format)
    prepare = torch_preprocess(config, device, memory_format)
    # bf16 autocast: the torchvision models on CUDA (as the transfer study would run them), and any model on the
    # CPU when the config asks jaxcnn for bf16 (model.dtype=bfloat16), so that both compute in bf16
    bf16 = (big and device == "cuda") or (device == "cpu" and config.model.dtype == "bfloat16")
    autocast = torch.autocast(device, torch.bfloat16, enabled=bf16)

    optimizer, scheduler = torch_optimizer(config.optim, model.parameters(), steps, config.train.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    generator = torch.Generator().manual_seed(config.seed)

    model.train()

    def epoch(i: int) -> float:
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
            scheduler.step()
            loss_sum += loss.detach()
        return loss_sum.item() / steps  # .item() waits for the device

    return Contender(TORCH_METHOD, steps * batch_size, None, epoch)


def torch_layer_programs(config: ml_collections.ConfigDict, num_classes: int):
    """The per-layer programs of the config's PyTorch twin, to be timed as `jaxcnn.profile` times jaxcnn's
    (`profile_beside` runs them in the same rounds): each conv/dense layer alone at the input shape it sees in
    the model (recorded by forward hooks on one pass at the training batch size), its forward pass (no autograd)
    and forward + backward (the parameters' gradients, and the input's except for the first layer); the whole
    model's forward and forward + backward of the cross-entropy loss; on `torch_device()` with all CPU threads,
    the model in training mode. Returns (programs, finish): `finish(their median times)` is the `Profile`
    (without FLOPs)."""
    import torch
    from torch import nn

    from jaxcnn.profile import LayerCost, Profile

    torch.set_num_threads(os.cpu_count())
    device = torch_device()
    model = torch_model(config, num_classes).to(device).train()
    height, width, channels = model_input_shape(config)
    batch = config.train.batch_size
    generator = torch.Generator().manual_seed(0)
    images = torch.rand((batch, channels, height, width), generator=generator).to(device)
    labels = torch.randint(0, num_classes, (batch,), generator=generator).to(device)
    inputs: dict[str, torch.Size] = {}  # in call order
    modules = {name: m for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}

    def record(name: str):
        def hook(module, args) -> None:  # a pre-hook that returns something replaces the input
            inputs.setdefault(name, args[0].shape)
        return hook

    hooks = [m.register_forward_pre_hook(record(name)) for name, m in modules.items()]
    with torch.no_grad():
        model(images)
    for hook in hooks:
        hook.remove()

    def done() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    def programs(module, x, backward):
        def forward():
            with torch.no_grad():
                module(x)
            done()

        def train():
            module.zero_grad(set_to_none=True)
            x.grad = None
            backward(module(x))
            done()
        return forward, train

    timed = []
    for name, shape in inputs.items():
        x = torch.randn(shape, generator=generator).to(device).requires_grad_(shape != images.shape)
        with torch.no_grad():
            cotangent = torch.randn_like(modules[name](x))
        timed.append(programs(modules[name], x, lambda out, ct=cotangent: out.backward(ct)))
    loss_fn = nn.CrossEntropyLoss()
    timed.append(programs(model, images, lambda out: loss_fn(out, labels).backward()))
    flat = [program for pair in timed for program in pair]
    for program in flat:
        program()  # warm-up

    def finish(medians: list[float]) -> Profile:
        def cost(name: str, module, i: int) -> LayerCost:
            kind = "conv" if isinstance(module, nn.Conv2d) else "dense" if isinstance(module, nn.Linear) else "model"
            params = sum(p.numel() for p in module.parameters())
            return LayerCost(name, kind, "", params, float("nan"), float("nan"), medians[2 * i], medians[2 * i + 1])

        layers = tuple(cost(name, modules[name], i) for i, name in enumerate(inputs))
        return Profile(batch, f"torch {device}", layers, cost("model", model, len(inputs)))

    return flat, finish


def benchmark_torch(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                    epochs: int, num_classes: int = 10, warmup: int = 1) -> Result:
    """`measure` of the `torch_contender` alone: `epochs` timed epochs after `warmup` untimed ones."""
    return measure([torch_contender(config, images, labels, num_classes)], epochs, warmup)[0]
