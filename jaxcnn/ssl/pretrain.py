"""Self-supervised pretraining of the `ssl_cnn` trunk on unlabeled training images (a job of its own,
run before training: `jaxcnn.train.init.pretrain_missing`; `jaxcnn.train.init.initialise` loads the trunk).

Methods (`ssl.method`):
- `autoencoder`: encoder = the trunk, a mirrored decoder (nearest upsampling + conv 3×3 + BatchNorm +
  LeakyReLU per block, then a 3×3 conv to the image channels); mean squared error against the
  normalised input; `reconstructions.png` shows inputs next to their reconstructions.
- `simclr`: two on-device augmented views per image (`jaxcnn.ssl.augment`), the trunk, a projection
  MLP (Dense → ReLU → Dense) and the standard NT-Xent loss (`jaxcnn.ssl.simclr.nt_xent`).
- `kmeans`: random 3×3 patches → per-patch brightness/contrast normalisation → ZCA whitening →
  (spherical) k-means with k = the first conv's filters, the best of `ssl.kmeans_n_init` restarts (vmapped)
  → the first conv's kernel and bias with the whitening folded in (`jaxcnn.ssl.kmeans`); the rest of the
  trunk keeps the seed's random init. `filters.png` shows the filters.
- `random`: no pretraining (the baseline).

Pretraining uses every training image without labels (`data.label_fraction` does not apply) and the
run's seed. Unless `ssl.trunk` names a trunk, the result is cached under `ssl.pretrain_dir` in a folder
named by the method and a hash of everything that shapes it (data, trunk, seed, method settings), so
the fine-tuned and linear-probe runs and every label fraction share one pretraining per seed.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from jaxcnn import faults
from jaxcnn.data import load_dataset
from jaxcnn.data.device import epoch_permutation, make_preprocess
from jaxcnn.errors import ConfigError, TrainingDivergedError, WorkdirError
from jaxcnn.models import build_model
from jaxcnn.models.layers import torch_init
from jaxcnn.models.ssl_heads import Autoencoder, SimCLR
from jaxcnn.report import pretrain_figures
from jaxcnn.ssl import augment, kmeans
from jaxcnn.ssl.simclr import nt_xent
from jaxcnn.ssl.trunk import save_trunk
from jaxcnn.train import sharding
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import init_metrics, make_epoch_fns, resolve_loop

METHODS = ("random", "autoencoder", "simclr", "kmeans")
# ssl.* keys each method reads (they, the data, the trunk and the seed name the cached trunk).
METHOD_KEYS = {
    "autoencoder": ("epochs", "batch_size", "learning_rate"),
    "simclr": ("epochs", "batch_size", "learning_rate", "temperature", "proj_hidden", "proj_dim", "crop_scale",
               "hflip", "jitter", "jitter_prob", "gray_prob", "blur"),
    "kmeans": ("kmeans_patches", "kmeans_iterations", "kmeans_n_init", "spherical", "whitening_eps"),
}
DATA_KEYS = ("source", "dir", "train_split", "classes", "image_size", "channels", "mean", "std", "max_train")
PATCH = 3  # the trunk's first conv is 3×3


def check_method(config: ml_collections.ConfigDict) -> str:
    method = config.ssl.method
    if method not in METHODS:
        raise ConfigError(f"config ssl.method={method!r} is not valid; valid values: {', '.join(METHODS)}")
    if method != "random" and config.model.name != "ssl_cnn":
        raise ConfigError(f"config ssl.method={method!r} pretrains the trunk of model.name='ssl_cnn', "
                          f"not {config.model.name!r}")
    if method == "kmeans":
        n_init = config.ssl.get("kmeans_n_init")
        if isinstance(n_init, bool) or not isinstance(n_init, int) or n_init < 1:
            raise ConfigError(f"config ssl.kmeans_n_init={n_init!r} is not valid; valid values: an integer >= 1 "
                              "(k-means restarts, the best kept)")
    return method


def pretrain_settings(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """Everything that shapes a pretrained trunk (what the cache is keyed by)."""
    method = check_method(config)
    settings = {"method": method, "seed": config.seed,
                "data": {k: config.data[k] for k in DATA_KEYS},
                "model": {"widths": config.model.widths, "dropout": config.model.dropout, "init": config.model.init},
                "ssl": {k: config.ssl[k] for k in METHOD_KEYS.get(method, ())}}
    return json.loads(json.dumps(settings))


def cached_trunk_dir(config: ml_collections.ConfigDict) -> pathlib.Path:
    settings = pretrain_settings(config)
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    return pathlib.Path(config.ssl.pretrain_dir) / f"{settings['method']}-seed{config.seed}-{digest}"


def pretrain_dataset(config: ml_collections.ConfigDict):
    """The dataset pretraining reads: every training image (`data.label_fraction` does not apply)."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    if "label_fraction" in data:
        data.label_fraction = 1.0  # pretraining sees every training image, without labels
    return load_dataset(data)


def pretrain(config: ml_collections.ConfigDict, out: str | pathlib.Path, progress: bool = True) -> dict[str, Any]:
    """Pretrains the trunk of `config`'s model with `config.ssl.method` on all training images
    (labels unused) and saves it to `out` (`jaxcnn.ssl.trunk`) with the method's figure. Returns its
    record. The epochs are checkpointed in `OUT.work` (removed when done): rerun to resume."""
    method = check_method(config)
    if method == "random":
        raise ConfigError("config ssl.method='random' has nothing to pretrain; choose autoencoder, simclr or kmeans")
    out = pathlib.Path(out)
    if out.exists():  # before hours of pretraining, not after
        raise ConfigError(f"{out} exists; choose a new directory for the trunk")
    work = out.with_name(out.name + ".work")  # the checkpoints of an unfinished pretraining
    dataset = pretrain_dataset(config)
    shape = (*config.data.image_size, config.data.channels)
    model = build_model(config.model, dataset.num_classes, shape, config.seed)
    trunk = model.trunk
    t0 = time.perf_counter()
    key = jax.random.key(config.seed)
    if method == "kmeans":
        (losses, figure), earlier = _kmeans_init(trunk, dataset.train_images, config, key), 0.0
    else:
        losses, figure, earlier = _train_trunk(method, trunk, dataset.train_images, config, key, progress, work)
    seconds = earlier + time.perf_counter() - t0
    meta = {"method": method, "pretrain_time_s": seconds, "num_images": int(len(dataset.train_images)),
            "dataset": dataset.name, "image_size": list(config.data.image_size), "losses": losses,
            "backend": jax.default_backend(), "settings": pretrain_settings(config)}
    save_trunk(out, trunk, meta)
    figure(out)
    shutil.rmtree(work, ignore_errors=True)
    return meta


def _train_trunk(method: str, trunk: nnx.Module, images: np.ndarray, config: ml_collections.ConfigDict,
                 key: jax.Array, progress: bool, work: pathlib.Path):
    """Trains the trunk with its objective; each epoch is checkpointed in `work`, from which an
    interrupted pretraining resumes (the same epochs, batches and keys: the same trunk). Returns the
    loss per epoch, the figure writer and the seconds spent by earlier, interrupted invocations."""
    ssl = config.ssl
    n, batch = len(images), ssl.batch_size
    if batch < 2 or batch > n:
        raise ConfigError(f"config ssl.batch_size={batch} must be between 2 and the {n} training images of "
                          f"data.source={config.data.source!r}")
    mesh = sharding.make_mesh(config.get("mesh", 0))  # data parallel, as the classifier's training
    sharding.check_batch(batch, mesh, "ssl.batch_size")
    constrain = sharding.shard_batch(mesh)
    widths = [int(c.out_features) for c in trunk.convs]
    rngs = nnx.Rngs(params=jax.random.fold_in(key, 1))
    preprocess = make_preprocess(config.data)
    mean = jnp.asarray(config.data.mean, jnp.float32)
    std = jnp.asarray(config.data.std, jnp.float32)
    if method == "autoencoder":
        model = Autoencoder(trunk, widths, config.data.channels, rngs=rngs)

        def objective(model, batch_images, labels, key):  # labels unused
            x = constrain(preprocess(batch_images))
            return jnp.mean((model(x) - x) ** 2), jnp.int32(0)
    else:
        try:
            opts = augment.check_options({k: ssl[k] for k in ("crop_scale", "hflip", "jitter", "jitter_prob",
                                                              "gray_prob", "blur")})
        except ValueError as e:
            raise ConfigError(f"config ssl: {e}") from None
        h, w = config.data.image_size
        features = trunk(jnp.zeros((1, h, w, config.data.channels))).size
        model = SimCLR(trunk, features, ssl.proj_hidden, ssl.proj_dim, rngs=rngs)

        def objective(model, batch_images, labels, key):  # labels unused
            x = constrain(preprocess(batch_images)) * std + mean  # [0, 1] at the model's size and channels
            v1, v2 = augment.simclr_views(key, x, opts)
            z = model((jnp.concatenate([v1, v2]) - mean) / std)  # both views in one BatchNorm batch
            return nt_xent(z[:len(x)], z[len(x):], ssl.temperature), jnp.int32(0)

    if config.model.init == "torch":  # the heads start as PyTorch's, as the trunk did (`build_model`)
        for head in ([model.decoder] if method == "autoencoder" else [model.proj1, model.proj2]):
            torch_init(head, rngs.params())
    model.train()
    optimizer = nnx.Optimizer(model, optax.adam(ssl.learning_rate), wrt=nnx.Param)
    settings = pretrain_settings(config)
    checkpoints = Checkpoints(work, keep=1, best=False)
    try:
        latest = checkpoints.latest_meta()
        if latest is not None and latest[1].get("settings") != settings:
            raise WorkdirError(f"{work} holds an unfinished pretraining with other settings; delete it to pretrain "
                               "these")
        start, record, notes = checkpoints.restore_latest(model, optimizer)
        for note in [*notes, *([f"resuming the pretraining after epoch {start} ({work})"] if start else [])]:
            print(f"note: {note}", file=sys.stderr)
        losses = _epochs(method, model, optimizer, objective, images, config, key, progress, checkpoints, start,
                         record, settings, mesh)
    finally:
        checkpoints.close()  # waits for the last save
    earlier = record.get("seconds", 0.0)
    if method == "autoencoder":
        model.eval()
        x = preprocess(images[:8])
        inputs, recon = np.asarray(x * std + mean), np.asarray(model(x) * std + mean)
        return (losses, lambda out: pretrain_figures.reconstruction_png(out / "reconstructions.png", inputs, recon),
                earlier)
    return losses, lambda out: pretrain_figures.loss_png(out / "pretrain_loss.png", losses, "NT-Xent"), earlier


def _epochs(method: str, model: nnx.Module, optimizer: nnx.Optimizer, objective, images: jax.Array,
            config: ml_collections.ConfigDict, key: jax.Array, progress: bool, checkpoints: Checkpoints,
            start: int, record: dict[str, Any], settings: dict[str, Any], mesh) -> list[float]:
    """Epochs `start`+1.. of the pretraining, each checkpointed; returns the loss of every epoch."""
    ssl = config.ssl
    n, batch = len(images), ssl.batch_size
    t0, earlier = time.perf_counter(), record.get("seconds", 0.0)
    graphdef, state = nnx.split((model, optimizer))
    # The classifier's step and epoch strategies (`jaxcnn.train.steps`), with this objective, its data
    # placement: the images and the state replicated, each batch split over the mesh.
    step_fn, epoch_fn = make_epoch_fns(graphdef, objective)
    loop = resolve_loop(config.train.loop, config.model)
    replicated = sharding.replicated(mesh)
    state, images, no_labels = sharding.put((state, images, np.zeros(n, np.int32)), replicated)
    steps = n // batch
    losses = list(record.get("losses", []))
    bar = tqdm(total=ssl.epochs * steps, initial=start * steps, unit="step", disable=not progress,
               dynamic_ncols=True)
    try:
        for epoch in range(start + 1, ssl.epochs + 1):
            bar.set_description(f"pretrain {method} (seed {config.seed}): epoch {epoch}/{ssl.epochs}")
            perm = sharding.put(epoch_permutation(jax.random.fold_in(key, 2), epoch, n, batch),
                                sharding.batch_sharding(mesh, leading=1))
            epoch_key = sharding.put(jax.random.fold_in(jax.random.fold_in(key, 3), epoch), replicated)
            carry, data = (state, init_metrics(), jnp.int32(0)), (images, no_labels, perm, epoch_key)
            if loop == "scan":
                carry = epoch_fn(carry, data)
                bar.update(steps)
            else:
                for _ in range(steps):
                    carry = step_fn(carry, data)
                    bar.update()
            state, metrics, _ = carry
            losses.append(float(metrics[0] / metrics[2]))
            if not np.isfinite(losses[-1]):
                raise TrainingDivergedError(f"pretraining {method}, epoch {epoch}: loss became {losses[-1]}; stopped. "
                                            f"Lower ssl.learning_rate (now {ssl.learning_rate}).")
            bar.set_postfix(loss=f"{losses[-1]:.4f}")
            nnx.update((model, optimizer), state)
            checkpoints.save(epoch, model, optimizer, {"epoch": epoch, "losses": losses, "settings": settings,
                                                      "seconds": earlier + time.perf_counter() - t0})
            faults.at("pretrain_saved", epoch)
    finally:
        bar.close()
    return losses


def whitened_patches(images: np.ndarray, config: ml_collections.ConfigDict, key: jax.Array, k: int):
    """The k-means pretraining's data: `ssl.kmeans_patches` random PATCH×PATCH patches of the preprocessed
    images, flat ones dropped, normalised and ZCA-whitened. Returns (whitened (n, d), mean (d,), W (d, d))."""
    ssl = config.ssl
    preprocess = jax.jit(make_preprocess(config.data))
    x = jnp.concatenate([preprocess(jnp.asarray(images[i:i + 1000])) for i in range(0, len(images), 1000)])
    patches = kmeans.extract_patches(jax.random.fold_in(key, 1), x, PATCH, ssl.kmeans_patches)
    # Flat patches (background) carry no structure: drop them before normalising.
    eps = kmeans.NORM_EPS_UNIT / float(np.mean(config.data.std)) ** 2
    patches = patches[np.asarray(patches.var(axis=1) > eps)]
    if len(patches) < 10 * k:
        raise ConfigError(f"k-means found only {len(patches)} non-flat {PATCH}×{PATCH} patches in "
                          f"{len(images)} images; raise ssl.kmeans_patches (now {ssl.kmeans_patches})")
    patches = kmeans.normalize_patches(patches, eps)
    mean, whitening = kmeans.zca_whitening(patches, ssl.whitening_eps)
    return kmeans.whiten(patches, mean, whitening), mean, whitening


def _kmeans_init(trunk: nnx.Module, images: np.ndarray, config: ml_collections.ConfigDict, key: jax.Array):
    """Sets the trunk's first conv from k-means on whitened patches; returns ([], figure writer)."""
    ssl = config.ssl
    k = int(trunk.convs[0].out_features)
    white, mean, whitening = whitened_patches(images, config, key, k)
    fit = kmeans.spherical_kmeans if ssl.spherical else kmeans.kmeans
    centroids, _ = fit(jax.random.fold_in(key, 2), white, k, ssl.kmeans_iterations, ssl.kmeans_n_init)
    kernel, bias = kmeans.filters_from_kmeans(centroids, mean, whitening, PATCH, config.data.channels)
    trunk.convs[0].kernel.value = kernel
    trunk.convs[0].bias.value = bias
    return [], lambda out: pretrain_figures.filters_png(out / "filters.png", np.asarray(kernel))
