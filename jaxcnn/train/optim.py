"""Optax optimizers and learning-rate schedules from the `optim` config.

The numeric hyperparameters (learning rate, momentum, weight decay) live in the optimizer state
through `optax.inject_hyperparams`, and the schedule is a shape (peak 1) scaled by the learning rate
in that state. So one transformation serves every member of a group of runs that differ only in
those numbers: their stacked states are updated by one vmapped step (`jaxcnn.train.trainer`).
"""

from __future__ import annotations

import ml_collections
import optax

# Config keys that must be equal for runs to share one optimizer transformation.
STATIC_KEYS = ("name", "nesterov", "schedule", "warmup_epochs", "decay_epochs", "decay_factor")
# Config keys that are hyperparameters in the optimizer state, one value per group member.
HYPERPARAMS = ("learning_rate", "momentum", "weight_decay")


def make_schedule_shape(cfg: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """Learning-rate multiplier per step, peak 1: constant, step (x decay_factor every
    decay_epochs) or cosine to 0, after an optional linear warmup from 0 over `warmup_epochs`."""
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(1.0)
    elif cfg.schedule == "step":
        main = optax.exponential_decay(1.0, int(cfg.decay_epochs * steps_per_epoch), cfg.decay_factor, staircase=True)
    else:
        main = optax.cosine_decay_schedule(1.0, max(1, epochs * steps_per_epoch - warmup))
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, 1.0, warmup), main], [warmup])


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """The learning rate per step (for logging): `learning_rate` times the schedule shape."""
    shape = make_schedule_shape(cfg, steps_per_epoch, epochs)
    return lambda count: cfg.learning_rate * shape(count)


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   epochs: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD (momentum, Nesterov, L2 weight decay as in PyTorch), Adam (L2 as in PyTorch) or AdamW
    (decoupled decay, as `optax.adamw`), with `cfg`'s numbers injected as hyperparameters.

    Returns:
      The transformation and its learning-rate schedule (for logging).
    """
    shape = make_schedule_shape(cfg, steps_per_epoch, epochs)

    def scale_by_lr(learning_rate):
        return optax.scale_by_schedule(lambda count: -learning_rate * shape(count))

    def factory(learning_rate, momentum, weight_decay):
        if cfg.name == "adamw":
            return optax.chain(optax.scale_by_adam(), optax.add_decayed_weights(weight_decay),
                               scale_by_lr(learning_rate))
        core = (optax.trace(decay=momentum, nesterov=cfg.nesterov) if cfg.name == "sgd"
                else optax.scale_by_adam())
        return optax.chain(optax.add_decayed_weights(weight_decay), core, scale_by_lr(learning_rate))

    tx = optax.inject_hyperparams(factory)(**{k: float(cfg[k]) for k in HYPERPARAMS})
    return tx, make_schedule(cfg, steps_per_epoch, epochs)
