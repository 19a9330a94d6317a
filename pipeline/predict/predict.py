"""Predict photos with a trained classifier: decode in threads, batches through one jitted call."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from pipeline.predict import inputs
from pipeline.predict.model import Classifier, run_batches


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One photo's answer.

    Attributes:
      file: the path as found (argument, or folder + relative path).
      probs: (C,) float32 class probabilities.
    """

    file: str
    probs: np.ndarray

    def top(self, classes: Sequence[str], k: int) -> list[tuple[str, float]]:
        """The `k` most probable (class, probability), most probable first."""
        order = np.argsort(-self.probs, kind="stable")[:k]
        return [(classes[i], float(self.probs[i])) for i in order]


@dataclasses.dataclass
class PredictResult:
    """Everything `predict_files` found: predictions in input order, skipped files, timings."""

    classes: list[str]
    head: str
    predictions: list[Prediction]
    bad: list[inputs.BadFile]
    seconds: float


def _batches(stream: Iterator, batch_size: int, bad: list, names: list) -> Iterator[np.ndarray]:
    """Group decoded views into (n, V, S, S, 3) batches, diverting bad files into `bad`."""
    buf: list[np.ndarray] = []
    for path, item in stream:
        if isinstance(item, inputs.BadFile):
            bad.append(item)
            continue
        names.append(str(path))
        buf.append(item)
        if len(buf) == batch_size:
            yield np.stack(buf)
            buf = []
    if buf:
        yield np.stack(buf)


def predict_files(clf: Classifier, paths: Sequence[str | Path], *, batch_size: int = 32,
                  workers: int = 0, reporter: Any = None, fn: Any = None) -> PredictResult:
    """Class probabilities of every image that `paths` names.

    Args:
      clf: from `pipeline.predict.model.load_classifier`.
      paths: files, folders (recursive) and globs (see `inputs.expand`).
      batch_size: images per backbone call (a last partial batch runs at the next power of two).
      workers: decoding threads; 0 = one per core.
      reporter: a `pipeline.progress` reporter for a progress bar, or None.
      fn: the jitted function to use (`clf.jitted()` by default; pass one to reuse its traces).

    Returns:
      A `PredictResult`; files that could not be read or decoded are in ``bad`` with their reason.
    """
    from pipeline.featurize import default_workers

    t0 = time.perf_counter()
    files, bad = inputs.expand([str(p) for p in paths])
    fn = fn or clf.jitted()
    names: list[str] = []
    pre = clf.preprocess
    stream = inputs.decoded(files, clf.spec, pre.crops, pre.flip, workers or default_workers(),
                            depth=max(2 * batch_size, 8))
    task = reporter.task("predict", total=len(files), unit="img") if reporter is not None else None
    probs: list[np.ndarray] = []
    try:
        for out in run_batches(fn, clf, _batches(stream, batch_size, bad, names), batch_size):
            probs.append(out)
            if task is not None:
                task.advance(len(out))
    finally:
        stream.close()
        if task is not None:
            task.close()
    flat = np.concatenate(probs) if probs else np.zeros((0, len(clf.classes)), np.float32)
    preds = [Prediction(n, flat[i]) for i, n in enumerate(names)]
    return PredictResult(list(clf.classes), clf.head_name, preds, bad, time.perf_counter() - t0)
