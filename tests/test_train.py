"""End-to-end training on the embedded real MNIST subset: accuracy, outputs, resume, divergence."""

import csv
import json
import os
import struct

import jax
import numpy as np
import pytest
from PIL import Image

from jaxcnn.data import load_dataset
from jaxcnn.errors import ConfigError, WorkdirError
from jaxcnn.report.metrics import confusion_matrix, per_class_report
from jaxcnn.report.run import confused_pairs, read_confusion_matrix
from jaxcnn.train import loop, trainer
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import resolve_steps_per_call
from tests.helpers import lenet, read_csv


@pytest.fixture(scope="module")
def variant3_run(tmp_path_factory):
    """The study's variant 3 (Adam, ReLU, lr 1e-3, batch 100) for its default 20 epochs."""
    workdir = tmp_path_factory.mktemp("lenet3")
    summary = loop.train_and_evaluate(lenet.get_config("3"), workdir, progress=False)
    return workdir, summary


def test_variant3_passes_95_percent_on_the_embedded_subset(variant3_run):
    _, summary = variant3_run
    assert summary["final_test_accuracy"] >= 0.95
    assert summary["num_params"] == 61_706
    assert summary["epochs"] == 20


def test_run_outputs_hold_the_right_numbers(variant3_run):
    workdir, summary = variant3_run
    history = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == list(range(1, 21))
    with open(workdir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    for h, row in zip(history, rows, strict=True):
        assert float(row["test_accuracy"]) == pytest.approx(h["test_accuracy"])
        assert float(row["train_loss"]) == pytest.approx(h["train_loss"])
    assert summary["final_test_accuracy"] == history[-1]["test_accuracy"]
    best = max(history, key=lambda h: h["test_accuracy"])
    assert (summary["best_test_accuracy"], summary["best_epoch"]) == (best["test_accuracy"], best["epoch"])
    assert summary["overfitting_gap"] == pytest.approx(history[-1]["train_accuracy"] - history[-1]["test_accuracy"])
    assert json.loads((workdir / "summary.json").read_text()) == summary
    # the confusion matrix is of the final model on all 1,000 test images
    table = read_csv(workdir / "confusion_matrix.csv")  # headed by the class names, true classes down the side
    assert list(table[0]) == ["true \\ predicted", *map(str, range(10))]
    assert [row["true \\ predicted"] for row in table] == [str(c) for c in range(10)]
    matrix = np.array([[int(row[str(c)]) for c in range(10)] for row in table])
    np.testing.assert_array_equal(read_confusion_matrix(workdir), matrix)
    assert matrix.sum() == 1000 and (matrix.sum(axis=1) == 100).all()
    assert np.trace(matrix) / 1000 == pytest.approx(summary["final_test_accuracy"])
    with open(workdir / "per_class.csv") as f:
        per_class = list(csv.DictReader(f))
    assert [r["class"] for r in per_class] == [str(c) for c in range(10)]
    np.testing.assert_allclose([float(r["recall"]) for r in per_class], np.diag(matrix) / 100, atol=1e-4)
    text = (workdir / "summary.md").read_text()
    assert f"{summary['final_test_accuracy']:.4f}" in text and "61,706" in text
    # what ran, and where
    assert text.startswith("# LeNet-5, variant 3: Adam, ReLU, lr 0.001, avg pooling, seed 0 "
                           "on the embedded MNIST subset\n")
    assert summary["device"] == jax.devices()[0].device_kind and f"{os.cpu_count()} CPUs" in summary["machine"]
    assert f"| machine | {summary['machine']} |" in text
    worst = confused_pairs(matrix, [str(c) for c in range(10)])[0]  # the largest off-diagonal cell
    off = matrix - np.diag(np.diag(matrix))
    assert worst[2] == off.max() and f"| {worst[0]} | {worst[1]} | {worst[2]} |" in text.split("## Most confused")[1]
    for name in ("learning_curves.png", "confusion_matrix.png", "predictions.png"):
        with Image.open(workdir / name) as image:
            assert image.size[0] > 300
    # TensorBoard: loss/accuracy grouped as train and test per epoch, the custom-scalars overlay, the HParams run
    events = tensorboard_events(workdir / "tensorboard")
    for split in ("train", "test"):
        for quantity in ("loss", "accuracy"):
            steps, values = zip(*events[("", f"{quantity}/{split}")])
            assert list(steps) == [h["epoch"] for h in history]
            assert list(values) == pytest.approx([h[f"{split}_{quantity}"] for h in history], rel=1e-6)
    assert ("", "custom_scalars__config__") in events
    for key in ("final_test_accuracy", "best_test_accuracy"):
        ((step, value),) = events[("hparams", f"hparam/{key}")]
        assert step == 0 and value == pytest.approx(summary[key], rel=1e-6)
    assert b"optim.learning_rate" in events[("hparams", "_hparams_/session_start_info")][0][1]
    assert json.loads((workdir / "config.json").read_text())["variant"] == "3"
    # latest 3 and the best epoch are kept
    kept = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == sorted({18, 19, 20, best["epoch"]})


def test_the_report_holds_the_train_set_classes_and_the_time_per_layer(variant3_run):
    """per_class_train.csv is scikit-learn's report of the final checkpoint on the training images;
    summary.md's per-layer table holds summary.json's profile."""
    from sklearn.metrics import precision_recall_fscore_support

    from jaxcnn.data import load_dataset
    from jaxcnn.predict import load_predictor
    from jaxcnn.profile import Profile, rows

    workdir, summary = variant3_run
    dataset = load_dataset(lenet.get_config("3").data)
    predictor = load_predictor(workdir, epoch=20)  # the final model
    predicted = predictor.probabilities(dataset.train_images).argmax(-1)
    precision, recall, f1, support = precision_recall_fscore_support(dataset.train_labels, predicted, zero_division=0)
    table = read_csv(workdir / "per_class_train.csv")
    np.testing.assert_allclose([[float(r[k]) for k in ("precision", "recall", "f1")] for r in table],
                               np.stack([precision, recall, f1], 1), atol=1e-4)
    assert [int(r["support"]) for r in table] == list(support) and sum(support) == 4000
    assert summary["final_model_train_accuracy"] == pytest.approx((predicted == dataset.train_labels).mean())
    text = (workdir / "summary.md").read_text()
    section = text.split("## Per class")[1].split("##")[0]
    assert f"| 3 | {float(read_csv(workdir / 'per_class.csv')[3]['precision']):.4f} |" in section
    assert f"| {table[3]['recall']} | {table[3]['f1']} | {table[3]['support']} |" in section
    # test_predictions.csv: every test image's true and predicted class and probability, as the confusion matrix
    # and the final checkpoint say; summary.md shows the configured one (report.test_index: 199 in configs/lenet.py)
    predicted_rows = read_csv(workdir / "test_predictions.csv")
    matrix = read_confusion_matrix(workdir)
    assert len(predicted_rows) == 1000
    assert sum(r["true"] == r["predicted"] for r in predicted_rows) == np.trace(matrix)
    probabilities = load_predictor(workdir, epoch=20).probabilities(dataset.test_images[[199]])[0]
    row = predicted_rows[199]
    assert row["predicted"] == str(probabilities.argmax()) and row["true"] == str(dataset.test_labels[199])
    assert float(row["probability"]) == pytest.approx(probabilities.max(), abs=1e-5)
    right = "yes" if row["true"] == row["predicted"] else "no"
    assert (f"| 199 | {row['true']} | {row['predicted']} | {float(row['probability']):.3f} | {right} |"
            in text.split("## Individual test images")[1])
    with Image.open(workdir / "test_images.png") as image:
        assert image.size[0] > 100
    profile = Profile.from_json(summary["layer_profile"])
    assert [x.name for x in profile.layers] == ["conv1", "conv2", "fc1", "fc2", "fc3"] and profile.batch_size == 100
    layers = text.split("## Time per layer")[1]
    for row in rows(profile):
        assert "| " + " | ".join(map(str, row)) + " |" in layers
    with Image.open(workdir / "layers.png") as image:
        assert image.size[0] > 300


def tensorboard_events(folder) -> dict[tuple[str, str], list[tuple[int, object]]]:
    """(subfolder, tag) -> [(step, value)] of every event file under `folder`, read as TensorBoard does
    (TFRecord framing, tensorboardX's Event proto): simple values as floats, plugin data as bytes."""
    from tensorboardX.proto import event_pb2

    out = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data, i = path.read_bytes(), 0
        while i < len(data):
            (n,) = struct.unpack("<Q", data[i:i + 8])
            event = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
            i += 12 + n + 4
            for v in event.summary.value:
                value = v.simple_value if v.HasField("simple_value") else v.metadata.plugin_data.content
                sub = "" if path.parent == folder else path.parent.name
                out.setdefault((sub, v.tag), []).append((event.step, value))
    return out


def test_metrics_from_fixed_predictions():
    labels = np.array([0, 0, 0, 1, 1, 2])
    preds = np.array([0, 0, 1, 1, 2, 2])
    matrix = confusion_matrix(labels, preds, 3)
    np.testing.assert_array_equal(matrix, [[2, 1, 0], [0, 1, 1], [0, 0, 1]])
    report = per_class_report(matrix)
    np.testing.assert_allclose(report["precision"], [1.0, 0.5, 0.5])
    np.testing.assert_allclose(report["recall"], [2 / 3, 0.5, 1.0])
    np.testing.assert_allclose(report["f1"], [0.8, 0.5, 2 / 3])
    np.testing.assert_array_equal(report["support"], [3, 2, 1])
    # most-confused pairs: off-diagonal cells, largest first, as a share of the true class
    many = np.array([[5, 3, 0], [1, 4, 6], [0, 0, 9]])
    assert confused_pairs(many, ["a", "b", "c"]) == [["b", "c", 6, "54.5 %"], ["a", "b", 3, "37.5 %"],
                                                    ["b", "a", 1, "9.1 %"]]
    assert confused_pairs(np.eye(3, dtype=int), ["a", "b", "c"]) == []


def small_config(arg: str = "3"):
    return lenet.get_config(f"{arg},data.max_train=1000,data.max_test=300,epochs=3,optim.schedule=cosine")


def test_rerun_of_a_finished_run_trains_nothing_and_more_epochs_continue(tmp_path):
    config = small_config()
    first = loop.train_and_evaluate(config, tmp_path, progress=False)
    again = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert again["final_test_accuracy"] == first["final_test_accuracy"]
    config.train.epochs = 4
    longer = loop.train_and_evaluate(config, tmp_path, progress=False)
    assert longer["epochs"] == 4


def test_workdir_of_another_config_is_refused(tmp_path):
    loop.train_and_evaluate(lenet.get_config("3,data.max_train=200,data.max_test=100,epochs=1"), tmp_path,
                            progress=False)
    with pytest.raises(WorkdirError, match=r"another config \(model.activation: 'relu' -> 'tanh'"):
        loop.train_and_evaluate(lenet.get_config("1,data.max_train=200,data.max_test=100,epochs=1"), tmp_path,
                                progress=False)


def test_a_config_json_of_an_earlier_version_is_read_by_what_it_set(tmp_path):
    """Earlier versions stored every model's keys in every config (a LeNet run had model.hidden, a
    ResNet run model.activation) and lacked keys added since: neither is a change of the run; a
    changed setting still is."""
    config = lenet.get_config("3,epochs=1")
    stored = json.loads(config.to_json())
    stored["model"].update(hidden=32, first_stride=1)  # keys this model does not read
    del stored["data"]["max_test"]  # a key added since, at its default (0)
    (tmp_path / "config.json").write_text(json.dumps(stored))
    loop.check_workdir(tmp_path, config)  # no error: the same run
    stored["optim"]["learning_rate"] = 0.01
    (tmp_path / "config.json").write_text(json.dumps(stored))
    with pytest.raises(WorkdirError, match=r"another config \(optim.learning_rate: 0.01 -> 0.001, per config.json"):
        loop.check_workdir(tmp_path, config)
    config.data.max_test = 100  # a new key at another value than the stored run used
    with pytest.raises(WorkdirError, match=r"data.max_test: 0 -> 100"):
        loop.check_workdir(tmp_path, config)


def test_nan_loss_stops_with_a_clear_error_and_keeps_good_checkpoints(tmp_path, monkeypatch):
    config = small_config("1")  # tanh: ReLU would turn NaN inputs into zeros
    config.train.epochs = 2
    loop.train_and_evaluate(config, tmp_path, progress=False)
    make = trainer.make_preprocess
    monkeypatch.setattr(trainer, "make_preprocess", lambda data: lambda x, key=None: make(data)(x, key) * np.nan)
    config.train.epochs = 4
    with pytest.raises(loop.TrainingDivergedError, match="epoch 3: training loss became nan.*epoch 2 are kept"):
        loop.train_and_evaluate(config, tmp_path, progress=False)
    assert Checkpoints(tmp_path, read_only=True).latest_epoch() == 2
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2


def test_a_real_divergence_in_the_first_epoch_says_no_checkpoint_was_written(tmp_path):
    """SGD at lr 1e5 really diverges (no stand-in): the message must not claim "checkpoints up to epoch 0"."""
    config = lenet.get_config("6,data.max_train=500,data.max_test=100,epochs=2,lr=1e5")
    with pytest.raises(loop.TrainingDivergedError, match=r"^epoch 1: training loss became nan; stopped\. "
                                                         r"No checkpoint was written\. Lower optim.learning_rate"):
        loop.train_and_evaluate(config, tmp_path, progress=False)
    assert not list((tmp_path / "checkpoints").iterdir())


def test_python_loop_and_scanned_epoch_agree(tmp_path):
    python = loop.train_and_evaluate(small_config("3,train.loop=python"), tmp_path / "p", progress=False)
    scan = loop.train_and_evaluate(small_config("3,train.loop=scan"), tmp_path / "s", progress=False)
    assert python["loop"] == "python" and scan["loop"] == "scan"
    assert abs(python["final_test_accuracy"] - scan["final_test_accuracy"]) <= 0.01


def test_batch_larger_than_the_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size=500 is larger than the 300 training images"):
        loop.train_and_evaluate(lenet.get_config("3,data.max_train=300,batch_size=500"), tmp_path, progress=False)


def test_several_steps_per_call_train_like_one(tmp_path):
    """`train.steps_per_call=k`: the Python loop's compiled program takes k steps a call (unrolled); the run's
    numbers equal one step a call, progress still comes every `every` steps and at the end of the epoch."""
    results = {}
    for k in (1, 2, 4):
        config = lenet.get_config(f"3,data.max_train=400,data.max_test=100,batch_size=20,epochs=2,"
                                  f"train.steps_per_call={k}")
        data = load_dataset(config.data)
        run = trainer.Trainer(config, data.train_images, data.train_labels, data.num_classes, "python")
        assert run.steps_per_call == k and run.steps == 20
        calls = []
        sums = [run.train_epoch(e, progress=lambda i, s: calls.append(i), every=6) for e in (1, 2)]
        params = jax.tree.leaves(run.models[0])
        results[k] = sums, params, calls
    for k in (2, 4):
        np.testing.assert_allclose(np.concatenate(results[k][0]), np.concatenate(results[1][0]), rtol=1e-5)
        for a, b in zip(results[k][1], results[1][1]):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert results[1][2] == [6, 12, 18, 20] * 2 and results[4][2] == [8, 12, 20] * 2
    # auto: on the CPU, more steps a call for long runs only (compiling them costs 0.4-1.1 s), divisors only
    assert [resolve_steps_per_call(0, "python", 40, n) for n in (800, 3_000, 5_000)] == [1, 2, 4]
    assert resolve_steps_per_call(0, "python", 42, 9_000) == 2 and resolve_steps_per_call(0, "scan", 40, 9_000) == 1
    with pytest.raises(ConfigError, match=r"^config train.steps_per_call=3 does not divide an epoch's 40 steps; "
                                          r"use 0 \(auto\) or a divisor such as 1, 2, 4, 5, 8$"):
        loop.train_and_evaluate(lenet.get_config("3,epochs=1,train.steps_per_call=3"), tmp_path, progress=False)
    with pytest.raises(ConfigError, match=r"train.steps_per_call=-1 must be a number >= 0"):
        loop.train_and_evaluate(lenet.get_config("3,epochs=1,train.steps_per_call=-1"), tmp_path, progress=False)
