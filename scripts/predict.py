"""Label image files, or the run's own test images, with a trained run:
`python scripts/predict.py --workdir runs/lenet3 digit.png photo.jpg`
`python scripts/predict.py --workdir runs/lenet3 --test_index 199,7`

Prints the top-k classes with probabilities for each image (for test images with the true label) and
writes an annotated PNG (files: the predicted class and its probability in black; test images: green
where right, red with the true class where wrong). Each file is compared with the run's own test images
(up to 500 of them, predicted first): one warning line on stderr when a gray image looks inverted (dark
on light: try --invert), or else when its prediction looks out of distribution (confidence, entropy,
brightness or border brightness beyond the test images' extreme percentiles), saying against what.
A missing or unreadable file gets one error line; the others are still labelled; exit status 1.
"""

import pathlib
import sys

import numpy as np
from absl import flags

from jaxcnn.cli import run
from jaxcnn.errors import ConfigError, ImageError, UserError
from jaxcnn.predict import format_top_k, inverted_hint, load_predictor, out_of_distribution
from jaxcnn.report.plots import prediction_grid

flags.DEFINE_string("workdir", None, "Workdir of a training run (its best checkpoint is used), or a directory "
                    "of weights converted by scripts/convert_weights.py.")
flags.DEFINE_integer("epoch", None, "Use this epoch's checkpoint instead of the best.", lower_bound=1)
flags.DEFINE_integer("top_k", 3, "How many classes to print per image.", lower_bound=1)
flags.DEFINE_bool("invert", False, "Invert gray levels first (dark digits on light paper -> MNIST's light on dark).")
flags.DEFINE_list("test_index", [], "Also label these images of the run's own test set (0-based, as it "
                  "evaluated them), e.g. 199,7; prints their true labels.")
flags.DEFINE_string("out", None, "Annotated PNG (default: WORKDIR/predict.png); '' for none.")
flags.mark_flag_as_required("workdir")
FLAGS = flags.FLAGS


def main(argv):
    paths = argv[1:]
    if not paths and not FLAGS.test_index:
        sys.exit("error: name at least one image file after the flags, or --test_index")
    try:
        indices = [int(i) for i in FLAGS.test_index]
    except ValueError:
        raise ConfigError(f"--test_index {','.join(FLAGS.test_index)}: give comma-separated integers, "
                          "e.g. --test_index 199,7") from None
    out = f"{FLAGS.workdir}/predict.png" if FLAGS.out is None else FLAGS.out
    if FLAGS.out and not pathlib.Path(out).absolute().parent.is_dir():
        sys.exit(f"error: --out {out}: the folder {pathlib.Path(out).absolute().parent} does not exist")
    predictor = load_predictor(FLAGS.workdir, FLAGS.epoch)
    images, names, truth, failed = [], [], [], 0
    if indices:
        test_images, test_labels = predictor.test_images(indices)
        images += list(test_images)
        names += [f"test[{i}] (true: {predictor.class_names[y]})" for i, y in zip(indices, test_labels)]
        truth += [int(y) for y in test_labels]
    for path in paths:
        try:
            images.append(predictor.load(path, FLAGS.invert))
            names.append(path)
            truth.append(None)
        except ImageError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
    if images:
        probabilities = predictor.probabilities(np.stack(images))
        reference, unchecked = None, None
        if any(t is None for t in truth):
            try:
                reference = predictor.reference()
            except UserError as e:
                unchecked = str(e)
        for name, image, t, p in zip(names, images, truth, probabilities):
            print(f"{name}: {format_top_k(p, predictor.class_names, FLAGS.top_k)}")
            if reference is not None and t is None:  # the run's own test images are the reference
                hint = inverted_hint(reference, image, FLAGS.invert)
                reasons = [] if hint else out_of_distribution(reference, image, p)
                if hint or reasons:
                    print(f"warning: {name}: " + (hint or "possibly out of distribution: " + "; ".join(reasons)),
                          file=sys.stderr)
        if unchecked:
            print(f"note: the images were not checked against the model's test images: {unchecked}", file=sys.stderr)
        if out:
            pred = probabilities.argmax(-1)
            labels = np.array([-1 if t is None else t for t in truth])  # files: no ground truth
            prediction_grid(np.stack(images), labels, pred, predictor.class_names, out,
                            "predictions (" + (f"checkpoint of epoch {predictor.epoch})" if predictor.epoch
                                               else "converted weights)"), probabilities=probabilities)
            print(f"annotated images: {out}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    run(main, positional=True)
