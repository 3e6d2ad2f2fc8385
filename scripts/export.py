"""Export a trained run (or converted weights) to ONNX:
`python scripts/export.py --workdir runs/lenet3 --format onnx [--out DIR] [--epoch N]`.

Writes `OUT/model.onnx` (float32 logits of normalised NHWC images, dynamic batch) and
`OUT/preprocess.json` (image size, channels, the resize and crop - for converted weights their library's
eval transform: interpolation, resize_size, crop_mode, crop_pct and the arithmetic in `note` -, uint8/255
scaling, mean, std, class names, source);
OUT defaults to WORKDIR/export. Needs the `export` extra and jax2onnx (see jaxcnn/export.py).
"""

from absl import flags

from jaxcnn.cli import run

flags.DEFINE_string("workdir", None, "Workdir of a training run (its best checkpoint is used), or a directory "
                    "of weights converted by scripts/convert_weights.py.")
flags.DEFINE_string("format", "onnx", "Export format: onnx.")
flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/export).")
flags.DEFINE_integer("epoch", None, "Export this epoch's checkpoint instead of the best.",
                     lower_bound=1)
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from jaxcnn.export import MODEL_ONNX, PREPROCESS_JSON, export

    out = export(FLAGS.workdir, FLAGS.format, FLAGS.out, FLAGS.epoch)
    size_mb = (out / MODEL_ONNX).stat().st_size / 2**20
    print(f"exported {out / MODEL_ONNX} ({size_mb:.1f} MiB) and {out / PREPROCESS_JSON}")


if __name__ == "__main__":
    run(main)
