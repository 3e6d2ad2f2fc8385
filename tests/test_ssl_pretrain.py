"""SSL initialisation: label fractions, pretraining (losses fall on real digits), trunk save/load,
the linear probe, and the study through the runner."""

import json
import re

import jax
import numpy as np
import pytest
from flax import nnx

from tests.helpers import cli, config_module
from jaxcnn.config import validate
from jaxcnn.data import load_dataset
from jaxcnn.data.dataset import label_subset
from jaxcnn.errors import ConfigError, TrainingDivergedError
from jaxcnn.models import build_model
from jaxcnn.ssl import pretrain
from jaxcnn.train.checkpoint import VARIABLES
from jaxcnn.ssl.trunk import load_trunk
from jaxcnn.train import init
from jaxcnn.train.trainer import Trainer

ssl_init = config_module("ssl_init")


def config(arg, tmp_path, **extra):
    cfg = ssl_init.get_config(arg)
    cfg.ssl.pretrain_dir = str(tmp_path / "pretrain")
    for k, v in extra.items():
        section, key = k.split("__")
        cfg[section][key] = v
    return cfg


def flat(module):
    return {k: np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
            for k, v in nnx.to_flat_state(nnx.state(module, VARIABLES))}


def test_label_fraction_is_stratified_seeded_and_checked():
    cfg = ssl_init.get_config("labels=0.1")
    full = load_dataset(ssl_init.get_config("labels=1.0").data)
    part = load_dataset(cfg.data)
    assert len(full.train_labels) == 4000
    counts_full = np.bincount(full.train_labels, minlength=10)
    counts = np.bincount(part.train_labels, minlength=10)
    np.testing.assert_array_equal(counts, np.round(0.1 * counts_full))
    assert len(part.test_labels) == len(full.test_labels)
    again = label_subset(full, 0.1, 0)
    np.testing.assert_array_equal(again.train_images, part.train_images)
    other = label_subset(full, 0.1, 1)
    assert not np.array_equal(other.train_images, part.train_images)
    assert np.bincount(label_subset(full, 0.001, 0).train_labels, minlength=10).min() == 1  # >= 1 per class
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"data.label_fraction=.* must be a number in \(0, 1\]"):
            validate(ssl_init.get_config(f"labels={bad}"))


@pytest.fixture(scope="module")
def kmeans_trunk(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("km")
    cfg = config("kmeans,data.max_train=1000", tmp, ssl__kmeans_patches=20000, ssl__kmeans_iterations=10)
    meta = pretrain.pretrain(cfg, tmp / "trunk", progress=False)
    return cfg, tmp / "trunk", meta


def test_kmeans_sets_first_conv_and_loaded_trunk_is_exact_head_fresh(kmeans_trunk):
    cfg, path, meta = kmeans_trunk
    assert meta["method"] == "kmeans" and meta["num_images"] == 1000 and (path / "filters.png").is_file()
    fresh = build_model(cfg.model, 10, (28, 28, 1), cfg.seed)
    model = build_model(cfg.model, 10, (28, 28, 1), cfg.seed)
    assert load_trunk(model, path)["widths"] == [16, 32, 64]
    saved = pretrain_trunk_state(path, cfg)
    loaded, init = flat(model.trunk), flat(fresh.trunk)
    assert saved.keys() == loaded.keys()
    for k in saved:
        np.testing.assert_array_equal(loaded[k], saved[k])
    # k-means changed the first conv only; the rest of the trunk is the seed's random init
    assert not np.allclose(loaded[("convs", 0, "kernel")], init[("convs", 0, "kernel")])
    np.testing.assert_array_equal(loaded[("convs", 1, "kernel")], init[("convs", 1, "kernel")])
    for k, v in flat(model).items():  # the head is the fresh initialisation
        if k[0].startswith("head"):
            np.testing.assert_array_equal(v, flat(fresh)[k])
    # the filters are unit-norm directions in whitened space: every filter is used (non-zero)
    kernel = loaded[("convs", 0, "kernel")].reshape(9, 16)
    assert np.all(np.linalg.norm(kernel, axis=0) > 0)


def pretrain_trunk_state(path, cfg):
    model = build_model(cfg.model, 10, (28, 28, 1), cfg.seed + 100)  # other seed: every value must come from disk
    load_trunk(model, path)
    return flat(model.trunk)


def test_wrong_trunk_architecture_channels_or_method_is_refused(kmeans_trunk, tmp_path):
    cfg, path, _ = kmeans_trunk
    wide = build_model(config("kmeans,model.widths=[8,16,32]", tmp_path).model, 10, (28, 28, 1), 0)
    with pytest.raises(ConfigError, match=r"widths=\[16, 32, 64\].*model.widths=\[8, 16, 32\]"):
        load_trunk(wide, path)
    rgb = build_model(cfg.model, 10, (28, 28, 3), 0)
    with pytest.raises(ConfigError, match=r"in_channels=1.*data.channels=3"):
        load_trunk(rgb, path)
    lenet = build_model(ssl_init.get_config("model.name=lenet5").model, 10, (28, 28, 1), 0)
    with pytest.raises(ConfigError, match="trunks load into model.name='ssl_cnn'"):
        load_trunk(lenet, path)
    with pytest.raises(ConfigError, match="is not a pretrained trunk"):
        load_trunk(wide, tmp_path)
    with pytest.raises(ConfigError, match="pretrained with method 'kmeans', not ssl.method='simclr'"):
        init.initialise(config(f"simclr,trunk={path}", tmp_path), 10)
    with pytest.raises(ConfigError, match="ssl.method='random' trains from random weights"):
        init.initialise(config(f"random,trunk={path}", tmp_path), 10)
    with pytest.raises(ConfigError, match="ssl.method='byol' is not valid; valid values: random, autoencoder"):
        init.initialise(config("ssl.method=byol", tmp_path), 10)
    with pytest.raises(ConfigError, match="pretrains the trunk of model.name='ssl_cnn', not 'lenet5'"):
        init.initialise(config("autoencoder,model.name=lenet5", tmp_path), 10)
    for bad in (0, -1, True):  # the config's type check refuses floats and strings
        with pytest.raises(ConfigError, match=rf"^config ssl.kmeans_n_init={bad} is not valid; valid values: an "
                                              "integer >= 1"):
            init.initialise(config(f"kmeans,ssl.kmeans_n_init={bad}", tmp_path), 10)
    with pytest.raises(ConfigError, match="config ssl: SimCLR augmentation option 'gray_prob' must be a probability"):
        pretrain.pretrain(config("simclr,data.max_train=300,ssl.gray_prob=2.0", tmp_path), tmp_path / "x")
    with pytest.raises(ConfigError, match="ssl.batch_size=512 must be between 2 and the 300 training images"):
        pretrain.pretrain(config("autoencoder,data.max_train=300,ssl.batch_size=512", tmp_path), tmp_path / "x")
    with pytest.raises(TrainingDivergedError, match=r"^pretraining autoencoder, epoch 1: loss became nan; stopped"):
        pretrain.pretrain(config("autoencoder,data.max_train=256,ssl.batch_size=128,ssl.learning_rate=1e30",
                                 tmp_path), tmp_path / "y", progress=False)


def test_cached_trunk_is_keyed_by_the_kmeans_settings(tmp_path):
    # A trunk pretrained with other k-means settings (one start, say) is not the one a study with restarts reuses.
    paths = {n: init.trunk_path(config("kmeans", tmp_path, ssl__kmeans_n_init=n)) for n in (1, 10)}
    assert paths[1] != paths[10] and paths[10] == init.trunk_path(config("kmeans", tmp_path))
    assert pretrain.pretrain_settings(config("kmeans", tmp_path))["ssl"]["kmeans_n_init"] == 10
    simclr = {n: init.trunk_path(config("simclr", tmp_path, ssl__kmeans_n_init=n)) for n in (1, 10)}
    assert simclr[1] == simclr[10]  # other methods do not read it


@pytest.mark.parametrize("method", ["autoencoder", "simclr"])
def test_pretraining_loss_falls_on_embedded_digits(method, tmp_path):
    # digit-friendly views (no flips, crops of >= 30 %) so that 48 steps show the fall
    cfg = config(f"{method},data.max_train={768 if method == 'simclr' else 512},ssl.crop_scale=[0.3,1.0],ssl.hflip=False", tmp_path,
                 ssl__epochs=4, ssl__batch_size=64, ssl__learning_rate=3e-3)
    meta = pretrain.pretrain(cfg, tmp_path / "trunk", progress=False)
    losses = meta["losses"]
    assert len(losses) == 4 and all(np.isfinite(losses))
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    if method == "simclr":  # NT-Xent of uninformative embeddings is log(2N - 1) = log(127) = 4.84
        assert losses[-1] < np.log(127) - 0.3, losses
    else:
        assert losses[-1] < 0.7 * losses[0], losses
    figure = "reconstructions.png" if method == "autoencoder" else "pretrain_loss.png"
    assert (tmp_path / "trunk" / figure).is_file() and meta["pretrain_time_s"] > 0
    before = flat(build_model(cfg.model, 10, (28, 28, 1), cfg.seed).trunk)
    model = build_model(cfg.model, 10, (28, 28, 1), cfg.seed)
    load_trunk(model, tmp_path / "trunk")
    after = flat(model.trunk)
    assert all(not np.array_equal(before[k], after[k]) for k in after if k[-1] == "kernel")  # every conv trained


def test_linear_probe_trains_only_the_head(kmeans_trunk, tmp_path):
    cfg, path, _ = kmeans_trunk
    cfg = config(f"kmeans_probe,trunk={path},batch_size=50", tmp_path)
    data = load_dataset(cfg.data)
    model, info = init.initialise(cfg, data.num_classes)
    assert info == {"init": "kmeans", "pretrain_time_s": pytest.approx(0, abs=60), "trunk": str(path)}
    trainer = Trainer(cfg, data.train_images, data.train_labels, data.num_classes, loop="python", models=[model])
    trunk_before, model_before = flat(trainer.model.trunk), flat(trainer.model)
    sums = trainer.train_epoch(1)
    assert np.isfinite(sums).all()
    for k, v in flat(trainer.model.trunk).items():  # weights and BatchNorm statistics stay as loaded
        np.testing.assert_array_equal(v, trunk_before[k])
    assert not np.array_equal(flat(trainer.model)[("head", "kernel")], model_before[("head", "kernel")])
    opt_leaves = jax.tree.leaves(nnx.state(trainer.optimizers[0], nnx.OptState))
    assert sum(x.size for x in opt_leaves if x.ndim) == 2 * (576 * 10 + 10)  # Adam moments of the head only


def test_study_pretrains_once_per_method_and_seed_and_reports_the_gain(tmp_path):
    from jaxcnn.study.runner import run_study

    overrides = (f"epochs=1,data.max_train=600,data.max_test=200,ssl.pretrain_dir={tmp_path / 'pre'},"
                 "ssl.kmeans_patches=20000,ssl.kmeans_iterations=5")
    lines = []
    result = run_study("configs/ssl_init.py", tmp_path / "study", seeds=1,
                       variants=["kmeans", "random_probe", "kmeans_probe"], overrides=overrides,
                       group="no", progress=False, log=lines.append)
    assert [p.name.split("-")[:2] for p in (tmp_path / "pre").iterdir()] == [["kmeans", "seed0"]]  # shared
    # pretraining is a step of the study of its own, before any run trains
    assert lines[1].startswith("[pretrain 1/1] kmeans, seed 0 -> ") and lines[2] == "[1/3] kmeans/seed_0"
    # then the study's progress over its runs, with the time left at the pace so far
    assert re.fullmatch(r"\[2/3\] random_probe/seed_0 \(1/3 runs in [0-9.]+ s; about [0-9.]+ s left\)", lines[3])
    assert re.fullmatch(r"\[3/3\] kmeans_probe/seed_0 \(2/3 runs in [0-9.]+ s; about [0-9.]+ s left\)", lines[4])
    summary = json.loads((tmp_path / "study" / "kmeans_probe" / "seed_0" / "summary.json").read_text())
    assert summary["init"] == "kmeans" and summary["pretrain_time_s"] > 0 and "seed0" in summary["trunk"]
    assert json.loads((tmp_path / "study" / "random_probe" / "seed_0" / "summary.json").read_text())["init"] == "random"
    assert [(r["a"], r["b"]) for r in result["against_baseline"]] == [("kmeans_probe", "random_probe")]
    report = (tmp_path / "study" / "report.md").read_text()
    assert "## Against the baseline" in report and "| kmeans_probe | random_probe |" in report


def test_pretraining_killed_mid_way_resumes_to_the_same_trunk(tmp_path):
    """SIGKILL right after epoch 2's checkpoint save started; the same command again resumes from the
    newest complete epoch and ends with the trunk of an uninterrupted pretraining."""
    arg = "autoencoder,data.max_train=256,ssl.epochs=3,ssl.batch_size=128"
    out = tmp_path / "trunk"
    command = ("pretrain.py", "--config", f"configs/ssl_init.py:{arg}", "--out", str(out))
    proc = cli(*command, fault="pretrain_saved:2:SIGKILL")
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not out.exists() and (tmp_path / "trunk.work" / "checkpoints").is_dir()
    proc = cli(*command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "note: resuming the pretraining after epoch" in proc.stderr
    assert not (tmp_path / "trunk.work").exists()
    pretrain.pretrain(ssl_init.get_config(arg), tmp_path / "reference", progress=False)
    cfg = ssl_init.get_config(arg)
    resumed, reference = (build_model(cfg.model, 10, (28, 28, 1), 0) for _ in range(2))
    assert load_trunk(resumed, out)["losses"] == load_trunk(reference, tmp_path / "reference")["losses"]
    a, b = flat(resumed.trunk), flat(reference.trunk)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0 if jax.default_backend() == "cpu" else 1e-5, err_msg=str(k))
