"""Training speed of a config on the current backend: jaxcnn's two epoch strategies beside the
study's PyTorch loop, on the same data and device.

The JAX side is the `Trainer` that `train_and_evaluate` uses, timed with each of its two epoch
strategies: `python` (a Python loop of the jitted step) and `scan` (the whole epoch in `lax.scan`). Compilation is timed on its own;
the figures are medians over the epochs after it. The PyTorch reference (the study's loop: the model
on the device, the data in host memory, each batch sliced, scaled to [0, 1] and copied every step) lives
outside the package, in `scripts/torch_reference.py`, and is passed in by `scripts/benchmark.py`.

Across backends (`compare_backends`): the same benchmark in one child process per backend (`JAX_PLATFORMS`
set to it: the `Trainer` shards over `jax.devices()`, which `jax.default_device` would not change, and each
child's PyTorch loop follows its JAX backend), then time per epoch, `PROJECTED_EPOCHS` × it and the speed-up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxcnn.config import validate
from jaxcnn.data import Dataset, load_dataset
from jaxcnn.errors import ConfigError, UserError
from jaxcnn.report.markdown import duration
from jaxcnn.report.run import machine_name
from jaxcnn.study.stats import PROJECTED_EPOCHS  # as the study report's projection
from jaxcnn.train.steps import resolve_loop
from jaxcnn.train.trainer import Trainer

LOOPS = ("python", "scan")
BACKENDS = ("cpu", "gpu", "tpu")  # JAX's backend names (`jax.default_backend()`)


# A sample (one epoch) during which other processes kept more than this many CPU cores busy on average is
# flagged as loaded and left out of the median (unless every sample of the method was loaded).
LOADED_CORES = 0.25


def cpu_seconds() -> tuple[float | None, float]:
    """(CPU seconds every process of the machine has been busy so far, from /proc/stat, None where there is
    none; CPU seconds of this process so far). Their differences over an interval tell how much of the
    machine other processes used during it."""
    ours = sum(os.times()[:2])
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None, ours
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK"), ours


class LoadMeter:
    """`with meter:` around a timed sample; `meter.other_cores` is then the mean number of CPU cores that
    other processes kept busy during it (None without /proc/stat)."""

    def __enter__(self):
        self._start, self._t0 = cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        (busy1, ours1), wall = cpu_seconds(), time.perf_counter() - self._t0
        busy0, ours0 = self._start
        self.other_cores = (None if busy0 is None or busy1 is None or wall <= 0
                            else max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall)
        return False


@dataclasses.dataclass(frozen=True)
class Result:
    """Timings of one training method: every timed epoch, the CPU cores other processes used during each,
    and its compile time (None: eager)."""

    method: str
    images_per_epoch: int
    epoch_times_s: tuple[float, ...]
    train_losses: tuple[float, ...]  # mean training loss of each epoch
    compile_time_s: float | None
    other_cores: tuple[float | None, ...] = ()  # per epoch; () when not measured

    @property
    def loaded(self) -> tuple[bool, ...]:
        """Per epoch: whether other processes used more than `LOADED_CORES` cores during it."""
        return tuple(c is not None and c > LOADED_CORES for c in self.other_cores) or (False,) * len(self.epoch_times_s)

    @property
    def kept_times_s(self) -> tuple[float, ...]:
        """The epoch times the figures use: those not loaded, or all of them if every one was."""
        kept = tuple(t for t, bad in zip(self.epoch_times_s, self.loaded) if not bad)
        return kept or self.epoch_times_s

    @property
    def epoch_time_s(self) -> float:
        """Median epoch time (of the samples not taken under load, where there are any)."""
        return statistics.median(self.kept_times_s)

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
    auto_loop: str = ""  # what train.loop=auto picks for this config here ("" if not known)

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
                "auto_loop": self.auto_loop, "torch_skipped": self.torch_skipped}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Report:
        """The report `to_json` wrote (its derived numbers are recomputed)."""
        fields = [f.name for f in dataclasses.fields(Result)]
        results = tuple(Result(**{k: tuple(r[k]) if isinstance(r[k], list) else r[k] for k in fields if k in r})
                        for r in data["results"])
        return cls(data["setup"], data["machine"], data["backend"], data["device_kind"], results,
                   data["torch_skipped"], data.get("auto_loop", ""))


def training_set(config: ml_collections.ConfigDict, repeat: int = 1) -> Dataset:
    """The config's dataset with its training split tiled `repeat` times (for longer epochs)."""
    if repeat < 1:
        raise ValueError(f"repeat={repeat} must be >= 1")
    dataset = load_dataset(config.data)
    return dataclasses.replace(
        dataset, name=dataset.name + (f" ×{repeat}" if repeat > 1 else ""),
        train_images=np.tile(dataset.train_images, (repeat, 1, 1, 1)),
        train_labels=np.tile(dataset.train_labels.astype(np.int32), repeat))


@dataclasses.dataclass(frozen=True)
class Contender:
    """A training method set up and compiled, ready to run epochs: `epoch(i)` trains epoch i (from 1) and
    returns its mean training loss once that is on the host."""

    method: str
    images_per_epoch: int
    compile_time_s: float | None
    epoch: Callable[[int], float]
    steps_per_call: int = 1  # steps per call of the compiled program (jaxcnn's Python loop: the Trainer's)


def jax_contender(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray, loop: str,
                  num_classes: int = 10) -> Contender:
    """A fresh model in the `Trainer` of `train_and_evaluate` with epoch strategy `loop` (`python`/`scan`);
    compile time is `lower().compile()` of the step (python) or the epoch (scan)."""
    if loop not in LOOPS:
        raise ValueError(f"loop={loop!r} is not valid; valid values: {', '.join(LOOPS)}")
    trainer = Trainer(config, images, labels, num_classes, loop)

    def epoch(i: int) -> float:
        loss_sum, _, count = trainer.train_epoch(i)[0]
        return float(loss_sum / count)

    return Contender(loop, trainer.steps * trainer.batch_size, trainer.compile_time, epoch, trainer.steps_per_call)


def measure(contenders: Sequence[Contender], epochs: int, warmup: int = 1) -> list[Result]:
    """Times `epochs` epochs of every contender after `warmup` untimed ones, interleaved: each round runs one
    epoch of each, the order rotating from round to round, so that a burst of load on the machine falls on
    all of them alike; each sample notes the CPU other processes used meanwhile (`LoadMeter`)."""
    if epochs < 1 or warmup < 0:
        raise ValueError(f"epochs={epochs} must be >= 1 and warmup={warmup} >= 0")
    samples = {c.method: ([], [], []) for c in contenders}
    for i in range(1, warmup + 1):
        for c in contenders:
            c.epoch(i)
    for r in range(epochs):
        k = r % len(contenders)
        for c in (*contenders[k:], *contenders[:k]):
            with LoadMeter() as meter:
                t0 = time.perf_counter()
                loss = c.epoch(warmup + r + 1)
                elapsed = time.perf_counter() - t0
            times, losses, cores = samples[c.method]
            times.append(elapsed)
            losses.append(loss)
            cores.append(meter.other_cores)
    return [Result(c.method, c.images_per_epoch, *map(tuple, samples[c.method][:2]), c.compile_time_s,
                   tuple(samples[c.method][2])) for c in contenders]


def benchmark_jax(config: ml_collections.ConfigDict, images: np.ndarray, labels: np.ndarray,
                  loop: str, epochs: int, num_classes: int = 10, warmup: int = 1) -> Result:
    """`measure` of one `jax_contender`."""
    return measure([jax_contender(config, images, labels, loop, num_classes)], epochs, warmup)[0]


def run_benchmark(config: ml_collections.ConfigDict, epochs: int = 3, repeat: int = 1,
                  loops: Sequence[str] = LOOPS, reference: ModuleType | None = None,
                  reference_skipped: str | None = "not requested", warmup: int = 1) -> Report:
    """Benchmarks the JAX epoch strategies `loops` and, if given, the PyTorch loop, interleaved (`measure`).

    Args:
      config: a full training config (e.g. `configs/lenet.py:3`); its model, optimizer, batch size
        and training data are used.
      epochs: timed epochs per method (the reports give their median), after `warmup` untimed ones.
      repeat: tile the training set this many times for longer epochs.
      loops: JAX epoch strategies to measure, from `LOOPS`.
      reference: the module of the PyTorch loop (`scripts/torch_reference.py`, kept out of the
        package): `torch_contender(config, images, labels, num_classes) -> Contender` and
        `describe() -> str`; None: not run, for the reason `reference_skipped`.
    """
    validate(config)
    if epochs < 1:
        raise ValueError(f"epochs={epochs} must be >= 1")
    dataset = training_set(config, repeat)
    images, labels, num_classes = dataset.train_images, dataset.train_labels, dataset.num_classes
    contenders = [jax_contender(config, images, labels, loop, num_classes) for loop in loops]
    versions = f"jax {jax.__version__}"
    if reference is not None:
        contenders.append(reference.torch_contender(config, images, labels, num_classes))
        versions += f", {reference.describe()}"
        reference_skipped = None
    results = measure(contenders, epochs, warmup)
    activation = f"{config.model.activation}, " if "activation" in config.model else ""
    setup = (f"{config.model.name} variant {config.variant} ({config.optim.name}, {activation}"
             f"lr {config.optim.learning_rate}, "
             f"batch {config.train.batch_size}) on {dataset.name}: "
             f"{len(labels) // config.train.batch_size * config.train.batch_size:,} images/epoch, "
             f"median of {epochs} epochs after {warmup} warm-up, methods interleaved")
    for c in contenders:
        if c.method == "python":  # as the Trainer resolved it for a run of this config's epochs
            steps, k = len(labels) // config.train.batch_size, c.steps_per_call
            setup += (f"; the Python loop takes {k} step{'s' if k > 1 else ''} a call (train.steps_per_call="
                      f"{config.train.steps_per_call or 'auto'}, a run of {config.train.epochs} epochs × {steps} "
                      "steps)")
    return Report(setup, f"{machine_name()}; {versions}", jax.default_backend(), jax.devices()[0].device_kind,
                  tuple(results), reference_skipped, resolve_loop("auto", config.model))


def _spread(r: Result) -> str:
    kept = r.kept_times_s
    return f"{min(kept):.3f}-{max(kept):.3f}"


def _loaded(r: Result) -> str:
    return f"{sum(r.loaded)}/{len(r.epoch_times_s)}" if r.other_cores else "-"


def format_table(report: Report) -> str:
    """The report as a text table with a header, the load on the machine, and a closing line on the faster
    epoch strategy."""
    torch_result = report.torch
    lines = [report.setup, f"machine: {report.machine}",
             f"backend: {report.backend} ({report.device_kind})", "",
             f"{'method':<16}{'images/s':>10}{'epoch (s)':>11}{'range (s)':>15}{'loaded':>8}{'compile (s)':>13}"
             f"{'vs PyTorch':>12}"]
    for r in report.results:
        name = r.method if r == torch_result else f"jax {r.method}"
        compile_s = f"{r.compile_time_s:.2f}" if r.compile_time_s is not None else "-"
        ratio = f"{r.images_per_s / torch_result.images_per_s:.2f}x" if torch_result else "-"
        lines.append(f"{name:<16}{r.images_per_s:>10,.0f}{r.epoch_time_s:>11.3f}{_spread(r):>15}{_loaded(r):>8}"
                     f"{compile_s:>13}{ratio:>12}")
    cores = [c for r in report.results for c in r.other_cores if c is not None]
    if cores:
        loaded = sum(sum(r.loaded) for r in report.results)
        lines += ["", f"other processes used {statistics.median(cores):.2f} CPU cores (median; max {max(cores):.2f}) "
                      f"while the samples ran; {loaded} of {len(cores)} samples were loaded (> {LOADED_CORES} cores) "
                      "and left out of the medians" + (" (for a method whose samples were all loaded, all are used)"
                                                       if loaded else "")]
        if any(all(r.loaded) for r in report.results if r.other_cores):
            lines.append("warning: every sample of some method was taken under load: its figures are unreliable; "
                         "rerun on a quiet machine")
    if report.torch_skipped:
        lines.append(f"PyTorch reference skipped: {report.torch_skipped}")
    if report.faster_loop:
        speed = {r.method: r.images_per_s for r in report.results if r.method in LOOPS}
        slower = min(speed, key=speed.get)
        lines += ["", f"faster epoch strategy on {report.backend}: {report.faster_loop}, "
                      f"{speed[report.faster_loop] / speed[slower]:.2f}x {slower}"
                      + (f" (train.loop=auto picks {report.auto_loop})" if report.auto_loop else "")]
    return "\n".join(lines)


def parse_backends(names: Sequence[str]) -> list[str]:
    """`--backends` values: `all` (every one of `BACKENDS`) or names from `BACKENDS`; ConfigError naming a bad one."""
    valid = ("all", *BACKENDS)
    bad = [n for n in names if n.strip().lower() not in valid]
    if bad or not names:
        what = f"unknown backend {', '.join(repr(n) for n in bad)}" if bad else "no backend given"
        raise ConfigError(f"--backends={','.join(names)}: {what}; valid: {', '.join(valid)} "
                          "(e.g. --backends=all or --backends=cpu,gpu)")
    wanted = {n.strip().lower() for n in names}
    return [b for b in BACKENDS if b in wanted or "all" in wanted]


# Run in a child process, so that the process measuring nothing initialises no backend (on a GPU, JAX
# would hold the card's memory while the measuring children run).
_PROBE = """
import json, sys
import jax
found = {}
for name in sys.argv[1:]:
    try:
        jax.devices(name)
    except RuntimeError as e:
        found[name] = {"error": (str(e).strip().splitlines() or [type(e).__name__])[0]}
        continue
    for platform in ({"gpu": ("cuda", "rocm", "oneapi")}.get(name) or (name,)):  # JAX_PLATFORMS needs these
        try:
            found[name] = {"platform": platform, "device_kind": jax.devices(platform)[0].device_kind}
            break
        except RuntimeError:
            pass
    else:
        found[name] = {"error": f"no JAX_PLATFORMS value found for {name}"}
print(json.dumps(found))
"""


def probe_backends(names: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """Which of `names` JAX sees here (in a child process, with this environment):
    ({backend: its JAX_PLATFORMS value, e.g. gpu: cuda}, {backend: why JAX does not see it})."""
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-c", _PROBE, *names], env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise UserError(f"asking JAX which backends it sees failed: {last}")
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    platforms = {n: found[n]["platform"] for n in names if "platform" in found[n]}
    missing = {n: found[n]["error"] for n in names if "error" in found[n]}
    if os.environ.get("JAX_PLATFORMS"):
        missing = {n: f"{why} (JAX_PLATFORMS={os.environ['JAX_PLATFORMS']} is set)" for n, why in missing.items()}
    return platforms, missing


def unavailable_line(missing: dict[str, str], measured: Sequence[str]) -> str:
    """One line: which backends JAX does not see and why, and what was measured instead."""
    names = "/".join(n.upper() for n in missing)
    # each reason's first sentence (JAX goes on to list the platforms present)
    why = "; ".join(f"jax.devices('{n}') failed: {reason.split('. ')[0]}" for n, reason in missing.items())
    done = f"measured the {' and '.join(b.upper() for b in measured)} only" if measured else "nothing to measure"
    return f"no {names} visible to JAX ({why}); {done}"


def measure_backends(command: Sequence[str], platforms: dict[str, str], log=print) -> dict[str, Report]:
    """Runs `command` (the single-backend benchmark, taking `--json=PATH`, e.g. `scripts/benchmark.py` and
    its flags) once per backend, one after another, with JAX_PLATFORMS set to it; their tables pass through.

    Returns:
      {backend: the Report its process wrote}.
    """
    reports = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, platform in platforms.items():
            out = os.path.join(tmp, f"{name}.json")
            log(f"== {name} (JAX_PLATFORMS={platform}) ==")
            sys.stdout.flush()  # before the child's output, which goes to the same stdout
            proc = subprocess.run([*command, f"--json={out}"], env=dict(os.environ, JAX_PLATFORMS=platform))
            if proc.returncode != 0:
                raise UserError(f"the benchmark on {name} failed (exit status {proc.returncode}; see above)")
            with open(out) as f:
                reports[name] = Report.from_json(json.load(f))
            if reports[name].backend != name:
                raise UserError(f"JAX_PLATFORMS={platform} ran on {reports[name].backend}, not {name}")
            log("")
    return reports


def compare_backends(reports: dict[str, Report], missing: dict[str, str] | None = None) -> dict[str, Any]:
    """Per method: the median epoch time on each backend, `PROJECTED_EPOCHS` × it, and the speed-up of
    each other backend over the reference (the CPU where measured, else the first) = reference time ÷ its time."""
    if not reports:
        raise ValueError("compare_backends: no reports")
    reference = "cpu" if "cpu" in reports else next(iter(reports))
    methods = list(dict.fromkeys(r.method for report in reports.values() for r in report.results))
    rows = []
    for method in methods:
        times = {b: r.epoch_time_s for b, report in reports.items() for r in report.results if r.method == method}
        rows.append({"method": method, "epoch_time_s": times,
                     "projected_s": {b: PROJECTED_EPOCHS * t for b, t in times.items()},
                     "speedup": {b: times[reference] / t for b, t in times.items()
                                 if b != reference and reference in times}})
    return {"projected_epochs": PROJECTED_EPOCHS, "reference": reference, "methods": rows,
            "unavailable": dict(missing or {}), "backends": {b: r.to_json() for b, r in reports.items()}}


def format_backends(comparison: dict[str, Any]) -> str:
    """`compare_backends`' numbers as a text table, with the devices and the backends JAX did not see."""
    backends, reference = comparison["backends"], comparison["reference"]
    others = [b for b in backends if b != reference]
    n = comparison["projected_epochs"]
    lines = [f"Across backends: {next(iter(backends.values()))['setup']}"]
    if comparison["unavailable"]:
        lines.append(unavailable_line(comparison["unavailable"], list(backends)))
    lines += [f"{b}: " + (f"{r['device_kind']}; " if r["device_kind"] != b else "") + r["machine"]
              for b, r in backends.items()]
    header = f"{'method':<16}" + "".join(f"{b + ' epoch':>14}{f'{n} epochs':>18}" for b in backends)
    lines += ["", header + "".join(f"{f'{b} vs {reference}':>14}" for b in others)]
    for row in comparison["methods"]:
        name = f"jax {row['method']}" if row["method"] in LOOPS else row["method"]
        cells = "".join(f"{row['epoch_time_s'][b]:>12.3f} s{duration(row['projected_s'][b]):>18}"
                        if b in row["epoch_time_s"] else f"{'-':>14}{'-':>18}" for b in backends)
        speed = "".join(f"{row['speedup'][b]:>13.2f}x" if b in row["speedup"] else f"{'-':>14}" for b in others)
        lines.append(f"{name:<16}{cells}{speed}")
    lines += ["", f"{n} epochs = {n} × the median epoch time (compile time, in the tables above, not included)"
              + (f"; speed-up = the {reference} epoch time ÷ the other backend's" if others
                 else f"; speed-up: only {reference} was measured")]
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
