"""Orbax checkpoints of a run: model, optimizer and a JSON record (epoch, metrics, what rebuilds
the model). Keeps the latest N and the best by test accuracy."""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

policies = ocp.checkpoint_managers.preservation_policy


class Checkpoints:
    """`workdir/checkpoints/<epoch>/{model,opt,meta}`; the step number is the epoch."""

    def __init__(self, workdir: str | pathlib.Path, keep: int = 3, read_only: bool = False):
        keep_best = policies.BestN(get_metric_fn=lambda m: m["test_accuracy"], n=1,
                                   keep_checkpoints_without_metrics=False)
        options = ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy([policies.LatestN(keep), keep_best]),
            read_only=read_only, create=not read_only)
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=("model", "opt", "meta"))

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def save(self, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer, meta: dict[str, Any]) -> None:
        """Saves asynchronously; `meta['test_accuracy']` ranks checkpoints for `best`."""
        self.manager.save(epoch, args=ocp.args.Composite(
            model=ocp.args.StandardSave(nnx.state(model)),
            opt=ocp.args.StandardSave(nnx.state(optimizer)),
            meta=ocp.args.JsonSave(meta)), metrics={"test_accuracy": meta["test_accuracy"]})

    def meta(self, epoch: int) -> dict[str, Any]:
        return self.manager.restore(epoch, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

    def restore(self, epoch: int, model: nnx.Module, optimizer: nnx.Optimizer | None = None) -> None:
        """Loads `epoch` into `model` (and `optimizer`) in place; shapes must match."""
        target = lambda obj: jax.tree.map(ocp.utils.to_shape_dtype_struct, nnx.state(obj))
        args = {"model": ocp.args.StandardRestore(target(model))}
        if optimizer is not None:
            args["opt"] = ocp.args.StandardRestore(target(optimizer))
        restored = self.manager.restore(epoch, args=ocp.args.Composite(**args))
        nnx.update(model, restored["model"])
        if optimizer is not None:
            nnx.update(optimizer, restored["opt"])

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
