"""Which layers cost the time: parameters, FLOPs and measured time of each conv and dense layer of a model.

Each layer is compiled and timed alone on the input shape it sees in the model (recorded by one forward
pass at the training batch size): its forward pass, and its forward + backward pass (gradients of the
parameters, and of the input except for the model's first layer, as in a training step). FLOPs are XLA's
cost analysis of those compiled programs (convolutions count only the taps inside the image, not the
padding). The whole model's forward and forward + backward (cross-entropy loss, no optimizer update) are
timed the same way; what the layers do not account for (activations, pooling, normalisation, reshapes,
the loss) is the row "other". Times are medians over repeats with the layers interleaved, so a burst of
load on the machine hits every layer alike.
"""

from __future__ import annotations

import contextlib
import json
import dataclasses
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from jaxcnn.models import build_model, compiler_options, count_params

LAYER_TYPES = (nnx.Conv, nnx.Linear)  # the layers with weights that the profile times one by one
OTHER = "other"  # the row for the rest of the model


@dataclasses.dataclass(frozen=True)
class LayerCost:
    """One layer (or the whole model, or the rest) at one batch size."""

    name: str  # module path, e.g. "conv1", "extra.0", "layer1.0.conv2"; "model" or "other"
    kind: str  # "conv", "dense", "model", "other"
    shape: str  # e.g. "5×5 1→6" (conv) or "400→120" (dense); "" for model/other
    params: int
    flops_forward: float
    flops_backward: float  # forward + backward minus forward
    time_forward_s: float
    time_train_s: float  # forward + backward

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Profile:
    """The per-layer costs of one model, the whole model's, and what they ran on."""

    batch_size: int
    backend: str
    layers: tuple[LayerCost, ...]
    model: LayerCost

    @property
    def other(self) -> LayerCost:
        """The model minus its timed layers (activations, pooling, normalisation, loss); times floored at 0."""
        def rest(field: str) -> float:
            return max(0.0, getattr(self.model, field) - sum(getattr(layer, field) for layer in self.layers))
        return LayerCost(OTHER, OTHER, "", self.model.params - sum(layer.params for layer in self.layers),
                         rest("flops_forward"), rest("flops_backward"), rest("time_forward_s"), rest("time_train_s"))

    def share(self, layer: LayerCost) -> float:
        """`layer`'s share of the model's forward + backward time (the sum of the layers and `other`)."""
        total = sum(x.time_train_s for x in (*self.layers, self.other))
        return layer.time_train_s / total if total > 0 else 0.0

    def by_kind(self) -> dict[str, float]:
        """Share of the forward + backward time of all conv layers, all dense layers, and the rest."""
        shares = {"conv": 0.0, "dense": 0.0, OTHER: self.share(self.other)}
        for layer in self.layers:
            shares[layer.kind] += self.share(layer)
        return shares

    def to_json(self) -> dict[str, Any]:
        return {"batch_size": self.batch_size, "backend": self.backend,
                "layers": [layer.to_json() for layer in self.layers], "model": self.model.to_json()}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Profile:
        return cls(d["batch_size"], d["backend"], tuple(LayerCost(**x) for x in d["layers"]), LayerCost(**d["model"]))


@contextlib.contextmanager
def _recording_inputs(record: dict[int, jax.ShapeDtypeStruct]) -> Iterator[None]:
    """Within the block, every conv/dense layer call notes its input's shape and dtype in `record`
    (by the layer's id; the first call wins)."""
    originals = {cls: cls.__call__ for cls in LAYER_TYPES}

    def wrap(original):
        def call(self, x, *args, **kwargs):
            record.setdefault(id(self), jax.ShapeDtypeStruct(x.shape, x.dtype))
            return original(self, x, *args, **kwargs)
        return call

    try:
        for cls, original in originals.items():
            cls.__call__ = wrap(original)
        yield
    finally:
        for cls, original in originals.items():
            cls.__call__ = original


def _describe(layer: nnx.Module) -> tuple[str, str]:
    if isinstance(layer, nnx.Conv):
        *window, c_in, c_out = layer.kernel.value.shape
        strides = layer.strides if isinstance(layer.strides, int) else max(layer.strides or (1,))
        stride = f" /{strides}" if strides != 1 else ""
        return "conv", f"{'×'.join(map(str, window))} {c_in}→{c_out}{stride}"
    c_in, c_out = layer.kernel.value.shape
    return "dense", f"{c_in}→{c_out}"


def _flops(compiled: jax.stages.Compiled) -> float:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # older jax: one dict per program
    return float((cost or {}).get("flops", float("nan")))


class _Timed:
    """A jitted function compiled for its arguments: its FLOPs; calling it runs it to completion."""

    def __init__(self, fn: Callable, *args, compiler_options: dict[str, str] | None = None):
        self.compiled = jax.jit(fn, compiler_options=compiler_options).lower(*args).compile()
        self.args = args
        self.flops = _flops(self.compiled)
        self()  # warm-up

    def __call__(self) -> None:
        jax.block_until_ready(self.compiled(*self.args))


def interleaved_medians(programs: list[Callable[[], None]], min_time_s: float = 0.1, max_repeats: int = 50,
                        min_repeats: int = 5, max_total_s: float = 3.0) -> list[float]:
    """The median time of each program (a call that returns when its work is done), the programs taking turns in
    rounds: at least `min_repeats` rounds, then more (up to `max_repeats`) until every program has run for
    `min_time_s` in all, or the timed rounds took `max_total_s` (a large model's few repeats are long enough)."""
    times: list[list[float]] = [[] for _ in programs]
    t0 = time.perf_counter()
    for repeat in range(max_repeats):
        for program, samples in zip(programs, times):
            start = time.perf_counter()
            program()
            samples.append(time.perf_counter() - start)
        enough = min(map(sum, times)) >= min_time_s or time.perf_counter() - t0 >= max_total_s
        if repeat + 1 >= min_repeats and enough:
            break
    return [statistics.median(samples) for samples in times]


def _layer_programs(layer: nnx.Module, x: jax.ShapeDtypeStruct, first: bool, rng: np.random.Generator,
                    compiler_options: dict[str, str] | None) -> tuple[_Timed, _Timed]:
    graphdef, state = nnx.split(layer)
    inputs = jnp.asarray(rng.standard_normal(x.shape), x.dtype)  # NumPy: no compile per shape
    out = jax.eval_shape(lambda s, v: nnx.merge(graphdef, s)(v), state, inputs)
    cotangent = jnp.asarray(rng.standard_normal(out.shape), out.dtype)

    def forward(s, v):
        return nnx.merge(graphdef, s)(v)

    def train(s, v, ct):
        out, backward = jax.vjp(forward, s, v)
        s_grad, v_grad = backward(ct)
        return out, s_grad if first else (s_grad, v_grad)  # the first layer needs no input gradient

    return (_Timed(forward, state, inputs, compiler_options=compiler_options),
            _Timed(train, state, inputs, cotangent, compiler_options=compiler_options))


def profile_model(model: nnx.Module, input_shape: tuple[int, int, int], num_classes: int, batch_size: int,
                  compiler_options: dict[str, str] | None = None, **timing) -> Profile:
    """Per-layer cost of `model` on batches of `batch_size` inputs of NHWC `input_shape`, the programs compiled
    with XLA's `compiler_options` (those training uses: `jaxcnn.models.compiler_options`) and timed by
    `interleaved_medians` (`timing`: its keyword arguments). The model is not changed."""
    return profile_beside(model, input_shape, num_classes, batch_size, (), compiler_options, **timing)[0]


def profile_beside(model: nnx.Module, input_shape: tuple[int, int, int], num_classes: int, batch_size: int,
                   alongside: Sequence[Callable[[], None]], compiler_options: dict[str, str] | None = None,
                   **timing) -> tuple[Profile, list[float]]:
    """`profile_model`, with the programs `alongside` (e.g. another framework's layers) timed in the same rounds;
    returns the profile and their median times."""
    model = nnx.clone(model)
    model.train()
    probe = jnp.zeros((batch_size, *input_shape), jnp.float32)
    graphdef, state = nnx.split(model)
    inputs: dict[tuple, jax.ShapeDtypeStruct] = {}  # layer path -> its input

    def trace(s):
        merged = nnx.merge(graphdef, s)
        record: dict[int, jax.ShapeDtypeStruct] = {}
        with _recording_inputs(record):
            merged(probe)
        inputs.update({path: record[id(m)] for path, m in nnx.iter_modules(merged) if id(m) in record})

    jax.eval_shape(trace, state)
    layers = [(path, m) for path, m in nnx.iter_modules(model) if path in inputs]
    rng = np.random.default_rng(0)
    programs = [_layer_programs(layer, inputs[path], tuple(inputs[path].shape) == probe.shape, rng, compiler_options)
                for path, layer in layers]

    images = jnp.asarray(rng.standard_normal(probe.shape), jnp.float32)
    labels = jnp.asarray(rng.integers(0, num_classes, batch_size), jnp.int32)

    params_def, params, rest = nnx.split(model, nnx.Param, ...)  # gradients of the parameters only (not RNG keys)

    def forward(p, r, v):
        return nnx.merge(params_def, p, r)(v)

    def train(p, r, v, y):  # as the training step: nnx.grad of the parameters (BatchNorm stats update inside)
        def loss(m):
            return optax.softmax_cross_entropy_with_integer_labels(m(v), y).mean()
        return nnx.grad(loss, argnums=nnx.DiffState(0, nnx.Param))(nnx.merge(params_def, p, r))

    whole = (_Timed(forward, params, rest, images, compiler_options=compiler_options),
             _Timed(train, params, rest, images, labels, compiler_options=compiler_options))
    timed = [t for pair in (*programs, whole) for t in pair]
    all_medians = interleaved_medians([*timed, *alongside], **timing)
    medians = dict(zip(map(id, timed), all_medians))

    def cost(name: str, kind: str, shape: str, params: int, pair: tuple[_Timed, _Timed]) -> LayerCost:
        fwd, train_ = pair
        return LayerCost(name, kind, shape, params, fwd.flops, train_.flops - fwd.flops, medians[id(fwd)],
                         medians[id(train_)])

    costs = tuple(cost(".".join(map(str, path)), *_describe(layer), count_params(layer), pair)
                  for (path, layer), pair in zip(layers, programs))
    profile = Profile(batch_size, jax.default_backend(), costs, cost("model", "model", "", count_params(model), whole))
    return profile, all_medians[len(timed):]


def profile_config(config: ml_collections.ConfigDict, num_classes: int, model: nnx.Module | None = None,
                   **kwargs) -> Profile:
    """`profile_model` of the config's model at its training batch size and model input size: `model`
    (e.g. the trained one; the weights do not change the cost), or a freshly built one. Profiles are kept
    for the process: the runs of a study that share an architecture and batch size are profiled once."""
    from jaxcnn.train.init import model_input_shape  # noqa: PLC0415 (train.init -> ssl -> report -> profile)

    shape = model_input_shape(config)
    key = json.dumps([config.model.to_dict(), shape, num_classes, config.train.batch_size, jax.default_backend(),
                      sorted(kwargs.items())], default=str)
    if key not in _PROFILES:
        model = model or build_model(config.model, num_classes, shape, config.seed)
        _PROFILES[key] = profile_model(model, shape, num_classes, config.train.batch_size,
                                       compiler_options(config.model), **kwargs)
    return _PROFILES[key]


_PROFILES: dict[str, Profile] = {}


def rows(profile: Profile) -> list[list[Any]]:
    """Table rows: layer, shape, parameters, MFLOPs forward / backward, ms forward / forward+backward, share."""
    def row(x: LayerCost) -> list[Any]:
        return [x.name, x.shape, f"{x.params:,}", f"{x.flops_forward / 1e6:,.2f}", f"{x.flops_backward / 1e6:,.2f}",
                f"{1e3 * x.time_forward_s:.3f}", f"{1e3 * x.time_train_s:.3f}", f"{100 * profile.share(x):.1f} %"]
    total = profile.model
    return [*(row(x) for x in (*profile.layers, profile.other)),
            ["**model**", "", f"{total.params:,}", f"{total.flops_forward / 1e6:,.2f}",
             f"{total.flops_backward / 1e6:,.2f}", f"{1e3 * total.time_forward_s:.3f}",
             f"{1e3 * total.time_train_s:.3f}", "100 %"]]


METHOD = ("Each layer compiled and timed alone at its input shape in the model (median over repeats, layers "
           "interleaved); FLOPs from XLA's cost analysis.")

HEADER = ("layer", "shape", "parameters", "MFLOP fwd", "MFLOP bwd", "ms fwd", "ms fwd+bwd", "share of fwd+bwd")


def summary_line(profile: Profile) -> str:
    """One sentence: how the forward + backward time splits between conv layers, dense layers and the rest."""
    shares = profile.by_kind()
    return (f"Forward + backward time at batch {profile.batch_size} on {profile.backend}: conv layers "
            f"{100 * shares['conv']:.0f} %, dense layers {100 * shares['dense']:.0f} %, other (activations, "
            f"pooling, loss, ...) {100 * shares[OTHER]:.0f} %.")


def format_text(profile: Profile, title: str = "") -> str:
    """The profile as a plain-text table (for the console)."""
    body = [list(HEADER), *rows(profile)]
    widths = [max(len(str(r[i]).replace("**", "")) for r in body) for i in range(len(HEADER))]
    lines = [title] if title else []
    for r in body:
        cells = [str(c).replace("**", "") for c in r]
        lines.append("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    return "\n".join([*lines, "", summary_line(profile), METHOD])





def format_beside(ours: Profile, theirs: Profile, label: str) -> str:
    """Two profiles of one architecture side by side, layer by layer (matched by name), `other` and the whole
    model: forward and forward + backward times and `theirs / ours` (above 1: jaxcnn is faster)."""
    by_name = {x.name: x for x in (*theirs.layers, theirs.other, theirs.model)}
    header = ["layer", "jaxcnn ms fwd", f"{label} ms fwd", "jaxcnn ms fwd+bwd", f"{label} ms fwd+bwd",
              f"jaxcnn speed vs {label}"]
    body = [header]
    for x in (*ours.layers, ours.other, ours.model):
        y = by_name.get(x.name)
        body.append([x.name, f"{1e3 * x.time_forward_s:.3f}", f"{1e3 * y.time_forward_s:.3f}" if y else "–",
                     f"{1e3 * x.time_train_s:.3f}", f"{1e3 * y.time_train_s:.3f}" if y else "–",
                     f"{y.time_train_s / x.time_train_s:.2f}×" if y and x.time_train_s > 0 else "–"])
    widths = [max(len(r[i]) for r in body) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                     for r in body)
