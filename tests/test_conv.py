"""The CPU small-convolution path (jaxcnn.models.conv) against `lax.conv_general_dilated`: outputs and both
gradients over shapes, paddings, channels and batches; what it does not cover goes to XLA; runs agree."""

import itertools
import json
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax import lax

from jaxcnn.models import build_model, compiler_options
from jaxcnn.models.conv import EIGEN_CHANNELS, conv_function, small_conv, use_small
from jaxcnn.train import loop
from jaxcnn.train.steps import make_eval_fn
from jaxcnn.train.trainer import Trainer
from tests.helpers import config_module

NHWC = ("NHWC", "HWIO", "NHWC")
PADDINGS = ("VALID", "SAME", ((2, 2), (2, 2)), ((1, 2), (0, 1)))


def both(conv, x, w, padding, cotangent, strides=(1, 1)):
    """Output, input gradient, weight gradient of `conv` at (x, w)."""
    y, vjp = jax.vjp(lambda a, b: conv(a, b, strides, padding, dimension_numbers=NHWC), x, w)
    return (y, *vjp(cotangent))


def in_scan(fn):
    """`fn` traced inside `lax.scan` (the scanned epoch's while loop), its results from the first iteration."""
    return lambda *args: jax.tree.map(lambda r: r[0], lax.scan(lambda c, _: (c, fn(*args)), None, length=2)[1])


@pytest.mark.parametrize("looped", [False, True], ids=["step", "scanned epoch"])
@pytest.mark.parametrize("c_in,c_out,k", [(1, 6, 5), (1, 1, 3), (3, 8, 5), (6, 16, 5), (16, 16, 3), (4, 2, 1)])
def test_output_and_both_gradients_equal_xla(c_in, c_out, k, looped):
    rng = np.random.default_rng(c_in * 100 + c_out * 10 + k)
    for padding, (n, h, w_) in itertools.product(PADDINGS, ((1, 9, 9), (7, 12, 10))):
        x = jnp.asarray(rng.standard_normal((n, h, w_, c_in)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)), jnp.float32)
        shape = jax.eval_shape(lambda a, b: lax.conv_general_dilated(a, b, (1, 1), padding,
                                                                     dimension_numbers=NHWC), x, w).shape
        cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        expected = both(lax.conv_general_dilated, x, w, padding, cotangent)
        fn = lambda a, b, ct: both(small_conv, a, b, padding, ct)
        got = jax.jit(in_scan(fn) if looped else fn)(x, w, cotangent)
        for name, g, e in zip(("output", "input gradient", "weight gradient"), got, expected):
            assert g.shape == e.shape and g.dtype == e.dtype
            np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()), err_msg=f"{name} {padding}")


def test_what_it_does_not_cover_goes_to_xla_unchanged():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 11, 11, 3)), jnp.float32)
    w = jnp.asarray(rng.standard_normal((3, 3, 3, 4)), jnp.float32)
    for kernel, kwargs in ((w, dict(rhs_dilation=(2, 2))), (w, dict(lhs_dilation=(2, 1))),
                           (w[:, :, :1, :3], dict(feature_group_count=3))):
        args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs)
        expected = lax.conv_general_dilated(x, kernel, **args)
        np.testing.assert_array_equal(small_conv(x, kernel, **args), expected)
        assert "custom_vjp" not in str(jax.make_jaxpr(lambda a, b: small_conv(a, b, **args))(x, kernel))
    # covered, strided ones too: the custom VJP is in the program
    for strides in ((1, 1), (2, 3)):
        assert "custom_vjp" in str(jax.make_jaxpr(lambda a, b: small_conv(a, b, strides, "SAME",
                                                                           dimension_numbers=NHWC))(x, w))


@pytest.mark.parametrize("c_in,c_out,k,strides", [(3, 32, 5, (4, 4)), (32, 64, 3, (1, 1)), (6, 16, 5, (2, 3)),
                                                  (1, 24, 3, (2, 2))])
def test_strided_and_wide_convolutions_gradients_equal_xla(c_in, c_out, k, strides):
    """Convolutions above `EIGEN_CHANNELS` channels and strided ones keep XLA's forward pass and take the
    gradients written in Eigen's form (`model.conv=auto` on the CPU: the pooling CNN's), in a step and inside
    `lax.scan`; with strides, input rows no output reads (e.g. 32 + 4 - 5 = 31 rows at stride 4) get zero."""
    rng = np.random.default_rng(c_in + c_out + k)
    conv = conv_function("small")
    for padding, (n, h, w_) in itertools.product(("VALID", "SAME", ((2, 1), (0, 2))), ((2, 13, 11), (3, 32, 32))):
        x = jnp.asarray(rng.standard_normal((n, h, w_, c_in)), jnp.float32)
        w = jnp.asarray(rng.standard_normal((k, k, c_in, c_out)), jnp.float32)

        shape = jax.eval_shape(lambda a, b: lax.conv_general_dilated(a, b, strides, padding,
                                                                     dimension_numbers=NHWC), x, w).shape
        cotangent = jnp.asarray(rng.standard_normal(shape), jnp.float32)
        expected = both(lax.conv_general_dilated, x, w, padding, cotangent, strides)
        fn = lambda a, b, ct: both(conv, a, b, padding, ct, strides)
        for fn in (fn, in_scan(fn)):
            got = jax.jit(fn)(x, w, cotangent)
            for name, g, e in zip(("output", "input gradient", "weight gradient"), got, expected):
                assert g.shape == e.shape and g.dtype == e.dtype
                np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-5 * float(jnp.abs(e).max()),
                                           err_msg=f"{name} {padding} {(n, h, w_)}")


def test_vmapped_members_as_a_grouped_study_trains_them():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((5, 14, 14, 6)), jnp.float32)
    ws = jnp.asarray(rng.standard_normal((3, 5, 5, 6, 16)), jnp.float32)  # 3 members' kernels

    def loss(conv, w):
        return jnp.sum(jnp.tanh(conv(x, w, (1, 1), "VALID", dimension_numbers=NHWC)))

    expected = jax.vmap(jax.value_and_grad(lambda w: loss(lax.conv_general_dilated, w)))(ws)
    got = jax.jit(jax.vmap(jax.value_and_grad(lambda w: loss(small_conv, w))))(ws)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=2e-5, atol=2e-5 * float(jnp.abs(e).max()))


def test_auto_takes_the_cpu_path_on_the_cpu():
    assert jax.default_backend() == "cpu"
    assert use_small("auto") and use_small("small") and not use_small("xla")
    with pytest.raises(ValueError, match="model.conv='fast' is not valid; valid values: auto, small, xla"):
        use_small("fast")
    # (average pooling: max pooling has a custom VJP of its own)
    lenet, pooling = config_module("lenet").get_config("3"), config_module("pooling").get_config("avg")

    def custom_calls(config, shape):
        """(convolutions with the custom VJP, conditionals: the one-input-channel forward computed apart)"""
        model = build_model(config.model, 10, shape, 0)
        jaxpr = str(jax.make_jaxpr(lambda x: model(x))(jnp.zeros((2, *shape))))
        return jaxpr.count("custom_vjp_call"), jaxpr.count(" cond[")

    assert custom_calls(lenet, (28, 28, 1)) == (2, 1)  # conv1 (one input channel: shifted adds) and conv2
    assert custom_calls(pooling, (32, 32, 3)) == (2, 0)  # 3->32, 32->64: XLA's forward, Eigen-form gradients
    lenet.model.conv = "xla"
    assert custom_calls(lenet, (28, 28, 1)) == (0, 0)
    pooling.model.conv = "small"
    assert custom_calls(pooling, (32, 32, 3)) == (2, 0)
    assert max(16, 6, 1) <= EIGEN_CHANNELS < 32
    assert conv_function("xla") is lax.conv_general_dilated


def test_a_run_with_either_path_gives_the_same_metrics(tmp_path):
    lenet = config_module("lenet")
    histories = {}
    for conv in ("xla", "small"):
        config = lenet.get_config(f"3,data.max_train=600,data.max_test=200,epochs=3,model.conv={conv},"
                                  "report.layer_profile=False,report.train_report=False")
        loop.train_and_evaluate(config, tmp_path / conv, progress=False)
        histories[conv] = [json.loads(line) for line in (tmp_path / conv / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(*histories.values(), strict=True):
        for key in ("train_loss", "test_loss"):
            assert a[key] == pytest.approx(b[key], rel=1e-4), (key, a, b)
        assert abs(a["test_accuracy"] - b["test_accuracy"]) <= 1 / 200  # at most one image flips


def _fused_computations(hlo: str) -> list[tuple[str, str]]:
    """(result shape, body) of each fused computation in XLA's optimized HLO text."""
    blocks = re.findall(r"^%(fused_computation[\w.]*) \(.*?\) -> (\S+) \{\n(.*?)\n\}", hlo, re.M | re.S)
    return [(shape, body) for _, shape, body in blocks]


def test_the_rewrites_are_not_fused_into_their_consumers():
    """XLA CPU fused the 25 shifted multiply-adds into the following tanh (a scalar loop, 10× slower) and
    col2im into the pooling backward (recomputed for each of the 4 pixels a pooled value feeds): the tanh
    LeNet step took twice the ReLU one. Each rewrite must be computed on its own."""
    config = config_module("lenet").get_config("0")  # tanh, average pooling
    model = build_model(config.model, 10, (28, 28, 1), 0)
    graphdef, params = nnx.split(model)
    x = jnp.zeros((8, 28, 28, 1))

    def loss(p):
        return jnp.sum(nnx.merge(graphdef, p)(x))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    fused = _fused_computations(hlo)
    assert fused, "no fused computations found: the HLO text format changed"
    taps = 5 * 5
    for shape, body in fused:
        if " tanh(" in body:  # conv1's forward (25 multiplies) must reach the tanh as a finished array
            assert body.count(" multiply(") < taps, shape
        if body.count(" pad(") >= taps:  # col2im: conv2's input gradient, 6×14×14×8 (batch-last), on its own
            assert shape.startswith("f32[6,14,14,8]"), shape
    assert any(body.count(" pad(") >= taps for _, body in fused), "col2im not found"
    assert any(body.count(" multiply(") >= taps for _, body in fused), "the shifted forward not found"


def test_lenet_compiles_without_ynnpack_on_the_cpu_path_only():
    """`model.conv=auto` on the CPU: LeNet's programs (training step, scanned epoch, evaluation) compile with
    YNNPACK fusion off (measured faster with this path); `model.conv=xla` and the pooling CNN keep XLA's
    default fusions."""
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), rng.integers(0, 10, 40).astype(np.int32)

    def step_hlo(config, loop_="python"):
        return Trainer(config, images, labels, 10, loop_)._train_fn.as_text()

    lenet, pooling = config_module("lenet"), config_module("pooling")
    auto = lenet.get_config("3,batch_size=10")
    assert compiler_options(auto.model) == {"xla_cpu_experimental_ynn_fusion_type": ""}
    for loop_ in ("python", "scan"):
        assert "__ynn_fusion" not in step_hlo(auto, loop_)
    assert "__ynn_fusion" in step_hlo(lenet.get_config("3,batch_size=10,model.conv=xla"))
    assert compiler_options(lenet.get_config("3,model.conv=xla").model) is None
    pool = pooling.get_config("max,batch_size=10")
    assert compiler_options(pool.model) is None and "__ynn_fusion" in step_hlo(pool)
    model = build_model(auto.model, 10, (28, 28, 1), 0)
    graphdef, state = nnx.split(model)
    evaluate = make_eval_fn(graphdef, lambda x: x.astype(jnp.float32) / 255, 10,
                            compiler_options=compiler_options(auto.model))
    assert "__ynn_fusion" not in evaluate.lower(state, images, labels, np.ones(40, bool)).compile().as_text()


def test_the_scanned_epoch_runs_every_convolution_in_eigens_form():
    """Inside the scanned epoch's while loop XLA CPU left its own gradients with reversed or permuted dimension
    labels (`f01b_i01o->01bf`, `b01f_01oi->b01f`) and ran them as generic loop nests (LeNet's epoch 7× and the
    pooling CNN's 30× slower than the step loop). With `model.conv=auto` every convolution of the compiled epoch
    is NHWC × HWIO -> NHWC, the form XLA hands to Eigen; `train.loop=auto` then takes the scan on the CPU, and
    the Python loop for `model.conv=xla`."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 40).astype(np.int32)
    lenet, pooling = config_module("lenet"), config_module("pooling")
    # LeNet: conv2's forward and both kernel gradients (conv1's forward is the shifted adds, conv2's input
    # gradient col2im; conv3's extra 16->16 layer adds its forward and kernel gradient); the pooling CNN:
    # 2 forward, 2 kernel, 1 input gradient
    for config, shape, count in ((lenet.get_config("3,batch_size=10"), (28, 28, 1), 3),
                                 (lenet.get_config("conv3,batch_size=10"), (28, 28, 1), 5),
                                 (pooling.get_config("stride,batch_size=10"), (32, 32, 3), 5),
                                 (pooling.get_config("max,batch_size=10"), (32, 32, 3), 5)):
        trainer = Trainer(config, images[..., :shape[-1]][:, :shape[0], :shape[1]], labels, 3)
        assert trainer.loop == "scan", config.model
        labels_ = re.findall(r"convolution\(.*?dim_labels=([^,\s]+)", trainer._train_fn.as_text())
        assert len(labels_) == count, (config.model, labels_)
        assert set(labels_) == {"b01f_01io->b01f"}, (config.model, labels_)
    xla = lenet.get_config("3,batch_size=10,model.conv=xla")
    assert Trainer(xla, images[:, :28, :28, :1], labels, 3).loop == "python"
