"""jaxcnn: CNN image-classification studies in JAX/Flax NNX, declared as configs."""

__version__ = "0.1.0"
