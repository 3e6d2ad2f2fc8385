"""Pooling study: the three downsampling variants (strided conv, max, avg), their config, a short real run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn.config import default_config, validate
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, count_params
from jaxcnn.models.pooling import PoolingCNN
from tests.helpers import config_module

pooling = config_module("pooling")
VARIANTS = ("stride", "max", "avg")


def model_of(variant: str, input_shape=(32, 32, 3), classes: int = 3, seed: int = 0) -> PoolingCNN:
    return build_model(pooling.get_config(variant).model, classes, input_shape, seed)


def test_the_config_has_exactly_the_study_variants():
    assert tuple(pooling.VARIANTS) == VARIANTS


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_parses_and_validates(variant):
    config = pooling.get_config(variant)
    validate(config)
    assert config.variant == variant
    assert config.model.name == "pooling_cnn" and config.model.hidden == 32
    assert (config.model.pooling, config.model.first_stride) == (
        {"stride": ("none", 4), "max": ("max", 1), "avg": ("avg", 1)}[variant])
    assert config.data.source == "cifar100" and config.data.classes == (0, 55, 58)
    assert (config.data.channels, config.data.image_size) == (3, (32, 32))
    assert config.data.mean == (0.5074, 0.4867, 0.4411) and config.data.std == (0.2011, 0.1987, 0.2025)
    assert (config.optim.name, config.optim.learning_rate, config.optim.momentum) == ("sgd", 5e-3, 0.9)
    assert config.optim.schedule == "constant"
    assert (config.train.batch_size, config.train.epochs) == (32, 30)


def test_default_variant_aliases_and_flags():
    assert pooling.get_config().variant == "max"
    config = pooling.get_config("stride,classes=[0,33,43],seed=3,model.hidden=16,smoke")
    assert config.data.classes == (0, 33, 43) and config.seed == 3 and config.model.hidden == 16
    assert config.train.epochs == 2 and config.data.max_train == 1000


@pytest.mark.parametrize("arg, needle", [
    ("strided", "unknown variant 'strided'; valid variants: stride, max, avg"),
    ("max,model.pooling=min", "config model.pooling='min' is not valid; valid values: none, max, avg"),
    ("max,model.first_stride=2", "config model.first_stride=2 is not valid; valid values: 1, 4"),
    ("max,model.hidden=0", "config model.hidden=0 must be an int >= 1"),
    ("max,model.extra_conv_layers=1", "unknown key 'model.extra_conv_layers'"),  # a LeNet-5 key
])
def test_bad_variants_and_values_are_refused_in_one_line(arg, needle):
    with pytest.raises(ConfigError) as e:
        validate(pooling.get_config(arg))
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_lenet5_still_refuses_the_pooling_cnn_only_value():
    config = default_config()
    config.model.pooling = "none"
    with pytest.raises(ConfigError, match="model.pooling='none' is not valid; valid values: avg, max"):
        validate(config)
    validate(default_config())


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_is_33219_for_every_variant(variant):
    model = model_of(variant)
    assert count_params(model) == 33_219
    # conv 3->32 5x5, conv 32->64 3x3, dense 64*8*8 -> 3
    assert model.conv1.kernel.shape == (5, 5, 3, 32)
    assert model.conv2.kernel.shape == (3, 3, 32, 64)
    assert model.fc.kernel.shape == (64 * 8 * 8, 3)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape, side", [((32, 32, 3), 8), ((28, 28, 1), 7)])
def test_output_shape_and_dense_size_follow_the_input(variant, shape, side):
    model = model_of(variant, shape)
    x = jax.random.normal(jax.random.key(1), (5, *shape))
    assert model(x).shape == (5, 3)
    assert model.fc.in_features == 64 * side * side
    assert bool(jnp.all(jnp.isfinite(model(x))))


def test_only_the_stride_variant_has_a_strided_first_conv_and_no_pooling():
    for variant in VARIANTS:
        model = model_of(variant)
        assert model.conv1.strides == (4 if variant == "stride" else 1)
        assert model.conv1.padding == ((2, 2), (2, 2)) and model.conv2.padding == ((1, 1), (1, 1))
        assert model.pooling == {"stride": "none", "max": "max", "avg": "avg"}[variant]
    model = model_of("stride")
    x = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    features = model.features(x)
    assert features.shape == (4, 8, 8, 64)
    # the strided conv equals the stride-1 conv sampled every 4th pixel (from pixel 0)
    dense_conv = nnx.Conv(3, 32, (5, 5), padding=((2, 2), (2, 2)), rngs=nnx.Rngs(0))
    dense_conv.kernel.value, dense_conv.bias.value = model.conv1.kernel.value, model.conv1.bias.value
    np.testing.assert_allclose(model.conv1(x), dense_conv(x)[:, ::4, ::4], rtol=1e-5, atol=1e-5)
    # nothing between the convolutions and the dense layer
    reference = np.asarray(features).reshape(4, -1) @ np.asarray(model.fc.kernel.value) + np.asarray(
        model.fc.bias.value)
    np.testing.assert_allclose(model(x), reference, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1)])
def test_max_and_avg_pool_the_same_features_as_numpy_does(shape):
    models = {v: model_of(v, shape) for v in ("max", "avg")}
    x = jax.random.normal(jax.random.key(3), (4, *shape))
    features = np.asarray(models["max"].features(x))
    np.testing.assert_array_equal(features, models["avg"].features(x))  # same seed, same parameters
    n, h, w, c = features.shape
    assert (h, w) == shape[:2]
    blocks = features.reshape(n, h // 4, 4, w // 4, 4, c)
    outputs = {}
    for kind, reduce in (("max", np.max), ("avg", np.mean)):
        pooled = reduce(blocks, axis=(2, 4)).reshape(n, -1)
        fc = models[kind].fc
        reference = pooled @ np.asarray(fc.kernel.value) + np.asarray(fc.bias.value)
        outputs[kind] = np.asarray(models[kind](x))
        np.testing.assert_allclose(outputs[kind], reference, rtol=1e-4, atol=1e-4)
    assert not np.allclose(outputs["max"], outputs["avg"], atol=1e-3)


def test_images_too_small_are_refused():
    with pytest.raises(ValueError, match="needs larger inputs"):
        PoolingCNN(3, (3, 3, 1), pooling="max", rngs=nnx.Rngs(0))


def test_a_short_run_on_embedded_digits_beats_chance(tmp_path):
    from jaxcnn.train.loop import train_and_evaluate

    # Three digits of the offline MNIST subset, gray 28x28 -> RGB 32x32 on device: 1,200 train, 300 test.
    config = pooling.get_config("max,data=embedded,classes=[0,1,2],epochs=1")
    summary = train_and_evaluate(config, tmp_path, progress=False)
    assert summary["num_params"] == 33_219
    assert summary["final_test_accuracy"] > 0.8  # chance is 1/3
