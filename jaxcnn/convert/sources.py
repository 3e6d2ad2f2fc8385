"""Where converted weights come from: timm or torchvision models (pretrained download or a local file).

    source = load_source("timm:resnet18.a1_in1k")                       # downloads via timm
    source = load_source("torchvision:alexnet")                         # downloads via torchvision
    source = load_source("timm:resnet18", checkpoint="r18.safetensors")  # offline file
    source = load_source("torchvision:resnet18", pretrained=False)      # random init (tests)

torch, timm and torchvision are imported here only (never TensorFlow: the two crash together).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import numpy as np

from jaxcnn.data.images import CROP_MODES, RESAMPLING, EvalCrop
from jaxcnn.errors import ConfigError
from jaxcnn.models import MODELS
from jaxcnn.download import check_reachable, download_failed

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LIBRARIES = ("timm", "torchvision")
OFFLINE_ADVICE = ("download the weights file on a machine with a network and convert it with --checkpoint FILE "
                  "(same --source)")


@dataclasses.dataclass
class Source:
    """A PyTorch model's weights and what is needed to use them."""
    source: str  # "timm:resnet18.a1_in1k"
    architecture: str  # jaxcnn model name: resnet18 | resnet34 | alexnet
    state_dict: dict[str, np.ndarray]
    num_classes: int
    input_size: tuple[int, int, int]  # (C, H, W) as timm writes it
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str  # the eval transform's resize filter (a key of jaxcnn.data.images.RESAMPLING)
    crop_pct: float
    class_names: tuple[str, ...]
    resize_size: tuple[int, int]  # (h, w) the eval transform resizes to before its centre crop
    crop_mode: str  # timm's crop_mode (torchvision: always center)
    torch_model: Any = None  # the eval-mode PyTorch module (for parity checks)

    def meta(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in ("state_dict", "torch_model")}


def architecture_of(name: str) -> str:
    """The jaxcnn architecture (`model.name`) of a timm/torchvision model name: those whose module
    declares `TORCH_NAMES` (`jaxcnn.models`)."""
    convertible = [arch for arch, module in MODELS.items() if module.TORCH_NAMES is not None]
    base = name.split(".")[0]
    for arch in convertible:
        if base == arch or base.startswith(arch + "_") or base == "tv_" + arch:
            return arch
    raise ConfigError(f"--source model {name!r} is not supported; supported architectures: {', '.join(convertible)} "
                      "(timm has no AlexNet: its weights come from torchvision)")


def _read_checkpoint(path: str | pathlib.Path) -> dict:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"--checkpoint {path}: no such file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        import torch

        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets one clear line
        raise ConfigError(f"--checkpoint {path}: not a readable PyTorch/safetensors checkpoint "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ConfigError(f"--checkpoint {path}: holds a {type(state).__name__}, not a state dict")
    return state


def _imagenet_names_timm() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return tuple(info.index_to_description(i) for i in range(1000))


def _check_timm_download(name: str, spec: str) -> None:
    """Fails fast offline unless timm's weights for `name` are already in the Hugging Face cache."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        return  # unknown model or tag: timm.create_model says so
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        for filename in (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin"):
            if filename and isinstance(try_to_load_from_cache(repo, filename, revision=revision or None), str):
                return
        check_reachable([f"https://huggingface.co/{repo}"], f"the weights of {spec}", OFFLINE_ADVICE)
    elif cfg.url and not _torch_hub_cached(cfg.url):
        check_reachable([cfg.url], f"the weights of {spec}", OFFLINE_ADVICE)


def _torch_hub_cached(url: str) -> bool:
    """Whether torch.hub (torchvision's and timm's URL downloads) already holds the file of `url`."""
    import torch

    return (pathlib.Path(torch.hub.get_dir()) / "checkpoints" / pathlib.PurePosixPath(url).name).is_file()


def load_source(spec: str, checkpoint: str | None = None, pretrained: bool = True) -> Source:
    """Builds the PyTorch model of `spec` (`timm:NAME` or `torchvision:NAME`) with its weights.

    Raises:
      ConfigError: unknown library, model or architecture; unreadable checkpoint; weights that do
        not fit the PyTorch model (its strict `load_state_dict` message).
    """
    library, _, name = spec.partition(":")
    if library not in LIBRARIES or not name:
        raise ConfigError(f"--source {spec!r}: expected LIBRARY:MODEL with LIBRARY one of {', '.join(LIBRARIES)} "
                          "(e.g. timm:resnet18.a1_in1k, torchvision:alexnet)")
    architecture = architecture_of(name)
    download = pretrained and checkpoint is None
    if library == "timm":
        import timm

        if architecture == "alexnet":
            raise ConfigError("timm has no AlexNet; use --source torchvision:alexnet")
        if download:
            _check_timm_download(name, spec)
        try:
            model = timm.create_model(name, pretrained=download)
        except RuntimeError as e:
            if "Unknown model" in str(e) or not download:
                raise ConfigError(f"--source {spec!r}: {str(e).splitlines()[0]}") from None
            raise download_failed(f"the weights of {spec}", e, OFFLINE_ADVICE) from None
        except Exception as e:  # noqa: BLE001 - Hugging Face Hub / HTTP errors of a failed download
            if not download:
                raise
            raise download_failed(f"the weights of {spec}", e, OFFLINE_ADVICE) from None
        from timm.data import resolve_data_config

        # what timm.data.create_transform(**resolve_data_config({}, model=model)) evaluates with
        cfg = resolve_data_config({}, model=model)
        input_size, mean, std, interpolation = cfg["input_size"], cfg["mean"], cfg["std"], cfg["interpolation"]
        crop_pct, crop_mode = float(cfg["crop_pct"]), cfg["crop_mode"]
        resize_size = EvalCrop.timm_resize_size(input_size[1:], crop_pct)
        num_classes = model.num_classes
        names = _imagenet_names_timm() if num_classes == 1000 else tuple(str(i) for i in range(num_classes))
    else:
        import torchvision

        if name not in torchvision.models.list_models():
            raise ConfigError(f"--source {spec!r}: torchvision has no model {name!r}")
        weights = torchvision.models.get_model_weights(name).DEFAULT if download else None
        if weights is not None and not _torch_hub_cached(weights.url):
            check_reachable([weights.url], f"the weights of {spec}", OFFLINE_ADVICE)
        try:
            model = torchvision.models.get_model(name, weights=weights)
        except Exception as e:  # noqa: BLE001 - URLError, a truncated file, a hash mismatch
            if weights is None:
                raise
            raise download_failed(f"the weights of {spec}", e, OFFLINE_ADVICE) from None
        meta = weights.meta if weights is not None else torchvision.models.get_model_weights(name).DEFAULT.meta
        transforms = (weights or torchvision.models.get_model_weights(name).DEFAULT).transforms()
        crop = transforms.crop_size[0]
        input_size, mean, std = (3, crop, crop), tuple(transforms.mean), tuple(transforms.std)
        interpolation = transforms.interpolation.value
        crop_pct, crop_mode = crop / transforms.resize_size[0], "center"
        resize_size = (transforms.resize_size[0],) * 2  # Resize(int): the shorter side
        names = tuple(meta["categories"])
        num_classes = len(names)
    if interpolation not in RESAMPLING or crop_mode not in CROP_MODES:
        raise ConfigError(f"--source {spec!r}: its eval transform (interpolation {interpolation!r}, crop_mode "
                          f"{crop_mode!r}) is not one jaxcnn reproduces; valid: interpolation "
                          f"{', '.join(RESAMPLING)}; crop_mode {', '.join(CROP_MODES)}")
    if checkpoint is not None:
        state = _read_checkpoint(checkpoint)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ConfigError(f"--checkpoint {checkpoint} does not fit {spec}: {' '.join(str(e).split())}") from None
    model.eval()
    state_dict = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    return Source(spec, architecture, state_dict, num_classes, tuple(int(x) for x in input_size),
                  tuple(float(x) for x in mean), tuple(float(x) for x in std), str(interpolation), crop_pct,
                  names, tuple(int(x) for x in resize_size), crop_mode, model)
