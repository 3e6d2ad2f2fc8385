"""Converted ImageNet weights see images as their library shows them: predict's pixels and probabilities on
real photos equal those of timm's / torchvision's own eval transform + the PyTorch model, and the resize /
centre-crop arithmetic equals the libraries' on odd, non-square sizes."""

import copy
import dataclasses
import pathlib

import numpy as np
import pytest
from PIL import Image
from torchvision.transforms import InterpolationMode

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from jaxcnn.convert.convert import flax_model  # noqa: E402
from jaxcnn.convert.store import eval_crop, save_converted  # noqa: E402
from jaxcnn.data.images import EvalCrop, convert  # noqa: E402
from jaxcnn.errors import ConfigError  # noqa: E402
from jaxcnn.export import load_model  # noqa: E402
from jaxcnn.predict import load_predictor  # noqa: E402
from tests.helpers import torch_source  # noqa: E402

SAMPLES = pathlib.Path(sklearn_datasets.__file__).parent / "images"  # china.jpg, flower.jpg: 640x427 RGB
TOL = 1e-4


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The two sample photos, a portrait crop of odd width and a small one to enlarge (lossless PNGs)."""
    tmp = tmp_path_factory.mktemp("photos")
    china, flower = SAMPLES / "china.jpg", SAMPLES / "flower.jpg"
    with Image.open(china) as image:
        image.crop((171, 0, 472, 427)).save(tmp / "portrait_301x427.png")
    with Image.open(flower) as image:
        image.crop((200, 100, 399, 231)).save(tmp / "small_199x131.png")
    return [china, flower, tmp / "portrait_301x427.png", tmp / "small_199x131.png"]


def library_transform(spec, source):
    """What the library itself feeds its model: timm's data config of the model, torchvision's weights preset."""
    library, name = spec.split(":")
    if library == "timm":
        return timm.data.create_transform(**timm.data.resolve_data_config({}, model=source.torch_model))
    return {"resnet18": torchvision.models.ResNet18_Weights.IMAGENET1K_V1,
            "alexnet": torchvision.models.AlexNet_Weights.IMAGENET1K_V1}[name].transforms()


def peaked(source, x):
    """`source` with its last linear layer scaled so that the logits of `x` have standard deviation 5:
    probabilities far from uniform (random weights give nearly equal logits over 1000 classes, where a
    different input would hardly show)."""
    model = copy.deepcopy(source.torch_model)
    head = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        scale = 5.0 / float(model(x).std())
        head.weight *= scale
        head.bias *= scale
    return dataclasses.replace(source, torch_model=model,
                               state_dict={k: v.detach().numpy() for k, v in model.state_dict().items()})


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18", "torchvision:alexnet"])
def test_predict_equals_the_library_transform_and_model_on_photos(spec, photos, tmp_path):
    source = torch_source(spec)
    transform = library_transform(spec, source)
    x = torch.stack([transform(Image.open(path).convert("RGB")) for path in photos])
    source = peaked(source, x)
    with torch.no_grad():
        reference = torch.softmax(source.torch_model(x), -1).numpy()
    save_converted(tmp_path / "converted", flax_model(source), source.meta())
    predictor = load_predictor(tmp_path / "converted")
    with pytest.raises(ConfigError, match="converted weights have no test set"):
        predictor.test_images([0])  # predict.py --test_index
    images = np.stack([predictor.load(path) for path in photos])
    ours = predictor.probabilities(images)
    mean, std = np.asarray(source.mean)[:, None, None], np.asarray(source.std)[:, None, None]
    pixels = np.rint((x.numpy() * std + mean) * 255).transpose(0, 2, 3, 1)  # the library's uint8 crop
    pixel_diff = np.abs(images / 255 - pixels / 255)
    prob_diff = np.abs(ours - reference).max()
    print(f"{spec}: pixels mean |diff| {pixel_diff.mean():.2e} max {pixel_diff.max():.3f}; "
          f"max |prob diff| {prob_diff:.2e}; max prob {reference.max():.3f}")
    assert reference.max(-1).min() > 0.1  # 100 times uniform
    assert prob_diff <= TOL
    np.testing.assert_array_equal(images, pixels)


@pytest.fixture(scope="module")
def odd_images():
    """Crops of a photo of odd, non-square sizes (wide, tall), and one smaller than every crop."""
    with Image.open(SAMPLES / "china.jpg") as image:
        image = image.convert("RGB")
        return [image.crop((50, 30, 567, 363)), image.crop((101, 0, 334, 427)), image.crop((200, 200, 351, 303))]


def as_uint8(tensor):
    """A transform's output with mean 0, std 1 (pixels / 255) as uint8 (H, W, C)."""
    return np.rint(tensor.numpy() * 255).astype(np.uint8).transpose(1, 2, 0)


@pytest.mark.parametrize("size,crop_pct,interpolation,crop_mode", [
    ((224, 224), 0.95, "bicubic", "center"),  # timm resnet18: shorter side floor(224 / 0.95) = 235
    ((224, 224), 0.875, "bilinear", "center"),
    ((160, 160), 0.9, "bicubic", "center"),
    ((160, 224), 0.9, "bilinear", "center"),  # non-square: ResizeKeepRatio
    ((224, 224), 0.95, "bicubic", "squash"),
    ((224, 224), 1.15, "bilinear", "center"),  # resized smaller than the crop: zero padding
])
def test_timm_resize_and_crop_arithmetic(odd_images, size, crop_pct, interpolation, crop_mode):
    transform = timm.data.create_transform(input_size=(3, *size), crop_pct=crop_pct, interpolation=interpolation,
                                           crop_mode=crop_mode, mean=(0, 0, 0), std=(1, 1, 1))
    crop = EvalCrop(EvalCrop.timm_resize_size(size, crop_pct), interpolation, crop_mode, crop_pct)
    for image in odd_images:
        np.testing.assert_array_equal(convert(image, size, 3, crop), as_uint8(transform(image)))
        resized = transform.transforms[0](image)  # the library's Resize / ResizeKeepRatio
        assert crop.resized((image.height, image.width)) == (resized.height, resized.width)


@pytest.mark.parametrize("crop_size,resize_size,interpolation", [
    (224, 256, "bilinear"),  # ResNet-18 / AlexNet V1 weights: 640x427 -> 383x256 (jaxcnn made 384)
    (224, 232, "bilinear"),  # ResNet-50 V2 weights
    (299, 342, "bicubic"),
    (224, 200, "nearest"),  # smaller than the crop: zero padding
])
def test_torchvision_resize_and_crop_arithmetic(odd_images, crop_size, resize_size, interpolation):
    mode = InterpolationMode(interpolation)
    preset = torchvision.transforms._presets.ImageClassification(
        crop_size=crop_size, resize_size=resize_size, interpolation=mode, mean=(0, 0, 0), std=(1, 1, 1))
    crop = EvalCrop((resize_size, resize_size), interpolation, "center", crop_size / resize_size)
    with Image.open(SAMPLES / "flower.jpg") as photo:
        photo = photo.convert("RGB")
        images = [*odd_images, photo]
        for image in images:
            np.testing.assert_array_equal(convert(image, (crop_size, crop_size), 3, crop), as_uint8(preset(image)))
            resized = torchvision.transforms.Resize(resize_size, mode)(image)
            assert crop.resized((image.height, image.width)) == (resized.height, resized.width)
        assert crop.resized((427, 640)) == ((256, 383) if resize_size == 256 else crop.resized((427, 640)))


def test_records_without_the_resize_get_their_library_values_and_bad_values_are_refused():
    """Weights converted before resize_size and crop_mode were recorded: the libraries' own arithmetic."""
    base = {"input_size": [3, 224, 224], "interpolation": "bicubic", "crop_pct": 0.95}
    assert eval_crop({**base, "source": "timm:resnet18"}, "w") == EvalCrop((235, 235), "bicubic", "center", 0.95)
    old_tv = {**base, "source": "torchvision:resnet50", "interpolation": "bilinear", "crop_pct": 224 / 232}
    assert eval_crop(old_tv, "w").resize_size == (232, 232)  # floor would give 231
    new = {**base, "source": "timm:resnet18", "resize_size": [240, 240], "crop_mode": "squash"}
    assert eval_crop(new, "w") == EvalCrop((240, 240), "bicubic", "squash", 0.95)
    with pytest.raises(ConfigError, match=r"^w: interpolation='cubic' in its record is not valid; valid values: "
                                          r"nearest, nearest-exact, bilinear, bicubic, box, hamming, lanczos; "):
        eval_crop({**base, "interpolation": "cubic"}, "w")
    with pytest.raises(ConfigError, match=r"^w: crop_mode='border' in its record is not valid; valid values: "
                                          r"center, squash; "):
        eval_crop({**base, "crop_mode": "border"}, "w")
    with pytest.raises(ConfigError, match=r"^w: resize_size=\[235\] in its record is not valid; valid values: "
                                          r"\[height, width\] of integers > 0; convert the weights again"):
        eval_crop({**base, "resize_size": [235]}, "w")


def test_converted_record_and_export_info_say_how_to_resize(tmp_path):
    source = torch_source("timm:resnet18")
    assert (source.interpolation, source.crop_pct, source.resize_size, source.crop_mode) == (
        "bicubic", 0.95, (235, 235), "center")
    save_converted(tmp_path / "w", flax_model(source), source.meta())
    _, info = load_model(tmp_path / "w")
    assert {k: info[k] for k in ("image_size", "interpolation", "resize_size", "crop_mode", "crop_pct")} == {
        "image_size": [224, 224], "interpolation": "bicubic", "resize_size": [235, 235], "crop_mode": "center",
        "crop_pct": 0.95}
    assert "shorter side 235, longer side int(235 * longer / shorter)" in info["note"]
    assert "Image.Resampling.BICUBIC" in info["note"] and "int(round((height - 224) / 2))" in info["note"]
