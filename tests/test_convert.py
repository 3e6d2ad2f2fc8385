"""timm/torchvision -> Flax conversion: parity with PyTorch (randomly initialised, no download),
strict key checks, head replacement, the saved checkpoint and predict.py on it."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
pytest.importorskip("torchvision")

from jaxcnn.convert import load_torch_state  # noqa: E402
from jaxcnn.convert.convert import convert, flax_model, torch_logits  # noqa: E402
from jaxcnn.convert.sources import load_source  # noqa: E402
from jaxcnn.convert.store import converted_config, load_converted  # noqa: E402
from jaxcnn.errors import ConversionError
from jaxcnn.models import build_model  # noqa: E402
from tests.helpers import torch_source as source  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
TOL = 1e-4


def batch(size, seed=0):
    return np.random.default_rng(seed).standard_normal((2, size, size, 3)).astype(np.float32)


def torch_stages(model, x):
    """ResNet activations after the stem and each stage (NHWC), from the PyTorch module."""
    out = {}
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        t = model.maxpool(model.act1(model.bn1(model.conv1(t)))) if hasattr(model, "act1") else \
            model.maxpool(model.relu(model.bn1(model.conv1(t))))
        out["stem"] = t
        for stage in range(1, 5):
            t = getattr(model, f"layer{stage}")(t)
            out[f"layer{stage}"] = t
    return {k: v.numpy().transpose(0, 2, 3, 1) for k, v in out.items()}


@pytest.mark.parametrize("spec", ["timm:resnet18", "torchvision:resnet18"])
def test_resnet18_logits_and_stages_equal_pytorch(spec):
    src = source(spec)
    model = flax_model(src)
    x = batch(96)
    diff = np.abs(np.asarray(model(x)) - torch_logits(src, x)).max()
    assert diff <= TOL, diff
    ours = model.stages(x)
    for name, ref in torch_stages(src.torch_model, x).items():
        assert ours[name].shape == ref.shape, name
        assert np.abs(np.asarray(ours[name]) - ref).max() <= TOL, name


def test_alexnet_logits_and_features_equal_pytorch():
    src = source("torchvision:alexnet")
    model = flax_model(src)
    for size in (224, 96):  # 6×6 maps at 224 px; the adaptive pool replicates smaller maps like PyTorch
        x = batch(size)
        diff = np.abs(np.asarray(model(x)) - torch_logits(src, x)).max()
        assert diff <= TOL, (size, diff)
    x = batch(224)
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
        ref = src.torch_model.avgpool(src.torch_model.features(t)).numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(model.features(x)) - ref).max() <= TOL


def test_source_metadata():
    src = source("timm:resnet18")
    assert src.architecture == "resnet18" and src.num_classes == 1000
    assert src.input_size == (3, 224, 224) and len(src.class_names) == 1000
    assert src.mean == pytest.approx((0.485, 0.456, 0.406)) and 0.8 <= src.crop_pct <= 1.0
    tv = source("torchvision:alexnet")
    assert tv.class_names[0] == "tench" and tv.crop_pct == pytest.approx(224 / 256)


@pytest.mark.parametrize("spec,head", [("torchvision:resnet18", "fc"), ("torchvision:alexnet", "fcs")])
def test_new_head_is_fresh_and_backbone_loaded(spec, head):
    src = source(spec)
    full, six = flax_model(src), flax_model(src, num_classes=6)
    fresh = build_model(converted_config(src.meta()).model, 6, (224, 224, 3), 0)
    flat = lambda m: {".".join(map(str, p)): np.asarray(v.get_value() if hasattr(v, "get_value") else v.value)
                      for p, v in nnx.to_flat_state(nnx.state(m, nnx.Any(nnx.Param, nnx.BatchStat)))}
    a, b, c = flat(full), flat(six), flat(fresh)
    head_keys = [k for k in b if (k.startswith("fc.") if head == "fc" else k.startswith("fcs.2."))]
    assert head_keys
    for k in b:
        if k in head_keys:
            np.testing.assert_array_equal(b[k], c[k])  # the fresh initialisation
        else:
            np.testing.assert_array_equal(b[k], a[k])  # the converted backbone
    x = batch(96)
    np.testing.assert_allclose(np.asarray(six.features(x)), np.asarray(full.features(x)), atol=1e-6)


def test_strict_mapping_lists_every_bad_key():
    src = source("torchvision:resnet18")
    model = build_model(converted_config(src.meta()).model, 1000, (224, 224, 3), 0)
    bad = dict(src.state_dict)
    del bad["layer1.0.conv1.weight"]
    bad["layer9.weight"] = np.zeros(3, np.float32)
    bad["fc.weight"] = np.zeros((10, 512), np.float32)
    with pytest.raises(ConversionError) as e:
        load_torch_state(model, bad)
    text = str(e.value)
    assert "missing in the source: layer1.0.conv1.weight" in text
    assert "unexpected in the source: layer9.weight" in text
    assert "fc.weight: source (10, 512) -> (512, 10), model needs (512, 1000)" in text


def test_bn_statistics_become_batch_stats():
    src = source("torchvision:resnet18")
    model = flax_model(src)
    np.testing.assert_array_equal(np.asarray(model.layer2[0].bn1.mean.value), src.state_dict["layer2.0.bn1.running_mean"])
    np.testing.assert_array_equal(np.asarray(model.layer2[0].bn1.var.value), src.state_dict["layer2.0.bn1.running_var"])
    assert model.bn1.momentum == pytest.approx(0.9) and model.bn1.epsilon == pytest.approx(1e-5)


def test_convert_script_writes_a_checkpoint_that_predict_reads(tmp_path):
    out = tmp_path / "r18"
    proc = subprocess.run([sys.executable, "scripts/convert_weights.py", "--source", "torchvision:resnet18",
                           "--nopretrained", "--out", str(out)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "max |logit diff| vs PyTorch" in proc.stdout
    model, meta = load_converted(out)
    assert meta["architecture"] == "resnet18" and meta["num_classes"] == 1000
    assert meta["class_names"][0] == "tench"
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
    proc = subprocess.run([sys.executable, "scripts/predict.py", "--workdir", str(out), "--top_k", "2", str(image),
                           str(tmp_path / "missing.png")], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1  # the missing file
    assert "missing.png: no such file" in proc.stderr
    line = next(x for x in proc.stdout.splitlines() if x.startswith(str(image)))
    assert line.count(" 0.") + line.count(" 1.") == 2  # two classes with probabilities

    # damaged on disk: a flipped byte in the weights (Orbax alone loads it silently), a garbage record
    from jaxcnn.errors import DamagedCheckpoint

    data = max((out / "model").rglob("d/*"), key=lambda f: f.stat().st_size)
    flipped = bytearray(data.read_bytes())
    flipped[len(flipped) // 2] ^= 0x01
    data.write_bytes(bytes(flipped))
    with pytest.raises(DamagedCheckpoint, match="r18: the model arrays on disk do not match the checksum.*; convert "
                                                "the weights again with scripts/convert_weights.py"):
        load_converted(out)
    (out / "meta" / "metadata").write_text('{"architecture": "resn')
    with pytest.raises(DamagedCheckpoint, match=r"r18: its record does not load \(.*\); convert the weights again"):
        load_converted(out)


def test_convert_refuses_bad_sources_and_checkpoints(tmp_path):
    from jaxcnn.errors import ConfigError

    with pytest.raises(ConfigError, match="timm has no AlexNet"):
        load_source("timm:alexnet", pretrained=False)
    with pytest.raises(ConfigError, match="not supported"):
        load_source("timm:vit_base_patch16_224", pretrained=False)
    with pytest.raises(ConfigError, match="expected LIBRARY:MODEL"):
        load_source("resnet18", pretrained=False)
    wrong = tmp_path / "alexnet.pth"
    torch.save(source("torchvision:alexnet").torch_model.state_dict(), wrong)
    with pytest.raises(ConfigError, match="does not fit timm:resnet18"):
        load_source("timm:resnet18", checkpoint=str(wrong))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="junk.safetensors: not a readable"):
        load_source("timm:resnet18", checkpoint=str(junk))
    good = tmp_path / "r18.pth"
    torch.save(source("timm:resnet18").torch_model.state_dict(), good)
    meta, diff = convert("timm:resnet18", str(tmp_path / "out"), checkpoint=str(good))
    assert diff <= TOL and meta["source"] == "timm:resnet18"
    with pytest.raises(ConfigError, match="exists and is not empty"):
        convert("timm:resnet18", str(tmp_path / "out"), checkpoint=str(good))
