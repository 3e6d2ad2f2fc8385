"""Pretrain the SSL study's conv trunk without labels and save it for a supervised run:

    python scripts/pretrain.py --config configs/ssl_init.py:simclr --out trunks/simclr
    python scripts/train.py --config configs/ssl_init.py:simclr,trunk=trunks/simclr --workdir runs/simclr

`--out` receives the trunk (Orbax: `model/` and `meta/`, its record: method, time, loss per epoch) and the
method's figure (autoencoder: reconstructions.png, SimCLR: pretrain_loss.png, k-means: filters.png). Each epoch
is checkpointed in `OUT.work`: an interrupted pretraining resumes where it stopped when the same command is run
again. The study (`scripts/study.py --config configs/ssl_init.py`) pretrains on its own and caches the trunks.
"""

from absl import flags
from ml_collections import config_flags

from jaxcnn.cli import run

config_flags.DEFINE_config_file("config", None, "Config file and argument, e.g. configs/ssl_init.py:simclr",
                                lock_config=True)
flags.DEFINE_string("out", None, "New directory for the pretrained trunk.")
flags.mark_flags_as_required(["config", "out"])


def main(argv):
    del argv
    from jaxcnn.ssl.pretrain import pretrain

    meta = pretrain(flags.FLAGS.config, flags.FLAGS.out)
    losses = ", ".join(f"{x:.4f}" for x in meta["losses"]) or "none (k-means)"
    print(f"{meta['method']} pretrained on {meta['num_images']} images in {meta['pretrain_time_s']:.1f} s; "
          f"loss per epoch: {losses}; trunk in {flags.FLAGS.out}")


if __name__ == "__main__":
    run(main)
