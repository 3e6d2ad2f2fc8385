"""Config-file arguments (`file.py:variant,key=value,flag`) and config validation.

A config file defines `get_config(arg=None)` and hands `arg` (the text after `:`) to
`build_config`, which applies, in order: the base config, the named variant, flags,
then `key=value` overrides. Every key and variant is checked; a bad one raises
`ConfigError` with a one-line message listing what is valid.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import pathlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import ModuleType
from typing import Any

import ml_collections
from flax import nnx

from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, model_config


def load_config_module(path: str | pathlib.Path) -> ModuleType:
    """Imports a config file (`configs/lenet.py`) as a module; a missing file, a syntax error, an
    error while it runs or a missing `get_config` is a ConfigError naming the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"jaxcnn_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"config file {path}, line {e.lineno}: {e.msg}") from None
    except Exception as e:  # noqa: BLE001 - anything the file raises while it is imported
        raise ConfigError(f"config file {path} fails to load: {type(e).__name__}: {e}") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {path} defines no get_config(arg) function")
    return module


def split_arg(arg: str) -> list[str]:
    """Splits `a,b=[1,2],c` on the commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in arg:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_value(text: str) -> Any:
    """Parses a Python literal (`3`, `1e-3`, `[0,55]`, `True`, `None`); anything else is a string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def leaf_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config, sorted."""
    keys = []
    for name, value in config.items():
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(leaf_keys(value, f"{prefix}{name}."))
        else:
            keys.append(f"{prefix}{name}")
    return sorted(keys)


def set_keys(config: ml_collections.ConfigDict, items: Iterable[tuple[str, Any]], where: str,
             aliases: Sequence[str] = ()) -> None:
    """Sets dotted keys of a locked config with ml_collections' own type checks (an int for a float and
    a list for a tuple are converted); an unknown key or a wrong type is one ConfigError line, naming
    the valid keys (and `aliases`).

    `model.name` goes first and replaces the whole `model` section by that architecture's keys and
    defaults (`jaxcnn.models.model_config`, keeping `model.dtype` and `model.init`): each model has its own keys."""
    for key, value in sorted(items, key=lambda kv: kv[0] != "model.name"):
        if key == "model.name":
            if value != config.model.name:
                with config.unlocked():
                    config.model = model_config(value, config.model.dtype, config.model.init)
                config.lock()
            continue
        if key not in leaf_keys(config):
            raise ConfigError(f"{where}: unknown key {key!r}; valid keys: "
                              f"{', '.join(sorted(aliases) + leaf_keys(config))}")
        _set_leaf(config, key, value, where)


def _set_leaf(config: ml_collections.ConfigDict, key: str, value: Any, where: str) -> None:
    try:
        config.update_from_flattened_dict({key: value})
    except TypeError:
        node = config
        for name in key.split("."):
            node = node[name]
        raise ConfigError(f"{where}: {key}={value!r} has type {type(value).__name__}, "
                          f"expected {type(node).__name__}") from None


def build_config(
    arg: str | None,
    base: Callable[[], ml_collections.ConfigDict],
    variants: Mapping[str, Mapping[str, Any]],
    default_variant: str,
    aliases: Mapping[str, str] | None = None,
    flags: Mapping[str, Mapping[str, Any]] | None = None,
    source: str = "config",
) -> ml_collections.ConfigDict:
    """Builds a config from a config-file argument.

    Args:
      arg: text after `:` in `--config file.py:ARG`, e.g. `3,data=mnist,smoke`; None for defaults.
      base: returns the base ConfigDict (all keys the config may have).
      variants: variant name -> dotted-key overrides.
      default_variant: the variant used when `arg` names none.
      aliases: short key -> dotted key (e.g. `epochs` -> `train.epochs`).
      flags: bare words that apply a set of overrides (e.g. `smoke`).
      source: name of the config file, used in error messages.

    Returns:
      The config, with `config.variant` set to the chosen variant name.
    """
    aliases = dict(aliases or {})
    flags = dict(flags or {})
    config = base()
    config.lock()  # no new keys: set_keys refuses unknown ones
    parts = split_arg(arg or "")
    variant = default_variant
    if parts and "=" not in parts[0] and parts[0] not in flags:
        variant = parts.pop(0)
    if variant not in variants:
        raise ConfigError(
            f"{source}: unknown variant {variant!r}; valid variants: {', '.join(variants)}")
    config.variant = variant
    set_keys(config, variants[variant].items(), f"{source}:{variant}")
    overrides = []
    for part in parts:
        if "=" in part:
            key, text = part.split("=", 1)
            overrides.append((aliases.get(key.strip(), key.strip()), parse_value(text.strip())))
        elif part in flags:
            set_keys(config, flags[part].items(), f"{source}:{part}")
        else:
            raise ConfigError(
                f"{source}: {part!r} is neither key=value nor a flag; valid flags: "
                f"{', '.join(flags) or 'none'} (the variant, if any, comes first)")
    set_keys(config, overrides, source, aliases)
    config.unlock()
    return config


def default_config() -> ml_collections.ConfigDict:
    """Every key a classification run reads, with defaults; study configs change some of them."""
    config = ml_collections.ConfigDict()
    config.variant = ""
    config.seed = 0
    config.mesh = 0  # devices to train on (data parallel, batch split over them); 0 = all
    config.data = ml_collections.ConfigDict(dict(
        # `embedded` (5,000 real MNIST digits, offline), `tfds:NAME` or `NAME` (TFDS), `folder:PATH`.
        source="embedded",
        dir="",  # TFDS data dir; "" = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
        train_split="train",
        test_split="test",
        classes=(),  # class subset, relabelled 0..k-1 in this order; () = all classes
        image_size=(28, 28),  # (height, width) every image is converted to
        channels=1,  # 1 (gray) or 3 (RGB)
        mean=(0.0,),  # per-channel normalisation of [0, 1] pixels
        std=(1.0,),
        max_train=0,  # keep at most this many training images (0 = all)
        max_test=0,
        crop_padding=0,  # train augmentation: random crop after zero-padding by this many pixels
        # Resizing on the device (jaxcnn.data.augment): evaluation is an antialiased resize to
        # image_size, or with eval_crop_pct > 0 the shorter side to image_size / eval_crop_pct and
        # the central image_size (ImageNet); the same whatever train augmentation is set.
        eval_crop_pct=0.0,
        random_resized_crop=False,  # train augmentation: torchvision's RandomResizedCrop
        rrc_scale=(0.08, 1.0),  # its area fraction range
        rrc_ratio=(3 / 4, 4 / 3),  # its aspect (width / height) range
        hflip=False,  # train augmentation: horizontal flip with probability 0.5
        rotation=0.0,  # train augmentation: rotation by ± this many degrees (uniform)
    ))
    # name, dtype (float32, or bfloat16: bf16 compute, float32 parameters and logits), init (torch:
    # PyTorch's default initialisation and BatchNorm statistics; flax: Flax's) and the keys of that
    # architecture (`jaxcnn.models`); `model.name=...` switches to another architecture's keys.
    config.model = model_config("lenet5")
    config.optim = ml_collections.ConfigDict(dict(
        name="adam",  # adam | adamw | sgd
        learning_rate=1e-3,
        momentum=0.0,  # sgd only
        nesterov=False,
        weight_decay=0.0,  # sgd: L2 added to the gradient; adamw: decoupled
        schedule="constant",  # constant | step | cosine
        warmup_epochs=0,
        decay_epochs=10,  # step schedule: multiply by decay_factor every decay_epochs
        decay_factor=0.1,
    ))
    config.train = ml_collections.ConfigDict(dict(
        epochs=20,
        batch_size=100,
        eval_batch_size=1000,
        loop="auto",  # python | scan | auto (measured choice per backend)
        steps_per_call=0,  # python loop: steps per call of the compiled program; 0 = auto (jaxcnn.train.steps)
        log_every=20,  # steps between progress-bar updates
    ))
    config.checkpoint = ml_collections.ConfigDict(dict(keep=3))
    config.report = ml_collections.ConfigDict(dict(
        grid_size=36,  # test images in predictions.png (the misclassified ones first)
        layer_profile=True,  # time and FLOPs per layer in summary.md/json (jaxcnn.profile; a few seconds)
        train_report=True,  # precision/recall/F1 per class on the training images too (one extra evaluation)
        test_index=(),  # test images (0-based) whose predictions summary.md and the study report show
    ))
    return config


COMMON_ALIASES = {
    "data": "data.source",
    "classes": "data.classes",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "optim.learning_rate",
    "seed": "seed",
}

SMOKE_FLAG = {"smoke": {"train.epochs": 2, "data.max_train": 1000, "data.max_test": 500}}


def check_label_fraction(fraction: Any) -> None:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
        raise ConfigError(f"config data.label_fraction={fraction!r} must be a number in (0, 1]")


def _check_choice(value: Any, key: str, valid: tuple) -> None:
    if value not in valid:
        raise ConfigError(f"config {key}={value!r} is not valid; valid values: {', '.join(map(str, valid))}")


def _check_positive(value: Any, key: str, allow_zero: bool = False) -> None:
    if (not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0
            or (value == 0 and not allow_zero)):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"config {key}={value!r} must be a number {bound}")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks the values a run reads (after every override); raises ConfigError on the first bad one."""
    _check_choice(config.data.channels, "data.channels", (1, 3))
    for key in ("mean", "std"):
        if len(config.data[key]) not in (1, config.data.channels):
            raise ConfigError(
                f"config data.{key}={tuple(config.data[key])} needs 1 or {config.data.channels} values "
                f"(data.channels={config.data.channels})")
    if min(config.data.std) <= 0:
        raise ConfigError(f"config data.std={tuple(config.data.std)} must be > 0")
    if len(config.data.image_size) != 2 or min(config.data.image_size) < 1:
        raise ConfigError(f"config data.image_size={config.data.image_size!r} must be (height, width) > 0")
    if len(set(config.data.classes)) != len(config.data.classes):
        raise ConfigError(f"config data.classes={tuple(config.data.classes)} lists a class twice")
    check_label_fraction(config.data.get("label_fraction", 1.0))
    for key in ("max_train", "max_test", "crop_padding"):
        _check_positive(config.data[key], f"data.{key}", allow_zero=True)
    _check_choice(config.optim.name, "optim.name", ("adam", "adamw", "sgd"))
    _check_choice(config.optim.schedule, "optim.schedule", ("constant", "step", "cosine"))
    _check_positive(config.optim.learning_rate, "optim.learning_rate")
    _check_positive(config.optim.momentum, "optim.momentum", allow_zero=True)
    _check_positive(config.optim.weight_decay, "optim.weight_decay", allow_zero=True)
    _check_positive(config.optim.warmup_epochs, "optim.warmup_epochs", allow_zero=True)
    _check_positive(config.optim.decay_epochs, "optim.decay_epochs")
    for key in ("epochs", "batch_size", "eval_batch_size", "log_every"):
        _check_positive(config.train[key], f"train.{key}")
    _check_choice(config.train.loop, "train.loop", ("auto", "python", "scan"))
    _check_positive(config.train.steps_per_call, "train.steps_per_call", allow_zero=True)
    _check_positive(config.checkpoint.keep, "checkpoint.keep")
    # The model checks its own keys: built abstractly (shapes only, no arrays) for these inputs.
    nnx.eval_shape(lambda: build_model(config.model, 2, (*config.data.image_size, config.data.channels), 0))


def stored_config(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """The config of a stored run (config.json, a checkpoint's record), read with this version's keys:
    the stored values over today's defaults, so keys added since hold the default the run used, and
    the model section is its architecture's (keys of other models, which earlier versions stored in
    every config, are dropped)."""
    merged = default_config().to_dict()
    for section, values in stored.items():
        if section == "model":
            model = model_config(values["name"], values.get("dtype", "float32")).to_dict()
            merged["model"] = {**model, **{k: v for k, v in values.items() if k in model}}
        elif isinstance(values, Mapping) and isinstance(merged.get(section), dict):
            merged[section] = {**merged[section], **values}
        else:
            merged[section] = values
    return ml_collections.ConfigDict(merged)


def flatten_config(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """`{'optim.learning_rate': 0.001, ...}` with tuples as lists (as in config.json)."""
    return flatten_dict(json.loads(config.to_json()))


def flatten_dict(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one dict with dotted keys."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten_dict(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out
