"""Export a trained model to ONNX: `OUT/model.onnx` and `OUT/preprocess.json`.

The graph is `logits = model(images)` for float32 NHWC images already normalised as in training
(`uint8 / 255`, then `(x - mean) / std` per channel), batch dimension dynamic (`"B"`), the model
state (parameters, BatchNorm statistics) baked in as constants, eval mode, float32 compute (a run
trained with `model.dtype=bfloat16` is exported in float32: onnxruntime's CPU Conv has no bf16).
`preprocess.json` says how to feed it: size, channels, the resize and crop (`interpolation`,
`resize_size`, `crop_mode`, `crop_pct`, and the arithmetic in `note`: for converted weights exactly
their library's eval transform), scaling, mean/std, class names, source.

Exporter: jax2onnx (0.17.1), installed with `pip install --no-deps jax2onnx` because its metadata
pins orbax-checkpoint<0.11.37 (it never imports orbax). Two of its bugs are worked around here:
a 4-D `lax.reduce_window_max` (the ResNet/AlexNet max-pools) becomes a MaxPool over four spatial
axes that onnxruntime refuses, and after its NHWC/NCHW transpose folding some intermediate
shapes (value_info) keep their stale NHWC layout (onnxruntime: "Incompatible dimensions").
"""

from __future__ import annotations

import json
import logging
import pathlib
from typing import Any

import numpy as np
from flax import nnx

from jaxcnn.errors import ConfigError
from jaxcnn.predict import Restored, restore_model

FORMATS = ("onnx",)
MODEL_ONNX, PREPROCESS_JSON = "model.onnx", "preprocess.json"
INSTALL_HINT = "pip install onnx onnx-ir onnxruntime && pip install --no-deps jax2onnx==0.17.1"


def load_model(workdir: str | pathlib.Path, epoch: int | None = None) -> tuple[nnx.Module, dict[str, Any]]:
    """The model of a run's best checkpoint (or `epoch`), or of converted weights, in eval mode with
    float32 compute, and the facts about it that preprocess.json records.

    Raises:
      ConfigError: no checkpoints, no checkpoint for `epoch`, or a model name that is not registered.
    """
    r = restore_model(workdir, epoch, dtype="float32")  # bf16 compute is not exported (see above)
    return r.model, _info(r)


def _info(r: Restored) -> dict[str, Any]:
    config, channels = r.config, r.config.data.channels
    if r.crop is not None:  # converted weights: as jaxcnn.predict reads images for them
        resize = {"crop_pct": r.crop.crop_pct, "interpolation": r.crop.interpolation,
                  "resize_size": list(r.crop.resize_size), "crop_mode": r.crop.crop_mode,
                  "note": "read the image as RGB (upright: EXIF orientation applied; transparent pixels over "
                          f"black), {r.crop.describe(tuple(config.data.image_size))}; then x = (pixels / 255 - "
                          "mean) / std. PyTorch equivalent: the source library's eval transform"}
    else:
        resize = {"crop_pct": config.data.get("eval_crop_pct"), "interpolation": "bilinear", "resize_size": None,
                  "crop_mode": None,
                  "note": "read an image as the run stored them (stored_image_shape; a centre crop of crop_pct "
                          "first when set), convert it to `channels` and resize it to image_size (bilinear) "
                          "where they differ, then x = (pixels / 255 - mean) / std"}
    return {"architecture": config.model.name, "image_size": list(config.data.image_size), "channels": channels,
            "mean": np.broadcast_to(config.data.mean, channels).tolist(),
            "std": np.broadcast_to(config.data.std, channels).tolist(),
            "stored_image_shape": list(r.input_shape), "class_names": list(r.class_names), "epoch": r.epoch,
            **resize}


def to_onnx(model: nnx.Module, input_shape: tuple[int, int, int]):
    """`onnx.ModelProto` of `logits = model(images)`, input `images` float32 (B, H, W, C), output `logits`."""
    try:
        import jax2onnx
        import onnx
        from jax2onnx.plugins import plugin_system
    except ImportError as e:
        raise ConfigError(f"--format onnx needs jax2onnx and onnx ({e}); install with: {INSTALL_HINT}") from None
    _patch_max_pool(plugin_system)
    graphdef, state = nnx.split(model)
    proto = jax2onnx.to_onnx(lambda x: nnx.merge(graphdef, state)(x), [("B", *input_shape)],
                             model_name=type(model).__name__, input_names=["images"], output_names=["logits"])
    del proto.graph.value_info[:]  # stale intermediate shapes (see the module doc); inferred again
    proto = onnx.shape_inference.infer_shapes(proto)
    onnx.checker.check_model(proto)
    return proto


def export(workdir: str | pathlib.Path, fmt: str = "onnx", out: str | pathlib.Path | None = None,
           epoch: int | None = None) -> pathlib.Path:
    """Writes `out/model.onnx` and `out/preprocess.json` (default out: `workdir/export`); returns out."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format={fmt!r} is not valid; valid formats: {', '.join(FORMATS)}")
    model, info = load_model(workdir, epoch)
    proto = to_onnx(model, (*info["image_size"], info["channels"]))
    out = pathlib.Path(workdir) / "export" if out is None else pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_ONNX).write_bytes(proto.SerializeToString())
    preprocess = {"format": fmt, "file": MODEL_ONNX, "input": "images", "output": "logits", "layout": "NHWC",
                  "dtype": "float32", "batch": "dynamic", "scale": "uint8 / 255", **info,
                  "workdir": str(pathlib.Path(workdir).absolute())}
    (out / PREPROCESS_JSON).write_text(json.dumps(preprocess, indent=2) + "\n")
    return out


def _patch_max_pool(plugin_system) -> None:
    """Once per process: lowers an NHWC max-pool `reduce_window_max` (window 1 on batch and channels)
    as Transpose -> 2-D MaxPool -> Transpose; other windows keep jax2onnx's lowering."""
    from jax2onnx.plugins._ir_shapes import _ensure_value_metadata, _stamp_type_and_shape
    from jax2onnx.plugins.jax.lax.reduce_window_max import ReduceWindowMaxPrimitivePlugin

    class NHWCMaxPool(ReduceWindowMaxPrimitivePlugin):
        def lower(self, ctx, eqn):
            p = eqn.params
            window, strides, pads = p["window_dimensions"], p["window_strides"], [tuple(q) for q in p["padding"]]
            if not (len(window) == 4 and window[0] == window[3] == strides[0] == strides[3] == 1
                    and pads[0] == pads[3] == (0, 0) and {*p["base_dilation"], *p["window_dilation"]} == {1}):
                return super().lower(ctx, eqn)
            (x_var,), (y_var,) = eqn.invars, eqn.outvars
            x = ctx.get_value_for_var(x_var, name_hint=ctx.fresh_name("maxpool_in"))
            y = ctx.get_value_for_var(y_var, name_hint=ctx.fresh_name("maxpool_out"))
            (n, h, w, c), (_, oh, ow, _) = x_var.aval.shape, y_var.aval.shape

            def typed(value, shape):
                value.type = x.type
                _stamp_type_and_shape(value, shape)
                _ensure_value_metadata(ctx, value)
                return value

            nchw = typed(ctx.builder.Transpose(x, perm=(0, 3, 1, 2), _outputs=[ctx.fresh_name("maxpool_nchw")]),
                         (n, c, h, w))
            pooled = typed(ctx.builder.MaxPool(nchw, kernel_shape=tuple(window[1:3]), strides=tuple(strides[1:3]),
                                               pads=(pads[1][0], pads[2][0], pads[1][1], pads[2][1]),
                                               _outputs=[ctx.fresh_name("maxpool")]), (n, c, oh, ow))
            ctx.bind_value_for_var(y_var, typed(
                ctx.builder.Transpose(pooled, perm=(0, 2, 3, 1), _outputs=[y.name]), (n, oh, ow, c)))

    if type(plugin_system.PLUGIN_REGISTRY.get("reduce_window_max")).__name__ != NHWCMaxPool.__name__:
        for name in ("jax2onnx", "onnx_ir"):  # "Skipping import" of equinox/dm-pix plugins, serde notes
            logging.getLogger(name).setLevel(logging.ERROR)
        plugin_system.import_all_plugins()  # registers jax2onnx's own plugins first; ours then replaces one
        metadata = plugin_system.PLUGIN_REGISTRY["reduce_window_max"].metadata
        plugin_system.register_primitive(**metadata)(NHWCMaxPool)
