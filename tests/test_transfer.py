"""Transfer training: converted (random) weights in, frozen parts and BN statistics fixed, heads fresh,
end to end on the embedded MNIST subset at a reduced input size."""

import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from jaxcnn.convert.store import save_converted
from jaxcnn.train.checkpoint import VARIABLES
from jaxcnn.data import load_dataset
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, model_config
from jaxcnn.train import loop, transfer
from jaxcnn.train.trainer import Trainer
from tests.helpers import config_module

cfgs = config_module("transfer")
SIZE = 64  # reduced input size: fast on CPU


def small(arg: str, tmp_init: pathlib.Path | None = None):
    extra = f",init={tmp_init}" if tmp_init else ""
    return cfgs.get_config(f"{arg},data=embedded,data.image_size=[{SIZE},{SIZE}],data.max_train=64,"
                           f"data.max_test=40,batch_size=16,epochs=1,data.eval_crop_pct=0,report.layer_profile=False{extra}")


def fake_converted(tmp_path: pathlib.Path, architecture: str, classes: int = 1000, seed: int = 7) -> pathlib.Path:
    """A converted checkpoint as scripts/convert_weights.py writes it, from a random model."""
    model = build_model(model_config(architecture), classes, (224, 224, 3), seed)
    # non-trivial BN statistics, to see that they are loaded and kept
    new = []
    for i, (path, var) in enumerate(nnx.to_flat_state(nnx.state(model, nnx.BatchStat))):
        low, high = (-0.2, 0.2) if path[-1] == "mean" else (0.5, 1.5)
        new.append((path, jax.random.uniform(jax.random.key(seed * 1000 + i), var.shape, minval=low, maxval=high)))
    nnx.update(model, nnx.from_flat_state(new))
    out = tmp_path / f"{architecture}_{classes}"
    save_converted(out, model, {"source": f"test:{architecture}", "architecture": architecture,
                                "num_classes": classes, "input_size": [3, 224, 224],
                                "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225],
                                "interpolation": "bilinear", "crop_pct": 0.875,
                                "class_names": [f"c{i}" for i in range(classes)]})
    return out


def flat(model, filt=VARIABLES):
    return {".".join(map(str, p)): np.array(v.get_value() if hasattr(v, "get_value") else v.value)
            for p, v in nnx.to_flat_state(nnx.state(model, filt))}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("converted")
    return {"resnet18": fake_converted(tmp, "resnet18"), "alexnet": fake_converted(tmp, "alexnet")}


def train_an_epoch(config):
    dataset = load_dataset(config.data)
    trainer = Trainer(config, dataset.train_images, dataset.train_labels, dataset.num_classes)
    before = flat(trainer.model)
    trainer.train_epoch(1)  # 4 steps of 16 images
    return trainer, before, flat(trainer.model)


def test_frozen_resnet_trains_only_fc_and_keeps_bn_statistics(converted):
    trainer, before, after = train_an_epoch(small("resnet18_frozen", converted["resnet18"]))
    loaded = flat(build_and_load(converted["resnet18"], "resnet18"))
    for k in before:
        if k.startswith("fc."):
            assert not np.array_equal(before[k], after[k]), f"{k} did not train"
        else:
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)  # params and BN stats fixed
            np.testing.assert_array_equal(after[k], loaded[k], err_msg=k)  # ... at the converted values
    # the optimizer holds state for fc only
    opt_leaves = jax.tree.leaves(nnx.state(trainer.optimizers[0], nnx.OptState))
    fc_size = sum(v.size for k, v in before.items() if k.startswith("fc."))
    assert sum(x.size for x in opt_leaves if x.ndim) <= 3 * fc_size
    assert sum(x.size for x in jax.tree.leaves(nnx.state(trainer.model, trainer.wrt))) == fc_size


def build_and_load(path, architecture):
    config = cfgs.get_config("resnet18_finetune" if architecture.startswith("resnet") else "alexnet_frozen")
    model = build_model(config.model, 1000, (224, 224, 3), 0)
    transfer.load_init(model, str(path), architecture, 1000)
    return model


def test_finetuned_resnet_trains_everything_and_updates_bn_statistics(converted):
    _, before, after = train_an_epoch(small("resnet18_finetune", converted["resnet18"]))
    changed = [k for k in before if not np.array_equal(before[k], after[k])]
    assert "conv1.kernel" in changed and "fc.kernel" in changed and "bn1.mean" in changed
    assert len(changed) == len(before)


def test_frozen_alexnet_keeps_features_and_trains_the_classifier(converted):
    _, before, after = train_an_epoch(small("alexnet_frozen", converted["alexnet"]))
    for k in before:
        if k.startswith("convs."):
            np.testing.assert_array_equal(after[k], before[k], err_msg=k)
        else:
            assert not np.array_equal(after[k], before[k]), f"{k} did not train"


def test_new_head_is_fresh_and_backbone_equals_the_converted_weights(converted):
    config = small("resnet18_finetune", converted["resnet18"])
    model = build_model(config.model, 10, (SIZE, SIZE, 3), config.seed)
    fresh = flat(model)
    transfer.prepare(model, config, 10)
    loaded, source = flat(model), flat(build_and_load(converted["resnet18"], "resnet18"))
    for k in loaded:
        if k.startswith("fc."):
            np.testing.assert_array_equal(loaded[k], fresh[k])
            assert loaded[k].shape[-1] in (10,) or loaded[k].shape == (10,)
        else:
            np.testing.assert_array_equal(loaded[k], source[k])


def test_finetune_run_end_to_end_on_embedded_digits(converted, tmp_path):
    summary = loop.train_and_evaluate(small("resnet18_finetune", converted["resnet18"]), tmp_path / "ft",
                                      progress=False)
    assert summary["epochs"] == 1 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert (tmp_path / "ft" / "summary.md").exists()
    assert summary["num_params"] == 11_181_642  # ResNet-18 with a 10-class head


def test_bad_transfer_settings_are_refused(converted):
    dataset = load_dataset(small("resnet18_finetune").data)
    args = (dataset.train_images, dataset.train_labels, 10)
    with pytest.raises(ConfigError, match="needs init=PATH"):
        Trainer(small("resnet18_finetune"), *args)
    with pytest.raises(ConfigError, match="holds alexnet weights .* but model.name='resnet18'"):
        Trainer(small("resnet18_finetune", converted["alexnet"]), *args)
    with pytest.raises(ConfigError, match="remove init"):
        Trainer(small("resnet18_scratch", converted["resnet18"]), *args)
    with pytest.raises(ConfigError, match="not a converted checkpoint"):
        Trainer(small("resnet18_finetune", pathlib.Path("/nonexistent")), *args)
    with pytest.raises(ConfigError, match="transfer.mode='sideways' is not valid"):
        Trainer(cfgs.get_config("resnet18_finetune,transfer.mode=sideways,data=embedded"), *args)


def test_bfloat16_compute_keeps_float32_parameters_and_logits():
    config = small("resnet18_scratch,model.dtype=bfloat16")
    model = build_model(config.model, 10, (32, 32, 3), 0)
    reference = build_model(small("resnet18_scratch").model, 10, (32, 32, 3), 0)
    model.eval(), reference.eval()
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}
    x = jax.random.normal(jax.random.key(0), (4, 32, 32, 3))
    logits, ref = model(x), reference(x)
    assert logits.dtype == np.float32
    # same weights, bf16 arithmetic: close to float32, but not equal
    assert 0 < float(np.abs(np.asarray(logits) - np.asarray(ref)).max()) < 0.1 * float(np.abs(ref).max()) + 0.05
    with pytest.raises(ConfigError, match="model.dtype='float16' is not valid; valid values: float32, bfloat16"):
        build_model(small("resnet18_scratch,model.dtype=float16").model, 10, (32, 32, 3), 0)


@pytest.mark.parametrize("name, mode, frozen_modules", [
    ("resnet18", "frozen", 20),  # every BatchNorm of the backbone: running statistics
    ("alexnet", "frozen", 0),  # no BatchNorm; the classifier's dropout (no parameters) keeps training mode
    ("resnet18", "finetune", 0),
])
def test_the_training_step_runs_a_frozen_backbone_as_in_evaluation(name, mode, frozen_modules):
    config = cfgs.get_config(f"{name}_frozen,transfer.mode={mode},transfer.init=x")  # init: not read here
    model = nnx.eval_shape(lambda: build_model(model_config(name), 10, (64, 64, 3), 0))
    model.train()
    view = transfer.train_view(model, transfer.trainable(config))
    evaluating = [p for p, m in nnx.iter_modules(view)
                  if getattr(m, "use_running_average", False) or getattr(m, "deterministic", False)]
    assert len(evaluating) == frozen_modules
    assert all(p[0] != "fc" for p in evaluating)
    assert not any(getattr(m, "use_running_average", False) for _, m in nnx.iter_modules(model))  # model as it was
