"""Stage `adversarial`: small pixel changes that turn test photos of one class into another.

Default: the test split's dog photos, attacked until the trained head (``logreg``) on the
backbone's features says ``cat`` (on Oxford-IIIT Pet: any cat breed; the probability of a group is
the sum over its classes). Methods (see `pipeline.gradients.attacks`): FGSM and PGD under an
L-infinity bound ``epsilon`` in grey levels, and the lesson's unbounded optimisation for
comparison. Every adversarial image is a uint8 image, and every number here is measured on it.

The same images are then shown to other backbones' ImageNet heads (``transfer``; for a
trained-head target this includes the attacked backbone's own ImageNet head): does a photo
changed to fool one classifier fool another? A target that is one species counts any ImageNet
class of that species (281-285 for cats, 151-268 for dogs).

Outputs (`pipeline.gradients.attack_artifact`, which describes them in full, writes and reads them):
  metrics.json   per method: success rate (top-1 in the target group), rate with target
                 probability > 0.5, mean target probability, L-inf / L2 / PSNR; clean baselines;
                 transfer success per backbone; ``examples``: one record per attacked image and
                 method naming its PNGs and both predictions
  examples/      <NN>_<id>_original.png, <NN>_<id>_<method>_adversarial.png,
                 <NN>_<id>_<method>_perturbation.png (amplified to full range)
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

from pipeline.gradients import attack_artifact as artifact
from pipeline.gradients.attack_params import AdversarialParams
from pipeline.stage import Stage, StageContext


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", Path(str(text)).stem).strip("_")[-40:] or "image"


def load_source_images(data_dir: Path, split: str, label_set: set[int], max_images: int, spec: Any
                       ) -> tuple[list[str], list[int], Any]:
    """Decode, resize and crop the first `max_images` photos of `split` whose label is in `label_set`.

    Returns:
      (ids, labels, images (N, S, S, 3) uint8).
    """
    import numpy as np

    from pipeline import images as images_lib, resize
    from pipeline.sources import load_data

    data = load_data(data_dir)
    rec = data.splits[split]
    ids, labels, pixels = [], [], []
    for image_id, label, src in zip(rec.ids, rec.labels, data.sources(split)):
        if label not in label_set:
            continue
        pil = images_lib.decode_image(src, name=str(image_id))
        pixels.append(resize.resize_and_crop(pil, spec))
        ids.append(image_id)
        labels.append(label)
        if len(ids) >= max_images:
            break
    s = spec.input_size
    return ids, labels, (np.stack(pixels) if pixels else np.zeros((0, s, s, 3), np.uint8))


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from pipeline.errors import UserError
    from pipeline.gradients import attacks
    from pipeline.gradients import model as model_lib
    from pipeline.gradients import targets as targets_lib
    from pipeline.heads.trained import available, load_head, read_classes
    from pipeline.sources.dataset import read_classes as read_data_classes
    from pipeline.models import registry

    p: AdversarialParams = ctx.params["adversarial"]
    bp = ctx.params["backbone"]
    data_dir, heads_dir = Path(ctx.inputs["data"]), Path(ctx.inputs["heads"])
    data_classes = read_data_classes(data_dir)

    # What to attack (dataset labels) and what the classifier should say.
    source = targets_lib.resolve_source(p.source, data_classes, "adversarial.source")
    from pipeline.finetune import model as finetuned

    ft_dir = Path(ctx.inputs["finetune"]) if "finetune" in ctx.inputs else None
    head_names = available(heads_dir)
    if targets_lib.split_spec(p.target)[0] != targets_lib.IMAGENET and p.head not in head_names + [finetuned.NAME]:
        raise targets_lib.TargetError(f"adversarial.head: no trained head {p.head!r} in the heads stage's "
                                      f"output; available: {', '.join(head_names) or 'none'}, finetune.")
    # Every head of the stage predicts the same classes (heads.json's): read them once.
    shared = read_classes(heads_dir) if head_names else []
    head_classes = {n: shared for n in head_names}
    if finetuned.available(ft_dir):
        head_classes[finetuned.NAME] = finetuned.classes(ft_dir)
    target = targets_lib.resolve(p.target, p.head, head_classes, "adversarial.target")

    backbone = registry.load_backbone(bp.primary, ctx.cache_dir, bp.dtype, bp.depthwise)
    if target.head == targets_lib.IMAGENET:
        model = model_lib.imagenet_model(backbone)
    elif target.head == finetuned.NAME:  # the fine-tuned network: backbone with the trained top merged in
        import dataclasses

        merged, head = finetuned.load_finetuned(ft_dir, backbone)
        model = model_lib.head_model(dataclasses.replace(backbone, params=merged), head, target.head)
    else:
        head = load_head(heads_dir, target.head, backbone=bp.primary)
        model = model_lib.head_model(backbone, head, target.head)
    mask = np.zeros(len(model.classes), bool)
    mask[list(target.indices)] = True

    ids, labels, originals = load_source_images(data_dir, p.split, set(source.indices), p.max_images,
                                                backbone.spec)
    if not ids:
        raise UserError(f"adversarial.source: no {p.split} photo of {source.label!r} in the data stage's "
                        f"output; choose another source or split.")
    ctx.log(f"attacking {len(ids)} {p.split} photo(s) of {source.label} -> {target.label} "
            f"through {model.name}, epsilon {p.epsilon:g}/255")

    def batches():
        """(start, n, the photos from start padded to one batch): one compiled shape for everything."""
        for start in range(0, len(ids), p.batch_size):
            batch = originals[start:start + p.batch_size]
            n = len(batch)
            if n < p.batch_size:
                batch = np.concatenate([batch, np.repeat(batch[-1:], p.batch_size - n, axis=0)])
            yield start, n, batch

    # The clean photos are scored by the attack program itself (no steps): no second compilation.
    clean_logits = np.concatenate([attacks.attack_counted(model, batch, mask, "pgd", p.epsilon, steps=0,
                                                          refine_steps=0)[1][:n] for _, n, batch in batches()])
    clean_hit = attacks.success(clean_logits, mask)
    clean_prob = attacks.target_prob(clean_logits, mask)
    methods: dict[str, artifact.AttackMethod] = {}
    adversarial: dict[str, np.ndarray] = {}
    adv_logits: dict[str, np.ndarray] = {}
    for method in p.methods:
        task = ctx.reporter.task(f"attack {method}", total=len(ids), unit="img")
        t0 = time.perf_counter()
        out, logits_out = [], []
        passes = 0
        try:
            for start, n, batch in batches():
                adv, logits, k = attacks.attack_counted(
                    model, batch, mask, method, p.epsilon,
                    steps=p.unbounded_steps if method == "unbounded" else p.steps,
                    step_size=p.step_size, refine_steps=p.refine_steps, random_start=p.random_start,
                    lr=p.unbounded_lr, seed=p.seed + start)
                out.append(adv[:n])
                logits_out.append(logits[:n])
                passes += k
                task.advance(n)
        finally:
            task.close()
        seconds = time.perf_counter() - t0
        adversarial[method] = np.concatenate(out)
        adv_logits[method] = np.concatenate(logits_out)  # of the returned uint8 images
        m = methods[method] = artifact.AttackMethod(
            **_method_metrics(originals, adversarial[method], adv_logits[method], mask, seconds,
                              bounded=method != "unbounded", epsilon=p.epsilon),
            passes=passes, image_steps_per_second=round(passes * p.batch_size / max(seconds, 1e-9), 2))
        ctx.log(f"{method}: success {m.success_rate:.3f}, target prob {m.mean_target_prob:.3f}, "
                f"L-inf {m.max_linf:g}, PSNR {m.mean_psnr:.1f} dB, {seconds:.1f}s: {passes} "
                f"forward/backward pass(es) of {p.batch_size} images, {m.image_steps_per_second:.1f} image-steps/s")

    artifact.write(ctx.out_dir, artifact.AttackOutput(
        backbone=bp.primary, classifier=model.name, source=source.label, target=target.label, split=p.split,
        images=len(ids), epsilon=p.epsilon, clean_target_rate=round(float(clean_hit.mean()), 4),
        clean_mean_target_prob=round(float(clean_prob.mean()), 6), methods=methods,
        transfer=_transfer(ctx, p, bp, target, originals, adversarial),
        examples=_save_examples(Path(ctx.out_dir), p, model, ids, originals, clean_logits, mask, adversarial,
                                adv_logits)))
    summary: dict[str, Any] = {"images": len(ids)}
    for method, m in methods.items():
        summary[f"{method}_success"] = m.success_rate
        summary[f"{method}_psnr"] = m.mean_psnr
    return summary


def _method_metrics(originals, adversarial, logits, mask, seconds: float, bounded: bool, epsilon: float
                    ) -> dict[str, Any]:
    import numpy as np

    from pipeline.gradients import attacks

    d = attacks.distortion(originals, adversarial)
    hit = attacks.success(logits, mask)
    prob = attacks.target_prob(logits, mask)
    finite = d["psnr"][np.isfinite(d["psnr"])]
    out = {
        "success_rate": round(float(hit.mean()), 4), "successes": int(hit.sum()),
        "prob_over_half_rate": round(float((prob > 0.5).mean()), 4),
        "mean_target_prob": round(float(prob.mean()), 6), "min_target_prob": round(float(prob.min()), 6),
        "mean_linf": round(float(d["linf"].mean()), 4), "max_linf": float(d["linf"].max()),
        "mean_l2": round(float(d["l2"].mean()), 3),
        "mean_psnr": round(float(finite.mean()), 3) if finite.size else None,
        "min_psnr": round(float(finite.min()), 3) if finite.size else None,
        "seconds": round(seconds, 2), "seconds_per_image": round(seconds / len(originals), 4),
        "linf_bound_holds": bool(d["linf"].max() <= np.floor(epsilon + 1e-6)) if bounded else None}
    return out


def _transfer(ctx: StageContext, p: AdversarialParams, bp: Any, target: Any, originals, adversarial) -> dict:
    """Success of the same adversarial images on other backbones' ImageNet heads."""
    import numpy as np

    from pipeline.gradients import attacks
    from pipeline.gradients import model as model_lib
    from pipeline.gradients import targets as targets_lib
    from pipeline.gradients.pictures import resize_batch
    from pipeline.models import imagenet, registry

    if target.head == targets_lib.IMAGENET:
        group = list(target.indices)
        names = [b for b in p.transfer if b != bp.primary]  # same backbone, same head: not a transfer
    elif target.species is not None:
        group = list(imagenet.CAT_IDS if target.species == "cat" else imagenet.DOG_IDS)
        names = list(p.transfer)  # the attacked backbone's own ImageNet head is a different classifier
    else:
        ctx.log(f"transfer: skipped, {target.label!r} has no ImageNet counterpart")
        return {}
    mask = np.zeros(1000, bool)
    mask[group] = True
    out: dict[str, Any] = {}
    for name in names:
        other = registry.load_backbone(name, ctx.cache_dir, bp.dtype, bp.depthwise)
        inet = model_lib.imagenet_model(other)
        row = {"clean": round(float(attacks.success(
            attacks.predict_logits(inet, resize_batch(originals, other.spec)), mask).mean()), 4)}
        for method, adv in adversarial.items():
            logits = attacks.predict_logits(inet, resize_batch(adv, other.spec))
            row[method] = round(float(attacks.success(logits, mask).mean()), 4)
        out[name] = row
        ctx.log(f"transfer to {name} (ImageNet head): " + ", ".join(f"{k} {v:.2f}" for k, v in row.items()))
    return out


def _describe(model, logits_row, mask) -> tuple[str, float, float]:
    """(top-1 class name, its probability, target-group probability) of one image."""
    import numpy as np

    z = logits_row.astype(np.float64)
    prob = np.exp(z - z.max())
    prob /= prob.sum()
    top = int(np.argmax(prob))
    return model.classes[top], float(prob[top]), float(prob[mask].sum())


def _save_examples(out: Path, p: AdversarialParams, model, ids, originals, clean_logits, mask, adversarial,
                   adv_logits) -> list[artifact.AttackExample]:
    """PNG triplets and their records (original, amplified perturbation, adversarial, predictions)."""
    from pipeline.gradients import attacks, pictures

    records = []
    n = min(p.save_examples, len(ids))
    methods = sorted(adversarial, key=lambda m: artifact.ORDER.index(m))  # PGD's examples first
    for i in range(n):
        stem = f"examples/{i:02d}_{_slug(ids[i])}"
        pictures.save_png(out / f"{stem}_original.png", originals[i])
    for method in methods:
        d = attacks.distortion(originals[:n], adversarial[method][:n])
        for i in range(n):
            stem = f"examples/{i:02d}_{_slug(ids[i])}"
            adv = adversarial[method][i]
            pictures.save_png(out / f"{stem}_{method}_adversarial.png", adv)
            pictures.save_png(out / f"{stem}_{method}_perturbation.png",
                              pictures.amplified_perturbation(originals[i], adv))
            c_top, c_p, c_t = _describe(model, clean_logits[i], mask)
            a_top, a_p, a_t = _describe(model, adv_logits[method][i], mask)
            records.append(artifact.AttackExample(
                id=str(ids[i]), method=method, original=f"{stem}_original.png",
                perturbation=f"{stem}_{method}_perturbation.png", adversarial=f"{stem}_{method}_adversarial.png",
                original_prediction=f"{c_top} ({c_p:.3f})", original_target_prob=round(c_t, 5),
                adversarial_prediction=f"{a_top} ({a_p:.3f})", adversarial_target_prob=round(a_t, 5),
                success=bool(attacks.success(adv_logits[method][i:i + 1], mask)[0]),
                linf=float(d["linf"][i]), psnr=round(float(d["psnr"][i]), 2)))
    return records


STAGE = Stage(
    name="adversarial",
    run=run,
    deps=("data", "heads", "finetune"),
    reads_part=("finetune",),  # the fine-tuned head only, none while finetune is disabled
    sections=("backbone", "adversarial"),
    version="3",  # 3: metrics.json written by pipeline.gradients.attack_artifact
    schemas={"adversarial": AdversarialParams},
    description="targeted FGSM / PGD / unbounded attacks (dog -> cat), judged on uint8 images, with transfer",
)
