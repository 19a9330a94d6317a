"""Which outputs of a classifier a gradient stage pushes up: target and source specs.

A *target* is a set of class indices of one classifier; its probability is the sum of their
probabilities, so ``cat`` on a 37-breed Oxford-IIIT Pet head means "any cat breed". The spec
strings the stages accept:

  ``tabby``, ``281``            a class of the classifier named by the stage's ``head`` setting
                                (ImageNet names/ids for ``head: imagenet``, else the trained head's
                                class names, exact or case-insensitive)
  ``imagenet:<name|id>``        an ImageNet class, whatever ``head`` says
  ``imagenet:cat``/``imagenet:dog``  the ImageNet cat classes 281-285 / dog breeds 151-268
  ``species:cat``/``species:dog``    the trained head's classes of that species: literally ``cat``/
                                ``dog`` (cats_vs_dogs) or the Oxford-IIIT Pet breeds (capitalised =
                                cat breed, lowercase = dog breed); plain ``cat``/``dog`` mean the
                                same when no class has that exact name
  ``<head>:<name>``             a class of another trained head (``mlp:Abyssinian``), ideal only

Standard library only: params validation imports this before anything heavy.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Sequence

from pipeline.errors import UserError
from pipeline.models import imagenet

IMAGENET = "imagenet"
DATASET = "dataset"  # pseudo head name: resolve against the data stage's classes (attack sources)
SPECIES = ("cat", "dog")

# Oxford-IIIT Pet (Parkhi et al. 2012): the 12 cat and 25 dog breeds, in the dataset's own spelling
# (folder names of the pets archive and tensorflow-datasets' label names).
PET_CAT_BREEDS = frozenset((
    "Abyssinian", "Bengal", "Birman", "Bombay", "British_Shorthair", "Egyptian_Mau", "Maine_Coon",
    "Persian", "Ragdoll", "Russian_Blue", "Siamese", "Sphynx"))
PET_DOG_BREEDS = frozenset((
    "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "boxer", "chihuahua",
    "english_cocker_spaniel", "english_setter", "german_shorthaired", "great_pyrenees", "havanese",
    "japanese_chin", "keeshond", "leonberger", "miniature_pinscher", "newfoundland", "pomeranian",
    "pug", "saint_bernard", "samoyed", "scottish_terrier", "shiba_inu", "staffordshire_bull_terrier",
    "wheaten_terrier", "yorkshire_terrier"))


class TargetError(UserError, ValueError):
    """A target/source spec that names no class; the message names the params key and near matches."""


@dataclasses.dataclass(frozen=True)
class Target:
    """A resolved target: some classes of one classifier.

    Attributes:
      spec: the spec string as the user wrote it.
      head: ``"imagenet"`` or a trained head's name: which classifier the indices refer to.
      indices: class indices whose probabilities are summed.
      label: short human-readable name (``tabby``, ``cat (12 breeds)``).
      species: ``"cat"``/``"dog"`` when the target is one species as a whole (or a class that
        belongs to one), used to check it on another backbone's ImageNet head; else None.
    """

    spec: str
    head: str
    indices: tuple[int, ...]
    label: str
    species: str | None = None


def split_spec(spec: str | int) -> tuple[str | None, str]:
    """``"imagenet:tabby"`` -> ("imagenet", "tabby"); ``"tabby"`` -> (None, "tabby")."""
    text = str(spec).strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix and rest and " " not in prefix:
        return prefix, rest.strip()
    return None, text


def _norm(name: str) -> str:
    return " ".join(name.replace("_", " ").replace("-", " ").split()).lower()


def species_of(name: str) -> str | None:
    """The species a class name belongs to (``cat``/``dog``), or None if not a known pet class."""
    if name in PET_CAT_BREEDS or _norm(name) == "cat":
        return "cat"
    if name in PET_DOG_BREEDS or _norm(name) == "dog":
        return "dog"
    return None


def species_indices(classes: Sequence[str], species: str) -> tuple[int, ...]:
    """Indices of `classes` that belong to `species` (see `species_of`)."""
    return tuple(i for i, c in enumerate(classes) if species_of(c) == species)


def imagenet_target(spec: str, name: str, key: str) -> Target:
    """Resolve an ImageNet class name/id (or ``cat``/``dog`` for the groups) to a Target.

    Raises:
      TargetError: naming `key`, with near matches.
    """
    n = _norm(str(name))
    if n == "cat":
        return Target(spec, IMAGENET, tuple(imagenet.CAT_IDS), "imagenet cat (281-285)", "cat")
    if n == "dog":
        return Target(spec, IMAGENET, tuple(imagenet.DOG_IDS), "imagenet dog (151-268)", "dog")
    try:
        i = imagenet.lookup(name)
    except imagenet.ImageNetClassError as e:
        raise TargetError(f"{key}: {e}") from None
    sp = "cat" if i in imagenet.CAT_IDS else "dog" if i in imagenet.DOG_IDS else None
    return Target(spec, IMAGENET, (i,), imagenet.CLASSES[i], sp)


def class_target(spec: str, name: str, head: str, classes: Sequence[str], key: str) -> Target:
    """Resolve a class name of a trained head (exact, case-insensitive, or a species group).

    Args:
      spec: the spec as written (kept in the result).
      name: the part after any prefix.
      head: the trained head's name.
      classes: its class names (index = output).
      key: params key for error messages (``adversarial.target``).

    Raises:
      TargetError: no such class; the message lists the classes or near matches.
    """
    if name in classes:
        i = list(classes).index(name)
        return Target(spec, head, (i,), name, species_of(name))
    by_norm = {}
    for i, c in enumerate(classes):
        by_norm.setdefault(_norm(c), []).append(i)
    hits = by_norm.get(_norm(name), [])
    if len(hits) == 1:
        return Target(spec, head, (hits[0],), classes[hits[0]], species_of(classes[hits[0]]))
    if _norm(name) in SPECIES:
        return species_target(spec, _norm(name), head, classes, key)
    near = difflib.get_close_matches(name, list(classes), n=5, cutoff=0.5)
    listing = (f"near matches: {', '.join(map(repr, near))}" if near
               else f"classes: {', '.join(map(repr, list(classes)[:12]))}{' ...' if len(classes) > 12 else ''}")
    if head == DATASET:
        raise TargetError(f"{key}: {name!r} is not a class of the dataset ({listing}); or use species:dog, "
                          "species:cat.")
    raise TargetError(f"{key}: {name!r} is not a class of the {head!r} head ({listing}); "
                      f"or use species:cat, species:dog, imagenet:<name>.")


def species_target(spec: str, species: str, head: str, classes: Sequence[str], key: str) -> Target:
    """All classes of one species (``cat``/``dog``) of a trained head."""
    if species not in SPECIES:
        raise TargetError(f"{key}: species {species!r} is unknown; use species:cat or species:dog.")
    idx = species_indices(classes, species)
    if not idx:
        owner = "dataset" if head == DATASET else f"{head!r} head"
        raise TargetError(f"{key}: the {owner} has no {species} classes (classes: "
                          f"{', '.join(map(repr, list(classes)[:8]))}...); species groups need classes named "
                          f"cat/dog or Oxford-IIIT Pet breed names.")
    label = classes[idx[0]] if len(idx) == 1 and _norm(classes[idx[0]]) == species else f"{species} ({len(idx)} classes)"
    return Target(spec, head, idx, label, species)


def resolve(spec: str | int, default_head: str, head_classes: dict[str, Sequence[str]], key: str) -> Target:
    """Resolve one target spec.

    Args:
      spec: see the module docstring.
      default_head: the classifier plain names refer to (``imagenet`` or a trained head name).
      head_classes: trained head name -> its class names (what the heads stage fitted).
      key: params key for error messages.

    Returns:
      The Target.

    Raises:
      TargetError: unknown prefix, head or class, naming `key`.
    """
    prefix, name = split_spec(spec)
    text = str(spec)
    if prefix == IMAGENET or (prefix is None and default_head == IMAGENET):
        return imagenet_target(text, name, key)
    if prefix == "species":
        head = default_head
        if head == IMAGENET:
            return imagenet_target(text, name, key)
        return species_target(text, _norm(name), head, _classes(head_classes, head, key), key)
    head = prefix or default_head
    return class_target(text, name, head, _classes(head_classes, head, key), key)


def resolve_source(spec: str, classes: Sequence[str], key: str) -> Target:
    """Resolve a spec naming dataset classes (a class, ``dog``, ``species:dog``) to label indices.

    Raises:
      TargetError: no such class or species in the dataset; names `key`.
    """
    prefix, name = split_spec(spec)
    if prefix == "species":
        return species_target(str(spec), _norm(name), DATASET, classes, key)
    if prefix is not None:
        raise TargetError(f"{key}: {spec!r} must name dataset classes: a class name, dog, or species:dog.")
    return class_target(str(spec), name, DATASET, classes, key)


def _classes(head_classes: dict[str, Sequence[str]], head: str, key: str) -> Sequence[str]:
    if head not in head_classes:
        known = [IMAGENET, *head_classes]
        near = difflib.get_close_matches(head, known, n=1)
        hint = f" Did you mean {near[0]!r}?" if near else ""
        raise TargetError(f"{key}: {head!r} is not a classifier here.{hint} Choose one of "
                          f"{', '.join(map(repr, known))}.")
    return head_classes[head]


def check_static(spec: str | int, default_head: str, key: str) -> None:
    """Params-time check of what can be checked without the heads: prefixes and ImageNet names.

    Raises:
      TargetError: an ImageNet name that does not exist, an unknown species, an empty spec.
    """
    prefix, name = split_spec(spec)
    if not str(name).strip():
        raise TargetError(f"{key}: empty target; give a class name, imagenet:<name> or species:cat.")
    if prefix == IMAGENET or (prefix is None and default_head == IMAGENET):
        imagenet_target(str(spec), name, key)
    elif prefix == "species" and _norm(name) not in SPECIES:
        raise TargetError(f"{key}: species {name!r} is unknown; use species:cat or species:dog.")
