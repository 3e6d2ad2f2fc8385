"""The optimizers (hyperparameters injected into their state) equal optax's own SGD/Adam/AdamW."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxcnn.config import default_config
from jaxcnn.train.optim import make_optimizer, make_schedule

STEPS_PER_EPOCH, EPOCHS = 5, 6


def reference(cfg):
    schedule = make_schedule(cfg, STEPS_PER_EPOCH, EPOCHS)
    if cfg.name == "adamw":
        return optax.adamw(schedule, weight_decay=cfg.weight_decay)
    core = (optax.sgd(schedule, momentum=cfg.momentum or None, nesterov=cfg.nesterov) if cfg.name == "sgd"
            else optax.adam(schedule))
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay), core) if cfg.weight_decay else core


@pytest.mark.parametrize("name,momentum,nesterov,weight_decay,schedule,warmup", [
    ("sgd", 0.0, False, 0.0, "constant", 0),
    ("sgd", 0.9, False, 1e-4, "step", 1),
    ("sgd", 0.9, True, 0.0, "cosine", 0),
    ("adam", 0.0, False, 0.0, "cosine", 1),
    ("adam", 0.0, False, 1e-3, "constant", 0),
    ("adamw", 0.0, False, 1e-2, "step", 0),
])
def test_optimizer_equals_optax_reference(name, momentum, nesterov, weight_decay, schedule, warmup):
    cfg = default_config().optim
    cfg.name, cfg.momentum, cfg.nesterov, cfg.weight_decay = name, momentum, nesterov, weight_decay
    cfg.schedule, cfg.warmup_epochs, cfg.decay_epochs, cfg.learning_rate = schedule, warmup, 2, 0.01
    ours, _ = make_optimizer(cfg, STEPS_PER_EPOCH, EPOCHS)
    ref = reference(cfg)
    params = ref_params = {"w": jax.random.normal(jax.random.key(0), (4, 3)), "b": jnp.ones(3)}
    state, ref_state = ours.init(params), ref.init(params)
    for i in range(STEPS_PER_EPOCH * EPOCHS):
        grads = jax.tree.map(lambda p, i=i: jax.random.normal(jax.random.key(i + 1), p.shape), params)
        updates, state = ours.update(grads, state, params)
        ref_updates, ref_state = ref.update(grads, ref_state, ref_params)
        params, ref_params = optax.apply_updates(params, updates), optax.apply_updates(ref_params, ref_updates)
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], rtol=1e-6, atol=1e-7)
    assert not np.allclose(params["w"], jax.random.normal(jax.random.key(0), (4, 3)))  # it did train


def test_hyperparameters_live_in_the_state_and_drive_the_update():
    cfg = default_config().optim
    cfg.name, cfg.learning_rate = "sgd", 0.1
    tx, schedule = make_optimizer(cfg, 10, 1)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    assert float(state.hyperparams["learning_rate"]) == pytest.approx(0.1)
    state.hyperparams["learning_rate"] = jnp.asarray(0.5)  # another group member's value
    updates, _ = tx.update({"w": jnp.ones(2)}, state, params)
    np.testing.assert_allclose(updates["w"], -0.5)
    assert schedule(3) == pytest.approx(0.1)
