"""Train one config: `python scripts/train.py --config configs/lenet.py:3 --workdir runs/lenet3`.

Rerunning on the same workdir resumes from its latest checkpoint. Override any key with
`--config.train.epochs=5` or inside the config argument (`configs/lenet.py:3,epochs=5`).
"""

from absl import flags
from ml_collections import config_flags

from jaxcnn.cli import run
from jaxcnn.train.loop import train_and_evaluate

config_flags.DEFINE_config_file("config", None, "Config file and argument, e.g. configs/lenet.py:3", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics, figures and summary.md.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    del argv
    summary = train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
    print(f"final test accuracy {summary['final_test_accuracy']:.4f}, best {summary['best_test_accuracy']:.4f} "
          f"(epoch {summary['best_epoch']}); outputs in {flags.FLAGS.workdir}/summary.md")


if __name__ == "__main__":
    run(main)
