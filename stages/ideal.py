"""Stage `ideal`: the image each class "wants" — gradient ascent on a class probability from noise.

For every target (an ImageNet class such as ``tabby``, or a class of a head the `heads` stage
trained, such as ``cat`` = any cat breed) one image is optimised; all targets of a run form one
batch in one jitted, scanned optimiser (`pipeline.gradients.ideal`). The main recipe is the
params section itself; each entry of ``compare`` reruns the same targets with some settings
changed (the lesson's plain pixel ascent, no transforms, no TV ...), so the report can show what
each option does.

An image can reach 0.99 on the network it was optimised on and still be noise to anything else,
so each image is also classified by other backbones (``transfer``) through their ImageNet heads:
top-1 / top-5 hit of the target (for trained-head targets of one species, any ImageNet class of
that species counts). Images that another network also reads as the class are the ones that look
like it.

Outputs (`pipeline.gradients.ideal_artifact`, which describes them in full, writes and reads them):
  <NN>_<target>.png            main recipe, one per target
  <option>/<NN>_<target>.png   each compare option
  grid.png                     rows = recipes, columns = targets
  ideal.json                   per recipe and target: probability, top-5, TV, transfer hits; per
                               recipe: settings, time, mean/min probability, transfer hit rates
"""

from __future__ import annotations

import dataclasses
import re
import time
from pathlib import Path
from typing import Any

from pipeline.gradients import ideal_artifact as artifact
from pipeline.gradients.ideal_params import IdealParams, recipe_values, recipes
from pipeline.stage import Stage, StageContext


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", str(text)).strip("_")[:40] or "target"


def _unit_salt(t: Any) -> int:
    """A target's seed salt: its resolved classes, so ``tabby``, ``imagenet:tabby`` and 281 agree."""
    import zlib

    return zlib.crc32(f"{t.head}:{','.join(map(str, t.indices))}".encode())


def run(ctx: StageContext) -> dict[str, Any]:
    import numpy as np

    from pipeline.gradients import ideal as ideal_lib
    from pipeline.gradients import memo
    from pipeline.gradients import model as model_lib
    from pipeline.gradients import pictures
    from pipeline.gradients import targets as targets_lib
    from pipeline.heads.trained import available, load_head, read_classes
    from pipeline.models import registry

    p: IdealParams = ctx.params["ideal"]
    bp = ctx.params["backbone"]
    heads_dir = Path(ctx.inputs["heads"])
    head_names = available(heads_dir)
    # Every head of the stage predicts the same classes (heads.json's): read them once.
    shared = read_classes(heads_dir) if head_names else []
    head_classes = {n: shared for n in head_names}
    from pipeline.finetune import model as finetuned

    ft_dir = Path(ctx.inputs["finetune"]) if "finetune" in ctx.inputs else None
    if finetuned.available(ft_dir):
        head_classes[finetuned.NAME] = finetuned.classes(ft_dir)
    targets = [targets_lib.resolve(t, p.head, head_classes, f"ideal.targets[{i}]")
               for i, t in enumerate(p.targets)]

    backbone = registry.load_backbone(bp.primary, ctx.cache_dir, bp.dtype, bp.depthwise)
    used = list(dict.fromkeys(t.head for t in targets))
    own: dict[str, Any] = {}  # heads with their own backbone params: the fine-tuned network
    heads = {}
    for n in used:
        if n == finetuned.NAME:
            own[n], heads[n] = finetuned.load_finetuned(ft_dir, backbone)
        else:
            heads[n] = "imagenet" if n == targets_lib.IMAGENET else load_head(heads_dir, n, backbone=bp.primary)
    model, segments = model_lib.multi_head_model(backbone, heads, own)
    n_classes = len(model.classes)
    named = recipes(p)
    settings = [s for _, s in named]
    R = len(named)

    # One batch per target: its R recipes side by side. A batch reads the backbone, the model's
    # layout (which heads, how many classes: the compiled program), its target and the recipes;
    # the weights of a trained head only when the target is that head's.
    layout = {"backbone": [bp.primary, bp.dtype, bp.depthwise],
              "heads": [[n, segments[n][1] - segments[n][0], n in own] for n in used]}
    weights = {n: memo.tree_digest(model.params[1][n]) for n in used if n != targets_lib.IMAGENET}
    unit_keys = [memo.key({"stage": "ideal", "layout": layout, "target": [t.head, list(t.indices)],
                           "weights": weights.get(t.head), "recipes": recipe_values(p), "chunk": _CHUNK})
                 for t in targets]
    found = {i: memo.load(ctx.cache_dir, "ideal", k) for i, k in enumerate(unit_keys)}
    found = {i: f for i, f in found.items() if f is not None and f["images"].shape[0] == R}
    todo = [i for i in range(len(targets)) if i not in found]
    if found:
        ctx.log(f"{len(found)} of {len(targets)} target(s) unchanged since an earlier run (memo): "
                + ", ".join(targets[i].label for i in sorted(found)))
    steps_max = max(s.steps for s in settings)
    task = ctx.reporter.task("ideal", total=len(todo) * steps_max, unit="step")
    t0 = time.perf_counter()
    compiles = 0
    try:
        for i in todo:
            t = targets[i]
            lo, hi = segments[t.head]
            mask = model_lib.class_mask([[lo + c for c in t.indices]] * R, n_classes)
            domain = model_lib.class_mask([range(lo, hi)] * R, n_classes)
            res = ideal_lib.optimize_rows(model, mask, settings, domains=domain, salts=[_unit_salt(t)] * R,
                                          chunk=_CHUNK, on_chunk=task.advance)
            compiles += res.compiles
            found[i] = {"images": res.images, "log_prob": res.log_prob, "logits": res.logits, "tv": res.tv,
                        "curve": res.curve}
            memo.save(ctx.cache_dir, "ideal", unit_keys[i], found[i])
    finally:
        task.close()
    seconds = time.perf_counter() - t0
    image_steps = len(todo) * sum(s.steps for s in settings)
    if todo:
        ctx.log(f"{len(todo)} batch(es) of {R} recipe(s): {image_steps} image-steps in {seconds:.1f}s, "
                f"{image_steps / max(seconds, 1e-9):.1f} image-steps/s "
                f"({len(todo) * steps_max / max(seconds, 1e-9):.2f} batch steps/s), {compiles} compile(s)")

    out = Path(ctx.out_dir)
    files = [f"{i:02d}_{_slug(t.spec)}.png" for i, t in enumerate(targets)]
    results: dict[str, artifact.IdealRecipe] = {}
    records: list[artifact.IdealImage] = []
    record_at: dict[tuple[str, int], int] = {}  # (recipe, target index) -> index in records
    images_by_recipe: dict[str, np.ndarray] = {}
    total_steps = sum(s.steps for s in settings)
    for r, (name, recipe) in enumerate(named):
        images = np.stack([found[i]["images"][r] for i in range(len(targets))])
        images_by_recipe[name] = images
        folder = "" if name == "main" else f"{name}/"
        probs = np.exp(np.array([found[i]["log_prob"][r] for i in range(len(targets))]))
        tvs = np.array([found[i]["tv"][r] for i in range(len(targets))])
        for t_i, t in enumerate(targets):
            pictures.save_png(out / folder / files[t_i], images[t_i])
            lo, hi = segments[t.head]
            seg = found[t_i]["logits"][r, lo:hi].astype(np.float64)
            seg_p = np.exp(seg - seg.max())
            seg_p /= seg_p.sum()
            top = np.argsort(-seg_p)[:5]
            curve = found[t_i]["curve"][:recipe.steps, r]
            record_at[(name, t_i)] = len(records)
            records.append(artifact.IdealImage(
                target=t.label, spec=t.spec, head=t.head, option=name,
                image=folder + files[t_i], prob=round(float(probs[t_i]), 6),
                tv=round(float(tvs[t_i]), 5),
                top5=[(model.classes[lo + int(c)].split(":", 1)[1], round(float(seg_p[c]), 5)) for c in top],
                prob_curve=[round(float(v), 4) for v in np.exp(curve)[::max(1, recipe.steps // 32)]]))
        # Recipes run side by side in one batch: each is given its share of the time by steps.
        results[name] = artifact.IdealRecipe(
            settings=dataclasses.asdict(recipe), seconds=round(seconds * recipe.steps / max(total_steps, 1), 2),
            compiles=compiles if r == 0 else 0, mean_prob=round(float(probs.mean()), 6),
            min_prob=round(float(probs.min()), 6), mean_tv=round(float(tvs.mean()), 5))
        ctx.log(f"{name}: target probability min {probs.min():.4f} mean {probs.mean():.4f}, TV {tvs.mean():.4f}")

    transfer = [b for b in p.transfer if b != bp.primary]
    _transfer_check(ctx, transfer, targets, images_by_recipe, records, record_at, results, bp,
                    unit_keys=unit_keys)

    grid = pictures.grid([list(images_by_recipe[n]) for n in images_by_recipe], row_labels=list(images_by_recipe),
                         col_labels=[t.label for t in targets])
    doc = artifact.IdealOutput(
        backbone=bp.primary, head=p.head, targets=[t.label for t in targets], recipes=results, images=records,
        work=artifact.IdealWork(batches=len(todo), reused=len(targets) - len(todo), image_steps=image_steps,
                                seconds=round(seconds, 2),
                                image_steps_per_second=round(image_steps / seconds, 2) if todo and seconds > 0 else None))
    pictures.save_png(out / doc.grid, grid)
    artifact.write(out, doc)
    summary = {"targets": len(targets), "min_prob": doc.main.min_prob, "mean_tv": doc.main.mean_tv,
               "reused": len(targets) - len(todo)}
    for b, rates in doc.main.transfer.items():
        summary[f"{b}_top5"] = rates.top5_rate
    return summary


_CHUNK = 16  # steps per jitted call of the optimiser (the progress bar's granularity)


def _transfer_check(ctx: StageContext, backbones: list[str], targets: list, images_by_recipe: dict,
                    records: list, record_at: dict, results: dict, bp: Any, unit_keys: list[str]) -> None:
    """Classify every ideal image with other backbones' ImageNet heads; add their hits to the
    records and their hit rates to the recipes (`results`), both replaced in place.

    `unit_keys`: each target's memo key; a backbone's verdicts on a target's images are remembered
    under it, so only targets whose images changed are classified again.
    """
    import numpy as np

    from pipeline.gradients import attacks, pictures
    from pipeline.gradients import model as model_lib
    from pipeline.gradients import targets as targets_lib
    from pipeline.models import imagenet, registry

    groups = []
    for t in targets:  # the ImageNet classes that count as a hit for each target, or None
        if t.head == targets_lib.IMAGENET:
            groups.append(list(t.indices))
        elif t.species is not None:
            groups.append(list(imagenet.CAT_IDS if t.species == "cat" else imagenet.DOG_IDS))
        else:
            groups.append(None)
    from pipeline.gradients import memo

    names = list(images_by_recipe)
    for name in backbones:
        # Top-5 per target (rows = recipes), remembered with the target's batch of images.
        keys = [memo.key({"stage": "ideal.transfer", "unit": k, "backbone": [name, bp.dtype, bp.depthwise]})
                for k in unit_keys]
        tops = [memo.load(ctx.cache_dir, "ideal.transfer", k) for k in keys]
        missing = [i for i, f in enumerate(tops) if f is None or f["top5"].shape != (len(names), 5)]
        if missing:
            other = registry.load_backbone(name, ctx.cache_dir, bp.dtype, bp.depthwise)
            inet = model_lib.imagenet_model(other)
            batch = np.stack([images_by_recipe[r][i] for i in missing for r in names])
            logits = attacks.predict_logits(inet, pictures.resize_batch(batch, other.spec))
            top = np.argsort(-logits, axis=1)[:, :5].reshape(len(missing), len(names), 5)
            for j, i in enumerate(missing):
                tops[i] = {"top5": top[j]}
                memo.save(ctx.cache_dir, "ideal.transfer", keys[i], tops[i])
        for r_i, recipe in enumerate(names):
            top5 = np.stack([tops[i]["top5"][r_i] for i in range(len(targets))])
            hits1, hits5 = [], []
            for t_i, (t, group) in enumerate(zip(targets, groups)):
                at = record_at[(recipe, t_i)]
                entry = artifact.TransferHit(top1=imagenet.CLASSES[int(top5[t_i, 0])])
                if group is not None:
                    entry = dataclasses.replace(entry, top1_hit=bool(top5[t_i, 0] in group),
                                                top5_hit=bool(any(c in group for c in top5[t_i])))
                    hits1.append(entry.top1_hit)
                    hits5.append(entry.top5_hit)
                records[at] = dataclasses.replace(records[at], transfer={**records[at].transfer, name: entry})
            if hits1:
                rate = artifact.TransferRate(top1_rate=round(float(np.mean(hits1)), 4),
                                             top5_rate=round(float(np.mean(hits5)), 4), checked=len(hits1))
                results[recipe] = dataclasses.replace(results[recipe], transfer={**results[recipe].transfer, name: rate})
        ctx.log(f"transfer to {name}: " + ", ".join(
            f"{r} top-1 {results[r].transfer[name].top1_rate:.2f} top-5 {results[r].transfer[name].top5_rate:.2f}"
            for r in images_by_recipe if name in results[r].transfer))


STAGE = Stage(
    name="ideal",
    run=run,
    deps=("heads", "finetune"),
    reads_part=("finetune",),  # the fine-tuned head only, none while finetune is disabled
    sections=("backbone", "ideal"),
    version="4",  # 4: ideal.json written by pipeline.gradients.ideal_artifact (adds "grid")
    schemas={"ideal": IdealParams},
    all_processes=False,
    description="ideal images: gradient ascent on class probabilities, several recipes, cross-backbone check",
)
