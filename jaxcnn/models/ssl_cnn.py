"""The self-supervised study's base CNN: a conv trunk (saved/loaded by pretraining) and a dense head."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.models.layers import BatchNorm, pool

# dropout 0.3: the value the SSL study's runs used (configs/ssl_init.py); the class default was 0.25.
DEFAULTS = {"widths": (16, 32, 64), "hidden": 128, "dropout": 0.3, "probe": False}
HEAD = ("head2",)  # ("head",) for a linear probe
TORCH_NAMES = None
FROZEN_TRAINS = None
TORCH_CONV_INIT = "default"  # model.init=torch: PyTorch's default Conv init (layers.torch_init)
LEAKY_SLOPE = 0.1
HEAD_DROPOUT = 0.5


def leaky_relu(x: jax.Array) -> jax.Array:
    return nnx.leaky_relu(x, LEAKY_SLOPE)


def check_widths(widths) -> tuple[int, ...]:
    widths = tuple(widths) if isinstance(widths, Sequence) and not isinstance(widths, str) else widths
    if (not isinstance(widths, tuple) or not widths
            or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
        raise ValueError(f"model.widths={widths!r} must be a non-empty list of ints >= 1")
    return widths


class SSLTrunk(nnx.Module):
    """Per width w: conv 3×3 pad 1 → BatchNorm → LeakyReLU(0.1) → max pool 2/2 (floor) → Dropout."""

    def __init__(self, in_channels: int, widths: Sequence[int], dropout: float, *, dtype=None, rngs: nnx.Rngs):
        ins = (in_channels, *widths[:-1])
        self.convs = nnx.List([nnx.Conv(i, o, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype, rngs=rngs)
                               for i, o in zip(ins, widths)])
        self.bns = nnx.List([BatchNorm(o, dtype=dtype, rngs=rngs) for o in widths])
        self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for conv, bn in zip(self.convs, self.bns):
            x = self.dropout(pool(leaky_relu(bn(conv(x))), "max", 2))
        return x


class SSLCNN(nnx.Module):
    """`trunk` (16/32/64 filters by default) → flatten → Dense(hidden) → LeakyReLU(0.1) → Dropout(0.5) → Dense.

    `probe=True` makes a linear probe: the head is one Dense layer `head` on the flattened features
    and only it trains (`jaxcnn.train.transfer.trainable`); the trunk, training nothing, then computes
    as a fixed feature extractor (running BatchNorm statistics, no dropout: `transfer.train_view`).

    Each block halves the map (floor), so 28×28 → 14 → 7 → 3 and 32×32 → 4; the first dense layer's
    input size follows from the input shape. With the defaults, 10 classes and 28×28×1 inputs it has
    98,666 parameters. `features(x)` is the trunk output (N, H/8, W/8, 64).
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (28, 28, 1),
                 widths: Sequence[int] = DEFAULTS["widths"], hidden: int = DEFAULTS["hidden"],
                 dropout: float = DEFAULTS["dropout"], probe: bool = DEFAULTS["probe"], *, dtype=None,
                 rngs: nnx.Rngs):
        widths = check_widths(widths)
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"model.hidden={hidden!r} must be an int >= 1")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"model.dropout={dropout!r} must be a number in [0, 1)")
        height, width, channels = input_shape
        out_h, out_w = height, width
        for _ in widths:
            out_h, out_w = out_h // 2, out_w // 2
        if out_h < 1 or out_w < 1:
            raise ValueError(f"SSLCNN with {len(widths)} blocks needs inputs of at least {2 ** len(widths)} px, "
                             f"not data.image_size={height}×{width}")
        if not isinstance(probe, bool):
            raise ValueError(f"model.probe={probe!r} must be True or False")
        self.probe = probe
        self.trunk = SSLTrunk(channels, widths, dropout, dtype=dtype, rngs=rngs)
        features = widths[-1] * out_h * out_w
        if probe:
            self.head = nnx.Linear(features, num_classes, dtype=dtype, rngs=rngs)
        else:
            self.head1 = nnx.Linear(features, hidden, dtype=dtype, rngs=rngs)
            self.head_dropout = nnx.Dropout(HEAD_DROPOUT, rngs=rngs)
            self.head2 = nnx.Linear(hidden, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The trunk output: NHWC (N, H/8, W/8, widths[-1]) with the default three blocks."""
        return self.trunk(x)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if self.probe:
            return self.head(x.reshape(x.shape[0], -1)).astype(jnp.float32)
        x = self.head_dropout(leaky_relu(self.head1(x.reshape(x.shape[0], -1))))
        return self.head2(x).astype(jnp.float32)


def build(cfg, num_classes: int, input_shape: tuple[int, int, int], dtype, rngs: nnx.Rngs) -> SSLCNN:
    return SSLCNN(num_classes, input_shape, cfg.widths, cfg.hidden, cfg.dropout, cfg.probe, dtype=dtype, rngs=rngs)
