"""The self-supervised study's base CNN: shapes, parameter count, train/eval modes, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcnn.errors import ConfigError
from jaxcnn.models import build_model, count_params, model_config


def ssl_config(**extra):
    cfg = model_config("ssl_cnn")
    for key, value in extra.items():
        cfg[key] = value
    return cfg


@pytest.mark.parametrize("shape, feature_hw", [((28, 28, 1), (3, 3)), ((32, 32, 3), (4, 4))])
def test_output_and_feature_shapes(shape, feature_hw):
    model = build_model(ssl_config(), 10, shape, seed=0)
    model.eval()
    x = jnp.ones((2, *shape))
    assert model(x).shape == (2, 10)
    assert model.features(x).shape == (2, *feature_hw, 64)


def test_default_parameter_count_on_28x28_gray():
    model = build_model(ssl_config(), 10, (28, 28, 1), seed=0)
    convs = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (32 * 64 * 9 + 64)
    batch_norms = 2 * (16 + 32 + 64)  # scale + bias; running statistics are not parameters
    side = 28 // 2 // 2 // 2  # floor: 28 -> 14 -> 7 -> 3
    assert side == 3
    dense = (side * side * 64) * 128 + 128 + 128 * 10 + 10
    assert count_params(model) == convs + batch_norms + dense == 98_666
    assert model.trunk.convs[0].kernel.shape == (3, 3, 1, 16)
    assert model.trunk.bns[2].scale.shape == (64,)
    assert model.head1.kernel.shape == (576, 128)
    assert model.head2.kernel.shape == (128, 10)


def test_extra_keys_change_the_architecture():
    model = build_model(ssl_config(widths=(8, 16), hidden=32, dropout=0.1), 3, (16, 16, 3), seed=0)
    model.eval()
    assert model.features(jnp.ones((1, 16, 16, 3))).shape == (1, 4, 4, 16)
    assert model.head1.kernel.shape == (4 * 4 * 16, 32)
    assert model(jnp.ones((1, 16, 16, 3))).shape == (1, 3)


def test_train_mode_differs_from_eval_mode_and_eval_is_deterministic():
    model = build_model(ssl_config(), 10, (28, 28, 1), seed=0)
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    model.eval()
    a, b = np.asarray(model(x)), np.asarray(model(x))
    np.testing.assert_array_equal(a, b)
    model.train()
    t1, t2 = np.asarray(model(x)), np.asarray(model(x))
    assert not np.allclose(a, t1)
    assert not np.allclose(t1, t2)  # fresh dropout masks each call


@pytest.mark.parametrize("widths", [(), (16, 0, 64), (16, -3)])
def test_bad_widths_are_refused(widths):
    with pytest.raises(ConfigError, match="model.widths"):
        build_model(ssl_config(widths=widths), 10, (28, 28, 1), seed=0)


def test_too_small_input_is_refused():
    with pytest.raises(ConfigError, match="at least 8 px"):
        build_model(ssl_config(), 10, (7, 28, 1), seed=0)
