"""The one weight-file format (`jaxcnn.train.checkpoint.save_weights`: an Orbax composite {model, meta}) of
converted weights and pretrained trunks: round trip, damage, interrupted saves, and folders written in
the format of an earlier jaxcnn (`weights/` or `trunk/` + meta.json), refused in one line."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx

from jaxcnn.convert.store import is_converted, load_converted, read_meta, save_converted
from jaxcnn.errors import ConfigError, DamagedCheckpoint
from jaxcnn.models import build_model, model_config
from jaxcnn.predict import restore_model
from jaxcnn.ssl.trunk import is_trunk, load_trunk, save_trunk
from jaxcnn.train.checkpoint import VARIABLES, checksum

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")

META = {"source": "test:lenet5", "architecture": "lenet5", "num_classes": 10, "input_size": [1, 28, 28],
        "mean": [0.5], "std": [0.5], "interpolation": "bilinear", "crop_pct": 0.875,
        "class_names": [str(i) for i in range(10)]}


def lenet(seed: int) -> nnx.Module:
    return build_model(model_config("lenet5"), 10, (28, 28, 1), seed)


def flat(module: nnx.Module) -> dict:
    return {p: np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
            for p, v in nnx.to_flat_state(nnx.state(module, VARIABLES))}


def save_the_earlier_way(folder: pathlib.Path, item: str, module: nnx.Module, meta: dict) -> pathlib.Path:
    """A folder as jaxcnn wrote converted weights and trunks before the {model, meta} composite:
    `save_variables` (an Orbax StandardCheckpointer at `folder/item`) and then meta.json with the checksum."""
    folder.mkdir(parents=True)
    state = nnx.state(module, VARIABLES)
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save((folder / item).absolute(), state)
    (folder / "meta.json").write_text(json.dumps({**meta, "checksum": checksum(state)}))
    return folder


def test_converted_weights_round_trip_and_predict_builds_them_from_their_record(tmp_path):
    model = lenet(3)
    save_converted(tmp_path / "w", model, META)
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["_CHECKPOINT_METADATA", "commit_success.txt",
                                                                 "meta", "model"]
    assert is_converted(tmp_path / "w") and read_meta(tmp_path / "w")["checksum"] == {"model": checksum(
        nnx.state(model, VARIABLES))}
    loaded, meta = load_converted(tmp_path / "w")
    assert meta["source"] == "test:lenet5" and meta["input_shape"] == [28, 28, 1]
    want = flat(model)
    for k, v in flat(loaded).items():
        np.testing.assert_array_equal(v, want[k])
    restored = restore_model(tmp_path / "w")
    assert (restored.epoch, restored.crop_pct, restored.input_shape) == (None, 0.875, (28, 28, 1))
    assert restored.config.model.name == "lenet5" and restored.class_names[3] == "3"
    with pytest.raises(ConfigError, match="exists and is not empty"):
        save_converted(tmp_path / "w", model, META)
    (tmp_path / "empty").mkdir()
    save_converted(tmp_path / "empty", model, META)  # an empty --out is fine
    assert is_converted(tmp_path / "empty")


def test_damaged_weights_are_refused_in_one_line(tmp_path):
    save_converted(tmp_path / "w", lenet(0), META)
    data = max((tmp_path / "w" / "model").rglob("d/*"), key=lambda f: f.stat().st_size)
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    with pytest.raises(DamagedCheckpoint, match="the model arrays on disk do not match the checksum written with "
                                                "them .*; convert the weights again"):
        load_converted(tmp_path / "w")
    (tmp_path / "w" / "meta" / "metadata").write_text("[1, 2")
    with pytest.raises(DamagedCheckpoint, match=r"its record does not load \(.*\); convert the weights again"):
        read_meta(tmp_path / "w")


def test_an_interrupted_save_leaves_nothing_that_looks_complete(tmp_path):
    """Killed while Orbax writes (after the arrays, before its rename): no OUT, only Orbax's temporary
    sibling, which the next save removes."""
    out = tmp_path / "w"
    script = ("import os, orbax.checkpoint as ocp\n"
              "from jaxcnn.convert.store import save_converted\n"
              "from jaxcnn.models import build_model, model_config\n"
              "ocp.CompositeCheckpointHandler.finalize = lambda *a, **k: os._exit(9)\n"
              f"save_converted({str(out)!r}, build_model(model_config('lenet5'), 10, (28, 28, 1), 0), {META!r})\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 9, proc.stderr[-3000:]
    assert not out.exists() and not is_converted(out)
    leftovers = [p.name for p in tmp_path.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].startswith("w.orbax-checkpoint-tmp"), leftovers
    with pytest.raises(ConfigError, match="not a converted checkpoint"):
        read_meta(out)
    save_converted(out, lenet(0), META)
    assert [p.name for p in tmp_path.iterdir()] == ["w"] and is_converted(out)


def test_converted_weights_of_an_earlier_jaxcnn_are_refused_in_one_line(tmp_path):
    old = save_the_earlier_way(tmp_path / "old", "weights", lenet(0), META)
    assert is_converted(old) and read_meta(old)["architecture"] == "lenet5"  # what it holds is still known
    message = (r"old holds converted weights written by an earlier jaxcnn \(weights/ \+ meta.json\), which this one "
               r"no longer reads; convert them again: scripts/convert_weights.py --source test:lenet5 --out NEW_DIR$")
    with pytest.raises(ConfigError, match=message):
        load_converted(old)
    with pytest.raises(ConfigError, match=message):
        restore_model(old)
    image = tmp_path / "digit.png"
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    proc = subprocess.run([sys.executable, "scripts/predict.py", "--workdir", str(old), str(image)], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "written by an earlier jaxcnn" in errors[0], proc.stderr[-3000:]


def test_trunks_round_trip_and_trunks_of_an_earlier_jaxcnn_are_refused_in_one_line(tmp_path):
    model = build_model(model_config("ssl_cnn"), 10, (28, 28, 1), 1)
    save_trunk(tmp_path / "t", model.trunk, {"method": "kmeans", "pretrain_time_s": 1.0})
    assert is_trunk(tmp_path / "t") and not (tmp_path / "t.partial").exists()
    with pytest.raises(ConfigError, match="exists; choose a new directory"):
        save_trunk(tmp_path / "t", model.trunk, {})
    other = build_model(model_config("ssl_cnn"), 10, (28, 28, 1), 2)
    meta = load_trunk(other, tmp_path / "t")
    assert meta["method"] == "kmeans" and meta["widths"] == [int(c.out_features) for c in model.trunk.convs]
    want = flat(model.trunk)
    for k, v in flat(other.trunk).items():
        np.testing.assert_array_equal(v, want[k])

    signature = {"architecture": "ssl_cnn", "widths": meta["widths"], "in_channels": 1, "method": "kmeans"}
    old = save_the_earlier_way(tmp_path / "old", "trunk", model.trunk, signature)
    assert is_trunk(old)  # so that no pretraining is started into it: loading it says what to do
    with pytest.raises(ConfigError, match=r"old holds a pretrained trunk written by an earlier jaxcnn \(trunk/ "
                                          r"\+ meta.json\), which this one no longer reads; delete it to pretrain "
                                          r"it again, or pretrain the trunk again"):
        load_trunk(other, old)
