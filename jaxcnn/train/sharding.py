"""Data parallelism on JAX's own sharding: a 1-D `Mesh` over the devices (config `mesh`), the batch
sharded along it, parameters, optimizer state and the device-resident dataset replicated.

`jax.jit` compiles one program for the whole mesh: each device gathers and preprocesses its slice of
the batch, and XLA inserts the gradient all-reduce (BatchNorm statistics are over the global batch).
Across hosts the mesh spans every process's devices after `jax.distributed.initialize()` (see
`jaxcnn.cli`); every process runs the same program on the same (replicated) data.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxcnn.errors import ConfigError

AXIS = "data"


def make_mesh(devices: int = 0) -> Mesh:
    """A mesh over the first `devices` devices (0: all of them, across every process)."""
    available = jax.devices()
    if isinstance(devices, bool) or not isinstance(devices, int) or devices < 0 or devices > len(available):
        raise ConfigError(f"config mesh={devices!r} is not valid: use 0 (all devices) or 1..{len(available)} "
                          f"({len(available)} {jax.default_backend()} device{'s' * (len(available) != 1)} here)")
    return Mesh(np.asarray(available[:devices or len(available)]), (AXIS,))


def check_batch(batch_size: int, mesh: Mesh, key: str) -> None:
    """The global batch must split evenly over the mesh."""
    n = mesh.size
    if batch_size % n:
        lower, upper = batch_size // n * n, -(-batch_size // n) * n
        options = " or ".join(str(b) for b in (lower, upper) if b > 0)
        divisors = [d for d in range(n, 0, -1) if batch_size % d == 0 and n % d == 0]
        raise ConfigError(f"config {key}={batch_size} does not split evenly over {n} devices (mesh={n}); "
                          f"use a multiple of {n} such as {options}, or mesh={divisors[0]}")


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, leading: int = 0) -> NamedSharding:
    """Sharding of an array whose axis `leading` is the batch (earlier axes replicated)."""
    return NamedSharding(mesh, P(*([None] * leading), AXIS))


def put(tree: Any, sharding: NamedSharding) -> Any:
    """Places every array of `tree` with `sharding` (a no-op for arrays already placed so).

    Across processes every process must pass the same values (the replicated dataset, parameters
    restored from a checkpoint, permutations from the same key).
    """

    def one(x):
        if isinstance(x, jax.Array) and x.sharding == sharding:
            return x
        if jax.process_count() == 1:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        if isinstance(x, jax.Array) and not x.is_fully_addressable:  # already global: reshard in one program
            return jax.jit(lambda y: y, out_shardings=sharding)(x)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def shard_batch(mesh: Mesh | None):
    """Returns `constrain(x)`: inside a jitted step, asks XLA to split `x`'s batch axis over the mesh
    (identity without a mesh of more than one device)."""
    if mesh is None or mesh.size == 1:
        return lambda x: x
    sharding = batch_sharding(mesh)
    return lambda x: jax.lax.with_sharding_constraint(x, sharding)
