"""The heads that self-supervised pretraining puts on the SSL CNN's trunk (`jaxcnn.ssl.pretrain`):
a mirrored decoder (autoencoder) and a projection MLP (SimCLR)."""

from __future__ import annotations

import jax
from flax import nnx

from jaxcnn.models.layers import BatchNorm
from jaxcnn.models.ssl_cnn import leaky_relu


class Decoder(nnx.Module):
    """The trunk mirrored: per block (deepest first) nearest upsampling to the encoder's size at that
    depth, conv 3×3, BatchNorm, LeakyReLU(0.1); then a 3×3 conv to the image's channels."""

    def __init__(self, widths, channels: int, *, rngs: nnx.Rngs):
        ins = tuple(reversed(widths))
        outs = (*ins[1:], widths[0])
        self.convs = nnx.List([nnx.Conv(i, o, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs) for i, o in zip(ins, outs)])
        self.bns = nnx.List([BatchNorm(o, rngs=rngs) for o in outs])
        self.out = nnx.Conv(widths[0], channels, (3, 3), padding=((1, 1), (1, 1)), rngs=rngs)

    def __call__(self, z: jax.Array, image_hw: tuple[int, int]) -> jax.Array:
        sizes = [image_hw]
        for _ in range(len(self.convs) - 1):
            sizes.append((sizes[-1][0] // 2, sizes[-1][1] // 2))
        for conv, bn, (h, w) in zip(self.convs, self.bns, reversed(sizes)):
            z = jax.image.resize(z, (z.shape[0], h, w, z.shape[-1]), "nearest")
            z = leaky_relu(bn(conv(z)))
        return self.out(z)


class Autoencoder(nnx.Module):
    def __init__(self, trunk: nnx.Module, widths, channels: int, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.decoder = Decoder(widths, channels, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.decoder(self.trunk(x), x.shape[1:3])


class SimCLR(nnx.Module):
    """Trunk → flatten → Dense(proj_hidden) → ReLU → Dense(proj_dim): the embedding NT-Xent compares."""

    def __init__(self, trunk: nnx.Module, features: int, hidden: int, dim: int, *, rngs: nnx.Rngs):
        self.trunk = trunk
        self.proj1 = nnx.Linear(features, hidden, rngs=rngs)
        self.proj2 = nnx.Linear(hidden, dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        f = self.trunk(x)
        return self.proj2(nnx.relu(self.proj1(f.reshape(f.shape[0], -1))))
