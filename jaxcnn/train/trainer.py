"""`Trainer`: one model (or a group of models trained as one program), its optimizer and its
compiled epoch over device-resident training data.

Shared by `train_and_evaluate`, the study runner and the benchmark, so all time the same code.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxcnn.config import flatten_config
from jaxcnn.data.device import epoch_permutation, make_preprocess
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, compiler_options
from jaxcnn.train import init, sharding, transfer
from jaxcnn.train.init import model_input_shape
from jaxcnn.train.optim import HYPERPARAMS, make_optimizer
from jaxcnn.train.steps import classification, init_metrics, make_epoch_fns, resolve_loop, resolve_steps_per_call

# progress(step within the epoch, [loss_sum, correct, count] per member so far, shape (members, 3))
Progress = Callable[[int, np.ndarray], None]


# Keys in which the members of one group may differ: everything else must be equal.
GROUP_FREE_KEYS = ("variant", "seed", *(f"optim.{k}" for k in HYPERPARAMS),
                   "train.log_every", "checkpoint.keep", "report.grid_size", "report.layer_profile", "report.train_report", "report.test_index")


def check_trainable(config: ml_collections.ConfigDict, num_examples: int, num_classes: int) -> None:
    """Everything `Trainer` would refuse about `config` on this data, checked without training or
    writing anything: batch vs data size and device count, the model (built abstractly), the
    transfer and SSL settings. Raises ConfigError."""
    mesh = sharding.make_mesh(config.get("mesh", 0))
    sharding.check_batch(config.train.batch_size, mesh, "train.batch_size")
    sharding.check_batch(config.train.eval_batch_size, mesh, "train.eval_batch_size")
    if num_examples < config.train.batch_size:
        raise ConfigError(f"train.batch_size={config.train.batch_size} is larger than the {num_examples} "
                          "training images")
    nnx.eval_shape(lambda: build_model(config.model, num_classes, model_input_shape(config), config.seed))
    init.check(config)


def group_key(config: ml_collections.ConfigDict) -> str:
    """Configs with equal keys can train together as one vmapped program (`Trainer`)."""
    flat = flatten_config(config)
    return json.dumps({k: v for k, v in sorted(flat.items()) if k not in GROUP_FREE_KEYS})


class Trainer:
    """Builds the models and optimizers of one or more configs, puts the training images on device
    once and compiles one epoch strategy (`config.train.loop`, or `loop`).

    Several configs that share a `group_key` (they differ only in seed, learning rate, momentum,
    weight decay) train as one program: their states are stacked and one `jax.vmap`-ed step updates
    them all, each member with its own initialisation, shuffle and augmentation keys, exactly as
    when it trains alone. Member objects (`models[g]`, `optimizers[g]`) hold the state between
    epochs, so checkpoints and evaluation work per member.

    `models`: the members' initialised models (`jaxcnn.train.init.initialise`); by default each is
    initialised here, which loads converted weights or a trunk but never pretrains one.
    """

    def __init__(self, configs: ml_collections.ConfigDict | Sequence[ml_collections.ConfigDict],
                 images: np.ndarray, labels: np.ndarray, num_classes: int, loop: str | None = None,
                 models: Sequence[nnx.Module] | None = None):
        configs = [configs] if isinstance(configs, ml_collections.ConfigDict) else list(configs)
        keys = {group_key(c) for c in configs}
        if len(keys) != 1:
            raise ConfigError("configs trained as one group must differ only in "
                              f"{', '.join(GROUP_FREE_KEYS)}; these do not: {_differing(configs)}")
        self.configs = configs
        config = configs[0]
        self.size = len(configs)
        self.batch_size = config.train.batch_size
        self.num_examples = len(labels)
        self.steps = self.num_examples // self.batch_size
        for c in configs:
            check_trainable(c, self.num_examples, num_classes)
        self.mesh = sharding.make_mesh(config.get("mesh", 0))
        self.replicated = sharding.replicated(self.mesh)
        if models is None:
            models = [init.initialise(c, num_classes)[0] for c in configs]
        if len(models) != len(configs):
            raise ValueError(f"{len(models)} models for {len(configs)} configs")
        self.models, self.optimizers, self.schedules = [], [], []
        self.wrt = transfer.trainable(config)
        for c, model in zip(configs, models):
            tx, schedule = make_optimizer(c.optim, self.steps, c.train.epochs)
            model.train()
            self.models.append(model)
            self.optimizers.append(nnx.Optimizer(model, tx, wrt=self.wrt))
            self.schedules.append(schedule)
        self.preprocess = make_preprocess(config.data)
        self.images, self.labels = sharding.put((images, labels.astype(np.int32)), self.replicated)
        seeds = [jax.random.key(c.seed) for c in configs]
        self.shuffle_keys = [jax.random.fold_in(k, 1) for k in seeds]
        self.augment_keys = [jax.random.fold_in(k, 2) for k in seeds]
        self.loop = resolve_loop(loop or config.train.loop, config.model)
        graphdef, _ = nnx.split((transfer.train_view(self.models[0], self.wrt), self.optimizers[0]))
        self.constrain = sharding.shard_batch(self.mesh)
        self.compiler_options = compiler_options(config.model)
        # Between epochs the state lives in the member objects: one call stacks it, one unstacks.
        self._stack = jax.jit(lambda states: jax.tree.map(lambda *xs: jnp.stack(xs), *states))
        self._unstack = jax.jit(lambda state: [jax.tree.map(lambda x: x[g], state) for g in range(self.size)])
        carry = (self._state(), self._metrics(), jnp.int32(0))
        self._carry_def = jax.tree.structure(carry)
        self._metrics_at = len(jax.tree.leaves(carry[0]))  # the metrics' place among the carry's leaves
        self.steps_per_call = resolve_steps_per_call(config.train.steps_per_call, self.loop, self.steps,
                                                     self.steps * config.train.epochs)
        step_fn, epoch_fn = make_epoch_fns(graphdef, classification(self.preprocess, self.constrain),
                                           grouped=self.size > 1, wrt=self.wrt, compiler_options=self.compiler_options,
                                           carry_def=self._carry_def, steps_per_call=self.steps_per_call)
        t0 = time.perf_counter()
        fn = epoch_fn if self.loop == "scan" else step_fn
        self._train_fn = fn.lower(jax.tree.leaves(carry), self._epoch_data(1)).compile()  # takes the carry's leaves
        self.compile_time = time.perf_counter() - t0

    @property
    def model(self) -> nnx.Module:
        return self.models[0]

    def stacked(self, states: list):
        """Members' states (or parts of them) stacked on a leading axis (a single member's as it is),
        replicated over the mesh."""
        return sharding.put(states[0] if self.size == 1 else self._stack(states), self.replicated)

    def _state(self):
        return self.stacked([nnx.state(pair) for pair in zip(self.models, self.optimizers)])

    def _metrics(self) -> jax.Array:
        metrics = init_metrics() if self.size == 1 else jnp.zeros((self.size, 3), jnp.float32)
        return sharding.put(metrics, self.replicated)

    def _epoch_data(self, epoch: int):
        """Same shuffle and augmentation keys for an epoch however the run got there (resume)."""
        perms = [epoch_permutation(k, epoch, self.num_examples, self.batch_size) for k in self.shuffle_keys]
        keys = [jax.random.fold_in(k, epoch) for k in self.augment_keys]
        if self.size == 1:
            perm, key = perms[0], keys[0]
        else:
            perm, key = jnp.stack(perms), jnp.stack(keys)
        perm = sharding.put(perm, sharding.batch_sharding(self.mesh, leading=perm.ndim - 1))
        return self.images, self.labels, perm, sharding.put(key, self.replicated)

    def train_epoch(self, epoch: int, progress: Progress | None = None, every: int = 20,
                    stop: Callable[[], bool] | None = None) -> np.ndarray | None:
        """Trains one epoch in place; returns [loss_sum, correct, count] per member, (members, 3), on the host.

        With the Python loop, `progress` is called every `every` steps (at the first call of the compiled
        step past each multiple, `steps_per_call` steps a call) and at the end with the members' sums so far;
        the epoch stops early once every member's loss is not finite. When `stop()` turns true between two
        calls (Ctrl-C), the epoch is abandoned: None, and the members' state is not to be used (its buffers
        were donated to the step).
        """
        data = self._epoch_data(epoch)
        leaves = jax.tree.leaves((self._state(), self._metrics(), jnp.int32(0)))
        if self.loop == "scan":
            leaves = self._train_fn(leaves, data)
        else:
            k = self.steps_per_call
            for i in range(k, self.steps + 1, k):
                if stop is not None and stop():
                    return None
                leaves = self._train_fn(leaves, data)
                if progress is not None and (i // every > (i - k) // every or i == self.steps):
                    sums = np.asarray(leaves[self._metrics_at]).reshape(self.size, 3)
                    progress(i, sums)
                    if not np.isfinite(sums[:, 0]).any():
                        break
        state, metrics, _ = self._carry_def.unflatten(leaves)
        metrics = np.asarray(metrics).reshape(self.size, 3)
        states = [state] if self.size == 1 else self._unstack(state)
        for pair, member_state in zip(zip(self.models, self.optimizers), states):
            nnx.update(pair, member_state)
        if progress is not None and self.loop == "scan":
            progress(self.steps, metrics)
        return metrics


def _differing(configs: Sequence[ml_collections.ConfigDict]) -> str:
    flats = [flatten_config(c) for c in configs]
    keys = sorted(k for k in set().union(*flats) if k not in GROUP_FREE_KEYS
                  and len({json.dumps(f.get(k)) for f in flats}) > 1)
    return "; ".join(f"{k}: {sorted({json.dumps(f.get(k)) for f in flats})}" for k in keys)
