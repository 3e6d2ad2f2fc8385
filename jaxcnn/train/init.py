"""Initialisation: the step between a config and its `Trainer`.

A model starts from its seed (random); then, as the config says, converted ImageNet weights
(`transfer.init`, `jaxcnn.train.transfer`) or a pretrained SSL trunk (`ssl.*`) are loaded into it.
Pretraining a trunk is a job of its own, run before any model is initialised: `pretraining_jobs`
lists the trunks the configs need that are not cached yet and `pretrain_missing` makes them (the
study runner shows them as steps of the study), so initialising never trains.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
from flax import nnx

from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model
from jaxcnn.ssl import pretrain as ssl_pretrain
from jaxcnn.ssl.trunk import is_trunk, load_trunk, read_trunk_meta
from jaxcnn.train import transfer


def model_input_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return (*config.data.image_size, config.data.channels)


def check(config: ml_collections.ConfigDict) -> None:
    """Refuses, without loading or writing anything, initialisation settings that cannot work:
    transfer mode and converted weights that exist and are readable, the SSL method and trunk."""
    _, init = transfer.transfer_config(config)
    if init:
        transfer.read_meta(init)
    if config.get("ssl") is not None and _ssl_method(config) != "random" and config.ssl.trunk:
        read_trunk_meta(config.ssl.trunk)


def _ssl_method(config: ml_collections.ConfigDict) -> str:
    method = ssl_pretrain.check_method(config)
    if method == "random" and config.ssl.trunk:
        raise ConfigError(f"config ssl.method='random' trains from random weights; remove "
                          f"ssl.trunk={config.ssl.trunk!r} or set ssl.method to the trunk's method")
    return method


def trunk_path(config: ml_collections.ConfigDict) -> pathlib.Path | None:
    """The pretrained trunk `config` starts from (`ssl.trunk`, or the cached one); None: no trunk."""
    if config.get("ssl") is None or _ssl_method(config) == "random":
        return None
    return pathlib.Path(config.ssl.trunk) if config.ssl.trunk else ssl_pretrain.cached_trunk_dir(config)


def pretraining_jobs(configs: Sequence[ml_collections.ConfigDict]) -> list[tuple[ml_collections.ConfigDict,
                                                                                  pathlib.Path]]:
    """(config, trunk folder) of each cached trunk the configs need that does not exist yet, each once."""
    jobs: dict[pathlib.Path, ml_collections.ConfigDict] = {}
    for config in configs:
        path = trunk_path(config)
        if path is not None and not config.ssl.trunk and not is_trunk(path):
            jobs.setdefault(path, config)
    return [(config, path) for path, config in jobs.items()]


def pretrain_missing(configs: Sequence[ml_collections.ConfigDict], progress: bool = True,
                     log: Callable[[str], None] = print) -> int:
    """Pretrains every trunk `pretraining_jobs` lists, one after another; returns how many."""
    jobs = pretraining_jobs(configs)
    for i, (config, path) in enumerate(jobs, 1):
        log(f"[pretrain {i}/{len(jobs)}] {config.ssl.method}, seed {config.seed} -> {path}")
        ssl_pretrain.pretrain(config, path, progress=progress)
    return len(jobs)


def initialise(config: ml_collections.ConfigDict, num_classes: int) -> tuple[nnx.Module, dict[str, Any]]:
    """The model of `config` for `num_classes`, initialised as the config says, and what the run
    summary records of it (`init`, `pretrain_time_s`, `trunk`; {} for plain random init).

    Raises:
      ConfigError: converted weights or a trunk that do not fit, or a trunk not pretrained yet
        (run `pretrain_missing` first).
    """
    model = build_model(config.model, num_classes, model_input_shape(config), config.seed)
    transfer.prepare(model, config, num_classes)
    if config.get("ssl") is None:
        return model, {}
    path = trunk_path(config)
    if path is None:
        return model, {"init": "random", "pretrain_time_s": 0.0}
    meta = load_trunk(model, path)
    method = config.ssl.method
    if meta.get("method") != method:
        raise ConfigError(f"ssl.trunk={str(path)!r} was pretrained with method {meta.get('method')!r}, "
                          f"not ssl.method={method!r}; set ssl.method={meta.get('method')!r} or use another trunk")
    return model, {"init": method, "pretrain_time_s": meta["pretrain_time_s"], "trunk": str(path)}
