"""Optax optimizers and learning-rate schedules from the `optim` config."""

from __future__ import annotations

import ml_collections
import optax


def make_schedule(cfg: ml_collections.ConfigDict, steps_per_epoch: int, epochs: int) -> optax.Schedule:
    """Learning rate per step: constant, step (x decay_factor every decay_epochs) or cosine to 0,
    after an optional linear warmup from 0 over `warmup_epochs`."""
    lr = cfg.learning_rate
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "constant":
        main = optax.constant_schedule(lr)
    elif cfg.schedule == "step":
        main = optax.exponential_decay(lr, int(cfg.decay_epochs * steps_per_epoch), cfg.decay_factor, staircase=True)
    else:
        main = optax.cosine_decay_schedule(lr, max(1, epochs * steps_per_epoch - warmup))
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def make_optimizer(cfg: ml_collections.ConfigDict, steps_per_epoch: int,
                   epochs: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """SGD (momentum, Nesterov, L2 weight decay as in PyTorch), Adam (L2 as in PyTorch) or AdamW.

    Returns:
      The transformation and its schedule (for logging the learning rate).
    """
    schedule = make_schedule(cfg, steps_per_epoch, epochs)
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay), schedule
    if cfg.name == "sgd":
        core = optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov)
    else:
        core = optax.adam(schedule)
    if cfg.weight_decay:
        core = optax.chain(optax.add_decayed_weights(cfg.weight_decay), core)
    return core, schedule
