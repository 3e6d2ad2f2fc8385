"""Config files: every variant parses; bad variants, keys and values are refused with the valid ones listed."""

import pytest

from jaxcnn.config import build_config, default_config, split_arg, validate
from jaxcnn.errors import ConfigError
from tests.helpers import lenet

STUDY_TABLE = {  # the study's table: optimizer / activation / learning rate
    "0": ("adam", "tanh", 0.01), "1": ("adam", "tanh", 0.001), "2": ("adam", "relu", 0.01),
    "3": ("adam", "relu", 0.001), "4": ("sgd", "tanh", 0.01), "5": ("sgd", "tanh", 0.001),
    "6": ("sgd", "relu", 0.01), "7": ("sgd", "relu", 0.001), "8": ("sgd", "tanh", 0.0001),
    "9": ("adam", "tanh", 0.0001),
}


@pytest.mark.parametrize("variant", list(lenet.VARIANTS))
def test_every_lenet_variant_parses_and_validates(variant):
    config = lenet.get_config(variant)
    validate(config)
    assert config.variant == variant
    assert config.train.batch_size == 100
    if variant in STUDY_TABLE:
        assert (config.optim.name, config.model.activation, config.optim.learning_rate) == STUDY_TABLE[variant]
        assert config.optim.momentum == 0.0  # the study's plain SGD


def test_default_variant_is_3_on_embedded_data():
    config = lenet.get_config()
    assert config.variant == "3"
    assert config.data.source == "embedded"


def test_key_value_overrides_aliases_and_flags():
    config = lenet.get_config("4,data=mnist,epochs=7,lr=0.05,optim.momentum=0.9,classes=[1,2,3],seed=5")
    assert config.data.source == "mnist"
    assert config.train.epochs == 7
    assert config.optim.learning_rate == 0.05
    assert config.optim.momentum == 0.9
    assert config.data.classes == (1, 2, 3)
    assert config.seed == 5
    smoke = lenet.get_config("3,smoke")
    assert smoke.train.epochs == 2 and smoke.data.max_train == 1000
    # key=value is applied after flags, whatever the order
    assert lenet.get_config("3,epochs=5,smoke").train.epochs == 5
    assert lenet.get_config("epochs=4").variant == "3"


def test_split_arg_keeps_brackets_and_quotes():
    assert split_arg("3,classes=[0,55,58],data='a,b',x=1") == ["3", "classes=[0,55,58]", "data='a,b'", "x=1"]


@pytest.mark.parametrize("arg, needle", [
    ("11", "unknown variant '11'; valid variants: 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, conv3, conv4, maxpool, best"),
    ("3,epoch=3", "unknown key 'epoch'; valid keys:"),
    ("3,model.size=3", "train.epochs"),  # the list of valid keys is given
    ("3,epochs=abc", "train.epochs='abc' has type str, expected int"),
    ("3,bogus", "'bogus' is neither key=value nor a flag; valid flags: smoke"),
    ("3,optim.nesterov=1", "optim.nesterov=1 has type int, expected bool"),
])
def test_bad_arguments_are_refused_with_valid_choices(arg, needle):
    with pytest.raises(ConfigError) as e:
        lenet.get_config(arg)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key, value, needle", [
    ("optim.name", "rmsprop", "valid values: adam, adamw, sgd"),
    ("optim.schedule", "linear", "valid values: constant, step, cosine"),
    ("train.loop", "fast", "valid values: auto, python, scan"),
    ("data.channels", 2, "valid values: 1, 3"),
    ("train.batch_size", 0, "must be a number > 0"),
    ("optim.learning_rate", -1.0, "must be a number > 0"),
    ("optim.learning_rate", float("nan"), "must be a number > 0"),
    ("data.mean", (0.1, 0.2), "needs 1 or 1 values"),
    ("data.classes", (1, 1), "lists a class twice"),
])
def test_validate_rejects_bad_values(key, value, needle):
    config = default_config()
    section, leaf = key.split(".")
    config[section][leaf] = value
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        validate(config)


def test_build_config_needs_a_known_default_variant():
    with pytest.raises(ConfigError, match="valid variants: a"):
        build_config(None, default_config, {"a": {}}, default_variant="b")
