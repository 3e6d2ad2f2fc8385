"""LeNet-5: parameter counts, shapes, pooling against Flax's reference pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcnn.config import default_config
from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, count_params
from jaxcnn.models.layers import pool
from jaxcnn.models.lenet import LeNet5


def test_lenet5_has_the_study_parameter_count_and_output_shape():
    model = build_model(default_config().model, 10, (28, 28, 1), seed=0)
    assert count_params(model) == 61_706
    assert model(jnp.zeros((7, 28, 28, 1))).shape == (7, 10)
    # layer by layer: conv 1->6 5x5, conv 6->16 5x5, 400->120->84->10
    assert model.conv1.kernel.shape == (5, 5, 1, 6)
    assert model.conv2.kernel.shape == (5, 5, 6, 16)
    assert model.fc1.kernel.shape == (400, 120)


@pytest.mark.parametrize("shape, classes, extra", [((32, 32, 3), 3, 0), ((28, 28, 1), 5, 2), ((40, 36, 1), 10, 1)])
def test_lenet5_adapts_to_input_classes_and_depth(shape, classes, extra):
    model = LeNet5(classes, shape, "elu", "max", extra, rngs=nnx.Rngs(0))
    h, w = (shape[0] // 2 - 4) // 2, (shape[1] // 2 - 4) // 2
    conv = 5 * 5 * shape[2] * 6 + 6 + 5 * 5 * 6 * 16 + 16 + extra * (3 * 3 * 16 * 16 + 16)
    dense = 16 * h * w * 120 + 120 + 120 * 84 + 84 + 84 * classes + classes
    assert count_params(model) == conv + dense
    assert model(jnp.ones((2, *shape))).shape == (2, classes)


def test_seed_decides_the_initial_parameters():
    cfg = default_config().model
    a, b, c = (nnx.state(build_model(cfg, 10, (28, 28, 1), seed=s), nnx.Param) for s in (0, 0, 1))
    leaves = lambda s: [np.asarray(x) for x in jax.tree.leaves(s)]
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert not all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(c)))


@pytest.mark.parametrize("kind, reference", [("avg", nnx.avg_pool), ("max", nnx.max_pool)])
@pytest.mark.parametrize("size, shape", [(2, (3, 28, 28, 6)), (2, (2, 11, 9, 4)), (4, (2, 32, 32, 3))])
def test_pooling_equals_flax_pooling_values_and_gradients(kind, reference, size, shape):
    x = jax.random.normal(jax.random.key(0), shape)
    ref = lambda x: reference(x, (size, size), strides=(size, size), padding="VALID")
    np.testing.assert_allclose(pool(x, kind, size), ref(x), rtol=1e-6, atol=1e-6)
    g = jax.grad(lambda x: jnp.sum(jnp.sin(pool(x, kind, size))))(x)
    g_ref = jax.grad(lambda x: jnp.sum(jnp.sin(ref(x))))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("field, value, needle", [
    ("activation", "swish", "valid values: relu, tanh, elu, sigmoid"),
    ("pooling", "stride", "valid values: avg, max"),
    ("name", "vgg", "valid values: lenet5"),
])
def test_bad_model_settings_are_refused(field, value, needle):
    cfg = default_config().model
    cfg[field] = value
    with pytest.raises(ConfigError, match=needle):
        build_model(cfg, 10, (28, 28, 1), seed=0)


def test_lenet5_refuses_images_too_small():
    with pytest.raises(ValueError, match="at least 12×12"):  # the model, as a library, raises ValueError
        LeNet5(10, (8, 8, 1), rngs=nnx.Rngs(0))
    with pytest.raises(ConfigError, match="^config LeNet5 needs inputs of at least 12×12 pixels"):  # from a config
        build_model(default_config().model, 10, (8, 8, 1), seed=0)
