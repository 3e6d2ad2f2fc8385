"""`convert(source, out)`: a timm/torchvision model -> Flax model, checked against PyTorch, saved."""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from jaxcnn.convert import load_torch_state, torch_key
from jaxcnn.convert.sources import Source, load_source
from jaxcnn.convert.store import converted_config, save_converted
from jaxcnn.errors import ConversionError
from jaxcnn.models import build_model, model_module

PARITY_TOLERANCE = 1e-4


def flax_model(source: Source, num_classes: int | None = None) -> nnx.Module:
    """The Flax model of `source` with its weights (eval mode). With another `num_classes`, the head
    is freshly initialised and the rest loaded."""
    meta = source.meta()
    channels, height, width = meta["input_size"]
    classes = num_classes or source.num_classes
    model = build_model(converted_config(meta).model, classes, (height, width, channels), 0)
    facts = model_module(source.architecture)
    names = facts.TORCH_NAMES
    head = torch_key((*facts.HEAD, "bias"), names).removesuffix("bias")  # e.g. "classifier.6."
    keep = (head,) if classes != source.num_classes else ()
    load_torch_state(model, source.state_dict, names, keep_init=keep)
    model.eval()
    return model


def torch_logits(source: Source, images_nhwc: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return source.torch_model(torch.from_numpy(images_nhwc.transpose(0, 3, 1, 2).copy())).numpy()


def parity(source: Source, model: nnx.Module, batch: int = 2, seed: int = 0) -> float:
    """max |Flax logits − PyTorch logits| on a random normalised batch at the model's input size."""
    channels, height, width = source.input_size
    x = np.random.default_rng(seed).standard_normal((batch, height, width, channels)).astype(np.float32)
    # Full float32 products: on a GPU, JAX's default for float32 convolutions and matrix products is
    # TF32 (~1e-3 relative), which would fail the 1e-4 check for weights that are converted exactly.
    with jax.default_matmul_precision("highest"):
        logits = np.asarray(model(x))
    return float(np.abs(logits - torch_logits(source, x)).max())


def convert(spec: str, out: str, checkpoint: str | None = None, pretrained: bool = True) -> tuple[dict, float]:
    """Converts, checks parity on a random batch (raises if above 1e-4) and writes `out`."""
    source = load_source(spec, checkpoint, pretrained)
    model = flax_model(source)
    max_diff = parity(source, model)
    if not max_diff <= PARITY_TOLERANCE:
        raise ConversionError(f"{spec}: Flax and PyTorch logits differ by {max_diff:.3g} (> {PARITY_TOLERANCE})")
    meta = source.meta()
    save_converted(out, model, meta)
    return meta, max_diff
