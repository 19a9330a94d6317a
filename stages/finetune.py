"""Stage `finetune`: train the backbone's top (from ``finetune.unfreeze`` on) + a head, on cached activations.

Reads the `trunk` stage's activations and the `heads` stage's logistic-regression probe (LP-FT:
the head starts from it, `pipeline.heads.trained.load_head`), trains with `pipeline.finetune.train`
(AdamW, warm-up + cosine, lower learning rate for the pretrained layers, early stopping on val,
best epoch kept), and writes the result as a head like the heads stage's: ``metrics.json`` with
the same per-head structure (``heads.finetune.{hyperparameters, train, val, test}``, written by
`pipeline.finetune.artifact.write_metrics` through the heads artifact's serialisation), and
``predictions_finetune.json``. Its own section ``finetune_train`` holds every optimiser setting,
so changing one reruns this stage alone, never the trunk pass.

Outputs:
  metrics.json              {"classes", "heads": {"finetune": {...}}, "probe": the starting (train-only)
                            probe's accuracy per split, "best_probe": the heads stage's best head on
                            test and the gain over it, "start", "history": per epoch, "seconds"}
  predictions_finetune.json per test image, as the heads stage's
  finetune.npz + finetune.json   trained params and `pipeline.finetune.artifact.Finetuned`;
                            `pipeline.finetune.model.load_finetuned` rebuilds the classifier on pixels
With ``finetune.enabled: false`` (the trunk stage then wrote a stub) only metrics.json is written,
``{"enabled": false}`` (`pipeline.finetune.artifact.read_metrics` reads it as None).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np

from pipeline.errors import UserError
from pipeline.finetune.artifact import Finetuned, TrunkInfo, read_trunk_info, write_finetuned, write_metrics
from pipeline.params import spec
from pipeline.stage import Stage, StageContext

SPLITS = ("train", "val", "test")


@dataclasses.dataclass(frozen=True)
class FinetuneTrainParams:
    """params.yaml section ``finetune_train``: the optimiser (changing it never reruns the trunk pass)."""

    epochs: int = spec(8, min=1, help="most epochs; an epoch is one pass over every cached training view")
    batch_size: int = spec(64, min=1, help="views per step (rounded up to a multiple of the device count)")
    lr_head: float = spec(3e-4, min=0, min_exclusive=True, help="peak AdamW learning rate of the head")
    lr_backbone: float = spec(3e-5, min=0, help="peak AdamW learning rate of the unfrozen pretrained layers")
    warmup_epochs: float = spec(1.0, min=0, help="linear warm-up, then cosine decay to 1% of the peak")
    weight_decay: float = spec(1e-4, min=0, help="AdamW decoupled weight decay of the head")
    l2sp: float = spec(0.0, min=0, help="L2 pull of the unfrozen layers toward their pretrained values")
    label_smoothing: float = spec(0.0, min=0, max=0.5, help="label smoothing of the cross-entropy")
    patience: int = spec(3, min=1, help="stop after this many epochs without a better val accuracy")
    init: Literal["logreg", "zeros"] = spec("logreg", help="head start: the heads stage's probe (LP-FT) or zeros")
    refit: bool = spec(False, help="after val picks the epoch count, retrain on train+val (val views tiled) "
                                   "from the heads stage's train+val probe, as the probe itself is refit")
    seed: int = spec(0, min=0, help="seed of the batch order")
    top_k: int = spec(5, min=1, help="class probabilities kept per test image in predictions_finetune.json")


def run(ctx: StageContext) -> dict[str, Any]:
    """Load the backbone the trunk stage cut, and fine-tune (see `train`)."""
    bp = ctx.params["backbone"]
    info = read_trunk_info(ctx.inputs["trunk"])
    if not info.enabled:
        ctx.log("finetune.enabled is false: no fine-tuning (set it true, e.g. -S finetune.enabled=true)")
        write_metrics(ctx.out_dir, None)
        return {"enabled": False}
    from pipeline.models import registry

    return train(ctx, registry.load_backbone(info.backbone, ctx.cache_dir, dtype=bp.dtype, depthwise=bp.depthwise))


def train(ctx: StageContext, backbone: Any) -> dict[str, Any]:
    """Fine-tune; write metrics.json, predictions_finetune.json and the trained params.

    Args:
      ctx: the stage context (``finetune_train`` params; ``inputs["trunk"]``, ``inputs["heads"]``).
      backbone: the `registry.Backbone` the trunk stage cut.

    Returns:
      ``{"best_epoch", "<split>_accuracy", "probe_<split>_accuracy", "seconds"}`` (test, else val).
    """
    from pipeline.finetune.train import TrainConfig, fit, predict
    from pipeline.heads.logreg import full_weights
    from pipeline.heads.metrics import classification_report, softmax
    from pipeline.heads.trained import load_head
    from pipeline.models import cut
    from pipeline.heads.artifact import HeadMetrics, HeadsMetrics, write_predictions
    from pipeline.finetune.artifact import FinetuneMetrics, load_split, read_trunk_classes, split_assembled

    p: FinetuneTrainParams = ctx.params["finetune_train"]
    out = Path(ctx.out_dir)
    trunk_dir, heads_dir = Path(ctx.inputs["trunk"]), Path(ctx.inputs["heads"])
    info = read_trunk_info(trunk_dir)
    t_start = time.perf_counter()
    classes = read_trunk_classes(trunk_dir)
    K = len(classes)
    data = {s: load_split(trunk_dir, s) for s in SPLITS if split_assembled(trunk_dir, s)}
    for s in ("train", "val"):
        if s not in data or len(data[s][1]) == 0:
            raise UserError(f"finetune: the trunk output has no {s} split; fine-tuning needs train and val "
                            "(val picks the epoch). Set data.val_fraction > 0.")
    probe = load_head(heads_dir, "logreg")
    if list(probe.classes) != classes:
        raise UserError(f"finetune: the heads stage's classes ({len(probe.classes)}) differ from the trunk's "
                        f"({K}); both read the same data stage, so rerun with --force heads.")
    c = cut.split(backbone, info.cut)
    W, b = np.asarray(probe.params["W"]), np.asarray(probe.params["b"])
    refit = _probe_refit(heads_dir, c, data["train"], K, ctx.log) if p.init == "logreg" else None
    W, b = full_weights(*(refit or (W, b)))
    if p.init == "zeros":
        W, b = np.zeros_like(W), np.zeros_like(b)
    cfg = TrainConfig(epochs=p.epochs, batch_size=p.batch_size, lr_head=p.lr_head, lr_backbone=p.lr_backbone,
                      warmup_epochs=p.warmup_epochs, weight_decay=p.weight_decay, l2sp=p.l2sp,
                      label_smoothing=p.label_smoothing, patience=p.patience, seed=p.seed)
    ctx.log(f"fine-tuning {info.backbone} from {info.cut} ({', '.join(c.top_layers)}; "
            f"{sum(int(np.prod(v.shape)) for v in _leaves(c.top_params(backbone.params)))} pretrained params) "
            f"on {len(data['train'][1])} images x {data['train'][0].shape[1]} views")
    result = fit(c, W, b, data["train"][:2], data["val"][:2], cfg, ctx.log)
    best = result["params"]
    refit_info = None
    if p.refit:
        best, refit_info = _refit(c, probe, data, result["best_epoch"], cfg, full_weights, fit, ctx.log)
    t_eval = time.perf_counter()
    hyper = {**dataclasses.asdict(p), "cut": info.cut, "views": info.views, "best_epoch": result["best_epoch"],
             "seconds": result["seconds"], "batch_size": result["batch_size"], "refit": refit_info}
    reports: dict[str, Any] = {}
    probe_metrics: dict[str, Any] = {}
    for s, (acts, y, ids) in data.items():
        logits = predict(c, best, acts, result["batch_size"])
        probs = softmax(logits)
        reports[s] = classification_report(probs, y, classes)
        start = softmax(predict(c, {"top": c.top_params(backbone.params), "head": {"W": W, "b": b}}, acts,
                                result["batch_size"])) if p.init == "logreg" else None
        if start is not None:
            probe_metrics[s] = {"accuracy": float(np.mean(start.argmax(1) == y))}
        if s == "test":
            write_predictions(out / "predictions_finetune.json", probs, y, ids, classes, p.top_k)
    _save(out, best, info, classes, c.top_keys)
    split = "test" if "test" in reports else "val"
    best_probe = _best_probe(heads_dir, split)  # the heads stage's best head: what fine-tuning must beat
    if best_probe:
        best_probe["gain"] = reports[split]["accuracy"] - best_probe["accuracy"]
    metrics = FinetuneMetrics(
        heads=HeadsMetrics(classes=classes, heads={"finetune": HeadMetrics(hyper=hyper, splits=reports)}),
        probe=probe_metrics, start=result["start"], best_train_loss=result["best_train_loss"],
        history=result["history"], best_probe=best_probe,
        seconds={"train": result["seconds"], "evaluate": round(time.perf_counter() - t_eval, 2),
                 "total": round(time.perf_counter() - t_start, 2)})
    write_metrics(out, metrics)
    summary = {"best_epoch": result["best_epoch"], f"{split}_accuracy": round(reports[split]["accuracy"], 4),
               f"probe_{split}_accuracy": round(probe_metrics.get(split, {}).get("accuracy", float("nan")), 4),
               f"best_head_{split}_accuracy": round(best_probe["accuracy"], 4) if best_probe else None,
               "seconds": metrics.seconds["total"]}
    ctx.log(f"finetune: best epoch {result['best_epoch']}, {split} accuracy {summary[f'{split}_accuracy']} "
            f"(probe {summary[f'probe_{split}_accuracy']})")
    return summary


def _probe_refit(heads_dir: Path, c: Any, train: tuple, K: int, log: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """The probe refit on train alone at the heads stage's C, when that stage refit it on train+val.

    Early stopping needs a val split the starting head has not seen; the heads stage's final probe
    (CLIP protocol) was refit on train+val, so its val accuracy is optimistic (1.0 on pets-tune).
    Fit on the centre views' features (top of the cut = the features stage's features). Returns
    None when the probe never saw val.
    """
    from pipeline.heads import artifact, logreg

    metrics = artifact.read(heads_dir)
    head = metrics.heads.get("logreg") if metrics is not None else None
    hyper = head.hyper if head is not None else {}
    if hyper.get("refit_on_train_val") is False or "C" not in hyper:
        return None
    if metrics.standardize:
        log("probe: the heads stage standardised features; its C is refit on raw features here")
    acts, y = train[0], train[1]
    feats = np.concatenate([np.asarray(c.top(c.backbone.params, acts[s:s + 64, 0])) for s in range(0, len(y), 64)])
    # From scratch, not warm-started from the saved probe: with little regularisation the
    # train+val optimum is already stationary for train alone (val is fitted), so L-BFGS would stop
    # at once and keep val memorised (measured: val accuracy 1.0 at epoch 0 on pets-tune).
    fitted = logreg.path(feats, np.asarray(y), [float(hyper["C"])], K)
    log(f"probe: refit on train alone at C={float(hyper['C']):.3g} (the heads stage refit it on train+val)")
    return np.asarray(fitted.W[0]), np.asarray(fitted.b[0])


def _refit(c: Any, probe: Any, data: dict, epochs: int, cfg: Any, full_weights: Any, fit: Any,
           log: Any) -> tuple[Any, dict]:
    """Retrain on train+val for the `epochs` val chose, from the heads stage's (train+val) probe.

    Val has only centre views; each is tiled to the train split's views per image, so every image
    weighs the same. With ``epochs == 0`` the result is that probe on the pretrained top. Val
    metrics afterwards are optimistic (val was trained on), as for the heads stage's refit probe.
    """
    import dataclasses as dc

    W, b = full_weights(np.asarray(probe.params["W"]), np.asarray(probe.params["b"]))
    if epochs == 0:
        log("refit: val chose epoch 0, so the result is the heads stage's probe on the pretrained top")
        return {"top": c.top_params(c.backbone.params), "head": {"W": W, "b": b}}, {"epochs": 0}
    (xt, yt, _), (xv, yv, _) = data["train"], data["val"]
    r = xt.shape[1]
    x = np.concatenate([np.asarray(xt), np.repeat(np.asarray(xv), r, axis=1)])  # (N + M, r, h, w, c)
    y = np.concatenate([yt, yv])
    log(f"refit: {epochs} epoch(s) on train+val ({len(y)} images x {r} rows)")
    res = fit(c, W, b, (x, y), None, dc.replace(cfg, epochs=epochs), log)
    return res["params"], {"epochs": epochs, "images": int(len(y)), "seconds": res["seconds"]}


def _best_probe(heads_dir: Path, split: str) -> dict | None:
    """{"head", "split", "accuracy"} of the heads stage's most accurate head on `split`, or None."""
    from pipeline.heads import artifact

    metrics = artifact.read(heads_dir)
    heads = metrics.heads if metrics is not None else {}
    scored = [(h.splits[split]["accuracy"], name) for name, h in heads.items() if split in h.splits]
    if not scored:
        return None
    acc, name = max(scored)
    return {"head": name, "split": split, "accuracy": acc}


def _leaves(tree: Any) -> list:
    import jax

    return jax.tree.leaves(tree)


def _save(out: Path, params: Any, info: TrunkInfo, classes: list[str], top_keys: tuple[str, ...]) -> None:
    from pipeline.models.convert import flatten_params

    flat = {k: np.asarray(v, np.float32) for k, v in flatten_params(params).items()}
    np.savez(out / "finetune.npz", **flat)
    write_finetuned(out, Finetuned(backbone=info.backbone, cut=info.cut, classes=list(classes),
                                   top_keys=list(top_keys)))


def downstream_key(sections: Mapping[str, Any]) -> str | None:
    """What the gradient stages hash for this stage: nothing of its params while it is disabled.

    With ``finetune.enabled: false`` there is no fine-tuned head whatever ``finetune_train``
    holds, so ideal and adversarial (which can use that head) need no rerun when it changes.
    """
    return "disabled" if not sections["finetune"].enabled else None


STAGE = Stage(
    name="finetune",
    run=run,
    deps=("trunk", "heads"),
    # `finetune` (the trunk's section) only for `enabled`, in downstream_key: its other values
    # reach this key through the trunk's key anyway.
    sections=("backbone", "finetune", "finetune_train"),
    downstream_key=downstream_key,
    version="1",
    schemas={"finetune_train": FinetuneTrainParams},
    description="fine-tune the backbone's top + head on the cached trunk activations (LP-FT, AdamW)",
)
