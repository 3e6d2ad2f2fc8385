"""Device-side data: datasets stay on the accelerator as uint8; batches are gathered by index,
converted, normalised and augmented inside the jitted step."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxcnn.data import augment

Preprocess = Callable[[jax.Array, "jax.Array | None"], jax.Array]


def make_preprocess(data: ml_collections.ConfigDict) -> Preprocess:
    """Returns `preprocess(uint8 NHWC batch, key or None) -> float32 NHWC batch`.

    Converts the batch's channels and size to `data.channels` and `data.image_size`, scales to
    [0, 1], normalises with `data.mean`/`data.std`; with a key (training) it also applies the
    configured augmentation: random resized crop (`data.random_resized_crop`, `rrc_scale`,
    `rrc_ratio`), flip (`data.hflip`), rotation (`data.rotation`) as one affine resampling, then a
    random crop after `data.crop_padding` pixels of zero padding.

    Resizing is `jaxcnn.data.augment.make_resample`: without a key (evaluation) always the same
    antialiased resize, or resize + centre crop with `data.eval_crop_pct`, whichever training
    augmentation keys are set.
    """
    channels = data.channels
    mean = jnp.asarray(data.mean, jnp.float32)
    std = jnp.asarray(data.std, jnp.float32)
    padding = data.crop_padding
    luma = jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    resample = augment.make_resample(data)
    augmented = augment.trains_augmented(data)

    def preprocess(images: jax.Array, key: jax.Array | None = None) -> jax.Array:
        x = images.astype(jnp.float32) / 255.0
        if x.shape[-1] == 3 and channels == 1:
            x = (x @ luma)[..., None]
        crop_key = None
        if key is not None and padding:
            key, crop_key = jax.random.split(key) if augmented else (None, key)
        # Sampling is linear per channel, so gray -> RGB is repeated after sampling (same
        # values as repeating first, a third of the work).
        x = resample(x, key)
        if x.shape[-1] == 1 and channels == 3:
            x = jnp.repeat(x, 3, axis=-1)
        if crop_key is not None:
            x = random_crop(crop_key, x, padding)
        return (x - mean) / std

    return preprocess


def random_crop(key: jax.Array, x: jax.Array, padding: int) -> jax.Array:
    """Per-image random crop of the original size from the batch zero-padded by `padding`."""
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)
    crop = lambda img, o: jax.lax.dynamic_slice(img, (o[0], o[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def epoch_permutation(key: jax.Array, epoch: int, num_examples: int, batch_size: int) -> jax.Array:
    """A seeded shuffle for `epoch`, cut into full batches: int32 (steps, batch_size), on device."""
    steps = num_examples // batch_size
    perm = jax.random.permutation(jax.random.fold_in(key, epoch), num_examples)
    return perm[: steps * batch_size].reshape(steps, batch_size).astype(jnp.int32)


def pad_for_eval(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Pads a split to a whole number of eval batches; returns images, labels, and a validity mask."""
    n = len(labels)
    total = -(-n // batch_size) * batch_size
    pad = total - n
    images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
    labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
    return images, labels, np.arange(total) < n
