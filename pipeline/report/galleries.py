"""Report sections for the gradient stages: ideal images and adversarial examples.

Both read a JSON index that names PNG files beside it (``ideal.json`` with ``recipes`` and
``images``; the attack's ``metrics.json`` with ``methods``, ``transfer`` and ``examples``). The
known fields get tables and readable captions; any other scalar field of a record is still shown
under its image, so a field added upstream appears without a change here. Without an index, PNGs
named ``<stem>_<role>.png`` are grouped into triplets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from pipeline.report import readers
from pipeline.report.common import Log, Options, num, pct, photo_asset, safe_name, seconds, top_k_text, value
from pipeline.report.document import ASSET_DIR, Asset, Card, Details, Figure, Gallery, Section, Table, Text

ATTACK_ORDER = ("pgd", "fgsm", "unbounded")  # PGD first: the attack the bounds are about


def extra_lines(item: Mapping, known: Sequence[str], max_lines: int = 4) -> list[str]:
    """Scalar fields of a record that the caller did not format itself, as ``key: value`` lines."""
    lines = []
    for k, v in readers.scalars(item).items():
        if k.split(".")[0] in known:
            continue
        if isinstance(v, float) and any(w in k for w in ("prob", "rate", "acc")) and 0 <= v <= 1:
            lines.append(f"{k.replace('_', ' ')}: {pct(v)}")
        else:
            lines.append(f"{k.replace('_', ' ')}: {value(v)}")
    return lines[:max_lines]


def _group(records: Sequence[Mapping], key: str, first: Sequence[str]) -> dict[str, list[Mapping]]:
    """Records grouped by `key`, groups named in `first` first, the rest in order of appearance."""
    groups: dict[str, list[Mapping]] = {}
    for r in records:
        groups.setdefault(str(r.get(key, "")), []).append(r)
    order = [g for g in first if g in groups] + [g for g in groups if g not in first]
    return {g: groups[g] for g in order}


# --- ideal images --------------------------------------------------------------------------------

_IDEAL_KNOWN = ("target", "spec", "head", "option", "image", "prob", "tv", "top5", "prob_curve", "transfer")


def _ideal_card(rec: Mapping, folder: Path, i: int) -> Card:
    refs = readers.image_refs(rec, folder)
    imgs = [(photo_asset(p, f"ideal_{i:03d}_{safe_name(k)}", max_width=448), "" if len(refs) == 1 else k)
            for k, p in refs.items()]
    title = str(rec.get("target") or rec.get("spec") or rec.get("class") or "")
    lines = []
    if isinstance(rec.get("prob"), (int, float)):
        on = rec.get("head")
        lines.append(f"p(target) = {pct(rec['prob'])}" + (f" on {on}" if on else ""))
    if isinstance(rec.get("tv"), (int, float)):
        lines.append(f"total variation {num(rec['tv'])}")
    if (top := top_k_text(rec.get("top5") or rec.get("top"))):
        lines.append(f"top-5: {top}")
    for b, t in (rec.get("transfer") or {}).items():
        if isinstance(t, Mapping):
            mark = " ✓" if t.get("top1_hit") else (" (top-5 ✓)" if t.get("top5_hit") else
                                                   (" ✗" if "top1_hit" in t else ""))
            lines.append(f"{b} sees {t.get('top1', '?')}{mark}")
    lines += extra_lines(rec, _IDEAL_KNOWN)
    return Card(imgs, title=title, lines=lines)


def _recipe_table(recipes: Mapping[str, Mapping]) -> Table:
    main = (recipes.get("main") or next(iter(recipes.values())) or {}).get("settings") or {}
    backbones = list(dict.fromkeys(b for r in recipes.values() for b in (r.get("transfer") or {})))
    rows = []
    for name, r in recipes.items():
        settings = r.get("settings") or {}
        changes = ", ".join(f"{k}={value(v)}" for k, v in settings.items() if main.get(k) != v)
        row = [name, pct(r.get("mean_prob")), pct(r.get("min_prob")), num(r.get("mean_tv", "–")),
               seconds(r.get("seconds"))]
        for b in backbones:
            t = (r.get("transfer") or {}).get(b) or {}
            row.append(f"{pct(t.get('top1_rate'), 0)} / {pct(t.get('top5_rate'), 0)}" if t else "–")
        rows.append(row + [changes or ("the params" if name == "main" else "same as main")])
    caption = ("Hits: the share of images another network's ImageNet head also reads as the target "
               "(any cat or dog class for a species target). High probability with no hits means the "
               "image fools only the network it was made on.") if backbones else ""
    return Table(["recipe", "mean p(target)", "min p(target)", "mean TV", "time",
                  *(f"{b} top-1 / top-5 hits" for b in backbones), "settings changed from main"], rows,
                 numeric=list(range(1, 5 + len(backbones))), caption=caption)


def _prob_curves(records: Sequence[Mapping], dpi: int) -> Figure | None:
    from pipeline.report import plots

    series = {str(r.get("target", i)): r["prob_curve"] for i, r in enumerate(records)
              if isinstance(r.get("prob_curve"), list) and len(r["prob_curve"]) > 1}
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
    data = readers.load_json(ideal_dir / "ideal.json")
    data = data if isinstance(data, Mapping) else {}
    blocks: list = []
    if data:
        who = data.get("backbone")
        targets = data.get("targets") or []
        blocks.append(Text(f"Images optimised from random noise so that {who or 'the backbone'} gives each target "
                           f"a high probability" + (f" ({', '.join(map(str, targets))})" if targets else "") +
                           ". Under each image: the probability it reached, its top-5 classes, and what other "
                           "backbones see in it."))
    for g in sorted(ideal_dir.glob("*grid*.png"))[:2]:
        blocks.append(Figure(photo_asset(g, f"ideal_{safe_name(g.stem)}"), alt=f"ideal images {g.name}",
                             caption="Rows: recipes (main = the params; each other row changes a few settings); "
                                     "columns: targets."))
    if isinstance(data.get("recipes"), Mapping) and data["recipes"]:
        blocks.append(_recipe_table(data["recipes"]))
    records = data.get("images") if isinstance(data.get("images"), list) else readers.image_items(data, ideal_dir)
    records = [r for r in records if isinstance(r, Mapping) and readers.image_refs(r, ideal_dir)]
    groups = _group(records, "option", ["main"])
    try:
        if (fig := _prob_curves(next(iter(groups.values()), []), opts.dpi)) is not None:
            blocks.append(fig)
    except Exception as e:  # a malformed curve must not cost the whole section
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
    if not blocks:
        return None
    return Section("ideal", "Ideal images", blocks)


# --- adversarial examples ----------------------------------------------------------------------

_ROLE_ORDER = ("original", "clean", "input", "perturbation", "amplified", "delta", "noise", "diff", "adversarial", "adv")
_ADV_KNOWN = ("id", "method", "original", "perturbation", "adversarial", "original_prediction",
              "original_target_prob", "adversarial_prediction", "adversarial_target_prob", "success", "linf", "psnr")
_METHOD_COLUMNS = (("success_rate", "success", pct), ("prob_over_half_rate", "p(target) > 0.5", pct),
                   ("mean_target_prob", "mean p(target)", pct), ("mean_linf", "mean L∞", num),
                   ("mean_l2", "mean L2", num), ("mean_psnr", "mean PSNR (dB)", num), ("seconds", "time", seconds))


def attack_headline(metrics: Mapping) -> tuple[str, float, str] | None:
    """(method, success rate, "source → target") for the overview: PGD when it ran."""
    methods = metrics.get("methods")
    if isinstance(methods, Mapping) and methods:
        name = next((m for m in ATTACK_ORDER if m in methods), next(iter(methods)))
        rate = (methods[name] or {}).get("success_rate")
        if isinstance(rate, (int, float)):
            return name, float(rate), f"{metrics.get('source', '?')} → {metrics.get('target', '?')}"
    rate = next((v for k, v in readers.flatten(metrics).items() if "success" in k and isinstance(v, float)), None)
    return ("attack", rate, "") if rate is not None else None


def _role_rank(key: str) -> int:
    k = key.lower()
    return next((i for i, r in enumerate(_ROLE_ORDER) if r in k), len(_ROLE_ORDER))


def _role_label(key: str) -> str:
    k = key.lower()
    if "perturb" in k or "amplif" in k or "delta" in k:
        return "perturbation (amplified)"
    return key.replace("_", " ")


def _adv_card(rec: Mapping, folder: Path, i: int) -> Card:
    refs = sorted(readers.image_refs(rec, folder).items(), key=lambda kv: _role_rank(kv[0]))
    imgs = [(photo_asset(p, f"adv_{i:03d}_{safe_name(k)}", max_width=192), _role_label(k)) for k, p in refs]
    lines = []
    for when, key in (("before", "original"), ("after", "adversarial")):
        pred, prob = rec.get(f"{key}_prediction"), rec.get(f"{key}_target_prob")
        if pred is not None or prob is not None:
            lines.append(f"{when}: {pred or '?'}" + (f", p(target) {pct(prob)}" if isinstance(prob, (int, float)) else ""))
    dist = []
    if isinstance(rec.get("linf"), (int, float)):
        dist.append(f"L∞ {num(rec['linf'])}/255")
    if isinstance(rec.get("psnr"), (int, float)):
        dist.append(f"PSNR {num(rec['psnr'])} dB")
    if dist:
        lines.append(", ".join(dist))
    success = rec.get("success")
    if isinstance(success, bool):
        lines.append("attack succeeded" if success else "attack failed")
    lines += extra_lines(rec, _ADV_KNOWN)
    title = str(rec.get("id") or f"example {i + 1}")
    return Card(imgs, title=title, lines=lines, kind="" if not isinstance(success, bool) else ("good" if success else "bad"))


def adversarial_section(adv_dir: Path, opts: Options) -> Section | None:
    """Attack summary, per-method and transfer tables, and triplet cards; None if nothing is there."""
    m = readers.load_json(adv_dir / "metrics.json")
    m = m if isinstance(m, Mapping) else {}
    blocks: list = []
    if m:
        bound = f"an L∞ bound of ε = {num(m['epsilon'])}/255 (FGSM, PGD; 'unbounded' has none)" if "epsilon" in m else ""
        text = (f"{num(m.get('images', '?'))} {m.get('split', '')} photos of {m.get('source', '?')} changed so that "
                f"{m.get('classifier', 'the classifier')} says {m.get('target', '?')}" + (f", within {bound}" if bound else "") + ".")
        if isinstance(m.get("clean_target_rate"), (int, float)):
            text += f" Before any change, {pct(m['clean_target_rate'])} of them were already classified as {m.get('target', 'the target')}."
        blocks.append(Text(text))
    methods = m.get("methods") if isinstance(m.get("methods"), Mapping) else {}
    if methods:
        order = [x for x in ATTACK_ORDER if x in methods] + [x for x in methods if x not in ATTACK_ORDER]
        blocks.append(Table(["method", *(h for _, h, _ in _METHOD_COLUMNS)],
                            [[name, *(f(methods[name].get(k)) if methods[name].get(k) is not None else "–"
                                      for k, _, f in _METHOD_COLUMNS)] for name in order],
                            caption="Success: the classifier's top-1 is the target. Distances are measured on the "
                                    "saved uint8 images, in grey levels of 0..255."))
    transfer = m.get("transfer") if isinstance(m.get("transfer"), Mapping) else {}
    if transfer:
        cols = list(dict.fromkeys(c for row in transfer.values() for c in row))
        blocks.append(Table(["ImageNet head of", *cols],
                            [[b, *(pct(row.get(c)) for c in cols)] for b, row in transfer.items()],
                            caption="Transfer: how often other networks' ImageNet heads read the same images as the "
                                    "target (clean = the unchanged photos)."))
    records = m.get("examples") if isinstance(m.get("examples"), list) else []
    records = [r for r in records if isinstance(r, Mapping) and len(readers.image_refs(r, adv_dir)) >= 2]
    if not records:
        records = _triplets_from_files(adv_dir)
    groups = _group(records, "method", ATTACK_ORDER)
    n = 0
    for gi, (name, recs) in enumerate(groups.items()):
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
    if not blocks:
        return None
    return Section("adversarial", "Adversarial examples", blocks)


def _triplets_from_files(folder: Path) -> list[dict]:
    """Group ``<stem>_<role>.png`` files by stem when no JSON index names them."""
    groups: dict[str, dict] = {}
    for p in sorted(folder.rglob("*.png")):
        stem, _, role = p.stem.rpartition("_")
        if stem and _role_rank(role) < len(_ROLE_ORDER):
            groups.setdefault(stem, {"id": stem})[role] = str(p.relative_to(folder))
    return [g for g in groups.values() if len(g) >= 3]
