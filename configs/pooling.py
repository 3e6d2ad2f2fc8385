"""Pooling study on three CIFAR-100 classes: a strided first conv, max pooling or average pooling.

    python scripts/train.py --config configs/pooling.py:max --workdir runs/pool_max
    python scripts/train.py --config configs/pooling.py:stride,classes=[0,33,43] --workdir runs/stride_b
    python scripts/train.py --config configs/pooling.py:avg,data=embedded,classes=[0,1,2] --workdir runs/offline

Argument: `VARIANT[,key=value...][,smoke]`. Variants: `stride` (first conv 5×5 with stride 4, no
pooling), `max` and `avg` (first conv with stride 1, then 4×4 pooling with stride 4); each shrinks the
map 4× and has 33,219 parameters on 32×32×3 images with 3 classes. Keys are dotted config keys
(`model.hidden=64`) or the aliases data, classes, epochs, batch_size, lr, seed; `smoke` shrinks the
run for a quick check.

Data: CIFAR-100 (TFDS) classes 0, 55, 58 (apple, otter, pickup truck); the study also used
0, 33, 43 (apple, forest, lion): `classes=[0,33,43]`. Pixels are normalised with the CIFAR-100
mean/std. Offline, `data=embedded,classes=[0,1,2]` trains on three digits of the embedded MNIST
subset (any classes in 0..9; the CIFAR ids do not exist there): the gray 28×28 digits are repeated
to 3 channels and resized to 32×32 on the device (for 28×28 gray inputs instead add
`data.channels=1,data.image_size=[28,28],data.mean=[0.1307],data.std=[0.3081]`).
SGD with momentum 0.9 and learning rate 5e-3 as in the study; its batch size and epochs are not
stated, 32 and 30 are our defaults. The weights start as PyTorch's defaults (`model.init=torch`), as
in the PyTorch study; `model.init=flax` for Flax's.
"""

from jaxcnn.config import COMMON_ALIASES, SMOKE_FLAG, build_config, default_config
from jaxcnn.models import model_config

QUESTION = ("Which way of shrinking the feature map (a strided first conv, 4×4 max pooling or 4×4 average "
            "pooling) gives the best test accuracy and the least overfitting on {data}?")  # describe_data

# pooling kind / stride of the first conv
VARIANTS = {
    "stride": {"model.pooling": "none", "model.first_stride": 4},
    "max": {"model.pooling": "max", "model.first_stride": 1},
    "avg": {"model.pooling": "avg", "model.first_stride": 1},
}


def base() -> "ml_collections.ConfigDict":  # noqa: F821
    config = default_config()
    config.data.source = "cifar100"
    config.data.classes = (0, 55, 58)
    config.data.channels = 3
    config.data.image_size = (32, 32)
    config.data.mean = (0.5074, 0.4867, 0.4411)
    config.data.std = (0.2011, 0.1987, 0.2025)
    # relu, max pooling, first_stride 1, hidden 32 (channels of the first conv; the second has twice as many)
    config.model = model_config("pooling_cnn", init="torch")  # the study ran in PyTorch: its initialisation
    config.optim.name = "sgd"
    config.optim.learning_rate = 5e-3
    config.optim.momentum = 0.9
    config.optim.schedule = "constant"
    config.train.epochs = 30
    config.train.batch_size = 32
    return config


def get_config(arg: str | None = None):
    return build_config(arg, base, VARIANTS, default_variant="max",
                        aliases=COMMON_ALIASES, flags=SMOKE_FLAG, source="configs/pooling.py")
