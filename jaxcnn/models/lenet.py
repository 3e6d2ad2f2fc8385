"""LeNet-5 (LeCun et al. 1998) as in the study, with activation, pooling and depth as parameters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxcnn.models.conv import conv_function, cpu_compiler_options
from jaxcnn.models.layers import activation, check_pooling, pool

# The facts the rest of jaxcnn reads about each architecture (see `jaxcnn.models`): config keys with
# their defaults, the classifier head's module path, PyTorch key names, what `transfer.mode=frozen` trains.
DEFAULTS = {"activation": "relu", "pooling": "avg", "extra_conv_layers": 0,
            "conv": "auto"}  # auto | small | xla: jaxcnn.models.conv (auto: the small-conv path on the CPU)
HEAD = ("fc3",)
TORCH_NAMES = None  # no pretrained PyTorch weights to convert
FROZEN_TRAINS = None
TORCH_CONV_INIT = "default"  # model.init=torch: PyTorch's default Conv init (layers.torch_init)


class LeNet5(nnx.Module):
    """conv 5×5 pad 2 → C, pool 2/2, conv 5×5 valid → 16, [conv 3×3 pad 1 16→16]×extra, pool 2/2,
    dense 120, dense 84, dense classes. With defaults on 28×28×1 inputs: 61,706 parameters.
    `dtype=jnp.bfloat16` computes in bf16 with float32 parameters and float32 logits."""

    def __init__(self, num_classes: int = 10, input_shape: tuple[int, int, int] = (28, 28, 1),
                 activation_name: str = DEFAULTS["activation"], pooling: str = DEFAULTS["pooling"],
                 extra_conv_layers: int = DEFAULTS["extra_conv_layers"], conv: str = DEFAULTS["conv"],
                 *, dtype=None, rngs: nnx.Rngs):
        height, width, channels = input_shape
        if not isinstance(extra_conv_layers, int) or extra_conv_layers < 0:
            raise ValueError(f"model.extra_conv_layers={extra_conv_layers!r} must be an int >= 0")
        out_h, out_w = (height // 2 - 4) // 2, (width // 2 - 4) // 2
        if out_h < 1 or out_w < 1:
            raise ValueError(f"LeNet5 needs inputs of at least 12×12 pixels, got data.image_size={height}×{width}")
        self.act = activation(activation_name)
        self.pooling = check_pooling(pooling)
        fn = conv_function(conv)
        self.conv1 = nnx.Conv(channels, 6, (5, 5), padding=2, dtype=dtype, conv_general_dilated=fn, rngs=rngs)
        self.conv2 = nnx.Conv(6, 16, (5, 5), padding="VALID", dtype=dtype, conv_general_dilated=fn, rngs=rngs)
        self.extra = nnx.List([nnx.Conv(16, 16, (3, 3), padding=1, dtype=dtype, conv_general_dilated=fn, rngs=rngs)
                               for _ in range(extra_conv_layers)])
        self.fc1 = nnx.Linear(16 * out_h * out_w, 120, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(120, 84, dtype=dtype, rngs=rngs)
        self.fc3 = nnx.Linear(84, num_classes, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = pool(self.act(self.conv1(x)), self.pooling, 2)
        x = self.act(self.conv2(x))
        for conv in self.extra:
            x = self.act(conv(x))
        x = pool(x, self.pooling, 2)
        x = x.reshape(x.shape[0], -1)
        x = self.act(self.fc1(x))
        x = self.act(self.fc2(x))
        return self.fc3(x).astype(jnp.float32)


def compiler_options(cfg) -> dict[str, str] | None:
    """XLA options for the programs that train and run this model: on the CPU with the small-conv path (every
    LeNet convolution takes it), YNNPACK fusion off (`conv.cpu_compiler_options`: measured faster)."""
    return cpu_compiler_options(cfg.conv)


def build(cfg, num_classes: int, input_shape: tuple[int, int, int], dtype, rngs: nnx.Rngs) -> LeNet5:
    return LeNet5(num_classes, input_shape, cfg.activation, cfg.pooling, cfg.extra_conv_layers, cfg.conv, dtype=dtype,
                  rngs=rngs)
