"""Orbax checkpoints: an Orbax composite of named nnx states and a JSON record `meta` holding a CRC-32
checksum of each state. The one format for

- a run's checkpoints (`Checkpoints`): `WORKDIR/checkpoints/<epoch>/{model,opt,meta}`; the record also holds the
  epoch, metrics, the history so far and what rebuilds the model. Keeps the latest N and the best epoch.
- a model's weights (`save_weights`/`restore_weights`: converted weights, pretrained trunks): `DIR/{model,meta}`,
  the model's parameters and BatchNorm statistics (no RNG state) and what its owner needs to rebuild it.

The best epoch is the first one with the top test accuracy (`report.metrics.best_record`), in the summary and in
what Orbax keeps alike. A checkpoint that does not restore, or whose arrays no longer match the
checksum written with them, is damaged: `restore_latest` sets it aside and resumes from the newest
one that restores.
"""

from __future__ import annotations

import errno
import pathlib
import shutil
import time
import zlib
from collections.abc import Iterable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxcnn.errors import ConfigError, DamagedCheckpoint, first_line
from jaxcnn.files import read_json

policies = ocp.checkpoint_managers.preservation_policy
DAMAGED = "damaged_checkpoints"  # in the workdir: checkpoints set aside because they do not restore
VARIABLES = nnx.Any(nnx.Param, nnx.BatchStat)  # what weights files keep: no RNG state


def checksum(state: Any) -> str:
    """CRC-32 of every array of an nnx state (in its fixed leaf order): a flipped byte on disk changes it."""
    crc = 0
    for leaf in jax.tree.leaves(state):
        if isinstance(leaf, jax.Array):
            if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
                leaf = jax.random.key_data(leaf)
            if not leaf.is_fully_addressable:  # multi-host: the state is replicated, the local copy is all of it
                leaf = leaf.addressable_data(0)
        crc = zlib.crc32(np.ascontiguousarray(np.asarray(leaf)).view(np.uint8).data, crc)
    return f"{crc:08x}"


def _save_args(meta: dict[str, Any], states: dict[str, Any]) -> ocp.args.Composite:
    """One checkpoint: each named state, and `meta` with their checksums (`meta['checksum'][name]`)."""
    meta = {**meta, "checksum": {name: checksum(state) for name, state in states.items()}}
    return ocp.args.Composite(**{name: ocp.args.StandardSave(state) for name, state in states.items()},
                              meta=ocp.args.JsonSave(meta))


def _restore_args(states: dict[str, Any]) -> ocp.args.Composite:
    """Restores the named states into their shapes, dtypes and shardings (`jax.ShapeDtypeStruct` targets)."""
    return ocp.args.Composite(**{name: ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct, state))
                                 for name, state in states.items()})


def _check(restored: Any, names: Iterable[str], meta: dict[str, Any], where: str) -> None:
    """Raises DamagedCheckpoint when a restored state does not match the checksum saved with it."""
    saved = meta.get("checksum", {})  # absent in run checkpoints written before checksums were kept
    for name in names:
        if name in saved and checksum(restored[name]) != saved[name]:
            raise DamagedCheckpoint(f"{where}: the {name} arrays on disk do not match the checksum written with "
                                    "them (the files were changed or damaged)")


def is_weights(directory: str | pathlib.Path) -> bool:
    """Whether `directory` holds what `save_weights` writes (complete: Orbax renames it into place last)."""
    directory = pathlib.Path(directory)
    return all((directory / name).is_dir() for name in ("model", "meta")) and \
        (directory / "_CHECKPOINT_METADATA").is_file()


def save_weights(directory: str | pathlib.Path, module: nnx.Module, meta: dict[str, Any]) -> None:
    """Writes `module`'s parameters and BatchNorm statistics and `meta` (plus their checksum) to
    `directory`, which must be new or empty. Orbax writes into a sibling `DIR.orbax-checkpoint-tmp-*` and
    renames it when complete, so an interrupted save leaves no `directory`; a later save removes its leftovers."""
    directory = pathlib.Path(directory).absolute()
    if directory.parent.is_dir():
        for stale in directory.parent.iterdir():
            if stale.name.startswith(directory.name + ocp.path.atomicity.TMP_DIR_SUFFIX):
                shutil.rmtree(stale)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, args=_save_args(meta, {"model": nnx.state(module, VARIABLES)}),
                          force=directory.is_dir() and not any(directory.iterdir()))


def read_weights_meta(directory: str | pathlib.Path, redo: str) -> dict[str, Any]:
    """The record `save_weights` wrote to `directory`; raises DamagedCheckpoint ending with `redo`, what
    makes the files again."""
    directory = pathlib.Path(directory).absolute()
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            meta = checkpointer.restore(directory, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:  # noqa: BLE001 - Orbax raises many types for one damaged file
        raise DamagedCheckpoint(f"{directory}: its record does not load ({first_line(e)}); {redo}") from None
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(f"{directory}: its record is damaged (not a JSON object); {redo}")
    return meta


def earlier_format(directory: str | pathlib.Path, item: str) -> bool:
    """A folder of weights as jaxcnn wrote them before `save_weights`: `item/` (an Orbax StandardCheckpointer)
    + `meta.json`. Their record is read (it tells what they are); their arrays are refused."""
    directory = pathlib.Path(directory)
    return (directory / "meta.json").is_file() and (directory / item).is_dir() and not is_weights(directory)


def read_earlier_meta(directory: str | pathlib.Path, item: str, redo: str) -> dict[str, Any] | None:
    """The meta.json of a folder in the `earlier_format`; None for any other folder."""
    if not earlier_format(directory, item):
        return None
    meta = read_json(pathlib.Path(directory) / "meta.json")
    if not isinstance(meta, dict):
        raise DamagedCheckpoint(f"{pathlib.Path(directory) / 'meta.json'} is damaged (not JSON); {redo}")
    return meta


def refuse_earlier_format(directory: str | pathlib.Path, item: str, what: str, redo: str) -> None:
    """Raises the one line that says weights in the `earlier_format` must be made again (`redo`)."""
    if earlier_format(directory, item):
        raise ConfigError(f"{directory} holds {what} written by an earlier jaxcnn ({item}/ + meta.json), which "
                          f"this one no longer reads; {redo}")


def restore_weights(directory: str | pathlib.Path, module: nnx.Module, meta: dict[str, Any], redo: str) -> None:
    """Loads what `save_weights` wrote to `directory` into `module` (same structure and shapes) and checks
    it against the checksum in `meta` (its record); raises DamagedCheckpoint ending with `redo` and leaves
    `module` as it was."""
    directory = pathlib.Path(directory).absolute()
    state = nnx.state(module, VARIABLES)
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
            restored = checkpointer.restore(directory, args=_restore_args({"model": state}))
    except Exception as e:  # noqa: BLE001 - see read_weights_meta
        raise DamagedCheckpoint(f"{directory} does not restore ({first_line(e)}); the files are damaged or of "
                                f"another model: {redo}") from None
    try:
        _check(restored, ["model"], meta, str(directory))
    except DamagedCheckpoint as e:
        raise DamagedCheckpoint(f"{e}; {redo}") from None
    nnx.update(module, restored["model"])


class Checkpoints:
    """`workdir/checkpoints/<epoch>/{model,opt,meta}`; the step number is the epoch. Keeps the latest
    `keep` and, with `best`, the one of the best `meta['test_accuracy']` (a classifier's run)."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False, best: bool = True):
        # Ties in accuracy: the earlier epoch ranks higher, as in `best_record` (BestN keeps the last
        # of its ascending sort). Checkpoints written before "epoch" was recorded rank as epoch 0.
        keep_best = policies.BestN(get_metric_fn=lambda m: (m["test_accuracy"], -m.get("epoch", 0)), n=1,
                                   keep_checkpoints_without_metrics=False)
        self.best = best
        # Multi-host: saving takes every process; reading (`read_only`) is one process's own business, so
        # a process may inspect a workdir alone (process 0 checks it under the lock) without Orbax's barriers.
        local = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                   active_processes={jax.process_index()},
                                                   barrier_sync_key_prefix=f"read-{jax.process_index()}")
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), *([keep_best] * best)]),
            read_only=read_only, create=not read_only,
            **({"multiprocessing_options": local} if read_only and jax.process_count() > 1 else {}))
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "opt", "meta"))

    def epochs(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer, meta: dict[str, Any]) -> None:
        """Saves asynchronously; `meta['test_accuracy']` ranks checkpoints for `best`."""
        model_state, opt_state = nnx.state(model), nnx.state(optimizer)
        self._check_space(model_state, opt_state)
        metrics = {"test_accuracy": meta["test_accuracy"], "epoch": epoch} if self.best else None
        self.manager.save(epoch, args=_save_args(meta, {"model": model_state, "opt": opt_state}), metrics=metrics)

    def _check_space(self, *states: Any) -> None:
        """Raises ENOSPC before a save that cannot fit (its uncompressed size, +10% and 256 KiB), rather
        than letting Orbax fail in its writer threads with pages of tracebacks."""
        needed = 1.1 * sum(x.nbytes for x in jax.tree.leaves(states)) + 2**18
        # the previous save may still be writing (asynchronously; Orbax's save() waits for it only after this
        # check): free space counts once it has landed. Measured before it had, the check passed and the save
        # failed in Orbax's threads, with tracebacks (the full-disk test, once, on a loaded machine).
        self.manager.wait_until_finished()
        free = shutil.disk_usage(self.directory).free
        if free < needed:
            raise OSError(errno.ENOSPC, f"No space left on device (a checkpoint needs about {needed / 2**20:.1f} "
                                        f"MiB, {free / 2**20:.1f} MiB are free)", str(self.directory))

    def meta(self, epoch: int) -> dict[str, Any]:
        try:
            return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        except Exception as e:  # noqa: BLE001 - Orbax raises many types for one damaged file
            raise DamagedCheckpoint(f"{self.directory}/{epoch}: its record does not load ({first_line(e)})") \
                from None

    def latest_meta(self) -> tuple[int, dict[str, Any]] | None:
        """(epoch, record) of the newest checkpoint whose record loads; None when none does."""
        for epoch in reversed(self.epochs()):
            try:
                return epoch, self.meta(epoch)
            except DamagedCheckpoint:
                continue
        return None

    def restore(self, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer | None = None,
                meta: dict[str, Any] | None = None) -> None:
        """Loads `epoch` into `model` (and `optimizer`) in place and checks it against the checksum
        saved with it; raises DamagedCheckpoint (the objects are then left unchanged)."""
        meta = self.meta(epoch) if meta is None else meta
        states = {"model": nnx.state(model)}
        if optimizer is not None:
            states["opt"] = nnx.state(optimizer)
        try:
            restored = self.manager.restore(epoch, args=_restore_args(states))
        except Exception as e:  # noqa: BLE001 - see meta()
            raise DamagedCheckpoint(f"{self.directory}/{epoch} does not restore ({first_line(e)})") from None
        _check(restored, states, meta, f"{self.directory}/{epoch}")
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["opt"])

    def restore_latest(self, model: nnx.Module, optimizer: nnx.Optimizer) -> tuple[int, dict[str, Any], list[str]]:
        """Restores the newest checkpoint that restores and matches its checksum.

        Returns:
          (epoch, its meta, one message per newer checkpoint found damaged, which is moved to
          `WORKDIR/damaged_checkpoints/`); epoch 0 and {} when there are no checkpoints.

        Raises:
          DamagedCheckpoint: none of the checkpoints restores (nothing is moved then).
        """
        damaged = []
        for epoch in reversed(self.epochs()):
            try:
                meta = self.meta(epoch)
                self.restore(epoch, model, optimizer, meta)
            except DamagedCheckpoint as e:
                damaged.append((epoch, str(e)))
                continue
            for bad, _ in damaged:
                self._set_aside(bad)
            return epoch, meta, [f"{message}; moved to {self.workdir / DAMAGED}, resuming from epoch {epoch}"
                                 for _, message in damaged]
        if damaged:
            raise DamagedCheckpoint(f"none of the checkpoints in {self.directory} restores ({damaged[0][1]}); "
                                    "delete that folder to train again from epoch 1")
        return 0, {}, []

    def _set_aside(self, epoch: int) -> None:
        self.manager.wait_until_finished()
        target = self.workdir / DAMAGED / f"{epoch}-{time.strftime('%Y%m%d-%H%M%S')}"
        target.parent.mkdir(exist_ok=True)
        shutil.move(str(self.directory / str(epoch)), target)
        self.manager.reload()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
