"""Jitted training and evaluation on device-resident data.

The hot loop uses `nnx.split` once and plain `jax.jit` on (graphdef, state): `nnx.jit` walks the
object graph in Python on every call, which costs more than a whole LeNet step. One step body
serves both epoch strategies (a Python loop of jitted steps, or the whole epoch in `lax.scan`) and
every objective: classification (`classification`) and SSL pretraining (`jaxcnn.ssl.pretrain`) are
each an `Objective`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxcnn.data.device import Preprocess
from jaxcnn.errors import ConfigError
from jaxcnn.models.conv import use_small

Carry = tuple[Any, jax.Array, jax.Array]  # (state of (model, optimizer), [loss_sum, correct, count], step)
EpochData = tuple[jax.Array, jax.Array, jax.Array, jax.Array]  # images, labels, permutation, epoch key
# objective(model, uint8 images, labels, key) -> (mean loss, correct predictions) of one batch
Objective = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]


def resolve_loop(loop: str, model: ml_collections.ConfigDict) -> str:
    """`auto` -> `scan` on GPU/TPU, where it removes per-step dispatch (measured 2.9-4.1× faster on an H100), and
    on the CPU for models whose convolutions take `jaxcnn.models.conv`'s CPU path (`model.conv`: LeNet-5, the
    pooling CNN), whose gradients run as fast in the scan's while loop as in a step (measured 3-19 % faster than
    the Python loop, see README); `python` on the CPU for the others, whose gradients XLA runs as generic loop
    nests inside a while loop (e.g. the pooling CNN with `model.conv=xla`: 30× slower)."""
    if loop != "auto":
        return loop
    if jax.default_backend() != "cpu":
        return "scan"
    return "scan" if use_small(model.get("conv", "xla")) else "python"


# train.steps_per_call=0 (auto): on the CPU, k steps per call once a run has this many steps. Measured
# (LeNet-5 v3, 2-core EPYC, one process, interleaved): per epoch of 40 steps 2 steps per call took 3.7 % less
# time and 4 steps 5.7 % less, of 600 steps 9 % and 11 % less; compiling the program took 1.07 s for 1 step,
# 1.50 s for 2 and 2.17 s for 4 (~0.16 and ~0.25 ms saved per step: 2 pays after ~2,700 steps, 4 over 2 after
# ~5,000). On an accelerator the scanned epoch is the default and the Python loop stays at one step per call.
STEPS_PER_CALL_FROM = ((5_000, 4), (3_000, 2))


def resolve_steps_per_call(value: int, loop: str, steps: int, run_steps: int) -> int:
    """The steps the Python loop's compiled program takes per call (`train.steps_per_call`); 1 for the
    scanned epoch. 0 = auto: on the CPU backend the largest of 4 and 2 whose threshold `run_steps` (the run's
    steps, all epochs) reaches and that divides the epoch's `steps`, else 1. A value given must divide `steps`."""
    if value and steps % value:
        divisors = [d for d in range(1, min(steps, 8) + 1) if steps % d == 0]
        raise ConfigError(f"config train.steps_per_call={value} does not divide an epoch's {steps} steps; use 0 "
                          f"(auto) or a divisor such as {', '.join(map(str, divisors))}")
    if loop == "scan":
        return 1
    if value == 0:
        if jax.default_backend() != "cpu":
            return 1
        return next((k for least, k in STEPS_PER_CALL_FROM if run_steps >= least and steps % k == 0), 1)
    return value


def init_metrics() -> jax.Array:
    return jnp.zeros(3, jnp.float32)


def classification(preprocess: Preprocess, constrain: Callable[[jax.Array], jax.Array] = lambda x: x) -> Objective:
    """Softmax cross-entropy on the preprocessed (augmented with `key`) batch. `constrain` places the
    batch (`jaxcnn.train.sharding.shard_batch`: split over the devices of the mesh)."""

    def objective(model, images, labels, key):
        x, y = constrain(preprocess(images, key)), constrain(labels)
        logits = model(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.sum(jnp.argmax(logits, -1) == y)

    return objective


def make_step(graphdef: nnx.GraphDef, objective: Objective,
              wrt: nnx.filterlib.Filter = nnx.Param) -> Callable[[Carry, EpochData], Carry]:
    """One optimisation step: gather batch `step` of the permutation, take the objective's gradient
    and update the parameters `wrt` selects (the others get no gradient and stay as they are)."""

    def step(carry: Carry, data: EpochData) -> Carry:
        state, metrics, i = carry
        images, labels, perm, key = data
        idx = perm[i]
        model, optimizer = nnx.merge(graphdef, state)
        loss_fn = lambda model: objective(model, images[idx], labels[idx], jax.random.fold_in(key, i))
        (loss, correct), grads = nnx.value_and_grad(loss_fn, has_aux=True, argnums=nnx.DiffState(0, wrt))(model)
        optimizer.update(model, grads)
        metrics = metrics + jnp.stack([loss * idx.shape[0], correct, idx.shape[0]]).astype(jnp.float32)
        return nnx.state((model, optimizer)), metrics, i + 1

    return step


def make_epoch_fns(graphdef: nnx.GraphDef, objective: Objective, grouped: bool = False,
                   wrt: nnx.filterlib.Filter = nnx.Param, compiler_options: dict[str, str] | None = None,
                   carry_def: jax.tree_util.PyTreeDef | None = None, steps_per_call: int = 1):
    """Returns (`step_fn`, `epoch_fn`): a jitted step, or `steps_per_call` steps (for the Python loop), and a
    jitted whole epoch (`lax.scan` over the permutation's rows). Both donate the carry.

    `grouped`: the carry's state and metrics and the data's permutation and key have a leading
    member axis; one `jax.vmap`-ed step updates every member (images, labels and the step are shared).
    `compiler_options`: XLA's, for both (`jaxcnn.models.compiler_options`). `carry_def`: the carry's tree
    structure; both functions then take and return its leaves (a list of arrays) instead: a call with the nnx
    State as its argument spent 0.34 ms per LeNet step flattening it in Python (4.92 vs 4.58 ms per step).
    `steps_per_call`: the steps `step_fn` takes per call, one after another in one program (unrolled, no loop;
    `resolve_steps_per_call`).
    """
    step = make_step(graphdef, objective, wrt)
    if grouped:
        step = jax.vmap(step, in_axes=((0, 0, None), (None, None, 0, 0)), out_axes=(0, 0, None))

    def steps(carry: Carry, data: EpochData) -> Carry:
        for _ in range(steps_per_call):
            carry = step(carry, data)
        return carry

    def epoch(carry: Carry, data: EpochData) -> Carry:
        carry, _ = jax.lax.scan(lambda c, _: (step(c, data), None), carry, length=data[2].shape[-2])
        return carry

    def flat(fn: Callable[[Carry, EpochData], Carry]) -> Callable[[list, EpochData], list]:
        return lambda leaves, data: jax.tree.leaves(fn(carry_def.unflatten(leaves), data))

    step_fn, epoch_fn = (steps, epoch) if carry_def is None else (flat(steps), flat(epoch))
    return (jax.jit(step_fn, donate_argnums=0, compiler_options=compiler_options),
            jax.jit(epoch_fn, donate_argnums=0, compiler_options=compiler_options))


def make_eval_fn(graphdef: nnx.GraphDef, preprocess: Preprocess, batch_size: int, grouped: bool = False,
                 constrain: Callable[[jax.Array], jax.Array] = lambda x: x, **jit_kwargs):
    """Returns jitted `evaluate(model_state, images, labels, mask) -> (loss_sum, correct, predictions,
    confidences)` over a whole split padded to whole batches (`pad_for_eval`); padded rows are masked out.
    `confidences` are the probabilities (softmax) of the predicted classes.
    `grouped`: the state has a leading member axis, and so do the results. `jit_kwargs`: `jax.jit`'s
    (`compiler_options`, `out_shardings`)."""

    def evaluate(state, images, labels, mask):
        model = nnx.merge(graphdef, state)

        def batch(args):
            x, y, m = args
            logits = model(constrain(preprocess(x)))
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            pred = jnp.argmax(logits, -1)
            confidence = jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)
            return jnp.sum(loss * m), jnp.sum((pred == y) * m), pred, confidence

        shape = lambda a: a.reshape(-1, batch_size, *a.shape[1:])
        losses, correct, preds, confidences = jax.lax.map(batch, (shape(images), shape(labels), shape(mask)))
        return losses.sum(), correct.sum(), preds.reshape(-1), confidences.reshape(-1)

    return jax.jit(jax.vmap(evaluate, in_axes=(0, None, None, None)) if grouped else evaluate, **jit_kwargs)


def make_predict_fn(graphdef: nnx.GraphDef, preprocess: Preprocess, compiler_options: dict[str, str] | None = None):
    """Returns jitted `predict(model_state, uint8 images) -> class probabilities`."""

    def predict(state, images):
        return jax.nn.softmax(nnx.merge(graphdef, state)(preprocess(images)), axis=-1)

    return jax.jit(predict, compiler_options=compiler_options)
