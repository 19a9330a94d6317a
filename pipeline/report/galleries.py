"""Report sections for the gradient stages: ideal images and adversarial examples.

Both read their stage's output through its artifact reader (`pipeline.gradients.ideal_artifact`,
`pipeline.gradients.attack_artifact`): typed records that name the PNG files beside them. Each
field a card shows is formatted here by name.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, Sequence, TypeVar

from pipeline.gradients import attack_artifact, ideal_artifact
from pipeline.gradients.attack_artifact import AttackExample, AttackOutput
from pipeline.gradients.ideal_artifact import IdealImage, IdealRecipe
from pipeline.report.common import Log, Options, num, pct, photo_asset, safe_name, seconds, top_k_text, value
from pipeline.report.document import ASSET_DIR, Asset, Card, Details, Figure, Gallery, Section, Table, Text

ATTACK_ORDER = attack_artifact.ORDER  # PGD first: the attack the bounds are about
R = TypeVar("R")


def _group(records: Sequence[R], key: Callable[[R], str], first: Sequence[str]) -> dict[str, list[R]]:
    """Records grouped by `key`, groups named in `first` first, the rest in order of appearance."""
    groups: dict[str, list[R]] = {}
    for r in records:
        groups.setdefault(key(r), []).append(r)
    order = [g for g in first if g in groups] + [g for g in groups if g not in first]
    return {g: groups[g] for g in order}


# --- ideal images --------------------------------------------------------------------------------

def _ideal_card(rec: IdealImage, folder: Path, i: int) -> Card:
    lines = [f"p(target) = {pct(rec.prob)}" + (f" on {rec.head}" if rec.head else ""),
             f"total variation {num(rec.tv)}"]
    if (top := top_k_text(rec.top5)):
        lines.append(f"top-5: {top}")
    for b, t in rec.transfer.items():
        mark = " ✓" if t.top1_hit else (" (top-5 ✓)" if t.top5_hit else (" ✗" if t.top1_hit is not None else ""))
        lines.append(f"{b} sees {t.top1}{mark}")
    return Card([(photo_asset(folder / rec.image, f"ideal_{i:03d}_image", max_width=448), "")],
                title=rec.target or rec.spec, lines=lines)


def _recipe_table(recipes: Mapping[str, IdealRecipe]) -> Table:
    main = (recipes.get(ideal_artifact.MAIN) or next(iter(recipes.values()))).settings
    backbones = list(dict.fromkeys(b for r in recipes.values() for b in r.transfer))
    rows = []
    for name, r in recipes.items():
        changes = ", ".join(f"{k}={value(v)}" for k, v in r.settings.items() if main.get(k) != v)
        row = [name, pct(r.mean_prob), pct(r.min_prob), num(r.mean_tv), seconds(r.seconds)]
        for b in backbones:
            t = r.transfer.get(b)
            row.append(f"{pct(t.top1_rate, 0)} / {pct(t.top5_rate, 0)}" if t else "–")
        rows.append(row + [changes or ("the params" if name == ideal_artifact.MAIN else "same as main")])
    caption = ("Hits: the share of images another network's ImageNet head also reads as the target "
               "(any cat or dog class for a species target). High probability with no hits means the "
               "image fools only the network it was made on.") if backbones else ""
    return Table(["recipe", "mean p(target)", "min p(target)", "mean TV", "time",
                  *(f"{b} top-1 / top-5 hits" for b in backbones), "settings changed from main"], rows,
                 numeric=list(range(1, 5 + len(backbones))), caption=caption)


def _prob_curves(records: Sequence[IdealImage], dpi: int) -> Figure | None:
    from pipeline.report import plots

    series = {r.target: list(r.prob_curve) for r in records if len(r.prob_curve) > 1}
    if not series:
        return None
    n = max(len(v) for v in series.values())
    png = plots.learning_curves_png({"": ("optimisation progress (sampled steps)", list(range(n)),
                                          {k: v + [None] * (n - len(v)) for k, v in series.items()}, {})},
                                    title="Target probability while optimising (main recipe)",
                                    ylabel="p(target)", dpi=dpi)
    return Figure(Asset(f"{ASSET_DIR}/ideal_progress.png", png), alt="target probability while optimising",
                  caption="How fast each target's probability rose, main recipe.", max_width=900)


def ideal_section(ideal_dir: Path, opts: Options, log: Log = lambda m: None) -> Section | None:
    """Grid, recipe comparison, probability curves and one card per image; None if nothing is there."""
    out = ideal_artifact.read(ideal_dir)
    if out is None:
        return None
    targets = ", ".join(out.targets)
    blocks: list = [Text(f"Images optimised from random noise so that {out.backbone} gives each target a high "
                         f"probability" + (f" ({targets})" if targets else "") + ". Under each image: the "
                         "probability it reached, its top-5 classes, and what other backbones see in it.")]
    if (grid := ideal_dir / out.grid).is_file():
        blocks.append(Figure(photo_asset(grid, f"ideal_{safe_name(grid.stem)}"), alt=f"ideal images {grid.name}",
                             caption="Rows: recipes (main = the params; each other row changes a few settings); "
                                     "columns: targets."))
    if out.recipes:
        blocks.append(_recipe_table(out.recipes))
    records = [r for r in out.images if (ideal_dir / r.image).is_file()]
    groups = _group(records, lambda r: r.option, [ideal_artifact.MAIN])
    try:
        if (fig := _prob_curves(next(iter(groups.values()), []), opts.dpi)) is not None:
            blocks.append(fig)
    except Exception as e:  # a failed plot must not cost the whole section
        log(f"ideal progress plot not drawn: {e}")
    left = opts.max_ideal
    for gi, (name, recs) in enumerate(groups.items()):
        cards = [_ideal_card(r, ideal_dir, opts.max_ideal - left + j) for j, r in enumerate(recs[:max(left, 0)])]
        left -= len(cards)
        if not cards:
            break
        gallery = Gallery(cards, min_width=220)
        label = f"recipe {name}" if name else "images"
        blocks.append(gallery if gi == 0 else Details(f"Images of {label} ({len(cards)})", [gallery]))
    return Section("ideal", "Ideal images", blocks)


# --- adversarial examples ----------------------------------------------------------------------

_METHOD_COLUMNS = (("success_rate", "success", pct), ("prob_over_half_rate", "p(target) > 0.5", pct),
                   ("mean_target_prob", "mean p(target)", pct), ("mean_linf", "mean L∞", num),
                   ("mean_l2", "mean L2", num), ("mean_psnr", "mean PSNR (dB)", num), ("seconds", "time", seconds))
# An example's images, in the order shown, with the label under each.
_ROLES = (("original", "original"), ("perturbation", "perturbation (amplified)"), ("adversarial", "adversarial"))


def attack_headline(m: AttackOutput) -> tuple[str, float, str] | None:
    """(method, success rate, "source → target") for the overview: PGD when it ran."""
    head = m.headline()
    return (*head, f"{m.source} → {m.target}") if head is not None else None


def _adv_images(rec: AttackExample, folder: Path) -> list[tuple[str, str, Path]]:
    """(role, label, path) of the example's PNGs that are on disk, original first."""
    return [(role, label, folder / getattr(rec, role)) for role, label in _ROLES
            if (folder / getattr(rec, role)).is_file()]


def _adv_card(rec: AttackExample, folder: Path, i: int) -> Card:
    imgs = [(photo_asset(path, f"adv_{i:03d}_{role}", max_width=192), label)
            for role, label, path in _adv_images(rec, folder)]
    lines = [f"before: {rec.original_prediction}, p(target) {pct(rec.original_target_prob)}",
             f"after: {rec.adversarial_prediction}, p(target) {pct(rec.adversarial_target_prob)}",
             f"L∞ {num(rec.linf)}/255, PSNR {num(rec.psnr)} dB",
             "attack succeeded" if rec.success else "attack failed"]
    return Card(imgs, title=rec.id or f"example {i + 1}", lines=lines, kind="good" if rec.success else "bad")


def adversarial_section(adv_dir: Path, opts: Options) -> Section | None:
    """Attack summary, per-method and transfer tables, and triplet cards; None if nothing is there."""
    m = attack_artifact.read(adv_dir)
    if m is None:
        return None
    bound = f"an L∞ bound of ε = {num(m.epsilon)}/255 (FGSM, PGD; 'unbounded' has none)"
    blocks: list = [Text(f"{num(m.images)} {m.split} photos of {m.source} changed so that {m.classifier} says "
                         f"{m.target}, within {bound}. Before any change, {pct(m.clean_target_rate)} of them "
                         f"were already classified as {m.target}.")]
    if m.methods:
        order = [x for x in ATTACK_ORDER if x in m.methods] + [x for x in m.methods if x not in ATTACK_ORDER]
        blocks.append(Table(["method", *(h for _, h, _ in _METHOD_COLUMNS)],
                            [[name, *(f(getattr(m.methods[name], k)) if getattr(m.methods[name], k) is not None
                                      else "–" for k, _, f in _METHOD_COLUMNS)] for name in order],
                            caption="Success: the classifier's top-1 is the target. Distances are measured on the "
                                    "saved uint8 images, in grey levels of 0..255."))
    if m.transfer:
        cols = list(dict.fromkeys(c for row in m.transfer.values() for c in row))
        blocks.append(Table(["ImageNet head of", *cols],
                            [[b, *(pct(row.get(c)) for c in cols)] for b, row in m.transfer.items()],
                            caption="Transfer: how often other networks' ImageNet heads read the same images as the "
                                    "target (clean = the unchanged photos)."))
    records = [r for r in m.examples if len(_adv_images(r, adv_dir)) >= 2]
    n = 0
    for gi, (name, recs) in enumerate(_group(records, lambda r: r.method, ATTACK_ORDER).items()):
        cards = [_adv_card(r, adv_dir, n + j) for j, r in enumerate(recs[:opts.max_adversarial])]
        n += len(cards)
        if not cards:
            continue
        gallery = Gallery(cards, min_width=440)
        title = f"{name.upper()} examples" if name else "Examples"
        if gi == 0:
            blocks.append(Text(f"{title}: the original photo, the perturbation (amplified to be visible) and "
                               "the adversarial image; green: the attack succeeded, red: it failed.", kind="note"))
            blocks.append(gallery)
        else:
            blocks.append(Details(f"{title} ({len(cards)})", [gallery]))
    return Section("adversarial", "Adversarial examples", blocks)
