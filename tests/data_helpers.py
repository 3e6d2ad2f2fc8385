"""Helpers shared by the data tests (test_data_sources, test_images, test_folder, test_device)."""

from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image

from jaxcnn.config import default_config

LUMA = np.array([0.299, 0.587, 0.114])


def data_config(**fields):
    data = default_config().data
    for key, value in fields.items():
        data[key] = value
    return data


def save(path: pathlib.Path, image: Image.Image, **kwargs) -> pathlib.Path:
    image.save(path, **kwargs)
    return path
