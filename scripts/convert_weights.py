"""Convert timm/torchvision ImageNet weights into a Flax checkpoint jaxcnn can train from and predict with.

    python scripts/convert_weights.py --source timm:resnet18.a1_in1k --out weights/resnet18_a1   # downloads via timm
    python scripts/convert_weights.py --source torchvision:alexnet --out weights/alexnet        # downloads via torchvision
    python scripts/convert_weights.py --source timm:resnet18 --checkpoint resnet18.safetensors --out weights/r18

The converted model is checked against the PyTorch model on a random batch before it is written.
"""

from absl import flags

from jaxcnn.cli import run

flags.DEFINE_string("source", None, "timm:MODEL or torchvision:MODEL (resnet18, resnet34, alexnet).")
flags.DEFINE_string("checkpoint", None, "Local weights file (.pth/.bin/.safetensors) instead of downloading.")
flags.DEFINE_string("out", None, "Output directory (new or empty).")
flags.DEFINE_bool("pretrained", True, "Download pretrained weights (--nopretrained: random init, for tests).")
flags.mark_flags_as_required(["source", "out"])


def main(argv):
    del argv
    from jaxcnn.convert.convert import convert

    f = flags.FLAGS
    meta, max_diff = convert(f.source, f.out, f.checkpoint, f.pretrained)
    print(f"{meta['source']} -> {f.out}: {meta['architecture']}, {meta['num_classes']} classes, "
          f"input {meta['input_size']}; max |logit diff| vs PyTorch {max_diff:.2e}")


if __name__ == "__main__":
    run(main)
