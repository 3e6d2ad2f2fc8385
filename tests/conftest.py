"""Test-session settings: float32 precision on GPUs, and one persistent JAX compilation cache for this process, the xdist workers
and every subprocess the tests start (the fault and CLI tests start dozens of short training runs,
each of which would otherwise compile the same LeNet programs again: 11.5 s -> 7.3 s per run here).
Compiled programs are the same either way; only the compile time is saved."""

import os
import pathlib
import tempfile

os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(pathlib.Path(tempfile.gettempdir()) / "jaxcnn-tests-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
# The tests check the maths at float32 against NumPy, SciPy and PyTorch: on a GPU, JAX's default for
# float32 convolutions and matrix products is TF32 (~1e-3 relative), so ask for full precision (no-op on a CPU).
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")
# Several test processes share one GPU: each takes memory as it needs it, not 75% up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
