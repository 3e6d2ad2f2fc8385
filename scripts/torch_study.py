"""The study's variants trained by PyTorch, on the same data split as jaxcnn, beside a jaxcnn study.

    python scripts/torch_study.py --config configs/lenet.py --variants 0,4,6 --seeds 3 \\
        --out runs/lenet_pytorch.csv --compare runs/lenet

Each (variant, seed) trains the config's PyTorch twin (`scripts/torch_reference.py`) from PyTorch's own
initialisation (`torch.manual_seed(seed)`) with the config's optimizer, batch size and epochs on the
images jaxcnn loads for that config (same train/test split; converted to the model's channels and size
and normalised as jaxcnn does on the device, `torch_reference.torch_preprocess`; no augmentation),
reshuffled every epoch, the last partial batch dropped as jaxcnn does. The final test accuracy of each run goes to `--out` (CSV; runs
already there are skipped, so an interrupted study resumes); with `--compare W` the table sets each
variant's PyTorch accuracy (mean ± sample std) beside the jaxcnn study in W and asks whether they differ
(`jaxcnn.study.stats.welch`). Models with a PyTorch twin (LeNet-5, the pooling CNN, the SSL CNN,
torchvision's ResNet/AlexNet from scratch); needs `pip install -e ".[bench]"`.
"""

from __future__ import annotations

import csv
import pathlib
import sys
import time

import numpy as np

from absl import flags

import torch_reference  # scripts/torch_reference.py: the PyTorch twins, outside the package
from jaxcnn.cli import run
from jaxcnn.config import load_config_module
from jaxcnn.errors import ConfigError, UserError

flags.DEFINE_string("config", None, "Config file, optionally with overrides for every variant: FILE[:k=v,...]")
flags.DEFINE_list("variants", None, "Variants to run.")
flags.DEFINE_integer("seeds", 3, "Seeds per variant (0..N-1).", lower_bound=1)
flags.DEFINE_string("out", None, "CSV of the runs, one line per finished run (resumed if it exists).")
flags.DEFINE_string("compare", None, "A jaxcnn study workdir of the same config, set beside in the table.")
flags.DEFINE_integer("threads", 0, "PyTorch CPU threads (0: PyTorch's default). On a busy machine 1 can be "
                     "much faster: with 2 threads beside other jobs on 2 cores a LeNet step measured 13x slower.",
                     lower_bound=0)
flags.mark_flags_as_required(["config", "variants", "out"])

FIELDS = ("variant", "seed", "test_accuracy", "train_accuracy", "seconds")


def train_torch(config, dataset) -> dict[str, float]:
    """One PyTorch run of `config` on `dataset`: its final test and train accuracy and wall time."""
    import torch

    if config.data.crop_padding or config.data.random_resized_crop or config.data.hflip or config.data.rotation:
        raise ConfigError("the PyTorch study trains without augmentation; set data.crop_padding=0, "
                          "data.random_resized_crop=False, data.hflip=False, data.rotation=0")
    torch.manual_seed(config.seed)
    t0 = time.perf_counter()
    preprocess = torch_reference.torch_preprocess(config)  # as jaxcnn's device preprocessing
    prepare = lambda x: preprocess(torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0)  # noqa: E731
    x_train, y_train = prepare(dataset.train_images), torch.from_numpy(dataset.train_labels).long()
    x_test, y_test = prepare(dataset.test_images), torch.from_numpy(dataset.test_labels).long()
    model = torch_reference.torch_model(config, dataset.num_classes)
    batch, generator = config.train.batch_size, torch.Generator().manual_seed(config.seed)
    steps = len(y_train) // batch
    optimizer, schedule = torch_reference.torch_optimizer(config.optim, model.parameters(), steps, config.train.epochs)
    loss_fn = torch.nn.CrossEntropyLoss()
    for _ in range(config.train.epochs):
        model.train()
        correct = 0
        for idx in torch.randperm(len(y_train), generator=generator)[: steps * batch].view(steps, batch):
            logits = model(x_train[idx])
            loss = loss_fn(logits, y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            correct += int((logits.argmax(1) == y_train[idx]).sum())
    model.eval()
    with torch.no_grad():
        test_correct = int((model(x_test).argmax(1) == y_test).sum())
    return {"test_accuracy": test_correct / len(y_test), "train_accuracy": correct / (steps * batch),
            "seconds": time.perf_counter() - t0}


def read_rows(path: pathlib.Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(rows[0]) != set(FIELDS):
        raise UserError(f"{path} is not a PyTorch study file (columns {', '.join(FIELDS)}); choose another --out")
    return rows


def jaxcnn_accuracies(workdir: pathlib.Path, variant: str) -> list[float]:
    """Final test accuracies of the finished runs of `variant` in a jaxcnn study workdir."""
    from jaxcnn.report.run import read_summary

    return [read_summary(run)["final_test_accuracy"] for run in sorted((workdir / variant).glob("seed_*"))
            if (run / "summary.json").is_file()]


def _mean_std(values: list[float]) -> str:
    from jaxcnn.report.markdown import percent

    if not values:
        return "–"
    return percent(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None, True) + "%"


def table(rows: list[dict[str, str]], variants: list[str], compare: pathlib.Path | None) -> str:
    from jaxcnn.report.markdown import p_value
    from jaxcnn.study.stats import welch

    head = "| variant | PyTorch: test acc (final) | seeds |"
    if compare:
        head += f" jaxcnn ({compare}) | seeds | Welch p |"
    lines = [head, "|" + "---|" * head.count(" |")]
    for variant in variants:
        ours = [float(r["test_accuracy"]) for r in rows if r["variant"] == variant]
        line = f"| {variant} | {_mean_std(ours)} | {len(ours)} |"
        if compare:
            theirs = jaxcnn_accuracies(compare, variant)
            test = welch(ours, theirs)
            line += f" {_mean_std(theirs)} | {len(theirs)} | {p_value(test[2]) if test else '–'} |"
        lines.append(line)
    return "\n".join(lines)


def main(argv):
    del argv
    f = flags.FLAGS
    import torch  # before anything could import TensorFlow (torch/timm after TensorFlow crash in one process)

    from jaxcnn.data import load_dataset

    path, _, overrides = f.config.partition(":")
    module = load_config_module(path)
    compare = pathlib.Path(f.compare) if f.compare else None
    if compare and not (compare / "study.json").is_file():
        raise UserError(f"--compare {compare} is not a jaxcnn study workdir (no study.json)")
    out = pathlib.Path(f.out)
    rows = read_rows(out)
    done = {(r["variant"], int(r["seed"])) for r in rows}
    configs = {(v, s): module.get_config(",".join(x for x in (v, overrides, f"seed={s}") if x))
               for v in f.variants for s in range(f.seeds)}
    if f.threads:
        torch.set_num_threads(f.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    datasets = {}
    for (variant, seed), config in configs.items():
        if (variant, seed) in done:
            continue
        key = str(config.data)
        if key not in datasets:
            datasets[key] = load_dataset(config.data)
        result = train_torch(config, datasets[key])
        row = {"variant": variant, "seed": seed, **result}
        new = not out.is_file()
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a", newline="") as fh:  # one line per finished run: an interrupted study resumes
            writer = csv.DictWriter(fh, FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        rows.append({k: str(v) for k, v in row.items()})
        print(f"{variant} seed {seed}: test accuracy {result['test_accuracy']:.4f} ({result['seconds']:.0f} s)",
              file=sys.stderr)
    print(table(rows, f.variants, compare))


if __name__ == "__main__":
    run(main)
