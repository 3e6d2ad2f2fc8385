"""The pooling study's small CNN: downsampling by a strided first conv, by max pooling or by average pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.models.conv import conv_function
from jaxcnn.models.layers import activation, pool

POOLINGS = ("none", "max", "avg")
FIRST_STRIDES = (1, 4)  # the study's two designs: a stride-4 first conv, or stride 1 and 4×4 pooling
DEFAULTS = {"activation": "relu", "pooling": "max", "hidden": 32, "first_stride": 1,
            "conv": "auto"}  # auto | small | xla: jaxcnn.models.conv
HEAD = ("fc",)
TORCH_NAMES = None
FROZEN_TRAINS = None
TORCH_CONV_INIT = "default"  # model.init=torch: PyTorch's default Conv init (layers.torch_init)
POOL_SIZE = 4


class PoolingCNN(nnx.Module):
    """conv 5×5 pad 2 stride `first_stride` → h, conv 3×3 pad 1 → 2h, [pool 4/4], dense classes (ReLU).

    The study's three ways of shrinking the map 4×: `first_stride=4, pooling="none"`, or
    `first_stride=1` with `pooling="max"` / `"avg"`. The dense layer's input size follows from
    the input shape (8·8·2h at 32×32, 7·7·2h at 28×28). With h=32, 3 classes and 32×32×3 inputs
    each of the three has 33,219 parameters. Inputs are already normalised (device preprocessing).
    """

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (32, 32, 3),
                 hidden: int = DEFAULTS["hidden"], pooling: str = DEFAULTS["pooling"],
                 first_stride: int = DEFAULTS["first_stride"], activation_name: str = DEFAULTS["activation"],
                 conv: str = DEFAULTS["conv"], *, dtype=None, rngs: nnx.Rngs):
        height, width, channels = input_shape
        if pooling not in POOLINGS:
            raise ValueError(f"model.pooling={pooling!r} is not valid; valid values: {', '.join(POOLINGS)}")
        if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"model.hidden={hidden!r} must be an int >= 1")
        if first_stride not in FIRST_STRIDES:
            raise ValueError(f"model.first_stride={first_stride!r} is not valid; valid values: "
                             f"{', '.join(map(str, FIRST_STRIDES))}")
        # conv1: 5×5, padding 2, stride s -> floor((n - 1) / s) + 1; conv2 keeps the size; pool floors.
        out_h, out_w = (height - 1) // first_stride + 1, (width - 1) // first_stride + 1
        if pooling != "none":
            out_h, out_w = out_h // POOL_SIZE, out_w // POOL_SIZE
        if out_h < 1 or out_w < 1:
            raise ValueError(f"PoolingCNN with model.first_stride={first_stride}, model.pooling={pooling!r} "
                             f"needs larger inputs than data.image_size={height}×{width}")
        self.act = activation(activation_name)
        self.pooling = pooling
        fn = conv_function(conv)
        self.conv1 = nnx.Conv(channels, hidden, (5, 5), strides=first_stride, padding=((2, 2), (2, 2)),
                              dtype=dtype, conv_general_dilated=fn, rngs=rngs)
        self.conv2 = nnx.Conv(hidden, 2 * hidden, (3, 3), padding=((1, 1), (1, 1)), dtype=dtype,
                              conv_general_dilated=fn, rngs=rngs)
        self.fc = nnx.Linear(2 * hidden * out_h * out_w, num_classes, dtype=dtype, rngs=rngs)

    def features(self, x: jax.Array) -> jax.Array:
        """The two convolutions (with activations), before pooling: NHWC."""
        return self.act(self.conv2(self.act(self.conv1(x))))

    def __call__(self, x: jax.Array) -> jax.Array:
        x = self.features(x)
        if self.pooling != "none":
            x = pool(x, self.pooling, POOL_SIZE)
        return self.fc(x.reshape(x.shape[0], -1)).astype(jnp.float32)


def build(cfg, num_classes: int, input_shape: tuple[int, int, int], dtype, rngs: nnx.Rngs) -> PoolingCNN:
    return PoolingCNN(num_classes, input_shape, cfg.hidden, cfg.pooling, cfg.first_stride, cfg.activation, cfg.conv,
                      dtype=dtype, rngs=rngs)
