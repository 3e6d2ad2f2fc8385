"""`Trainer`: one model, its optimizer and its compiled epoch over device-resident training data.

Shared by `train_and_evaluate` and the benchmark, so both time the same code.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxcnn.config import ConfigError
from jaxcnn.data.device import epoch_permutation, make_preprocess
from jaxcnn.models import build_model
from jaxcnn.train.optim import make_optimizer
from jaxcnn.train.steps import init_metrics, make_epoch_fns

# progress(step within the epoch, [loss_sum, correct, count] so far)
Progress = Callable[[int, np.ndarray], None]


def resolve_loop(loop: str) -> str:
    """`auto` -> `python` on CPU (there a scanned epoch measured 3× slower, see README), `scan` on
    GPU/TPU, where it removes per-step dispatch."""
    if loop != "auto":
        return loop
    return "python" if jax.default_backend() == "cpu" else "scan"


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return (*config.data.image_size, config.data.channels)


class Trainer:
    """Builds the model and optimizer of `config`, puts the training images on device once and
    compiles one epoch strategy (`config.train.loop`, or `loop`)."""

    def __init__(self, config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                 num_classes: int, loop: str | None = None):
        self.config = config
        self.batch_size = config.train.batch_size
        self.num_examples = len(labels)
        self.steps = self.num_examples // self.batch_size
        if self.steps < 1:
            raise ConfigError(f"train.batch_size={self.batch_size} is larger than the {self.num_examples} "
                              "training images")
        self.model = build_model(config.model, num_classes, model_input_shape(config), config.seed)
        tx, self.schedule = make_optimizer(config.optim, self.steps, config.train.epochs)
        self.optimizer = nnx.Optimizer(self.model, tx, wrt=nnx.Param)
        self.preprocess = make_preprocess(config.data)
        self.images, self.labels = jax.device_put(images), jax.device_put(labels.astype(np.int32))
        key = jax.random.key(config.seed)
        self.shuffle_key, self.augment_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
        self.loop = resolve_loop(loop or config.train.loop)
        self.model.train()
        graphdef, state = nnx.split((self.model, self.optimizer))
        step_fn, epoch_fn = make_epoch_fns(graphdef, self.preprocess)
        t0 = time.perf_counter()
        fn = epoch_fn if self.loop == "scan" else step_fn
        self._train_fn = fn.lower((state, init_metrics(), jnp.int32(0)), self._epoch_data(1)).compile()
        self.compile_time = time.perf_counter() - t0

    def _epoch_data(self, epoch: int):
        """Same shuffle and augmentation keys for an epoch however the run got there (resume)."""
        perm = epoch_permutation(self.shuffle_key, epoch, self.num_examples, self.batch_size)
        return self.images, self.labels, perm, jax.random.fold_in(self.augment_key, epoch)

    def train_epoch(self, epoch: int, progress: Progress | None = None, every: int = 20) -> np.ndarray:
        """Trains one epoch in place; returns [loss_sum, correct, count] on the host.

        With the Python loop, `progress` is called every `every` steps and at the end; the epoch
        stops early once the loss is not finite (the caller sees it in the returned sums).
        """
        data = self._epoch_data(epoch)
        carry = (nnx.state((self.model, self.optimizer)), init_metrics(), jnp.int32(0))
        if self.loop == "scan":
            carry = self._train_fn(carry, data)
        else:
            for i in range(1, self.steps + 1):
                carry = self._train_fn(carry, data)
                if progress is not None and (i % every == 0 or i == self.steps):
                    sums = np.asarray(carry[1])
                    progress(i, sums)
                    if not math.isfinite(sums[0]):
                        break
        state, metrics, _ = carry
        metrics = np.asarray(metrics)
        nnx.update((self.model, self.optimizer), state)
        if progress is not None and self.loop == "scan":
            progress(self.steps, metrics)
        return metrics
