"""AlexNet with the torchvision layout (timm has none; the weights come from torchvision).

torchvision's `features` and `classifier` are `nn.Sequential`s whose parameter layers sit at
indices 0, 3, 6, 8, 10 and 1, 4, 6; here they are `convs[0..4]` and `fcs[0..2]`, and
`TORCH_NAMES` maps one to the other (`jaxcnn.convert`). The 256×6×6 features are flattened in
PyTorch's C,H,W order so the first classifier layer's weights load unchanged.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

# Flax module path prefix -> torchvision state-dict prefix (`jaxcnn.convert`).
TORCH_NAMES = {**{f"convs.{i}": f"features.{j}" for i, j in enumerate((0, 3, 6, 8, 10))},
               **{f"fcs.{i}": f"classifier.{j}" for i, j in enumerate((1, 4, 6))}}
CONVS = ((64, 11, 4, 2), (192, 5, 1, 2), (384, 3, 1, 1), (256, 3, 1, 1), (256, 3, 1, 1))  # out, kernel, stride, pad
POOL_AFTER = (0, 1, 4)  # MaxPool2d(3, 2) after these convs
DEFAULTS = {"dropout": 0.5}  # the classifier's dropout, as torchvision's
HEAD = ("fcs", 2)
FROZEN_TRAINS = "fcs"  # the study's frozen AlexNet trains its three dense layers, not `features`
TORCH_CONV_INIT = "default"  # model.init=torch: torchvision's AlexNet keeps PyTorch's defaults


def max_pool_3x3_s2_valid(x: jax.Array) -> jax.Array:
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, 2, 2, 1), "VALID")


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch AdaptiveAvgPool2d(size) on NHWC: bin i spans [floor(i·H/size), ceil((i+1)·H/size))."""
    _, h, w, _ = x.shape
    if (h, w) == (size, size):
        return x
    bins = lambda n: [(i * n // size, math.ceil((i + 1) * n / size)) for i in range(size)]
    rows = [jnp.stack([x[:, r0:r1, c0:c1].mean(axis=(1, 2)) for c0, c1 in bins(w)], axis=1) for r0, r1 in bins(h)]
    return jnp.stack(rows, axis=1)


class AlexNet(nnx.Module):
    """torchvision `alexnet`: five convs, three max-pools, 6×6 adaptive average pool, dropout + three dense."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, dropout: float = DEFAULTS["dropout"], *,
                 dtype=None, rngs: nnx.Rngs):
        convs, cin = [], in_channels
        for out, kernel, stride, pad in CONVS:
            convs.append(nnx.Conv(cin, out, (kernel, kernel), strides=stride, padding=((pad, pad), (pad, pad)),
                                  dtype=dtype, rngs=rngs))
            cin = out
        self.convs = nnx.List(convs)
        self.fcs = nnx.List([nnx.Linear(256 * 6 * 6, 4096, dtype=dtype, rngs=rngs),
                             nnx.Linear(4096, 4096, dtype=dtype, rngs=rngs),
                             nnx.Linear(4096, num_classes, dtype=dtype, rngs=rngs)])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """torchvision's `features` then `avgpool`: (N, 6, 6, 256)."""
        for i, conv in enumerate(self.convs):
            x = nnx.relu(conv(x))
            if i in POOL_AFTER:
                x = max_pool_3x3_s2_valid(x)
        return adaptive_avg_pool(x, 6)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        x = x.transpose(0, 3, 1, 2).reshape(x.shape[0], -1)  # C,H,W order, as torch.flatten
        fc1, fc2, fc3 = self.fcs
        x = nnx.relu(fc1(self.dropout(x)))
        x = nnx.relu(fc2(self.dropout(x)))
        return fc3(x).astype(jnp.float32)  # float32 logits also with bf16 compute


def build(cfg, num_classes: int, input_shape: tuple[int, int, int], dtype, rngs: nnx.Rngs) -> AlexNet:
    return AlexNet(num_classes, input_shape[2], cfg.dropout, dtype=dtype, rngs=rngs)
