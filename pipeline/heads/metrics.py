"""Classification metrics from probabilities (numpy only): what metrics.json holds per split."""

from __future__ import annotations

from typing import Sequence

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (probabilities for log loss must not round to 0 needlessly)."""
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-15) -> float:
    """Mean negative log-likelihood of the true labels (probabilities clipped at `eps`)."""
    p = np.clip(probs[np.arange(len(labels)), labels], eps, 1.0)
    return float(-np.mean(np.log(p)))


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """(K, K) counts; row = true class, column = predicted class."""
    cm = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(cm, (labels, preds), 1)
    return cm


def mean_per_class_accuracy(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> float:
    """Mean over the classes present in `labels` of each class's recall (Pets' headline metric)."""
    cm = confusion_matrix(labels, preds, num_classes)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Everything metrics.json records for one head on one split.

    Args:
      probs: (N, K) predicted probabilities (N > 0).
      labels: (N,) true labels.
      classes: K class names (index = label).

    Returns:
      ``{"n", "accuracy", "mean_per_class_accuracy", "log_loss", "per_class": {name: {precision,
      recall, f1, support}}, "confusion_matrix": K x K list}``. Precision of a class never
      predicted is 0, as is recall of a class absent from `labels` (support 0 says which).
    """
    k = len(classes)
    labels = np.asarray(labels)
    preds = np.argmax(probs, axis=1)
    cm = confusion_matrix(labels, preds, k)
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0)
    support = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    return {
        "n": int(len(labels)),
        "accuracy": float(np.mean(preds == labels)),
        "mean_per_class_accuracy": mean_per_class_accuracy(labels, preds, k),
        "log_loss": log_loss(probs, labels),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }
