"""Transfer learning: ImageNet-pretrained AlexNet and ResNet-18 (converted from torchvision/timm) versus
training from scratch, fine-tuned or with frozen features.

    python scripts/convert_weights.py --source torchvision:alexnet --out weights/alexnet
    python scripts/train.py --config configs/transfer.py:alexnet_frozen,init=weights/alexnet --workdir runs/alex
    python scripts/convert_weights.py --source torchvision:resnet18 --out weights/resnet18
    python scripts/train.py --config configs/transfer.py:resnet18_finetune,init=weights/resnet18,data=folder:signs \\
        --workdir runs/r18

Variants (the studies' settings):
- `alexnet_frozen`: MNIST, `features` frozen, classifier trained; SGD lr 0.01 momentum 0.9 wd 1e-4, step 10/0.1,
  batch 128, 10 epochs; random rotation ±10° (no flips: a flipped digit is another symbol).
- `alexnet_scratch`: the same network and schedule, every layer trained from random weights.
- `resnet18_finetune`: an ImageFolder dataset (`data=folder:PATH`, the study's 6 speed-limit signs); all layers
  trained; SGD 0.002/0.9, step 7/0.1, 25 epochs, batch 4; random resized crop + flip, eval resize + centre crop.
- `resnet18_frozen`: fixed feature extractor, only `fc` trained (lr 0.001); BatchNorm statistics stay as loaded.
- `resnet18_scratch`: random init, SGD 0.001 wd 1e-4, cosine over 25 epochs.

Argument: `VARIANT[,key=value...][,smoke]`; `init=PATH` names the converted weights (finetune and frozen need them),
`model.dtype=bfloat16` computes in bf16 with float32 parameters. TFDS images stay at their size (MNIST 28×28 gray)
and are resized to 224×224×3 per batch on the device, so the upscaled set is never stored; `folder:` images are
read at `data.image_size`.
"""

from jaxcnn.config import COMMON_ALIASES, SMOKE_FLAG, build_config, default_config

QUESTION = ("How much do ImageNet-pretrained weights help AlexNet and ResNet-18 over training from scratch, and "
            "is fine-tuning every layer better than training only the head on frozen features?")

_ALEXNET = {"model.name": "alexnet", "data.source": "mnist", "optim.learning_rate": 0.01,
            "optim.weight_decay": 1e-4, "optim.schedule": "step", "optim.decay_epochs": 10,
            "train.batch_size": 128, "train.epochs": 10, "data.rotation": 10.0}
_RESNET = {"model.name": "resnet18", "data.source": "folder:data/traffic_signs", "optim.learning_rate": 0.002,
           "optim.schedule": "step", "optim.decay_epochs": 7, "train.batch_size": 4, "train.epochs": 25,
           "data.random_resized_crop": True, "data.hflip": True, "data.eval_crop_pct": 0.875}

VARIANTS = {
    "alexnet_frozen": {**_ALEXNET, "transfer.mode": "frozen"},
    "alexnet_scratch": {**_ALEXNET, "transfer.mode": "scratch"},
    "resnet18_finetune": {**_RESNET, "transfer.mode": "finetune"},
    "resnet18_frozen": {**_RESNET, "transfer.mode": "frozen", "optim.learning_rate": 0.001},
    "resnet18_scratch": {**_RESNET, "transfer.mode": "scratch", "optim.learning_rate": 0.001,
                         "optim.weight_decay": 1e-4, "optim.schedule": "cosine"},
}


def base() -> "ml_collections.ConfigDict":  # noqa: F821
    import ml_collections

    config = default_config()
    # The study ran in PyTorch: random weights (scratch, and every new head) start as torchvision's,
    # BatchNorm running variances update as PyTorch's (unbiased batch variance).
    config.model.init = "torch"
    config.data.channels = 3
    config.data.image_size = (224, 224)
    config.data.mean = (0.485, 0.456, 0.406)  # ImageNet normalisation, as the pretrained weights expect
    config.data.std = (0.229, 0.224, 0.225)
    config.data.eval_crop_pct = 0.0  # > 0: eval resize (shorter side to 224 / crop_pct) + centre crop
    config.data.random_resized_crop = False
    config.data.rrc_scale = (0.08, 1.0)
    config.data.hflip = False
    config.data.rotation = 0.0  # degrees, ± uniform
    config.optim.name = "sgd"
    config.optim.momentum = 0.9
    config.transfer = ml_collections.ConfigDict(dict(mode="finetune", init=""))
    config.train.eval_batch_size = 100
    return config


def get_config(arg: str | None = None):
    return build_config(arg, base, VARIANTS, default_variant="alexnet_frozen",
                        aliases={**COMMON_ALIASES, "init": "transfer.init"}, flags=SMOKE_FLAG,
                        source="configs/transfer.py")
