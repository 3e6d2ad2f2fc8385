"""Test-session settings: one persistent JAX compilation cache for this process, the xdist workers
and every subprocess the tests start (the fault and CLI tests start dozens of short training runs,
each of which would otherwise compile the same LeNet programs again: 11.5 s -> 7.3 s per run here).
Compiled programs are the same either way; only the compile time is saved."""

import os
import pathlib
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "jaxcnn-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
