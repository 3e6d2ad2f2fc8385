"""Self-supervised initialisation: does pretraining the conv trunk on unlabeled images (autoencoder,
SimCLR, k-means) beat random weights, and by how much when labels are scarce?

    python scripts/study.py --config configs/ssl_init.py --workdir runs/ssl --seeds 3
    python scripts/study.py --config configs/ssl_init.py:labels=0.01 --workdir runs/ssl_1pct --seeds 3
    python scripts/train.py --config configs/ssl_init.py:simclr,labels=0.1 --workdir runs/simclr
    python scripts/pretrain.py --config configs/ssl_init.py:autoencoder --out trunks/ae   # then trunk=trunks/ae

Variants: `random`, `autoencoder`, `simclr`, `kmeans` fine-tune every layer from that initialisation;
`*_probe` train only a linear head on the frozen trunk (a linear probe: BatchNorm running statistics,
no dropout in the trunk). Each pretraining uses every training image without labels and the run's
seed; the trunk is cached under `ssl.pretrain_dir` (see `jaxcnn.ssl.pretrain`), so a study pretrains
each method once per seed. The classifier then trains on `labels` (data.label_fraction, in (0, 1], a
stratified subset chosen by data.label_seed, the same for every init and seed).

Model (the study's): conv blocks 16/32/64 (3×3, BatchNorm, LeakyReLU 0.1, max pool 2, dropout 0.3),
Dense 128 + dropout 0.5, PyTorch's initialisation and BatchNorm statistics (`model.init=torch`, also for
the pretraining heads), Adam 1e-3 with L2 5e-4, 20 epochs. Pretraining: 10 epochs, Adam 1e-3, batch 256;
SimCLR with the authors' CIFAR settings (random resized crop 0.08–1, flip, colour jitter s = 0.5 with
p 0.8, grayscale p 0.2, no blur; temperature 0.5); k-means on 3×3 patches, 16 clusters
(the first conv's filters), best of 10 restarts (`ssl.kmeans_n_init`). Data: the embedded MNIST subset
(offline default), a TFDS name (`data=cifar10,data.channels=3,data.image_size=[32,32],...`), or
`data=folder:PATH` (the study's 10 animal classes). Aliases: data, classes, epochs, batch_size, lr, seed, labels, trunk.
"""

from jaxcnn.config import COMMON_ALIASES, SMOKE_FLAG, build_config, default_config
from jaxcnn.models import model_config

QUESTION = ("Does pretraining the conv trunk on unlabeled images (autoencoder, SimCLR, k-means) give a better "
            "starting point than random weights when only a fraction of the labels is used, fine-tuned and as "
            "a linear probe on the frozen trunk?")

METHODS = ("random", "autoencoder", "simclr", "kmeans")
VARIANTS = {
    **{m: {"ssl.method": m} for m in METHODS},
    **{f"{m}_probe": {"ssl.method": m, "model.probe": True} for m in METHODS},
}
# The report compares each variant with its baseline (same head, random init).
BASELINES = {**{m: "random" for m in METHODS[1:]}, **{f"{m}_probe": "random_probe" for m in METHODS[1:]}}


def base() -> "ml_collections.ConfigDict":  # noqa: F821
    import ml_collections

    config = default_config()
    config.data.mean = (0.1307,)
    config.data.std = (0.3081,)
    config.data.label_fraction = 0.1
    config.data.label_seed = 0
    # widths 16/32/64, hidden 128, dropout 0.3, probe False; the study ran in PyTorch: its initialisation
    # and BatchNorm running statistics (model.init=flax for Flax's)
    config.model = model_config("ssl_cnn", init="torch")
    config.optim.name = "adam"
    config.optim.learning_rate = 1e-3
    config.optim.weight_decay = 5e-4
    config.train.epochs = 20
    config.train.batch_size = 32
    config.ssl = ml_collections.ConfigDict(dict(
        method="random",  # random | autoencoder | simclr | kmeans
        trunk="",  # a pretrained trunk (scripts/pretrain.py); "" = pretrain or reuse the cached one
        pretrain_dir="runs/ssl_pretrain",
        epochs=10, batch_size=256, learning_rate=1e-3,
        # SimCLR
        temperature=0.5, proj_hidden=128, proj_dim=64,
        crop_scale=(0.08, 1.0), hflip=True, jitter=0.5, jitter_prob=0.8, gray_prob=0.2, blur=False,
        # k-means
        kmeans_patches=100_000, kmeans_iterations=30, kmeans_n_init=10, spherical=True, whitening_eps=0.01,
    ))
    return config


def get_config(arg: str | None = None):
    return build_config(arg, base, VARIANTS, default_variant="random",
                        aliases={**COMMON_ALIASES, "labels": "data.label_fraction", "trunk": "ssl.trunk"},
                        flags=SMOKE_FLAG, source="configs/ssl_init.py")
