"""Classification metrics: confusion matrix, per-class precision/recall/F1, the best epoch of a history."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


def best_record(history: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The epoch a run reports as best: the first with the highest test accuracy."""
    return max(history, key=lambda h: (h["test_accuracy"], -h["epoch"]))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(labels), np.asarray(predictions)), 1)
    return matrix


def per_class_report(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and support per class (0 where a class is never predicted/present)."""
    true_pos = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    precision = np.divide(true_pos, predicted, out=np.zeros_like(true_pos), where=predicted > 0)
    recall = np.divide(true_pos, support, out=np.zeros_like(true_pos), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(true_pos), where=denom > 0)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support}
