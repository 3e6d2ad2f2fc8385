"""Data-parallel training over a device mesh. The 8-device checks run in a subprocess with 8
simulated CPU devices (tests/multidevice_check.py), so the other tests keep one device."""

import os
import pathlib
import subprocess
import sys

import jax
import pytest

from jaxcnn.errors import ConfigError
from jaxcnn.train import sharding

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_eight_devices_train_like_one_split_the_batch_and_resume_on_another_count():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "tests.multidevice_check", "python", "resume", "errors",
                             "scaling", "pretrain"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert "python: 8 devices == 1 device" in result.stdout
    assert "resumed on 2 == 1 device" in result.stdout and "errors ok" in result.stdout
    assert "scaling benchmark ok" in result.stdout


def test_mesh_of_this_process_and_its_errors():
    n = jax.device_count()
    assert sharding.make_mesh(0).size == n and sharding.make_mesh(1).size == 1
    with pytest.raises(ConfigError, match=rf"config mesh={n + 1} is not valid: use 0 \(all devices\) or 1..{n}"):
        sharding.make_mesh(n + 1)
    with pytest.raises(ConfigError, match="config mesh=-1 is not valid"):
        sharding.make_mesh(-1)
    sharding.check_batch(7, sharding.make_mesh(1), "train.batch_size")  # anything splits over one device
