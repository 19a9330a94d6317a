"""Classification metrics from probabilities (numpy only): what metrics.json holds per split."""

from __future__ import annotations

from typing import Callable, Sequence

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


def bootstrap_ci(labels: np.ndarray, preds: np.ndarray, num_classes: int, n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> dict[str, list[float]]:
    """Percentile bootstrap intervals over the images of accuracy and mean per-class accuracy.

    Each of `n_boot` resamples draws N images with replacement; a class a resample misses is
    left out of that resample's mean per-class accuracy (as `mean_per_class_accuracy` does).

    Returns:
      ``{"accuracy": [lo, hi], "mean_per_class_accuracy": [lo, hi]}`` at `level`.
    """
    labels, preds = np.asarray(labels), np.asarray(preds)
    n = len(labels)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, N)
    correct = (labels == preds)[idx]
    acc = correct.mean(axis=1)
    flat = (np.arange(n_boot)[:, None] * num_classes + labels[idx]).ravel()  # (b, class) cells
    support = np.bincount(flat, minlength=n_boot * num_classes).reshape(n_boot, num_classes)
    hits = np.bincount(flat, weights=correct.ravel(), minlength=n_boot * num_classes).reshape(n_boot, num_classes)
    recall = np.divide(hits, support, out=np.zeros_like(hits), where=support > 0)
    mpca = recall.sum(axis=1) / np.maximum((support > 0).sum(axis=1), 1)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    return {"accuracy": [float(v) for v in np.percentile(acc, q)],
            "mean_per_class_accuracy": [float(v) for v in np.percentile(mpca, q)]}


def classification_report(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict:
    """Everything metrics.json records for one head on one split.

    Args:
      probs: (N, K) predicted probabilities (N > 0).
      labels: (N,) true labels.
      classes: K class names (index = label).

    Returns:
      ``{"n", "accuracy", "mean_per_class_accuracy", "log_loss", "ci95": {"accuracy": [lo, hi],
      "mean_per_class_accuracy": [lo, hi]} (bootstrap over the images, `bootstrap_ci`),
      "per_class": {name: {precision, recall, f1, support}}, "confusion_matrix": K x K list}``. Precision of a class never
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
        "ci95": bootstrap_ci(labels, preds, k),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]),
                          "f1": float(f1[i]), "support": int(support[i])}
                      for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
    }


def paired_difference(labels: np.ndarray, preds_a: np.ndarray, preds_b: np.ndarray, num_classes: int,
                      n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> dict:
    """Mean per-class accuracy of a minus b on the same images, with a paired bootstrap interval.

    Both heads are scored on each resample of the images (the same draw for both), so the
    interval is that of the difference itself: far narrower than two separate intervals, whose
    overlap says little when both heads err on the same hard images.

    Returns:
      ``{"difference", "ci95": [lo, hi], "verdict"}``: ``above`` when the whole interval is above
      0, ``below`` when it is below 0, else ``tied``.
    """
    labels = np.asarray(labels)
    n = len(labels)
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))  # (B, N)
    flat = (np.arange(n_boot)[:, None] * num_classes + labels[idx]).ravel()
    support = np.bincount(flat, minlength=n_boot * num_classes).reshape(n_boot, num_classes)
    present = np.maximum((support > 0).sum(axis=1), 1)

    def mpca(preds: np.ndarray) -> np.ndarray:
        correct = (labels == np.asarray(preds))[idx]
        hits = np.bincount(flat, weights=correct.ravel(), minlength=n_boot * num_classes).reshape(n_boot, num_classes)
        return np.divide(hits, support, out=np.zeros_like(hits), where=support > 0).sum(axis=1) / present

    diff = mpca(preds_a) - mpca(preds_b)
    q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
    lo, hi = (float(v) for v in np.percentile(diff, q))
    point = (mean_per_class_accuracy(labels, np.asarray(preds_a), num_classes)
             - mean_per_class_accuracy(labels, np.asarray(preds_b), num_classes))
    return {"difference": float(point), "ci95": [lo, hi],
            "verdict": "above" if lo > 0 else "below" if hi < 0 else "tied"}


def evaluate(logits_fn: Callable[[np.ndarray], np.ndarray], data: dict, classes: Sequence[str]
             ) -> tuple[dict[str, dict], np.ndarray | None]:
    """A head's `classification_report` per split, and its test probabilities (None without test).

    Args:
      logits_fn: raw features (N, D) -> logits (N, K).
      data: ``{split: (features, labels, ids)}``; empty or absent splits are skipped.
    """
    reports: dict[str, dict] = {}
    test_probs = None
    for split in ("train", "val", "test"):
        if split not in data or len(data[split][1]) == 0:
            continue
        x, y, _ = data[split]
        probs = softmax(logits_fn(x))
        reports[split] = classification_report(probs, y, classes)
        if split == "test":
            test_probs = probs
    return reports, test_probs
