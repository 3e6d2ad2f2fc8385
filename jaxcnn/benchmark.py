"""Training speed of a config on the current backend: jaxcnn's two epoch strategies beside the
study's PyTorch loop, on the same data and device.

The JAX side is the `Trainer` that `train_and_evaluate` uses, timed with each of its two epoch
strategies: `python` (a Python loop of the jitted step) and `scan` (the whole epoch in `lax.scan`). Compilation is timed on its own;
the figures are medians over the epochs after it. The PyTorch reference (the study's loop: the model
on the device, the data in host memory, each batch sliced, scaled to [0, 1] and copied every step) lives
outside the package, in `scripts/torch_reference.py`, and is passed in by `scripts/benchmark.py`.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcnn.config import validate
from jaxcnn.data import Dataset, load_dataset
from jaxcnn.errors import ConfigError
from jaxcnn.report.run import machine_name
from jaxcnn.train.steps import resolve_loop
from jaxcnn.train.trainer import Trainer

LOOPS = ("python", "scan")


@dataclasses.dataclass(frozen=True)
class Result:
    """Timings of one training method: every timed epoch, and its compile time (None: eager)."""

    method: str
    images_per_epoch: int
    epoch_times_s: tuple[float, ...]
    train_losses: tuple[float, ...]  # mean training loss of each epoch
    compile_time_s: float | None

    @property
    def epoch_time_s(self) -> float:
        """Median epoch time."""
        return statistics.median(self.epoch_times_s)

    @property
    def images_per_s(self) -> float:
        return self.images_per_epoch / self.epoch_time_s


@dataclasses.dataclass(frozen=True)
class Report:
    """All results of one benchmark run, with what they ran on."""

    setup: str
    machine: str
    backend: str
    device_kind: str
    results: tuple[Result, ...]
    torch_skipped: str | None  # why the PyTorch reference did not run; None if it ran

    @property
    def torch(self) -> Result | None:
        """The PyTorch reference's result (the one that is not a JAX epoch strategy), if it ran."""
        return next((r for r in self.results if r.method not in LOOPS), None)

    @property
    def faster_loop(self) -> str | None:
        """The faster of the measured JAX epoch strategies (None unless both were measured)."""
        jax_results = [r for r in self.results if r.method in LOOPS]
        return max(jax_results, key=lambda r: r.images_per_s).method if len(jax_results) > 1 else None

    def to_json(self) -> dict[str, Any]:
        torch_ips = self.torch.images_per_s if self.torch else None
        results = [{**dataclasses.asdict(r), "epoch_time_s": r.epoch_time_s, "images_per_s": r.images_per_s,
                    "vs_torch": r.images_per_s / torch_ips if torch_ips else None} for r in self.results]
        return {"setup": self.setup, "machine": self.machine, "backend": self.backend,
                "device_kind": self.device_kind, "results": results, "faster_loop": self.faster_loop,
                "auto_loop": resolve_loop("auto"), "torch_skipped": self.torch_skipped}


def training_set(config: ml_collections.ConfigDict, repeat: int = 1) -> Dataset:
    """The config's dataset with its training split tiled `repeat` times (for longer epochs)."""
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be >= 1")
    dataset = load_dataset(config.data)
    return dataclasses.replace(
        dataset, name=dataset.name + (f" ×{repeat}" if repeat > 1 else ""),
        train_images=np.tile(dataset.train_images, (repeat, 1, 1, 1)),
        train_labels=np.tile(dataset.train_labels.astype(np.int32), repeat))


def benchmark_jax(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                  loop: str, epochs: int, num_classes: int = 10) -> Result:
    """Trains a fresh model for `epochs` timed epochs with epoch strategy `loop` (`python`/`scan`).

    Uses the `Trainer` of `train_and_evaluate`; compile time is `lower().compile()` of the step
    (python) or the epoch (scan); each epoch is timed until its metrics reach the host.
    """
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not valid; valid values: {', '.join(LOOPS)}")
    trainer = Trainer(config, images, labels, num_classes, loop)
    times, losses = [], []
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        loss_sum, _, count = trainer.train_epoch(epoch)[0]
        times.append(time.perf_counter() - t0)
        losses.append(float(loss_sum / count))
    return Result(loop, trainer.steps * trainer.batch_size, tuple(times), tuple(losses), trainer.compile_time)


def run_benchmark(config: ml_collections.ConfigDict, epochs: int = 3, repeat: int = 1,
                  loops: Sequence[str] = LOOPS, reference: ModuleType | None = None,
                  reference_skipped: str | None = "not requested") -> Report:
    """Benchmarks the JAX epoch strategies `loops` and, if given, the PyTorch loop.

    Args:
      config: a full training config (e.g. `configs/lenet.py:3`); its model, optimizer, batch size
        and training data are used.
      epochs: timed epochs per method (the reports give their median).
      repeat: tile the training set this many times for longer epochs.
      loops: JAX epoch strategies to measure, from `LOOPS`.
      reference: the module of the PyTorch loop (`scripts/torch_reference.py`, kept out of the
        package): `benchmark_torch(config, images, labels, epochs, num_classes) -> Result` and
        `describe() -> str`; None: not run, for the reason `reference_skipped`.
    """
    validate(config)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    dataset = training_set(config, repeat)
    images, labels, num_classes = dataset.train_images, dataset.train_labels, dataset.num_classes
    results = [benchmark_jax(config, images, labels, loop, epochs, num_classes) for loop in loops]
    versions = f"jax {jax.__version__}"
    if reference is not None:
        results.append(reference.benchmark_torch(config, images, labels, epochs, num_classes))
        versions += f", {reference.describe()}"
        reference_skipped = None
    activation = f"{config.model.activation}, " if "activation" in config.model else ""
    setup = (f"{config.model.name} variant {config.variant} ({config.optim.name}, {activation}"
             f"lr {config.optim.learning_rate}, "
             f"batch {config.train.batch_size}) on {dataset.name}: "
             f"{len(labels) // config.train.batch_size * config.train.batch_size:,} images/epoch, "
             f"median of {epochs} epochs")
    return Report(setup, f"{machine_name()}; {versions}", jax.default_backend(), jax.devices()[0].device_kind,
                  tuple(results), reference_skipped)


def format_table(report: Report) -> str:
    """The report as a text table with a header and a closing line on the faster epoch strategy."""
    torch_result = report.torch
    lines = [report.setup, f"machine: {report.machine}",
             f"backend: {report.backend} ({report.device_kind})", "",
             f"{'method':<16}{'images/s':>10}{'epoch (s)':>11}{'compile (s)':>13}{'vs PyTorch':>12}"]
    for r in report.results:
        name = r.method if r == torch_result else f"jax {r.method}"
        compile_s = f"{r.compile_time_s:.2f}" if r.compile_time_s is not None else "-"
        ratio = f"{r.images_per_s / torch_result.images_per_s:.2f}x" if torch_result else "-"
        lines.append(f"{name:<16}{r.images_per_s:>10,.0f}{r.epoch_time_s:>11.3f}{compile_s:>13}{ratio:>12}")
    if report.torch_skipped:
        lines.append(f"PyTorch reference skipped: {report.torch_skipped}")
    if report.faster_loop:
        speed = {r.method: r.images_per_s for r in report.results if r.method in LOOPS}
        slower = min(speed, key=speed.get)
        lines += ["", f"faster epoch strategy on {report.backend}: {report.faster_loop}, "
                      f"{speed[report.faster_loop] / speed[slower]:.2f}x {slower} "
                      f"(train.loop=auto picks {resolve_loop('auto')})"]
    return "\n".join(lines)


def run_scaling(config: ml_collections.ConfigDict, devices: Sequence[int], epochs: int = 3, repeat: int = 1,
                loop: str = "python") -> list[dict[str, Any]]:
    """Data-parallel scaling: the same config (same global batch) trained on meshes of `devices`
    devices in turn; images/s and efficiency = images/s ÷ (devices × images/s per device of the first)."""
    validate(config)
    if not devices:
        raise ConfigError("--devices: give at least one device count, e.g. 1,2,4,8")
    dataset = training_set(config, repeat)
    rows = []
    for n in devices:
        member = ml_collections.ConfigDict(config.to_dict())
        member.mesh = n
        r = benchmark_jax(member, dataset.train_images, dataset.train_labels, loop, epochs, dataset.num_classes)
        rows.append({"devices": n, "images_per_s": r.images_per_s, "epoch_time_s": r.epoch_time_s,
                     "compile_time_s": r.compile_time_s, "train_loss": r.train_losses[-1]})
    per_device = rows[0]["images_per_s"] / rows[0]["devices"]
    for row in rows:
        row["efficiency"] = row["images_per_s"] / (row["devices"] * per_device)
    return rows


def format_scaling(config: ml_collections.ConfigDict, rows: list[dict[str, Any]], loop: str) -> str:
    lines = [f"{config.model.name} {config.variant}: global batch {config.train.batch_size}, loop {loop}, "
             f"median epoch", f"machine: {machine_name()}; jax {jax.__version__}; {jax.device_count()} "
             f"{jax.default_backend()} devices ({jax.devices()[0].device_kind})", "",
             f"{'devices':>8}{'images/s':>11}{'epoch (s)':>11}{'compile (s)':>13}{'efficiency':>12}"]
    for r in rows:
        lines.append(f"{r['devices']:>8}{r['images_per_s']:>11,.0f}{r['epoch_time_s']:>11.3f}"
                     f"{r['compile_time_s']:>13.2f}{r['efficiency']:>11.0%}")
    return "\n".join(lines)
