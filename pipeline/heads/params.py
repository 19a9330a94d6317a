"""The heads stage's params: ``heads``, ``heads.logreg``, ``heads.mlp`` (frozen, validated).

The fields the linear probe reads are marked where they are declared (`probe_reads`): they, and
only they, key the probe's memo (`pipeline.heads.memo`), so an MLP or learning-curve change reuses
the probe's fit and a new probe param refits it as soon as it is marked.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Literal, Union

from pipeline.params import ParamsError, spec


def probe_reads(field: Any, *, only_under_cv: bool = False) -> Any:
    """Mark a `spec` field of `HeadsParams` as read by the linear probe (and the plain probe).

    Args:
      field: the `spec(...)` field.
      only_under_cv: read only where C is chosen by k-fold CV (``seed`` deals the folds; the val
        path does not read it).
    """
    field.metadata = types.MappingProxyType({**field.metadata, "probe": "cv" if only_under_cv else "always"})
    return field


def probe_fields() -> dict[str, str]:
    """``{field: "always" | "cv"}`` for the `HeadsParams` fields marked with `probe_reads`."""
    return {f.name: f.metadata["probe"] for f in dataclasses.fields(HeadsParams) if f.metadata.get("probe")}


@dataclasses.dataclass(frozen=True)
class LogregParams:
    """``heads.logreg``: the linear probe (CLIP protocol)."""

    solver: Literal["jax", "sklearn"] = spec("jax", help="L-BFGS: jax (pipeline.heads.lbfgs, jitted, float32) or sklearn (reference, float64)")
    c_min: float = spec(1e-3, min=0, min_exclusive=True, help="smallest C (inverse L2 strength, scikit-learn's C) of the sweep")
    c_max: float = spec(1e3, min=0, min_exclusive=True, help="largest C of the sweep")
    c_per_decade: int = spec(2, min=1, max=16, help="grid points per decade between c_min and c_max")
    refine: bool = spec(True, help="also try the two half-steps around the best grid C")
    refit: bool = spec(True, help="refit on train+val at the chosen C (CLIP protocol)")
    select: Literal["auto", "cv", "val"] = spec(
        "auto", help="choose C (and standardize: auto) on the val split, by stratified k-fold CV over "
                     "train+val, or auto: CV when val has fewer than cv_below images per class")
    cv_folds: int = spec(5, min=2, max=20, help="folds of the cross-validation (scikit-learn's LogisticRegressionCV: 5)")
    cv_below: float = spec(10.0, min=0, help="select auto uses CV when val holds fewer images per class than this")
    criterion: Literal["log_loss", "accuracy"] = spec(
        "log_loss", help="what picks C and standardize on val or under CV: log_loss (the held-out log "
                         "loss: smooth, so it separates points that accuracy ties on few images) or "
                         "accuracy (ties: cv_tie, then the lower log loss)")
    cv_tie: float = spec(0.25, min=0.0, help="criterion accuracy under CV: points within this many binomial standard "
                                             "errors of the best CV accuracy count as tied, and the largest C among "
                                             "them wins (0: the best)")
    max_iter: int = spec(1000, min=1, help="L-BFGS iterations per fit")
    tol: float = spec(1e-4, min=0, min_exclusive=True, help="stop when the largest gradient entry is below this")

    def validate(self) -> None:
        if self.c_max < self.c_min:
            raise ParamsError(f"c_max: {self.c_max!r} is below c_min {self.c_min!r}; "
                              "c_max must be >= c_min.")


@dataclasses.dataclass(frozen=True)
class MLPParams:
    """``heads.mlp``: a small MLP trained with AdamW; its epoch count chosen by k-fold CV (where the
    probe used CV) or by early stopping on val loss."""

    hidden: tuple[int, ...] = spec((256,), min=1, min_len=1, help="hidden layer widths, e.g. [512] or [1024, 512]")
    activation: Literal["relu", "gelu"] = spec("gelu", help="hidden activation")
    dropout: float = spec(0.5, min=0.0, max=0.95, help="dropout after each hidden layer")
    learning_rate: float = spec(1e-3, min=0, min_exclusive=True, help="peak AdamW learning rate")
    weight_decay: float = spec(1e-4, min=0.0, help="AdamW decoupled weight decay")
    label_smoothing: float = spec(0.1, min=0.0, max=0.99, help="label smoothing of the training loss")
    schedule: Literal["cosine", "constant"] = spec("cosine", help="learning-rate schedule after warm-up")
    warmup_epochs: int = spec(1, min=0, help="linear warm-up epochs")
    batch_size: int = spec(256, min=1, help="minibatch size")
    max_epochs: int = spec(40, min=1, help="epoch cap (the cosine schedule spans it); under CV every epoch up to it is scored")
    patience: int = spec(5, min=1, help="val path: stop after this many epochs without a lower val loss")
    skip: bool = spec(True, help="add the fitted logreg as a fixed linear skip path; the MLP learns a residual")
    refit: bool = spec(True, help="retrain on train+val for the best epoch count (from the refit logreg)")


@dataclasses.dataclass(frozen=True)
class HeadsParams:
    """``heads``: what the heads stage fits and reports."""

    standardize: Union[bool, Literal["auto"]] = probe_reads(spec(
        "auto", help="standardise features with training mean/std (folded into saved heads): true, "
                     "false, or auto: whichever scores better where C is chosen (val or CV)"))
    fuse: Literal["l2", "none"] = spec(
        "l2", help="several backbones: scale each backbone's feature rows to unit L2 norm before "
                   "concatenating them (none: concatenate raw); one backbone: ignored")
    class_weight: Literal["none", "balanced"] = probe_reads(spec("none", help="'balanced' weights each class by N / (K n_c)"))
    seed: int = probe_reads(spec(0, min=0, help="seed for the MLP and the learning-curve draws"),
                            only_under_cv=True)
    shots: tuple[Union[int, Literal["all"]], ...] = spec((1, 2, 5, 10, 20, "all"), min=1,
                                                         help="learning curve: train images per class ('all' = whole split); [] to skip")
    shot_draws: int = spec(3, min=1, help="seeded draws averaged per learning-curve point")
    shot_tol: float = spec(1e-3, min=0, min_exclusive=True,
                           help="L-BFGS tolerance of the learning-curve fits (draw-to-draw spread dwarfs it)")
    knn_k: int = spec(10, min=1, help="neighbours of the kNN baseline in the learning curve")
    top_k: int = spec(5, min=1, help="class probabilities kept per test image in predictions_<head>.json")
    logreg: LogregParams = probe_reads(spec(default_factory=LogregParams))
    mlp: MLPParams = spec(default_factory=MLPParams)
