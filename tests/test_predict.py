"""Prediction from checkpoints, through the library and the command line, on written image files."""

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from jaxcnn.data.embedded import load_mnist5k
from jaxcnn.errors import ConfigError, ImageError
from jaxcnn.predict import load_predictor, top_k
from jaxcnn.train import loop
from tests.helpers import ROOT, lenet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("run")
    summary = loop.train_and_evaluate(lenet.get_config("3,epochs=6,data.max_test=500"), workdir, progress=False)
    return workdir, summary


def test_predict_matches_test_accuracy_on_written_png_files(trained, tmp_path):
    workdir, summary = trained
    predictor = load_predictor(workdir)
    assert predictor.epoch == summary["best_epoch"]
    data = load_mnist5k()
    images, labels = data.test_images[:500], data.test_labels[:500]
    loaded = []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image[..., 0]).save(path)
        loaded.append(predictor.load(path))
    np.testing.assert_array_equal(np.stack(loaded), images)
    probs = predictor.probabilities(np.stack(loaded))
    np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    accuracy = np.mean(probs.argmax(-1) == labels)
    assert accuracy == pytest.approx(summary["best_test_accuracy"], abs=1e-9)



def test_a_run_of_an_earlier_version_predicts_and_resumes(trained, tmp_path):
    """Checkpoints written before the augmentation keys were declared and before each model had its own
    keys (their records lack data.eval_crop_pct etc. and hold other models' keys) still predict and resume."""
    import json
    import shutil

    workdir = tmp_path / "old"
    shutil.copytree(trained[0], workdir)
    new_keys = ("eval_crop_pct", "random_resized_crop", "rrc_scale", "rrc_ratio", "hflip", "rotation")
    for record in [*workdir.glob("checkpoints/*/meta/metadata"), workdir / "config.json"]:
        meta = json.loads(record.read_text())
        config = meta.get("config", meta)
        for key in new_keys:
            del config["data"][key]
        config["model"].update(hidden=32, first_stride=1)  # what earlier versions stored in every config
        record.write_text(json.dumps(meta))
    predictor = load_predictor(workdir)
    image = load_mnist5k().test_images[:8]
    np.testing.assert_allclose(predictor.probabilities(image), load_predictor(trained[0]).probabilities(image),
                               rtol=1e-6, atol=1e-7)
    summary = loop.train_and_evaluate(lenet.get_config("3,epochs=7,data.max_test=500"), workdir, progress=False)
    assert summary["epochs"] == 7

def test_predict_reads_any_size_and_mode_and_inverts_on_request(trained, tmp_path):
    workdir, _ = trained
    predictor = load_predictor(workdir)
    digit = load_mnist5k().test_images[3, ..., 0]
    big_rgb = Image.fromarray(digit).resize((280, 280), Image.Resampling.BILINEAR).convert("RGB")
    big_rgb.save(tmp_path / "big.jpg", quality=95)
    Image.fromarray(255 - digit).save(tmp_path / "paper.png")
    direct = predictor.probabilities(digit[None, ..., None])[0].argmax()
    assert predictor.probabilities(predictor.load(tmp_path / "big.jpg")[None])[0].argmax() == direct
    np.testing.assert_array_equal(predictor.load(tmp_path / "paper.png", invert=True)[..., 0], digit)
    assert top_k(np.array([0.1, 0.7, 0.2]), ("a", "b", "c"), 2) == [("b", 0.7), ("c", 0.2)]
    with pytest.raises(ImageError, match="nope.png: no such file"):
        predictor.load(tmp_path / "nope.png")


def test_predict_refuses_a_workdir_without_checkpoints(tmp_path):
    with pytest.raises(ConfigError, match="no checkpoints"):
        load_predictor(tmp_path)


def run_script(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_command_line_train_then_predict(tmp_path):
    workdir = tmp_path / "cli"
    result = run_script("scripts/train.py", "--config", "configs/lenet.py:3,smoke", "--config.train.epochs=1",
                        f"--workdir={workdir}")
    assert result.returncode == 0, result.stderr
    assert "final test accuracy" in result.stdout
    assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 1

    data = load_mnist5k()
    Image.fromarray(data.test_images[0, ..., 0]).save(tmp_path / "digit.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    result = run_script("scripts/predict.py", f"--workdir={workdir}", str(tmp_path / "digit.png"),
                        str(tmp_path / "missing.png"), str(tmp_path / "broken.png"))
    assert result.returncode == 1
    assert result.stdout.startswith(f"{tmp_path / 'digit.png'}: ")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path / 'missing.png'}: no such file",
                      f"error: {tmp_path / 'broken.png'}: not a readable image "
                      f"(UnidentifiedImageError: cannot identify image file '{tmp_path / 'broken.png'}')"]
    assert (workdir / "predict.png").exists()


def test_command_line_reports_a_bad_key_in_one_line(tmp_path):
    result = run_script("scripts/train.py", "--config", "configs/lenet.py:3,epoch=2", f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.startswith("error: configs/lenet.py: unknown key 'epoch'; valid keys:")
    assert len(result.stderr.strip().splitlines()) == 1
    result = run_script("scripts/train.py", "--config", "configs/lenet.py:3", "--config.train.epoch=2",
                        f"--workdir={tmp_path}")
    assert result.returncode != 0
    assert result.stderr.strip() == ('error: a --config.KEY=VALUE override names no such key: epoch; '
                                     'Did you mean "epochs" instead of "epoch"?')


def test_predict_labels_the_runs_own_test_images_by_index(trained, tmp_path):
    """`--test_index 199,7`: the run's test images as it evaluated them (max_test=500 here), their true
    labels printed beside the prediction; an index outside the test set is one line."""
    workdir, _ = trained
    data = load_mnist5k()
    predictor = load_predictor(workdir)
    images, labels = predictor.test_images([199, 7, 26])
    np.testing.assert_array_equal(images, data.test_images[[199, 7, 26]])
    np.testing.assert_array_equal(labels, data.test_labels[[199, 7, 26]])
    expected = predictor.probabilities(images)
    out = tmp_path / "p.png"
    result = run_script("scripts/predict.py", f"--workdir={workdir}", "--test_index=199,7,26", f"--out={out}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for line, i, y, p in zip(lines, (199, 7, 26), labels, expected):
        top = top_k(p, predictor.class_names, 3)
        assert line == f"test[{i}] (true: {predictor.class_names[y]}): " + ", ".join(f"{c} {v:.3f}" for c, v in top)
    assert out.exists() and lines[-1] == f"annotated images: {out}"
    png = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert ((png[..., 1] > 100) & (png[..., 0] < 60) & (png[..., 2] < 60)).any()  # known truth: green labels
    assert not any(line.startswith("warning:") for line in result.stderr.splitlines())  # its own test images
    with pytest.raises(ConfigError, match=r"^--test_index 500: the run's test set \(mnist5k\) has 500 images; "
                                          r"valid indices: 0\.\.499$"):
        predictor.test_images([3, 500])
    result = run_script("scripts/predict.py", f"--workdir={workdir}", "--test_index=7,x")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: --test_index 7,x: give comma-separated integers, e.g. " \
                                                     "--test_index 199,7"


# ------------------------------------------------- inputs that do not fit: inverted, out of distribution


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("warning:")]


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory):
    """Real test digits 0-9 as written PNG files, test digit 3 inverted (dark on light, as on paper), a
    photo; predict.py run once on all of them."""
    from sklearn.datasets import load_sample_image

    folder = tmp_path_factory.mktemp("files")
    digits = load_mnist5k().test_images[:10, ..., 0]
    paths = []
    for i, digit in enumerate(digits):
        paths.append(folder / f"digit{i}.png")
        Image.fromarray(digit).save(paths[-1])
    Image.fromarray(255 - digits[3]).save(folder / "paper.png")
    Image.fromarray(load_sample_image("china.jpg")).save(folder / "china.jpg")
    out = folder / "files.png"
    result = run_script("scripts/predict.py", f"--workdir={trained[0]}", f"--out={out}", *map(str, paths),
                        str(folder / "paper.png"), str(folder / "china.jpg"))
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    return folder, paths, out, result


def test_a_digit_written_dark_on_light_gets_one_line_suggesting_invert(trained, files):
    folder, paths, _, result = files
    paper = folder / "paper.png"
    assert [w for w in warnings_of(result.stderr) if "invert" in w] == [
        f"warning: {paper}: looks dark on light (border brightness 255 of 255; this model's test images: 0-5): "
        "try --invert"]
    assert not any(str(paths[3]) + ":" in w for w in warnings_of(result.stderr))  # the same digit as is
    again = run_script("scripts/predict.py", f"--workdir={trained[0]}", "--out=", "--invert", str(paper),
                       str(paths[3]))
    assert again.returncode == 0, again.stderr[-3000:]
    assert warnings_of(again.stderr) == [f"warning: {paths[3]}: looks dark on light after --invert (border "
                                         "brightness 255 of 255; this model's test images: 0-5): try without --invert"]
    as_is = next(line for line in result.stdout.splitlines() if line.startswith(f"{paths[3]}: "))
    assert again.stdout.splitlines()[0] == as_is.replace(str(paths[3]), str(paper))  # inverted back: same digit


def test_a_photo_is_flagged_out_of_distribution_and_real_digits_are_not(files):
    folder, paths, _, result = files
    flagged = [w for w in warnings_of(result.stderr) if "possibly out of distribution" in w]
    assert len(flagged) == 1 and flagged[0].startswith(f"warning: {folder / 'china.jpg'}: possibly out of "
                                                       "distribution: mean brightness ")
    assert "is above the 99.5th percentile" in flagged[0] and flagged[0].endswith("of this model's 500 test images")
    assert len(warnings_of(result.stderr)) == 2  # the photo and paper.png; none of the ten digits
    assert len(result.stdout.splitlines()) == 13  # stdout: one line per image, then the PNG


def test_the_checks_rarely_flag_the_models_own_test_images(trained):
    """On every test image: the hint never fires, and fires on each inverted; the OOD flag on a few %."""
    from jaxcnn.predict import inverted_hint, out_of_distribution

    predictor = load_predictor(trained[0])
    reference = predictor.reference()
    images, _ = predictor.test_images(range(500))
    probabilities = predictor.probabilities(images)
    assert all(inverted_hint(reference, x) is None for x in images)
    assert all(inverted_hint(reference, 255 - x) is not None for x in images)
    flagged = sum(bool(out_of_distribution(reference, x, p)) for x, p in zip(images, probabilities))
    assert 0 < flagged <= 0.04 * len(images)


def test_file_labels_in_the_png_are_black_with_their_probability(files, monkeypatch, tmp_path):
    """No ground truth for a file: no green/red; the test images of --test_index keep theirs."""
    import matplotlib.axes

    from jaxcnn.report.plots import prediction_grid

    png = np.asarray(Image.open(files[2]).convert("RGB")).astype(int)
    assert (png.max(-1) - png.min(-1)).max() < 40  # gray images, black labels: nothing coloured
    texts = []
    original = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, x, y, s, **kw: texts.append((s, kw.get("color"))) or original(self, x, y, s, **kw))
    images = load_mnist5k().test_images[:4]
    prediction_grid(images, np.array([-1, 3, 3, -1]), np.array([8, 3, 5, 1]), [str(i) for i in range(10)],
                    tmp_path / "g.png", "t", probabilities=np.array([0.97, 0.9, 0.6, 0.5]))
    assert texts == [("8 0.97", "black"), ("3 0.90", "green"), ("5 0.60 (true 3)", "red"), ("1 0.50", "black")]
    texts.clear()
    prediction_grid(images[:2], [None, 2], np.array([7, 2]), [str(i) for i in range(10)], tmp_path / "h.png")
    assert texts == [("7", "black"), ("2", "green")]  # the old call (labels, predictions, no probabilities)


def test_imagenet_names_are_shortened_on_the_console_and_wrapped_in_the_png(files, tmp_path, monkeypatch):
    pytest.importorskip("timm")
    from jaxcnn.convert.convert import flax_model
    from jaxcnn.convert.store import save_converted
    from tests.helpers import torch_source

    source = torch_source("timm:resnet18")
    assert source.class_names[0] == "tench, Tinca tinca"
    save_converted(tmp_path / "r18", flax_model(source), source.meta())
    photo = files[0] / "china.jpg"
    result = run_script("scripts/predict.py", f"--workdir={tmp_path / 'r18'}", str(photo), f"--out={tmp_path}/r.png")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stdout.splitlines()[0]
    assert line.startswith(f"{photo}: ")
    ranked = line.removeprefix(f"{photo}: ").split(" | ")
    short = {name.split(",")[0] for name in source.class_names}
    assert len(ranked) == 3 and all(r.rsplit(" ", 1)[0] in short and "," not in r for r in ranked), line
    assert "note: the images were not checked against the model's test images: converted weights come without " \
           "a test set to compare with" in result.stderr
    from jaxcnn.report.plots import prediction_grid
    import matplotlib.axes

    texts = []
    original = matplotlib.axes.Axes.text
    monkeypatch.setattr(matplotlib.axes.Axes, "text",
                        lambda self, x, y, s, **kw: texts.append(s) or original(self, x, y, s, **kw))
    names = source.class_names
    prediction_grid(np.zeros((2, 32, 32, 3), np.uint8), [None, 0], np.array([180, 0]), names, tmp_path / "n.png",
                    probabilities=np.eye(1000)[[180, 0]] * 0.91)
    assert names[180].startswith("American Staffordshire terrier, ")
    assert texts == ["American\nStaffordshire\nterrier 0.91", "tench 0.91"]
