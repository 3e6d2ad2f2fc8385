"""ONNX export (jax2onnx): onnxruntime logits equal the JAX ones, a trained run end to end, bad values refused."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn.data.embedded import load_mnist5k
from jaxcnn.errors import ConfigError
from jaxcnn.export import export, load_model, to_onnx
from jaxcnn.models import build_model, model_config
from jaxcnn.predict import load_predictor
from jaxcnn.train import loop
from tests.helpers import ROOT, config_module

pytest.importorskip("jax2onnx")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def random_model(name: str, pooling: str, input_shape=(32, 32, 3)) -> nnx.Module:
    """`name` in eval mode with random parameters and BatchNorm statistics (running means ~ N(0, 0.5),
    variances in [0.5, 2]: they change the logits), built abstractly (eager init takes seconds)."""
    cfg = model_config(name)
    if "pooling" in cfg:
        cfg.pooling = pooling
    model = nnx.eval_shape(lambda: build_model(cfg, 10, input_shape, seed=0))
    rng = np.random.default_rng(0)

    def fill(path, leaf):
        key = jax.tree_util.keystr(path)
        if "var" in key or "scale" in key:  # BatchNorm variances, BatchNorm scales
            return rng.uniform(0.5, 2.0 if "var" in key else 1.0, leaf.shape)
        std = 0.5 if "mean" in key else 0.1 if leaf.ndim == 1 else np.sqrt(2 / np.prod(leaf.shape[:-1]))
        return rng.normal(0.0, std, leaf.shape)

    nnx.update(model, jax.tree_util.tree_map_with_path(lambda p, v: jnp.asarray(fill(p, v), v.dtype),
                                                       nnx.state(model)))
    model.eval()
    return model


@pytest.mark.parametrize("name, pooling", [("lenet5", "avg"), ("pooling_cnn", "max"), ("resnet18", "max")])
def test_onnx_logits_equal_jax_logits_for_any_batch_size(name, pooling):
    model = random_model(name, pooling)
    graphdef, state = nnx.split(model)
    x = np.random.default_rng(1).normal(size=(5, 32, 32, 3)).astype(np.float32)
    expected = np.asarray(jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))(state, x))
    assert expected.std() > 0.1  # not a degenerate network
    session = ort.InferenceSession(to_onnx(model, (32, 32, 3)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    assert [i.shape for i in session.get_inputs()] == [["B", 32, 32, 3]]
    for batch in (x, x[:1]):
        assert np.abs(session.run(["logits"], {"images": batch})[0] - expected[:len(batch)]).max() <= 1e-4


def test_trained_run_exports_logits_that_match_the_predictor(tmp_path):
    workdir = tmp_path / "run"
    config = config_module("lenet").get_config("3,epochs=1,data.max_train=500,data.max_test=200")
    loop.train_and_evaluate(config, workdir, progress=False)
    out = export(workdir, "onnx")
    assert out == workdir / "export"
    meta = json.loads((out / "preprocess.json").read_text())
    assert {k: meta[k] for k in ("file", "input", "output", "layout", "dtype", "scale", "architecture", "image_size",
                                 "channels", "mean", "std", "stored_image_shape", "epoch", "workdir")} == {
        "file": "model.onnx", "input": "images", "output": "logits", "layout": "NHWC", "dtype": "float32",
        "scale": "uint8 / 255", "architecture": "lenet5", "image_size": [28, 28], "channels": 1, "mean": [0.0],
        "std": [1.0], "stored_image_shape": [28, 28, 1], "epoch": 1, "workdir": str(workdir.absolute())}
    assert meta["class_names"] == [str(i) for i in range(10)]

    images = load_mnist5k().test_images[:200]
    x = ((images / 255.0 - np.asarray(meta["mean"])) / np.asarray(meta["std"])).astype(np.float32)
    session = ort.InferenceSession(out / "model.onnx", providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": x})[0]
    model, _ = load_model(workdir)
    assert np.abs(logits - np.asarray(model(jnp.asarray(x)))).max() <= 1e-4
    probabilities = load_predictor(workdir).probabilities(images)
    np.testing.assert_allclose(np.asarray(jax.nn.softmax(logits)), probabilities, atol=1e-5)
    np.testing.assert_array_equal(logits.argmax(-1), probabilities.argmax(-1))

    assert export(workdir, out=tmp_path / "again", epoch=1) == tmp_path / "again"
    assert (tmp_path / "again" / "model.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    with pytest.raises(ConfigError, match=r"no checkpoint for epoch 7; kept: \[1\]"):
        export(workdir, epoch=7)


def test_bad_format_model_or_workdir_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match=r"^--format='tflite' is not valid; valid formats: onnx$"):
        export(tmp_path, "tflite")
    with pytest.raises(ConfigError, match="no checkpoints"):
        export(tmp_path)
    converted = tmp_path / "converted"
    (converted / "weights").mkdir(parents=True)
    (converted / "meta.json").write_text(json.dumps({"architecture": "vit_b16", "num_classes": 1000,
                                                     "input_size": [3, 224, 224], "mean": [0.5] * 3,
                                                     "std": [0.5] * 3, "crop_pct": 0.9, "class_names": []}))
    with pytest.raises(ConfigError, match=r"model.name='vit_b16' is not valid; valid values: lenet5, "):
        export(converted)
    result = subprocess.run([sys.executable, "scripts/export.py", f"--workdir={tmp_path}", "--format=savedmodel"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --format='savedmodel' is not valid; valid formats: onnx"
