"""Runs trained as one vmapped program equal the same runs trained one at a time."""

import json

import numpy as np
import pytest
from flax import nnx

from jaxcnn.data import load_dataset
from jaxcnn.errors import ConfigError
from jaxcnn.train import loop
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.trainer import Trainer, group_key
from tests.helpers import lenet

SMALL = "data.max_train=300,data.max_test=100,epochs=2"


def params_of(workdir, epoch):
    config = lenet.get_config(json.loads((workdir / "config.json").read_text())["variant"] + "," + SMALL)
    from jaxcnn.models import build_model

    model = build_model(config.model, 10, (28, 28, 1), 0)
    checkpoints = Checkpoints(workdir, read_only=True)
    checkpoints.restore(epoch, model)
    checkpoints.close()
    return {str(k): np.asarray(v) for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def history(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if "time" not in k} for r in rows]


@pytest.mark.parametrize("loop_kind", ["python", "scan"])
def test_group_equals_one_at_a_time(tmp_path, loop_kind):
    # Adam/Tanh at two learning rates (variants 0 and 9) and two seeds: one program (python loop: four
    # members; scanned epoch: two, to keep the suite short).
    members = [("0", 0), ("0", 1), ("9", 0), ("9", 1)] if loop_kind == "python" else [("0", 0), ("9", 1)]
    configs = [lenet.get_config(f"{v},{SMALL},seed={seed},train.loop={loop_kind}") for v, seed in members]
    dataset = load_dataset(configs[0].data)
    names = [f"{c.variant}_s{c.seed}" for c in configs]
    grouped = loop.train_group(configs, [tmp_path / "g" / n for n in names], dataset, progress=False)
    single = [loop.train_and_evaluate(c, tmp_path / "s" / n, dataset, progress=False) for c, n in zip(configs, names)]
    n = len(configs)
    assert [s["group_size"] for s in grouped] == [n] * n and [s["group_size"] for s in single] == [1] * n
    for n, g, s in zip(names, grouped, single):
        hg, hs = history(tmp_path / "g" / n), history(tmp_path / "s" / n)
        assert len(hg) == len(hs) == 2
        for a, b in zip(hg, hs):
            assert a.keys() == b.keys()
            for k in a:
                np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-5, err_msg=f"{n} {k}")
        pg, ps = params_of(tmp_path / "g" / n, 2), params_of(tmp_path / "s" / n, 2)
        # Adam normalises tiny gradients, so float-rounding differences of the vmapped
        # convolutions reach ~3e-5 in weights of size ~0.1 after a few steps at lr 0.01.
        for k in pg:
            np.testing.assert_allclose(pg[k], ps[k], rtol=1e-3, atol=2e-4, err_msg=f"{n} {k}")
        assert abs(g["final_test_accuracy"] - s["final_test_accuracy"]) <= 0.005
    # the members really differ: seeds and learning rates give different models
    finals = {round(s["final_test_accuracy"], 4) for s in single}
    assert len(finals) > 1


def test_groups_need_the_same_architecture_and_optimizer_family():
    a, b = lenet.get_config("0"), lenet.get_config("2")  # tanh vs relu
    assert group_key(lenet.get_config("0")) == group_key(lenet.get_config("1,seed=3"))
    assert group_key(a) != group_key(b)
    dataset = load_dataset(a.data)
    with pytest.raises(ConfigError, match="model.activation"):
        Trainer([a, b], dataset.train_images, dataset.train_labels, 10)
    with pytest.raises(ConfigError, match="optim.name"):
        Trainer([lenet.get_config("0"), lenet.get_config("4")], dataset.train_images, dataset.train_labels, 10)


def test_a_diverging_member_stops_alone(tmp_path):
    configs = [lenet.get_config(f"6,{SMALL}"), lenet.get_config(f"6,{SMALL},lr=1e30")]
    results = loop.train_group(configs, [tmp_path / "ok", tmp_path / "bad"], progress=False)
    assert isinstance(results[0], dict) and results[0]["epochs"] == 2
    assert isinstance(results[1], loop.TrainingDivergedError)
    assert "lower optim.learning_rate" in str(results[1]).lower()
    assert not (tmp_path / "bad" / "summary.json").exists()
    assert (tmp_path / "ok" / "summary.json").exists()
