"""ResNet-18/34 (He et al. 2016) with the torchvision/timm layout, so their weights load by name.

Attribute names follow the PyTorch modules (`conv1`, `bn1`, `layer1[0].conv1`, `downsample[0]`,
`fc`), so a flattened NNX path `layer1.0.bn1.scale` maps to the state-dict key `layer1.0.bn1.weight`
(`jaxcnn.convert`). PyTorch padding is written out: Flax `'SAME'` gives equal shapes but other
values for the 7×7/2 stem and the 3×3/2 max-pool.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.models.layers import BatchNorm

DEPTHS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)
DEFAULTS: dict = {}  # model.name (resnet18 | resnet34) gives the depth
HEAD = ("fc",)
TORCH_NAMES: dict[str, str] = {}  # attribute names follow timm/torchvision: state-dict keys match as they are
FROZEN_TRAINS = "fc"  # a fixed feature extractor: only the classifier trains
TORCH_CONV_INIT = "kaiming_normal_fan_out"  # model.init=torch: as torchvision's ResNet (fc: the Linear default)


def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
    """PyTorch MaxPool2d(3, stride 2, padding 1): padded cells never win (-inf)."""
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1),
                                 ((0, 0), (1, 1), (1, 1), (0, 0)))


class BasicBlock(nnx.Module):
    def __init__(self, in_features: int, features: int, stride: int, *, dtype=None, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(in_features, features, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                              use_bias=False, dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(features, dtype=dtype, rngs=rngs)
        self.conv2 = nnx.Conv(features, features, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, dtype=dtype,
                              rngs=rngs)
        self.bn2 = BatchNorm(features, dtype=dtype, rngs=rngs)
        if stride != 1 or in_features != features:
            self.downsample = nnx.List([
                nnx.Conv(in_features, features, (1, 1), strides=stride, padding="VALID", use_bias=False,
                         dtype=dtype, rngs=rngs),
                BatchNorm(features, dtype=dtype, rngs=rngs)])
        else:
            self.downsample = None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        if self.downsample is not None:
            conv, bn = self.downsample
            x = bn(conv(x))
        return nnx.relu(x + y)


class ResNet(nnx.Module):
    """ResNet-18 (`depth=18`) or ResNet-34 for NHWC inputs of any size ≥ 32 px and any class count.

    `dtype=jnp.bfloat16` computes in bf16 with float32 parameters. As a fixed feature extractor (only
    `fc` trained) its BatchNorms use their running statistics in training too: `train.transfer.train_view`.
    """

    def __init__(self, num_classes: int = 1000, depth: int = 18, in_channels: int = 3, *, dtype=None,
                 rngs: nnx.Rngs):
        if depth not in DEPTHS:
            raise ValueError(f"ResNet depth={depth!r} is not valid; valid values: {', '.join(map(str, DEPTHS))}")
        self.conv1 = nnx.Conv(in_channels, 64, (7, 7), strides=2, padding=((3, 3), (3, 3)), use_bias=False,
                              dtype=dtype, rngs=rngs)
        self.bn1 = BatchNorm(64, dtype=dtype, rngs=rngs)
        in_features = 64
        for stage, (blocks, features) in enumerate(zip(DEPTHS[depth], WIDTHS), 1):
            layer = []
            for b in range(blocks):
                stride = 2 if b == 0 and stage > 1 else 1
                layer.append(BasicBlock(in_features, features, stride, dtype=dtype, rngs=rngs))
                in_features = features
            setattr(self, f"layer{stage}", nnx.List(layer))
        self.fc = nnx.Linear(512, num_classes, dtype=dtype, rngs=rngs)

    def stages(self, x: jax.Array) -> dict[str, jax.Array]:
        """Activations after the stem and each stage (for parity checks and feature extraction)."""
        out = {}
        x = max_pool_3x3_s2(nnx.relu(self.bn1(self.conv1(x))))
        out["stem"] = x
        for stage in range(1, 5):
            for block in getattr(self, f"layer{stage}"):
                x = block(x)
            out[f"layer{stage}"] = x
        return out

    def features(self, x: jax.Array) -> jax.Array:
        """Global-average-pooled 512-d features (the input of `fc`)."""
        return self.stages(x)["layer4"].mean(axis=(1, 2))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc(self.features(x)).astype(jnp.float32)  # float32 logits also with bf16 compute


def build(cfg, num_classes: int, input_shape: tuple[int, int, int], dtype, rngs: nnx.Rngs) -> ResNet:
    return ResNet(num_classes, int(cfg.name.removeprefix("resnet")), input_shape[2], dtype=dtype, rngs=rngs)
