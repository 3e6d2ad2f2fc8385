"""`train_and_evaluate(config, workdir)`: one training run, resumable, with all its outputs;
`train_group`: several such runs trained as one vmapped program."""

from __future__ import annotations

import json
import math
import pathlib
import signal
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm import tqdm

from jaxcnn import faults
from jaxcnn.config import flatten_config, stored_config, validate
from jaxcnn.data import Dataset, describe_data, load_dataset
from jaxcnn.data.device import pad_for_eval
from jaxcnn.errors import Interrupted, TrainingDivergedError, WorkdirError
from jaxcnn.files import WorkdirLock, read_json, write_json
from jaxcnn.models import TITLES, count_params
from jaxcnn.profile import profile_config
from jaxcnn.report.metrics import best_record
from jaxcnn.report.run import machine_name, read_history, summarize, write_history, write_outputs
from jaxcnn.train import init, sharding
from jaxcnn.train.checkpoint import Checkpoints
from jaxcnn.train.steps import make_eval_fn
from jaxcnn.train.trainer import Trainer

# Keys that may change between a run and its resumption (more epochs continue a finished run), besides every
# report.* key (outputs only).
RESUMABLE_CHANGES = ("train.epochs", "train.log_every", "train.loop", "train.steps_per_call", "mesh")
_MISSING = object()


def _note(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


def _config_changes(old: dict[str, Any], config: ml_collections.ConfigDict) -> str:
    """The settings in which `config` differs from a stored run's `old` one, as `key: old -> new`,
    the stored config read as this version reads it (`stored_config`: keys added since at their
    default, other models' keys dropped); keys no longer read are no change."""
    old, flat = flatten_config(stored_config(old)), flatten_config(config)
    changed = sorted(k for k in flat if k not in RESUMABLE_CHANGES and not k.startswith("report.")
                     and old.get(k, _MISSING) != flat[k])
    return "; ".join(f"{k}: {old.get(k)!r} -> {flat.get(k)!r}" for k in changed)


HPARAM_METRICS = ("final_test_accuracy", "best_test_accuracy", "overfitting_gap", "mean_epoch_time_s")


OPTIMIZER_TITLES = {"adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
ACTIVATION_TITLES = {"relu": "ReLU", "tanh": "Tanh", "elu": "ELU", "sigmoid": "Sigmoid"}


def run_title(config: ml_collections.ConfigDict) -> str:
    """What ran, for titles: `LeNet-5, variant 3: Adam, ReLU, lr 0.001, avg pooling, seed 0 on the embedded
    MNIST subset`."""
    model, optim = config.model, config.optim
    details = [OPTIMIZER_TITLES.get(optim.name, optim.name)
               + (f" momentum {optim.momentum:g}" if optim.name == "sgd" and optim.momentum else "")]
    details += [ACTIVATION_TITLES.get(model.activation, str(model.activation))] if "activation" in model else []
    details.append(f"lr {optim.learning_rate:g}")
    details += [f"{model.pooling} pooling"] if "pooling" in model else []
    if model.get("extra_conv_layers"):
        details.append(f"+{model.extra_conv_layers} conv")
    variant = f", variant {config.variant}" if config.variant else ""
    return (f"{TITLES.get(model.name, model.name)}{variant}: {', '.join(details)}, seed {config.seed} "
            f"on {describe_data(config.data)}")


def check_workdir(workdir: pathlib.Path, config: ml_collections.ConfigDict) -> None:
    """Refuses, without writing anything, a workdir that holds a run of another config: the one in
    config.json, or (when that file is missing or damaged) the one in its latest checkpoint."""
    sources = []
    stored = read_json(workdir / "config.json")
    if isinstance(stored, dict):
        sources.append(("config.json", stored))
    if (workdir / "checkpoints").is_dir():
        checkpoints = Checkpoints(workdir, read_only=True)
        try:
            latest = checkpoints.latest_meta()  # damaged newer ones are set aside by restore_latest later
        finally:
            checkpoints.close()
        if latest is not None:
            sources.append((f"the checkpoint of epoch {latest[0]}", latest[1]["config"]))
    for where, old in sources:
        diffs = _config_changes(old, config)
        if diffs:
            raise WorkdirError(f"{workdir} holds a run with another config ({diffs}, per {where}); "
                               "use a new --workdir, or the same config to resume")


class SignalCatcher:
    """Within `with`: Ctrl-C and SIGTERM call `self._handler(signum, frame)` instead of stopping the process
    (main thread only; the previous handlers come back on exit)."""

    def __init__(self):
        self._previous = {}

    def _handler(self, signum, frame):
        raise NotImplementedError

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class _StopRequest(SignalCatcher):
    """Ctrl-C and SIGTERM while runs train: the first one is noted and the loop stops at the next
    step boundary, so a signal never lands inside a checkpoint save; a second one stops at once."""

    def __init__(self):
        super().__init__()
        self.requested = False

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


class _Run:
    """One run's workdir: config check, lock, checkpoints, history, TensorBoard and final outputs.

    `check` reads only; `open` (after the data and the model were built without error) is the
    first write, so a rejected config leaves the workdir as it was.
    """

    def __init__(self, config: ml_collections.ConfigDict, workdir: str | pathlib.Path):
        self.config = config
        self.workdir = pathlib.Path(workdir)
        self.primary = jax.process_index() == 0  # the process that writes metrics, figures, summary
        self.lock = WorkdirLock(self.workdir)
        self.checkpoints: Checkpoints | None = None
        self.history: list[dict[str, Any]] = []
        self.start = 0
        self.saved = 0  # the last epoch whose checkpoint is saved or being saved
        self.compile_time = 0.0
        self.error: TrainingDivergedError | None = None
        self.writer = None
        self.init_info: dict[str, Any] = {}  # how the model was initialised (`init.initialise`), for the summary

    def check(self) -> None:
        validate(self.config)
        check_workdir(self.workdir, self.config)

    def open(self) -> None:
        if self.primary:  # multi-host: one process writes the files, every one checkpoints
            self.lock.acquire()
            check_workdir(self.workdir, self.config)  # again, now that no other process can write
            write_json(self.workdir / "config.json", json.loads(self.config.to_json()))
        self.checkpoints = Checkpoints(self.workdir, self.config.checkpoint.keep)

    def restore(self, model: nnx.Module, optimizer: nnx.Optimizer) -> None:
        """Resumes from the newest checkpoint that restores; the history is the one saved with it,
        so metrics rows of epochs without a checkpoint are dropped and trained again."""
        epochs = self.config.train.epochs
        latest = self.checkpoints.latest_epoch() or 0
        if latest > epochs:
            raise WorkdirError(f"{self.workdir} already holds {latest} epochs, more than train.epochs={epochs}; "
                               f"use train.epochs>={latest} or a new --workdir")
        self.start, meta, damaged = self.checkpoints.restore_latest(model, optimizer)
        self.saved = self.start
        for message in damaged:
            _note(message)
        on_disk = read_history(self.workdir)
        if "history" in meta:
            self.history = meta["history"]
        else:  # checkpoints written before the history was saved with them
            self.history = [h for h in on_disk if h["epoch"] <= self.start]
            if [h["epoch"] for h in self.history] != list(range(1, self.start + 1)):
                raise WorkdirError(f"{self.workdir}/metrics.jsonl lacks epochs of the checkpoint of epoch "
                                   f"{self.start}; restore the file or use a new --workdir")
        dropped = [h["epoch"] for h in on_disk if h["epoch"] > self.start]
        if dropped and not damaged:
            which = f"epoch {dropped[0]}" if len(dropped) == 1 else f"epochs {dropped[0]}-{dropped[-1]}"
            _note(f"{self.workdir}/metrics.jsonl holds {which} without a checkpoint (interrupted before it was "
                  f"saved, or deleted); training from epoch {self.start + 1}")
        if self.start:
            self.compile_time = meta["compile_time_s"]
        if not self.primary:
            return
        write_history(self.workdir, self.history)

        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(str(self.workdir / "tensorboard"), purge_step=self.start + 1)
        # TensorBoard's Custom Scalars dashboard draws train and test in one chart each
        self.writer.add_custom_scalars({"train vs test": {
            "loss": ["Multiline", ["loss/train", "loss/test"]],
            "accuracy": ["Multiline", ["accuracy/train", "accuracy/test"]]}})

    def record(self, record: dict[str, Any], model: nnx.Module, optimizer: nnx.Optimizer,
               dataset: Dataset) -> None:
        """Appends an epoch: its metrics row, then its checkpoint, which holds the whole history (a
        resume takes the history from the checkpoint, so a kill between the two loses nothing)."""
        epoch = record["epoch"]
        self.history.append(record)
        if self.primary:
            write_history(self.workdir, self.history)
        faults.at("metrics_written", epoch)
        self.checkpoints.save(epoch, model, optimizer, {
            **record, "best_epoch": best_record(self.history)["epoch"], "compile_time_s": self.compile_time,
            "num_classes": dataset.num_classes, "class_names": list(dataset.class_names),
            "input_shape": list(dataset.image_shape), "config": json.loads(self.config.to_json()),
            "history": self.history})
        self.saved = epoch
        faults.at("save_started", epoch)
        if self.writer is not None:  # tags grouped by quantity: loss/train beside loss/test
            for name in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
                split, quantity = name.split("_")
                self.writer.add_scalar(f"{quantity}/{split}", record[name], epoch)
            self.writer.add_scalar("learning_rate", record["learning_rate"], epoch)

    def hparams(self, summary: dict[str, Any]) -> None:
        """The run's settings and results in TensorBoard's HParams dashboard (a study's runs side by side)."""
        if self.writer is None:
            return
        values = {k: v if isinstance(v, (bool, str, int, float)) else json.dumps(v)
                  for k, v in flatten_config(self.config).items() if not k.startswith(("checkpoint.", "report."))}
        self.writer.add_hparams(values, {f"hparam/{k}": float(summary[k]) for k in HPARAM_METRICS}, name="hparams")

    def diverged(self, epoch: int, loss: float) -> None:
        kept = (f"The checkpoints up to epoch {epoch - 1} are kept in {self.checkpoints.directory}." if epoch > 1
                else "No checkpoint was written.")
        self.error = TrainingDivergedError(
            f"epoch {epoch}: training loss became {loss}; stopped. {kept} Lower optim.learning_rate "
            f"(now {self.config.optim.learning_rate}) or change the optimizer.")

    def close(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        finally:
            try:
                if self.checkpoints is not None:
                    self.checkpoints.close()
            finally:
                self.lock.release()


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
    runs = [_Run(config, workdir) for config, workdir in zip(configs, workdirs)]
    # Everything that can reject the command runs before the first write to a workdir.
    for run in runs:
        run.check()
    dataset = dataset or load_dataset(configs[0].data)
    init.pretrain_missing(configs, progress)  # a trunk a config needs and no cache holds yet
    initialised = [init.initialise(config, dataset.num_classes) for config in configs]
    trainer = Trainer(list(configs), dataset.train_images, dataset.train_labels, dataset.num_classes,
                      models=[model for model, _ in initialised])
    for run, (_, info) in zip(runs, initialised):
        run.init_info = info
    with _StopRequest() as stop:
        try:
            for run in runs:
                run.open()
            for run, model, optimizer in zip(runs, trainer.models, trainer.optimizers):
                run.restore(model, optimizer)
            starts = {run.start for run in runs}
            if len(starts) > 1:
                raise WorkdirError("runs trained as one group must hold the same number of finished epochs; "
                                   + ", ".join(f"{run.workdir}: {run.start}" for run in runs)
                                   + " (train them one at a time: --group=no)")
            return _train(runs, trainer, dataset, progress, stop)
        finally:
            for run in runs:
                run.close()  # waits for the checkpoint saves in flight


def _train(runs: list[_Run], trainer: Trainer, dataset: Dataset, progress: bool,
           stop: _StopRequest) -> list[dict[str, Any] | TrainingDivergedError]:
    config, size, start = runs[0].config, len(runs), runs[0].start
    epochs = config.train.epochs
    steps = trainer.steps

    test_x, test_y, test_mask = sharding.put(pad_for_eval(
        dataset.test_images, dataset.test_labels, config.train.eval_batch_size), trainer.replicated)
    for model in trainer.models:
        model.eval()
    eval_graphdef, _ = nnx.split(trainer.model)
    model_states = lambda: trainer.stacked([nnx.state(m) for m in trainer.models])
    t0 = time.perf_counter()
    eval_jit = make_eval_fn(eval_graphdef, trainer.preprocess, config.train.eval_batch_size, grouped=size > 1,
                            constrain=trainer.constrain, compiler_options=trainer.compiler_options,
                            out_shardings=trainer.replicated)  # multi-host: every process gets every prediction
    eval_fn = eval_jit.lower(model_states(), test_x, test_y, test_mask).compile()
    for model in trainer.models:
        model.train()
    if not start:
        for run in runs:
            run.compile_time = trainer.compile_time + time.perf_counter() - t0

    def evaluate():
        loss, correct, predictions, confidences = eval_fn(model_states(), test_x, test_y, test_mask)
        return (np.asarray(loss).reshape(size), np.asarray(correct).reshape(size),
                np.asarray(predictions).reshape(size, -1), np.asarray(confidences).reshape(size, -1))

    n_test = len(dataset.test_labels)
    name = config.variant if size == 1 else f"{size} runs"
    bar = tqdm(total=epochs * steps, initial=start * steps, unit="step", disable=not progress, dynamic_ncols=True,
               desc=f"{name}: " + (f"epoch {start + 1}/{epochs}" if start < epochs else f"{epochs} epochs done"))
    predictions = None
    epoch = start
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

            sums = trainer.train_epoch(epoch, show, config.train.log_every, stop=lambda: stop.requested)
            if sums is None:
                raise KeyboardInterrupt
            epoch_time = (time.perf_counter() - t0) / size
            t0 = time.perf_counter()
            test_loss, test_correct, predictions, confidences = evaluate()
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
            if stop.requested:
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        bar.close()
        saved = min(run.saved for run in runs)  # close() waits for the saves in flight
        where = runs[0].workdir if size == 1 else f"{size} workdirs"
        when = f"after epoch {saved}" if saved == epoch else f"in epoch {saved + 1} (not saved)"
        kept = f"epochs 1-{saved} are saved in {where}" if saved else "no epoch was saved"
        raise Interrupted(f"interrupted {when}; {kept}; rerun the same command to resume") from None
    finally:
        bar.close()

    if predictions is None:  # nothing left to train: evaluate the restored final models
        predictions, confidences = evaluate()[2:]
    train_predictions = None
    if config.report.train_report:  # the final models on the training images, as on the test set (no augmentation)
        train_x, train_y, train_mask = sharding.put(pad_for_eval(
            dataset.train_images, dataset.train_labels, config.train.eval_batch_size), trainer.replicated)
        train_predictions = np.asarray(eval_jit(model_states(), train_x, train_y, train_mask)[2]).reshape(size, -1)
        del train_x, train_y, train_mask
    results = []
    for g, run in enumerate(runs):
        if run.error:
            results.append(run.error)
            continue
        summary = summarize(run.history, count_params(trainer.models[g]), run.compile_time)
        summary.update(variant=run.config.variant, seed=run.config.seed, dataset=dataset.name,
                       backend=jax.default_backend(), device=jax.devices()[0].device_kind, machine=machine_name(),
                       loop=trainer.loop, steps_per_call=trainer.steps_per_call, group_size=size, **run.init_info)
        title = run_title(run.config)
        if run.primary:
            if run.config.report.layer_profile:
                summary["layer_profile"] = profile_config(run.config, dataset.num_classes, trainer.models[g]).to_json()
            train = None if train_predictions is None else (
                dataset.train_labels, train_predictions[g][:len(dataset.train_labels)])
            run.hparams(summary)
            write_outputs(run.workdir, title, run.history, summary, dataset.class_names, dataset.test_images,
                          dataset.test_labels, predictions[g][:n_test], run.config.report.grid_size,
                          confidences[g][:n_test], train, tuple(run.config.report.test_index))
        results.append(summary)
    return results
