"""Data-parallel checks run in a subprocess with 8 simulated CPU devices (tests/test_sharding.py):
XLA_FLAGS=--xla_force_host_platform_device_count=8 must be set before JAX starts."""

import json
import pathlib
import sys
import tempfile

import jax
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxcnn.data import load_dataset
from jaxcnn.errors import ConfigError
from jaxcnn.train.loop import train_and_evaluate
from jaxcnn.train.trainer import Trainer
from tests.helpers import config_module

lenet = config_module("lenet")
ARG = "3,data.max_train=640,data.max_test=200,batch_size=80,train.eval_batch_size=200,epochs=1"


def trained(mesh: int, loop: str):
    config = lenet.get_config(f"{ARG},mesh={mesh}")
    data = load_dataset(config.data)
    trainer = Trainer(config, data.train_images, data.train_labels, data.num_classes, loop=loop)
    sums = trainer.train_epoch(1)
    params = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(trainer.model, nnx.Param))}
    return trainer, sums, params


def check_equal_to_one_device(loop: str) -> None:
    one, sums1, params1 = trained(1, loop)
    eight, sums8, params8 = trained(8, loop)
    assert one.mesh.size == 1 and eight.mesh.size == 8
    np.testing.assert_allclose(sums8, sums1, rtol=2e-5)
    for k in params1:
        np.testing.assert_allclose(params8[k], params1[k], atol=2e-5, err_msg=str(k))
    # the batch really is split: the permutation's batch axis over the 8 devices, state replicated,
    # and the compiled step works on per-device slices of 80 / 8 = 10 images
    perm = eight._epoch_data(1)[2]
    assert perm.sharding.spec == P(None, "data") and len(perm.sharding.device_set) == 8
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(eight._state()))
    hlo = eight._train_fn.as_text()
    assert "f32[10,28,28,1]" in hlo and "f32[80,28,28,1]" not in hlo, "batch not split in the compiled step"
    print(f"{loop}: 8 devices == 1 device; loss {sums8[0, 0] / sums8[0, 2]:.6f} vs {sums1[0, 0] / sums1[0, 2]:.6f}")


def check_resume_on_other_device_count() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        reference = train_and_evaluate(lenet.get_config(f"{ARG},epochs=2,mesh=1"), tmp / "ref", progress=False)
        train_and_evaluate(lenet.get_config(f"{ARG},epochs=1,mesh=8"), tmp / "moved", progress=False)
        resumed = train_and_evaluate(lenet.get_config(f"{ARG},epochs=2,mesh=2"), tmp / "moved", progress=False)
        ref = [json.loads(x) for x in (tmp / "ref" / "metrics.jsonl").read_text().splitlines()]
        moved = [json.loads(x) for x in (tmp / "moved" / "metrics.jsonl").read_text().splitlines()]
        for a, b in zip(ref, moved, strict=True):
            np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-4)
            np.testing.assert_allclose(b["test_loss"], a["test_loss"], rtol=1e-4)
        assert resumed["final_test_accuracy"] == reference["final_test_accuracy"]
    print("8 devices -> resumed on 2 == 1 device for 2 epochs")


def check_pretraining_equal_to_one_device() -> None:
    from jaxcnn.models import build_model
    from jaxcnn.ssl.pretrain import pretrain
    from jaxcnn.ssl.trunk import load_trunk

    ssl_init = config_module("ssl_init")
    runs = []
    for mesh in (1, 8):
        config = ssl_init.get_config(f"autoencoder,data.max_train=256,ssl.epochs=1,ssl.batch_size=64,mesh={mesh}")
        with tempfile.TemporaryDirectory() as tmp:
            meta = pretrain(config, pathlib.Path(tmp) / "trunk", progress=False)
            model = build_model(config.model, 10, (28, 28, 1), 0)
            load_trunk(model, pathlib.Path(tmp) / "trunk")
        runs.append((meta["losses"], {k: np.asarray(v.get_value())
                                      for k, v in nnx.to_flat_state(nnx.state(model.trunk, nnx.Param))}))
    (losses1, params1), (losses8, params8) = runs
    np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
    for k in params1:
        # A conv bias right before BatchNorm gets a zero gradient up to rounding, which Adam scales to
        # full-size steps: it differs between any two summation orders and does not change the function.
        # Adam likewise lifts rounding in the kernels to ~2e-5 (weights of size ~0.1).
        if not (k[0] == "convs" and k[-1] == "bias"):
            np.testing.assert_allclose(params8[k], params1[k], atol=1e-4, err_msg=str(k))
    try:  # the mesh is used: a batch that does not split over it is refused
        pretrain(ssl_init.get_config("autoencoder,data.max_train=256,ssl.batch_size=100,mesh=8"),
                 pathlib.Path(tempfile.mkdtemp()) / "trunk", progress=False)
    except ConfigError as e:
        assert "ssl.batch_size=100 does not split evenly over 8 devices" in str(e), str(e)
    else:
        raise AssertionError("ssl.batch_size=100 on 8 devices: no error")
    print(f"pretraining: 8 devices == 1 device; losses {losses8} vs {losses1}")


def check_errors() -> None:
    for arg, message in (("batch_size=100,mesh=8", "train.batch_size=100 does not split evenly over 8 devices "
                                                   "(mesh=8); use a multiple of 8 such as 96 or 104, or mesh=4"),
                         ("mesh=9", "config mesh=9 is not valid: use 0 (all devices) or 1..8")):
        config = lenet.get_config(f"{ARG},{arg}")
        try:
            Trainer(config, np.zeros((640, 28, 28, 1), np.uint8), np.zeros(640, np.int32), 10)
        except ConfigError as e:
            assert message in str(e), str(e)
        else:
            raise AssertionError(f"{arg}: no error")
    print("errors ok")


def check_scaling_benchmark() -> None:
    from jaxcnn.benchmark import run_scaling

    rows = run_scaling(lenet.get_config("3,data.max_train=320,batch_size=80"), [1, 8], epochs=1)
    assert [r["devices"] for r in rows] == [1, 8] and rows[0]["efficiency"] == 1.0
    np.testing.assert_allclose(rows[1]["train_loss"], rows[0]["train_loss"], rtol=2e-5)
    assert rows[1]["efficiency"] == rows[1]["images_per_s"] / (8 * rows[0]["images_per_s"])
    print("scaling benchmark ok")


def main() -> None:
    assert jax.device_count() == 8, jax.devices()
    names = sys.argv[1:] or ["python", "scan", "resume", "errors", "scaling", "pretrain"]
    for name in names:
        {"python": lambda: check_equal_to_one_device("python"), "scan": lambda: check_equal_to_one_device("scan"),
         "resume": check_resume_on_other_device_count, "errors": check_errors,
         "scaling": check_scaling_benchmark, "pretrain": check_pretraining_equal_to_one_device}[name]()


if __name__ == "__main__":
    main()
