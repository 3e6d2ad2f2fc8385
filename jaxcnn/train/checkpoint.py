"""Orbax checkpoints of a run: model, optimizer and a JSON record (epoch, metrics, the history so
far, a checksum of the state, what rebuilds the model). Keeps the latest N and the best epoch.

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
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from jaxcnn.errors import DamagedCheckpoint, first_line

policies = ocp.checkpoint_managers.preservation_policy
DAMAGED = "damaged_checkpoints"  # in the workdir: checkpoints set aside because they do not restore


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


class Checkpoints:
    """`workdir/checkpoints/<epoch>/{model,opt,meta}`; the step number is the epoch."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False):
        # Ties in accuracy: the earlier epoch ranks higher, as in `best_record` (BestN keeps the last
        # of its ascending sort). Checkpoints written before "epoch" was recorded rank as epoch 0.
        keep_best = policies.BestN(get_metric_fn=lambda m: (m["test_accuracy"], -m.get("epoch", 0)), n=1,
                                   keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), keep_best]),
            read_only=read_only, create=not read_only)
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
        meta = {**meta, "checksum": {"model": checksum(model_state), "opt": checksum(opt_state)}}
        self.manager.save(epoch, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model_state),
            opt=ocp.args.StandardSave(opt_state),
            meta=ocp.args.JsonSave(meta)), metrics={"test_accuracy": meta["test_accuracy"], "epoch": epoch})

    def _check_space(self, *states: Any) -> None:
        """Raises ENOSPC before a save that cannot fit (its uncompressed size, +10% and 256 KiB), rather
        than letting Orbax fail in its writer threads with pages of tracebacks."""
        needed = 1.1 * sum(x.nbytes for x in jax.tree.leaves(states)) + 2**18
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
        target = lambda obj: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(obj))
        args = {"model": ocp.args.StandardRestore(target(model))}
        if optimizer is not None:
            args["opt"] = ocp.args.StandardRestore(target(optimizer))
        try:
            restored = self.manager.restore(epoch, args=ocp.args.Composite(**args))
        except Exception as e:  # noqa: BLE001 - see meta()
            raise DamagedCheckpoint(f"{self.directory}/{epoch} does not restore ({first_line(e)})") from None
        saved = meta.get("checksum", {})  # absent in checkpoints written before checksums were kept
        for name in args:
            if name in saved and checksum(restored[name]) != saved[name]:
                raise DamagedCheckpoint(f"{self.directory}/{epoch}: the {name} arrays on disk do not match the "
                                        "checksum written with them (the files were changed or damaged)")
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
