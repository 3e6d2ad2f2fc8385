"""LeNet-5 on MNIST: the study's ten optimizer/activation/learning-rate variants, and `best`.

    python scripts/train.py --config configs/lenet.py:3 --workdir runs/lenet3
    python scripts/train.py --config configs/lenet.py:3,data=mnist --workdir runs/full
    python scripts/train.py --config configs/lenet.py:best,data=mnist,epochs=30 --workdir runs/best

Argument: `VARIANT[,key=value...][,smoke]`. Keys are dotted config keys (`optim.learning_rate=0.01`)
or the aliases data, classes, epochs, batch_size, lr, seed; `smoke` shrinks the run for a quick check.
Inputs are scaled to [0, 1] as in the study (no mean/std normalisation). The weights start as
PyTorch's defaults (`model.init=torch`), as in the PyTorch study; `model.init=flax` starts from Flax's,
whose ~1.7× larger spread makes plain SGD train as if at a much larger learning rate (README).
"""

from jaxcnn.config import COMMON_ALIASES, SMOKE_FLAG, build_config, default_config


def _variant(optimizer: str, activation: str, lr: float) -> dict:
    return {"optim.name": optimizer, "model.activation": activation, "optim.learning_rate": lr}


# The study's table: optimizer / activation / learning rate (plain SGD, as in the study).
VARIANTS = {
    "0": _variant("adam", "tanh", 0.01),
    "1": _variant("adam", "tanh", 0.001),
    "2": _variant("adam", "relu", 0.01),
    "3": _variant("adam", "relu", 0.001),
    "4": _variant("sgd", "tanh", 0.01),
    "5": _variant("sgd", "tanh", 0.001),
    "6": _variant("sgd", "relu", 0.01),
    "7": _variant("sgd", "relu", 0.001),
    "8": _variant("sgd", "tanh", 0.0001),
    "9": _variant("adam", "tanh", 0.0001),
    # The study's other axes, on variant 3: number of conv layers (3x3 16->16 convs added after
    # the second conv) and pooling type.
    "conv3": {**_variant("adam", "relu", 0.001), "model.extra_conv_layers": 1},
    "conv4": {**_variant("adam", "relu", 0.001), "model.extra_conv_layers": 2},
    "maxpool": {**_variant("adam", "relu", 0.001), "model.pooling": "max"},
    # Aimed at the study's >= 99.2% on full MNIST: ReLU, max pooling, random 2-pixel shifts,
    # Adam with warmup and cosine decay over 30 epochs.
    "best": {**_variant("adam", "relu", 0.002), "model.pooling": "max", "data.crop_padding": 2,
             "optim.schedule": "cosine", "optim.warmup_epochs": 1, "train.epochs": 30},
}


QUESTION = ("How do optimizer, activation and learning rate (variants 0-9), the number of conv layers "
            "(conv3, conv4) and the pooling type (maxpool) change LeNet-5's test accuracy and overfitting "
            "on {data}?")  # {data}: the study's data in words (jaxcnn.data.describe_data)


def base() -> "ml_collections.ConfigDict":  # noqa: F821
    config = default_config()  # model: lenet5 with its defaults (jaxcnn/models/lenet.py)
    config.model.init = "torch"  # the study ran in PyTorch: its default initialisation
    config.train.epochs = 20
    config.train.batch_size = 100
    config.report.test_index = (199,)  # the lab: "check predictions on individual test images (e.g. index 199)"
    return config


def get_config(arg: str | None = None):
    return build_config(arg, base, VARIANTS, default_variant="3",
                        aliases=COMMON_ALIASES, flags=SMOKE_FLAG, source="configs/lenet.py")
