"""`train_and_evaluate(config, workdir)`: one training run, resumable, with all its outputs."""

from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxcnn.config import ConfigError, validate
from jaxcnn.data import Dataset, load_dataset
from jaxcnn.data.device import pad_for_eval
from jaxcnn.models import count_params
from jaxcnn.report.run import read_history, summarize, write_history, write_outputs
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import make_eval_fn
from jaxcnn.train.trainer import Trainer

# Keys that may change between a run and its resumption (more epochs continue a finished run).
RESUMABLE_CHANGES = ("train.epochs", "train.log_every", "train.loop")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json, or checks that an existing one describes the same run."""
    path = workdir / "config.json"
    new = json.loads(config.to_json())
    if path.exists():
        old = _flatten(json.loads(path.read_text()))
        flat = _flatten(new)
        changed = sorted(k for k in set(old) | set(flat)
                         if old.get(k) != flat.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in changed)
            raise ConfigError(f"{workdir} holds a run with another config ({diffs}); "
                              "use a new --workdir, or the same config to resume")
    path.write_text(json.dumps(new, indent=2) + "\n")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                       dataset: Dataset | None = None, progress: bool = True) -> dict[str, Any]:
    """Trains `config` in `workdir`, resuming from its latest checkpoint if there is one.

    Args:
      config: a full config (see `jaxcnn.config.default_config`).
      workdir: where checkpoints, metrics, figures and summary.md go.
      dataset: an already loaded dataset (default: load `config.data`).
      progress: show a progress bar.

    Returns:
      The run summary (also in workdir/summary.json).

    Raises:
      ConfigError: bad config, or a workdir holding a run with another config.
      TrainingDivergedError: NaN/inf loss; the checkpoints of earlier epochs are kept.
    """
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    _check_workdir_config(workdir, config)
    if dataset is None:
        dataset = load_dataset(config.data)
    epochs = config.train.epochs
    trainer = Trainer(config, dataset.train_images, dataset.train_labels, dataset.num_classes)
    model, optimizer, steps = trainer.model, trainer.optimizer, trainer.steps
    checkpoints = Checkpoints(workdir, config.checkpoint.keep)
    history = read_history(workdir)
    start = checkpoints.latest_epoch() or 0
    compile_time = 0.0
    if start > epochs:
        checkpoints.close()
        raise ConfigError(f"{workdir} already holds {start} epochs, more than train.epochs={epochs}; "
                          f"use train.epochs>={start} or a new --workdir")
    if start:
        if len(history) < start:
            checkpoints.close()
            raise ConfigError(f"{workdir}/metrics.jsonl holds {len(history)} epochs but the latest checkpoint is "
                              f"epoch {start}; restore the file or use a new --workdir")
        checkpoints.restore(start, model, optimizer)
        history = history[:start]
        compile_time = checkpoints.meta(start)["compile_time_s"]
    write_history(workdir, history)

    test_x, test_y, test_mask = map(jax.device_put, pad_for_eval(
        dataset.test_images, dataset.test_labels, config.train.eval_batch_size))
    model.eval()
    eval_graphdef, _ = nnx.split(model)
    model.train()
    t0 = time.perf_counter()
    eval_fn = make_eval_fn(eval_graphdef, trainer.preprocess, config.train.eval_batch_size)
    eval_fn = eval_fn.lower(nnx.state(model), test_x, test_y, test_mask).compile()
    if not start:
        compile_time = trainer.compile_time + time.perf_counter() - t0

    from tensorboardX import SummaryWriter

    writer = SummaryWriter(str(workdir / "tensorboard"), purge_step=start + 1)
    n_test = len(dataset.test_labels)
    title = f"{config.model.name} {config.variant} on {dataset.name}".replace("  ", " ")
    bar = tqdm(total=epochs * steps, initial=start * steps, unit="step", disable=not progress,
               dynamic_ncols=True, desc=f"epoch {start + 1}/{epochs}")
    predictions = None
    try:
        for epoch in range(start + 1, epochs + 1):
            bar.set_description(f"epoch {epoch}/{epochs}")
            t0 = time.perf_counter()

            def show(i, sums, epoch=epoch):
                bar.set_postfix(loss=f"{sums[0] / sums[2]:.4f}", acc=f"{sums[1] / sums[2]:.4f}", refresh=False)
                bar.update((epoch - 1) * steps + i - bar.n)

            loss_sum, correct, count = trainer.train_epoch(epoch, show, config.train.log_every)
            epoch_time = time.perf_counter() - t0
            if not math.isfinite(loss_sum):
                raise TrainingDivergedError(
                    f"epoch {epoch}: training loss became {loss_sum / count}; stopped. The checkpoints up to "
                    f"epoch {epoch - 1} are kept in {checkpoints.directory}. Lower optim.learning_rate "
                    f"(now {config.optim.learning_rate}) or change the optimizer.")
            t0 = time.perf_counter()
            test_loss, test_correct, predictions = eval_fn(nnx.state(model), test_x, test_y, test_mask)
            test_loss, test_acc = float(test_loss) / n_test, float(test_correct) / n_test
            record = {"epoch": epoch, "train_loss": float(loss_sum / count),
                      "train_accuracy": float(correct / count), "test_loss": test_loss,
                      "test_accuracy": test_acc, "learning_rate": float(trainer.schedule(epoch * steps - 1)),
                      "epoch_time_s": epoch_time, "eval_time_s": time.perf_counter() - t0}
            history.append(record)
            write_history(workdir, history)  # before the checkpoint: a resume truncates, never lacks, history
            best = max(history, key=lambda h: h["test_accuracy"])
            checkpoints.save(epoch, model, optimizer, {
                **record, "best_epoch": best["epoch"], "compile_time_s": compile_time,
                "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
                "input_shape": list(dataset.image_shape), "config": json.loads(config.to_json())})
            for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate"):
                writer.add_scalar(name, record[name], epoch)
            bar.set_postfix(loss=f"{record['train_loss']:.4f}", acc=f"{record['train_accuracy']:.4f}",
                            test_acc=f"{test_acc:.4f}")
    finally:
        bar.close()
        writer.close()
        checkpoints.close()

    if predictions is None:  # nothing left to train: evaluate the restored final model
        predictions = eval_fn(nnx.state(model), test_x, test_y, test_mask)[2]
    predictions = np.asarray(predictions)[:n_test]
    summary = summarize(history, count_params(model), compile_time)
    summary.update(variant=config.variant, dataset=dataset.name, backend=jax.default_backend(), loop=trainer.loop)
    write_outputs(workdir, title, history, summary, dataset.class_names, dataset.test_images,
                  dataset.test_labels, predictions, config.report.grid_size)
    return summary
