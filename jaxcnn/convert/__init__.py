"""PyTorch (timm/torchvision) state dicts -> Flax NNX models, strictly.

Every Flax parameter and batch statistic is named by its module path (`layer1.0.bn1.scale`); a
per-architecture prefix map (`torch_names`) and the leaf rules below give the PyTorch key
(`layer1.0.bn1.weight`). Loading refuses missing, unexpected and mis-shaped keys with the full list.

Leaf rules: conv kernel HWIO <- OIHW `transpose(2, 3, 1, 0)`; dense kernel <- weight `.T`;
BatchNorm scale/bias/mean/var <- weight/bias/running_mean/running_var (`num_batches_tracked` is
dropped; momentum and eps are set in the model to match PyTorch's 0.1 and 1e-5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxcnn.errors import ConversionError

LEAF_NAMES = {"kernel": "weight", "bias": "bias", "scale": "weight", "mean": "running_mean", "var": "running_var"}
IGNORED_SUFFIXES = ("num_batches_tracked",)


def torch_key(path: tuple, torch_names: Mapping[str, str] | None = None) -> str:
    """('layer1', 0, 'bn1', 'scale') -> 'layer1.0.bn1.weight' (after the prefix map)."""
    *module, leaf = (str(p) for p in path)
    prefix = ".".join(module)
    for flax_prefix, torch_prefix in (torch_names or {}).items():
        if prefix == flax_prefix or prefix.startswith(flax_prefix + "."):
            prefix = torch_prefix + prefix[len(flax_prefix):]
            break
    return f"{prefix}.{LEAF_NAMES.get(leaf, leaf)}"


def to_flax(leaf: str, value: np.ndarray) -> np.ndarray:
    """One PyTorch tensor in the layout of the Flax leaf `leaf`."""
    if leaf == "kernel":
        if value.ndim == 4:
            return value.transpose(2, 3, 1, 0)
        if value.ndim == 2:
            return value.T
    return value


def load_torch_state(model: nnx.Module, state_dict: Mapping[str, np.ndarray],
                     torch_names: Mapping[str, str] | None = None, keep_init: Iterable[str] = ()) -> list[str]:
    """Copies `state_dict` (numpy arrays) into `model`'s parameters and batch statistics in place.

    Args:
      keep_init: PyTorch key prefixes (e.g. "fc.") whose Flax parameters keep their fresh
        initialisation (a replaced head); the source's tensors under them are not used.

    Returns:
      The PyTorch keys that were loaded.

    Raises:
      ConversionError: listing every missing, unexpected and mis-shaped key.
    """
    keep_init = tuple(keep_init)
    source = {k: np.asarray(v) for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIXES)}
    state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
    flat = nnx.to_flat_state(state)
    missing, shapes, used, mismatched, new = [], [], [], [], []
    for path, variable in flat:
        key = torch_key(path, torch_names)
        target = variable.get_value() if hasattr(variable, "get_value") else variable.value
        if key.startswith(keep_init):
            new.append((path, target))
            continue
        if key not in source:
            missing.append(f"{key} (Flax {'.'.join(map(str, path))}, shape {tuple(target.shape)})")
            continue
        value = to_flax(str(path[-1]), source[key])
        if value.shape != target.shape:
            shapes.append(f"{key}: source {tuple(source[key].shape)} -> {tuple(value.shape)}, "
                          f"model needs {tuple(target.shape)}")
            mismatched.append(key)
            continue
        used.append(key)
        new.append((path, jnp.asarray(value, target.dtype)))
    unexpected = sorted(k for k in source if k not in used and k not in mismatched and not k.startswith(keep_init))
    problems = []
    if missing:
        problems.append(f"missing in the source: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected in the source: {', '.join(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch: {'; '.join(shapes)}")
    if problems:
        raise ConversionError(f"{type(model).__name__}: the weights do not fit — " + " | ".join(problems))
    nnx.update(model, nnx.from_flat_state(new))
    return used
