"""Training speed on this backend: jaxcnn's epoch strategies beside the study's PyTorch loop.

    python scripts/benchmark.py                           # configs/lenet.py:3, embedded MNIST subset
    python scripts/benchmark.py --repeat 15 --epochs 5    # 60,000 images per epoch
    python scripts/benchmark.py --config configs/lenet.py:0 --json bench.json

ResNet-18 / AlexNet training steps at 224 px (stored MNIST digits resized on the device), beside the
torchvision model (channels-last; bf16 autocast on CUDA):

    python scripts/benchmark.py --config "configs/transfer.py:resnet18_scratch,data=embedded,data.max_train=64,\
batch_size=16,data.random_resized_crop=False,data.hflip=False,data.eval_crop_pct=0" --epochs 2 --loop python

The same config on every backend JAX sees (one process each, JAX_PLATFORMS set to it; the PyTorch loop
follows, on CUDA with a GPU): time per epoch, projected 100 epochs, speed-up over the CPU; without a GPU it
says so and measures the CPU:

    python scripts/benchmark.py --config configs/lenet.py:3 --backends=all     # or --backends=cpu,gpu

Which layers cost the time (no training): each conv/dense layer's parameters, FLOPs and time, forward and
forward + backward, at the config's batch size on this backend (what every run's summary.md also holds); with
torch installed, beside it the same for the config's PyTorch twin, timed in the same interleaved rounds
(`--notorch` skips it):

    python scripts/benchmark.py --config configs/lenet.py:conv4 --layers

The PyTorch reference needs `pip install -e ".[bench]"`; without torch it is skipped.

Data-parallel scaling (same global batch over 1, 2, 4, 8 devices; on a CPU simulate devices):

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python scripts/benchmark.py \
        --config configs/lenet.py:3,batch_size=128 --devices 1,2,4,8
"""

import importlib.util
import json
import pathlib
import sys

import jax
from absl import flags
from ml_collections import config_flags

from jaxcnn.benchmark import (BACKENDS, LOOPS, compare_backends, format_backends, format_scaling, format_table,
                              measure_backends, parse_backends, probe_backends, run_benchmark, run_scaling,
                              unavailable_line)
import torch_reference  # scripts/torch_reference.py: the PyTorch loop, outside the package
from jaxcnn.cli import run
from jaxcnn.config import validate
from jaxcnn.data import load_dataset
from jaxcnn.models import build_model, compiler_options
from jaxcnn.profile import format_beside, format_text, profile_beside
from jaxcnn.report.run import machine_name
from jaxcnn.train.init import model_input_shape
from jaxcnn.train.loop import run_title
from jaxcnn.errors import ConfigError

DEFAULT_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "lenet.py")

config_flags.DEFINE_config_file("config", DEFAULT_CONFIG, "Config file and argument, e.g. configs/lenet.py:3",
                                lock_config=True)
flags.DEFINE_integer("epochs", 3, "Timed epochs per method; the table gives their median.", lower_bound=1)
flags.DEFINE_integer("warmup", 1, "Untimed epochs per method before the timed ones.", lower_bound=0)
flags.DEFINE_integer("repeat", 1, "Tile the training set this many times (15: 60,000 MNIST images).", lower_bound=1)
flags.DEFINE_multi_enum("loop", list(LOOPS), LOOPS, "JAX epoch strategies to measure.")
flags.DEFINE_bool("torch", True, "Run the PyTorch reference loop.")
flags.DEFINE_string("json", None, "Also write the results to this JSON file.")
flags.DEFINE_list("devices", None, "Measure data-parallel scaling over these device counts (e.g. 1,2,4,8) "
                  "with the first --loop, instead of the PyTorch comparison.")
flags.DEFINE_bool("layers", False, "Print the time and FLOPs per layer of the config's model (jaxcnn.profile), "
                  "beside its PyTorch twin's times, instead of timing training.")
flags.DEFINE_list("backends", None, f"Measure on each of these backends, one process each: all, or from "
                  f"{','.join(BACKENDS)}; prints time per epoch, projected 100 epochs and the speed-up over the CPU.")


def main(argv):
    del argv
    f = flags.FLAGS
    if f.backends:
        compare(f)
        return
    if f.layers:
        layers(f)
        return
    if f.devices:
        if not all(n.isdigit() and int(n) > 0 for n in f.devices):
            raise ConfigError(f"--devices={','.join(f.devices)}: give device counts >= 1, e.g. 1,2,4,8")
        rows = run_scaling(f.config, [int(n) for n in f.devices], f.epochs, f.repeat, f.loop[0])
        print(format_scaling(f.config, rows, f.loop[0]))
        if f.json:
            pathlib.Path(f.json).write_text(json.dumps(rows, indent=2) + "\n")
        return
    reference, skipped = None, "not requested"
    if f.torch and importlib.util.find_spec("torch") is None:
        skipped = torch_reference.TORCH_MISSING
    elif f.torch:
        reference = torch_reference
    report = run_benchmark(f.config, f.epochs, f.repeat, f.loop, reference, skipped, f.warmup)
    print(format_table(report))
    if f.json:
        pathlib.Path(f.json).write_text(json.dumps(report.to_json(), indent=2) + "\n")


def layers(f) -> None:
    """--layers: jaxcnn's per-layer profile and, with torch installed (and --torch), its PyTorch twin's, timed in
    the same interleaved rounds."""
    validate(f.config)
    num_classes = load_dataset(f.config.data).num_classes
    title = (f"{run_title(f.config)}\nmachine: {machine_name()}; jax {jax.__version__}; "
             f"{jax.default_backend()} ({jax.devices()[0].device_kind})\n")
    skipped = "not requested" if not f.torch else (
        torch_reference.TORCH_MISSING if importlib.util.find_spec("torch") is None else None)
    programs, finish = ((), None) if skipped else torch_reference.torch_layer_programs(f.config, num_classes)
    shape = model_input_shape(f.config)
    profile, medians = profile_beside(build_model(f.config.model, num_classes, shape, f.config.seed), shape,
                                      num_classes, f.config.train.batch_size, programs, compiler_options(f.config.model))
    print(format_text(profile, title))
    data = profile.to_json()
    if skipped:
        print(f"PyTorch beside it skipped: {skipped}")
    else:
        theirs = finish(medians)
        print(f"\nBeside PyTorch ({torch_reference.describe()}), each layer of its twin timed alone the same way, in "
              f"the same rounds:\n{format_beside(profile, theirs, 'PyTorch')}")
        data["torch"] = theirs.to_json()
    if f.json:
        pathlib.Path(f.json).write_text(json.dumps(data, indent=2) + "\n")


def compare(f) -> None:
    """--backends: this command once per backend JAX sees (a child process each, without --backends), then
    the comparison."""
    if f.devices:
        raise ConfigError("--backends and --devices measure different things; give one of them")
    names = parse_backends(f.backends)
    validate(f.config)  # here, not once per child
    platforms, missing = probe_backends(names)
    if not platforms:
        raise ConfigError(unavailable_line(missing, []))
    command = [sys.executable, str(pathlib.Path(__file__).resolve()), *sys.argv[1:], "--backends="]
    comparison = compare_backends(measure_backends(command, platforms), missing)
    print(format_backends(comparison))
    if f.json:
        pathlib.Path(f.json).write_text(json.dumps(comparison, indent=2) + "\n")


if __name__ == "__main__":
    run(main)
