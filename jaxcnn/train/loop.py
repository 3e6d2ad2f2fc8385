"""`train_and_evaluate(config, workdir)`: one training run, resumable, with all its outputs;
`train_group`: several such runs trained as one vmapped program."""

from __future__ import annotations

import json
import math
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxcnn.config import ConfigError, flatten_config, flatten_dict, validate
from jaxcnn.data import Dataset, load_dataset
from jaxcnn.data.device import pad_for_eval
from jaxcnn.models import count_params
from jaxcnn.report.run import read_history, summarize, write_history, write_outputs
from jaxcnn.train import sharding
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import make_eval_fn
from jaxcnn.train.trainer import Trainer

# Keys that may change between a run and its resumption (more epochs continue a finished run).
RESUMABLE_CHANGES = ("train.epochs", "train.log_every", "train.loop", "mesh")


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _check_workdir_config(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Writes config.json, or checks that an existing one describes the same run."""
    path = workdir / "config.json"
    if path.exists():
        old = flatten_dict(json.loads(path.read_text()))
        flat = flatten_config(config)
        changed = sorted(k for k in set(old) | set(flat)
                         if old.get(k) != flat.get(k) and k not in RESUMABLE_CHANGES)
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in changed)
            raise ConfigError(f"{workdir} holds a run with another config ({diffs}); "
                              "use a new --workdir, or the same config to resume")
    if jax.process_index() == 0:  # multi-host: one process writes the files, every one checkpoints
        path.write_text(json.dumps(json.loads(config.to_json()), indent=2) + "\n")


class _Run:
    """One run's workdir: config check, checkpoints, history, TensorBoard and final outputs."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
        validate(config)
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        _check_workdir_config(self.workdir, config)
        self.checkpoints = Checkpoints(self.workdir, config.checkpoint.keep)
        self.history = read_history(self.workdir)
        self.start = self.checkpoints.latest_epoch() or 0
        self.compile_time = 0.0
        self.error: TrainingDivergedError | None = None
        self.writer = None
        self.primary = jax.process_index() == 0  # the process that writes metrics, figures, summary
        epochs = config.train.epochs
        if self.start > epochs:
            self.close()
            raise ConfigError(f"{self.workdir} already holds {self.start} epochs, more than train.epochs={epochs}; "
                              f"use train.epochs>={self.start} or a new --workdir")
        if self.start and len(self.history) < self.start:
            self.close()
            raise ConfigError(f"{self.workdir}/metrics.jsonl holds {len(self.history)} epochs but the latest "
                              f"checkpoint is epoch {self.start}; restore the file or use a new --workdir")

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
        if self.start:
            self.checkpoints.restore(self.start, model, optimizer)
            self.history = self.history[:self.start]
            self.compile_time = self.checkpoints.meta(self.start)["compile_time_s"]
        if not self.primary:
            return
        write_history(self.workdir, self.history)

        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=self.start + 1)

    def record(self, record: dict[str, Any], model: nnx.Module, optimizer: nnx.Optimizer,
               dataset: Dataset) -> None:
        """Appends an epoch: history first (a resume truncates, never lacks, history), then the checkpoint."""
        self.history.append(record)
        if self.primary:
            write_history(self.workdir, self.history)
        best = max(self.history, key=lambda h: h["test_accuracy"])
        self.checkpoints.save(record["epoch"], model, optimizer, {
            **record, "best_epoch": best["epoch"], "compile_time_s": self.compile_time,
            "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
            "input_shape": list(dataset.image_shape), "config": json.loads(self.config.to_json())})
        for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "learning_rate"):
            if self.writer is not None:
                self.writer.add_scalar(name, record[name], record["epoch"])

    def diverged(self, epoch: int, loss: float) -> None:
        self.error = TrainingDivergedError(
            f"epoch {epoch}: training loss became {loss}; stopped. The checkpoints up to "
            f"epoch {epoch - 1} are kept in {self.checkpoints.directory}. Lower optim.learning_rate "
            f"(now {self.config.optim.learning_rate}) or change the optimizer.")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.checkpoints.close()


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
    (result,) = train_group([config], [workdir], dataset, progress)
    if isinstance(result, TrainingDivergedError):
        raise result
    return result


def train_group(configs: Sequence[ml_collections.ConfigDict], workdirs: Sequence[str | pathlib.Path],
                dataset: Dataset | None = None,
                progress: bool = True) -> list[dict[str, Any] | TrainingDivergedError]:
    """Trains several runs as one vmapped program (see `Trainer`), each in its own workdir with
    exactly the outputs, checkpoints and resume behaviour of `train_and_evaluate`.

    The configs must differ only in `trainer.GROUP_FREE_KEYS` (seed, learning rate, ...) and the
    workdirs must hold the same number of finished epochs. Time per epoch is the group's wall time
    divided by the group size (`group_size` in the summary).

    Returns:
      Per run, its summary, or the `TrainingDivergedError` that stopped it (the others go on).
    """
    if len(configs) != len(workdirs) or not configs:
        raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs")
    runs = []
    try:
        for config, workdir in zip(configs, workdirs):
            runs.append(_Run(config, workdir))
        starts = {run.start for run in runs}
        if len(starts) > 1:
            raise ConfigError("runs trained as one group must hold the same number of finished epochs; "
                              + ", ".join(f"{run.workdir}: {run.start}" for run in runs))
        return _train(runs, dataset or load_dataset(configs[0].data), progress)
    finally:
        for run in runs:
            run.close()


def _train(runs: list[_Run], dataset: Dataset, progress: bool) -> list[dict[str, Any] | TrainingDivergedError]:
    config, size, start = runs[0].config, len(runs), runs[0].start
    epochs = config.train.epochs
    trainer = Trainer([run.config for run in runs], dataset.train_images, dataset.train_labels,
                      dataset.num_classes)
    steps = trainer.steps
    for run, model, optimizer in zip(runs, trainer.models, trainer.optimizers):
        run.restore(model, optimizer)

    test_x, test_y, test_mask = sharding.put(pad_for_eval(
        dataset.test_images, dataset.test_labels, config.train.eval_batch_size), trainer.replicated)
    for model in trainer.models:
        model.eval()
    eval_graphdef, _ = nnx.split(trainer.model)
    model_states = lambda: trainer.stacked([nnx.state(m) for m in trainer.models])
    t0 = time.perf_counter()
    eval_fn = make_eval_fn(eval_graphdef, trainer.preprocess, config.train.eval_batch_size, grouped=size > 1,
                           constrain=trainer.constrain)
    eval_fn = eval_fn.lower(model_states(), test_x, test_y, test_mask).compile()
    for model in trainer.models:
        model.train()
    if not start:
        for run in runs:
            run.compile_time = trainer.compile_time + time.perf_counter() - t0

    def evaluate():
        loss, correct, predictions = eval_fn(model_states(), test_x, test_y, test_mask)
        return (np.asarray(loss).reshape(size), np.asarray(correct).reshape(size),
                np.asarray(predictions).reshape(size, -1))

    n_test = len(dataset.test_labels)
    name = config.variant if size == 1 else f"{size} runs"
    bar = tqdm(total=epochs * steps, initial=start * steps, unit="step", disable=not progress,
               dynamic_ncols=True, desc=f"epoch {start + 1}/{epochs}")
    predictions = None
    try:
        for epoch in range(start + 1, epochs + 1):
            if all(run.error for run in runs):
                break
            bar.set_description(f"{name}: epoch {epoch}/{epochs}")
            t0 = time.perf_counter()

            def show(i, sums, epoch=epoch):
                live = sums[[run.error is None for run in runs]].sum(0)
                bar.set_postfix(loss=f"{live[0] / live[2]:.4f}", acc=f"{live[1] / live[2]:.4f}", refresh=False)
                bar.update((epoch - 1) * steps + i - bar.n)

            sums = trainer.train_epoch(epoch, show, config.train.log_every)
            epoch_time = (time.perf_counter() - t0) / size
            t0 = time.perf_counter()
            test_loss, test_correct, predictions = evaluate()
            eval_time = (time.perf_counter() - t0) / size
            for g, (run, (loss_sum, correct, count)) in enumerate(zip(runs, sums)):
                if run.error:
                    continue
                if not math.isfinite(loss_sum):
                    run.diverged(epoch, loss_sum / count)
                    continue
                run.record({"epoch": epoch, "train_loss": float(loss_sum / count),
                            "train_accuracy": float(correct / count), "test_loss": float(test_loss[g]) / n_test,
                            "test_accuracy": float(test_correct[g]) / n_test,
                            "learning_rate": float(trainer.schedules[g](epoch * steps - 1)),
                            "epoch_time_s": epoch_time, "eval_time_s": eval_time},
                           trainer.models[g], trainer.optimizers[g], dataset)
            live = [run.history[-1] for run in runs if not run.error]
            if live:
                bar.set_postfix(loss=f"{np.mean([h['train_loss'] for h in live]):.4f}",
                                acc=f"{np.mean([h['train_accuracy'] for h in live]):.4f}",
                                test_acc=f"{np.mean([h['test_accuracy'] for h in live]):.4f}")
    finally:
        bar.close()

    if predictions is None:  # nothing left to train: evaluate the restored final models
        predictions = evaluate()[2]
    results = []
    for g, run in enumerate(runs):
        if run.error:
            results.append(run.error)
            continue
        summary = summarize(run.history, count_params(trainer.models[g]), run.compile_time)
        summary.update(variant=run.config.variant, seed=run.config.seed, dataset=dataset.name,
                       backend=jax.default_backend(), loop=trainer.loop, group_size=size, **trainer.init_info[g])
        title = f"{run.config.model.name} {run.config.variant} on {dataset.name}".replace("  ", " ")
        if run.primary:
            write_outputs(run.workdir, title, run.history, summary, dataset.class_names, dataset.test_images,
                          dataset.test_labels, predictions[g][:n_test], run.config.report.grid_size)
        results.append(summary)
    return results
