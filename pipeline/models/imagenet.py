"""The 1000 ImageNet-1k classes, in the order every pretrained head uses.

Names and synonyms ship as data in ``imagenet_classes.json`` (built by
``tools/make_imagenet_classes.py`` from torchvision's category list and the synonym list in
tensorflow-datasets). Standard library only: cheap to import.

  CLASSES[281] == "tabby";  lookup("tabby cat") == 281;  lookup("Egyptian cat") == 285
"""

from __future__ import annotations

import difflib
import json
import numbers
from importlib import resources

from pipeline.errors import UserError

_DATA = json.loads(resources.files("pipeline.models").joinpath("imagenet_classes.json").read_text("utf-8"))

CLASSES: tuple[str, ...] = tuple(c["name"] for c in _DATA)
"""Short unique human-readable name per class id (``CLASSES[340] == "zebra"``)."""
SYNONYMS: tuple[tuple[str, ...], ...] = tuple(tuple(c["synonyms"]) for c in _DATA)
"""All names WordNet gives each class (``SYNONYMS[281] == ("tabby", "tabby cat")``)."""
WNIDS: tuple[str, ...] = tuple(c["wnid"] for c in _DATA)
"""WordNet synset id per class (``n02123045`` for 281), as in the ImageNet archive's folder names."""

CAT_IDS = range(281, 286)  # tabby, tiger cat, Persian cat, Siamese cat, Egyptian cat
DOG_IDS = range(151, 269)  # Chihuahua .. Mexican hairless (the domestic dog breeds)

assert len(CLASSES) == 1000 and len(set(CLASSES)) == 1000


class ImageNetClassError(UserError, KeyError):
    """An ImageNet class name or id that does not exist; the message names near matches."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def _build_index() -> dict[str, list[int]]:
    index: dict[str, list[int]] = {}
    for i, (name, syns) in enumerate(zip(CLASSES, SYNONYMS)):
        for s in {name.lower(), *(x.lower() for x in syns)}:
            index.setdefault(s, []).append(i)
    return index


_INDEX = _build_index()
_EXACT = {name: i for i, name in enumerate(CLASSES)}


def lookup(name_or_id: int | str) -> int:
    """Resolve a class id, exact name, or case-insensitive name/synonym to its id.

    Args:
      name_or_id: an int (or digit string) in 0..999, a name from `CLASSES` (``"Egyptian cat"``),
        or any synonym in any case (``"tabby cat"``, ``"TABBY"``).

    Returns:
      The class id.

    Raises:
      ImageNetClassError: out of range, unknown (the message lists near matches) or ambiguous
        (a synonym shared by two classes, e.g. ``"crane"``; the message lists both names).
    """
    if isinstance(name_or_id, bool):
        raise ImageNetClassError(f"ImageNet class {name_or_id!r}: give an id 0..999 or a class name.")
    if isinstance(name_or_id, numbers.Integral) or (isinstance(name_or_id, str) and name_or_id.strip().isdigit()):
        i = int(name_or_id)
        if 0 <= i < len(CLASSES):
            return i
        raise ImageNetClassError(f"ImageNet class id {i} is out of range; ids are 0..{len(CLASSES) - 1}.")
    if not isinstance(name_or_id, str):
        raise ImageNetClassError(f"ImageNet class {name_or_id!r}: give an id 0..999 or a class name, "
                                 f"not a {type(name_or_id).__name__}.")
    if name_or_id in _EXACT:
        return _EXACT[name_or_id]
    key = " ".join(name_or_id.split()).lower()
    ids = _INDEX.get(key, [])
    if len(ids) == 1:
        return ids[0]
    if len(ids) > 1:
        options = ", ".join(f"{i} ({CLASSES[i]!r})" for i in ids)
        raise ImageNetClassError(f"ImageNet class {name_or_id!r} is ambiguous: it names {options}. Use the "
                                 f"exact name or the id.")
    near = difflib.get_close_matches(key, list(_INDEX), n=5, cutoff=0.6)
    hint = ("; near matches: " + ", ".join(f"{n!r} -> {_INDEX[n][0]} ({CLASSES[_INDEX[n][0]]})" for n in near)
            if near else "")
    raise ImageNetClassError(f"{name_or_id!r} is not an ImageNet class name{hint}. Give an id 0..999 or a "
                             f"name from pipeline.models.imagenet.CLASSES.")
