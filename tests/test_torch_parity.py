"""Step-for-step training parity with PyTorch (issue 13, item 2).

Each small model (LeNet-5 and its variants, the pooling CNN, the SSL CNN) and its PyTorch twin
(`scripts/torch_reference.py`, the benchmark's) start from the same weights (`copy_to_twin`) and
train 50 steps (5 reshuffled epochs of 10) on the same batches in the same order: jaxcnn through
its real `Trainer` (the `make_step` of `classification`, `make_optimizer`'s transformation, the device
preprocessing; the objective is wrapped only to report each step's loss), PyTorch with
`torch_optimizer` (SGD/Adam/AdamW and lr_scheduler equivalents, stepped per step) on the batches
jaxcnn's preprocessing made. Then every step's loss, every parameter, the BatchNorm running
statistics and the evaluation outputs (logits, `make_eval_fn`'s loss sum and predictions,
`make_predict_fn`'s probabilities) must agree. Data: the embedded MNIST digits; for the pooling CNN
32×32 RGB crops of a real photo.

float32 agrees to 1e-5 with SGD. Adam (1e-2 after 50 steps with ReLU), average pooling (1e-4) and
BatchNorm amplify float32 summation-order round-off: those run in float64, to 1e-10, in one child
process with `jax_enable_x64` set globally, so it cannot leak into this pytest worker. (The scoped
`jax.enable_x64` context was tried: it does not reach the thread that runs `jax.debug.callback`, and
half the reported float64 losses came back rounded to float32.) The models cast their logits to
float32 (the bfloat16 contract); in float64 runs that cast is made a float64 cast. The SSL CNN's
head dropout (0.5, a constant) is set to 0 in both models, its trunk dropout by model.dropout=0.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import types
from unittest import mock

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from jaxcnn.data.device import epoch_permutation, pad_for_eval  # noqa: E402
from jaxcnn.data.embedded import load_mnist5k  # noqa: E402
from jaxcnn.models import model_module  # noqa: E402
from jaxcnn.train import init, steps, trainer as trainer_module  # noqa: E402
from jaxcnn.train.optim import make_schedule  # noqa: E402
from scripts.torch_reference import copy_to_twin, torch_model, torch_optimizer, twin_state_dict  # noqa: E402
from tests.helpers import ENV, ROOT, config_module, lenet  # noqa: E402

STEPS_PER_EPOCH, EPOCHS = 10, 5  # 50 steps, over 5 reshuffled epochs
TOL32, TOL64 = 1e-5, 1e-10
EVAL_IMAGES = 100

# name -> (config, its arguments). Schedules: warmup 1 epoch = 10 steps; step: x0.1 every 2 epochs.
CONFIGS = {"lenet": lambda arg: lenet.get_config(f"{arg},batch_size=25,epochs={EPOCHS}"),
           "pooling": lambda arg: config_module("pooling").get_config(f"{arg},batch_size=16,epochs={EPOCHS},"
                                                                      "model.hidden=8"),
           "ssl": lambda arg: config_module("ssl_init").get_config(f"random,{arg},batch_size=25,epochs={EPOCHS},"
                                                                   "model.dropout=0,model.init=torch")}
SGD = "7,lr=0.05,optim.momentum=0.9"  # LeNet: SGD with momentum, ReLU (lr 0.05: 50 steps move it)
ADAM = "3"  # Adam 1e-3, ReLU
SSL_SGD = "optim.name=sgd,lr=0.05,optim.momentum=0.9,optim.weight_decay=0"
# Optax evaluates a schedule from the int32 step count in float32 even under x64 (0.05 -> 0.050000001 at
# step 5): with a step or warmup schedule float64 runs agree to ~1e-8, not 1e-10.
SCHEDULE_TOL64 = 1e-7
CASES = {  # id -> (config, argument, float32 or float64, tolerance)
    # float32: SGD, with every schedule, and the model variants
    "sgd": ("lenet", "7,lr=0.05", "float32", TOL32),
    "sgd_momentum_scan_loop": ("lenet", f"{SGD},train.loop=scan", "float32", TOL32),
    "nesterov_weight_decay": ("lenet", f"{SGD},optim.nesterov=True,optim.weight_decay=0.01", "float32", TOL32),
    "sgd_step": ("lenet", f"{SGD},optim.schedule=step,optim.decay_epochs=2", "float32", TOL32),
    "sgd_warmup_cosine": ("lenet", f"{SGD},optim.schedule=cosine,optim.warmup_epochs=1", "float32", TOL32),
    "lenet_tanh_maxpool": ("lenet", "4,lr=0.05,optim.momentum=0.9,model.pooling=max", "float32", TOL32),
    "lenet_elu_extra_conv": ("lenet", f"{SGD},model.activation=elu,model.extra_conv_layers=2", "float32", TOL32),
    "lenet_sigmoid": ("lenet", "7,lr=0.5,optim.momentum=0.9,model.activation=sigmoid", "float32", TOL32),
    "pooling_stride4": ("pooling", "stride", "float32", TOL32),
    "pooling_max": ("pooling", "max", "float32", TOL32),
    # float64: Adam (float32 drifts 1e-2 in 50 steps with ReLU), average pooling, BatchNorm
    "adam": ("lenet", ADAM, "float64", TOL64),
    "adam_l2": ("lenet", f"{ADAM},optim.weight_decay=0.01", "float64", TOL64),
    "adamw_cosine": ("lenet", f"{ADAM},optim.name=adamw,optim.weight_decay=0.1,optim.schedule=cosine",
                     "float64", TOL64),
    "adam_warmup_step": ("lenet", f"{ADAM},optim.schedule=step,optim.decay_epochs=2,optim.warmup_epochs=1",
                         "float64", SCHEDULE_TOL64),
    "pooling_avg": ("pooling", "avg", "float64", 1e-7),  # float32: 1e-4; float64 differs 4e-12 after step 1 already
    # default widths: the last block max-pools 7×7 -> 3×3; MNIST's flat background makes maxima tie, where
    # the gradient goes to the window's first maximum as in PyTorch (layers.pool)
    "ssl_cnn_sgd": ("ssl", SSL_SGD, "float64", TOL64),
    "ssl_cnn_adam": ("ssl", "optim.name=adam", "float64", TOL64),  # with the study's L2 5e-4
}
FLOAT64 = [case for case, (_, _, precision, _) in CASES.items() if precision == "float64"]


# --- data -------------------------------------------------------------------------------------------

def photo_crops(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 32×32 RGB crops of a real photo (matplotlib's sample `grace_hopper.jpg`, 600×512): squares of
    32-160 px at random places, resized (PIL bilinear); the class is the third of the photo's height
    the crop's centre lies in."""
    import matplotlib.cbook
    from PIL import Image

    photo = Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for _ in range(n):
        size = int(rng.integers(32, 161))
        left, top = int(rng.integers(0, photo.width - size + 1)), int(rng.integers(0, photo.height - size + 1))
        crop = photo.crop((left, top, left + size, top + size)).resize((32, 32), Image.BILINEAR)
        images.append(np.asarray(crop, np.uint8))
        labels.append(min(2, 3 * (top + size // 2) // photo.height))
    return np.stack(images), np.asarray(labels, np.int32)


def data(name: str, batch_size: int):
    """(train images, train labels, eval images, eval labels, classes): 10 batches (an epoch)."""
    n = STEPS_PER_EPOCH * batch_size
    if name == "pooling":
        images, labels = photo_crops(n + EVAL_IMAGES, seed=0)
        return images[:n], labels[:n], images[n:], labels[n:], 3
    mnist = load_mnist5k()
    return (mnist.train_images[:n], mnist.train_labels[:n], mnist.test_images[:EVAL_IMAGES],
            mnist.test_labels[:EVAL_IMAGES], 10)


# --- both trainings ---------------------------------------------------------------------------------

@contextlib.contextmanager
def reported_losses(losses: list):
    """The Trainer's classification objective, unchanged, also reporting each step's loss to `losses`."""
    def classification(preprocess, constrain=lambda x: x):
        objective = steps.classification(preprocess, constrain)

        def reporting(model, images, labels, key):
            loss, correct = objective(model, images, labels, key)
            jax.debug.callback(lambda value: losses.append(float(value)), loss, ordered=True)
            return loss, correct

        return reporting

    with mock.patch.object(trainer_module, "classification", classification):
        yield


@contextlib.contextmanager
def float64_logits(model_name: str):
    """In float64 runs, the model's final `.astype(jnp.float32)` (float32 logits) keeps float64."""
    module = model_module(model_name)
    proxy = types.SimpleNamespace(**{**vars(jnp), "float32": jnp.float64})
    with mock.patch.object(module, "jnp", proxy):
        yield


@contextlib.contextmanager
def torch_threads(n: int):
    """One intra-op thread: on a busy 2-core machine PyTorch's spinning OpenMP threads ran 20× slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def train_both(case: str, x64: bool = False, mutate=None) -> dict:
    """Trains `case` 50 steps with jaxcnn's Trainer and with its PyTorch twin, same weights, same batches.
    `mutate(model, twin, config)` may change either before training (tests that the checks can fail).
    Returns the maximum differences (and both loss curves)."""
    name, arg, _, _ = CASES[case]
    config = CONFIGS[name](arg)
    images, labels, eval_images, eval_labels, classes = data(name, config.train.batch_size)
    model, _ = init.initialise(config, classes)
    if x64:
        float_state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
        nnx.update(model, jax.tree.map(lambda a: a.astype(jnp.float64), float_state))
    if name == "ssl":  # its head's Dropout(0.5) is a constant: off in both (trunk dropout is model.dropout=0)
        model.head_dropout.rate = 0.0
    dtype = torch.float64 if x64 else torch.float32
    twin = torch_model(config, classes).to(dtype)
    if name == "ssl":
        twin.head_dropout.p = 0.0
    copy_to_twin(model, twin)
    start = {k: v.detach().clone().numpy() for k, v in twin.state_dict().items()}
    if mutate is not None:
        mutate(model, twin, config)
    jax_losses, torch_losses = [], []
    logits_cast = float64_logits(config.model.name) if x64 else contextlib.nullcontext()
    with reported_losses(jax_losses), logits_cast, torch_threads(1):
        trainer = trainer_module.Trainer(config, images, labels, classes, models=[model])
        assert trainer.steps == STEPS_PER_EPOCH
        for epoch in range(1, EPOCHS + 1):
            trainer.train_epoch(epoch)
        jax.effects_barrier()

        # PyTorch on the batches jaxcnn's preprocessing makes (no augmentation is configured)
        preprocess = jax.jit(trainer.preprocess)
        to_torch = lambda x: torch.from_numpy(np.asarray(preprocess(jnp.asarray(x))).transpose(0, 3, 1, 2).copy()).to(dtype)
        x, y = to_torch(images), torch.from_numpy(labels.astype(np.int64))
        optimizer, scheduler = torch_optimizer(config.optim, twin.parameters(), trainer.steps, config.train.epochs)
        twin.train()
        for epoch in range(1, EPOCHS + 1):
            for idx in np.asarray(epoch_permutation(trainer.shuffle_keys[0], epoch, len(labels), trainer.batch_size)):
                idx = torch.from_numpy(idx.astype(np.int64))
                optimizer.zero_grad()
                loss = torch.nn.functional.cross_entropy(twin(x[idx]), y[idx])
                loss.backward()
                optimizer.step()
                scheduler.step()
                torch_losses.append(loss.item())

        # the trained weights and statistics, in the twin's layout
        trained = twin_state_dict(trainer.model, twin)
        ours = {k: v.detach().numpy() for k, v in twin.state_dict().items()}
        stats = [k for k in ours if k.endswith(("running_mean", "running_var"))]
        diff = lambda keys: max((float(np.abs(trained[k] - ours[k]).max()) for k in keys), default=0.0)
        # running variances grow past 1: relative to max(1, |value|)
        stats_diff = max((float((np.abs(trained[k] - ours[k]) / np.maximum(1.0, np.abs(ours[k]))).max())
                          for k in stats), default=0.0)
        moved = max(float(np.abs(trained[k] - start[k]).max()) for k in ours if k not in stats
                    and not k.endswith("num_batches_tracked"))

        # evaluation: logits, make_eval_fn (loss sum, predictions, confidences), make_predict_fn (probabilities)
        model = trainer.model
        model.eval()
        twin.eval()
        graphdef, state = nnx.split(model)
        logits = np.asarray(jax.jit(lambda s, im: nnx.merge(graphdef, s)(trainer.preprocess(im)))(state, eval_images))
        with torch.no_grad():
            torch_logits = twin(to_torch(eval_images))
        padded = pad_for_eval(eval_images, eval_labels, 32)
        loss_sum, correct, predictions, confidences = steps.make_eval_fn(graphdef, trainer.preprocess, 32)(state, *padded)
        probabilities = steps.make_predict_fn(graphdef, trainer.preprocess)(state, eval_images)
        torch_loss_sum = torch.nn.functional.cross_entropy(torch_logits, torch.from_numpy(eval_labels.astype(np.int64)),
                                                           reduction="sum").item()
        torch_predictions = torch_logits.argmax(1).numpy()
    return {
        "steps": len(jax_losses),
        "jax_losses": jax_losses,
        "torch_losses": torch_losses,
        "loss": float(np.abs(np.array(jax_losses) - np.array(torch_losses)).max()),
        "params": diff([k for k in ours if k not in stats and not k.endswith("num_batches_tracked")]),
        "bn_stats": stats_diff,
        "has_bn": bool(stats),
        "moved": moved,  # how far the parameters moved from their start: the runs did train
        "logits": float(np.abs(logits - torch_logits.numpy()).max()),
        "probabilities": float(np.abs(np.asarray(probabilities) - torch.softmax(torch_logits, 1).numpy()).max()),
        "eval_loss_sum": abs(float(loss_sum) - torch_loss_sum) / len(eval_images),
        "confidences": float(np.abs(np.asarray(confidences)[:len(eval_images)]
                                    - torch.softmax(torch_logits, 1).max(1).values.numpy()).max()),
        "predictions_equal": bool((np.asarray(predictions)[:len(eval_images)] == torch_predictions).all()),
        "correct": int(correct) == int((torch_predictions == eval_labels).sum()),
    }


def check(case: str, result: dict) -> None:
    tol = CASES[case][3]
    assert result["steps"] == len(result["torch_losses"]) == STEPS_PER_EPOCH * EPOCHS
    assert result["moved"] > 1e-3, result["moved"]  # both really trained
    for key in ("loss", "params", "bn_stats", "logits", "probabilities", "eval_loss_sum", "confidences"):
        assert result[key] <= tol, (key, result[key], tol)
    assert result["predictions_equal"] and result["correct"]


# --- tests ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if c not in FLOAT64])
def test_float32_training_equals_pytorch(case):
    check(case, train_both(case))


@pytest.fixture(scope="module", autouse=True)
def float64_child():
    """The float64 cases, trained in one child process (`jax_enable_x64` set there only), started with
    this module's first test so that it runs beside the float32 cases."""
    proc = subprocess.Popen([sys.executable, "-m", "tests.test_torch_parity", *FLOAT64], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    yield proc
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


@pytest.fixture(scope="module")
def float64_results(float64_child):
    stdout, stderr = float64_child.communicate(timeout=600)
    assert float64_child.returncode == 0, stderr[-4000:]
    return json.loads(stdout.splitlines()[-1])


@pytest.mark.parametrize("case", FLOAT64)
def test_float64_training_equals_pytorch(float64_results, case):
    check(case, float64_results[case])


def test_batchnorm_running_statistics_equal_pytorch_s(float64_results):
    """model.init=torch: BatchNorm's running variance is updated with the unbiased batch variance, as
    PyTorch does: after 50 training steps the statistics agree (they are among the checks above too)."""
    for case in ("ssl_cnn_sgd", "ssl_cnn_adam"):
        assert float64_results[case]["has_bn"]
        assert float64_results[case]["bn_stats"] <= TOL64, float64_results[case]["bn_stats"]


@pytest.mark.parametrize("schedule,warmup", [("constant", 0), ("step", 0), ("cosine", 0), ("constant", 1),
                                             ("step", 1), ("cosine", 1)])
def test_torch_schedules_equal_jaxcnn_s(schedule, warmup):
    cfg = lenet.get_config(f"optim.schedule={schedule},optim.warmup_epochs={warmup},optim.decay_epochs=2").optim
    optimizer, scheduler = torch_optimizer(cfg, [torch.zeros(1, requires_grad=True)], STEPS_PER_EPOCH, EPOCHS)
    ours = make_schedule(cfg, STEPS_PER_EPOCH, EPOCHS)
    for step in range(STEPS_PER_EPOCH * EPOCHS):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(float(ours(step)), rel=1e-6, abs=1e-7 * cfg.learning_rate), step  # optax: float32
        optimizer.step()
        scheduler.step()


if __name__ == "__main__":  # the float64 child: python -m tests.test_torch_parity CASE...
    jax.config.update("jax_enable_x64", True)
    print(json.dumps({case: train_both(case, x64=True) for case in sys.argv[1:]}))
