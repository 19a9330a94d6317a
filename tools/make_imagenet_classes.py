"""Build pipeline/models/imagenet_classes.json: the 1000 ImageNet-1k classes in the standard order.

Sources (data lists, not code):
  * short unique names: torchvision's ``models/_meta.py`` ``_IMAGENET_CATEGORIES`` (BSD-3-Clause),
    e.g. from ``pip download --no-deps torchvision`` and unzipping that one file;
  * synonym lists ("tabby, tabby cat"): tensorflow-datasets' ``datasets/siscore/labels.py``
    ``IMAGENET_LABELS_LIST`` (Apache-2.0), installed in the project venv;
  * WordNet ids: tensorflow-datasets' ``datasets/imagenet2012/labels.txt``.

Usage: python tools/make_imagenet_classes.py /path/to/torchvision/models/_meta.py
"""

from __future__ import annotations

import ast
import importlib.util
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "pipeline" / "models" / "imagenet_classes.json"


def _literal(path: Path, name: str) -> list[str]:
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == name:
            return ast.literal_eval(node.value)
    raise SystemExit(f"{name} not found in {path}")


def main(meta_py: str) -> None:
    names = _literal(Path(meta_py), "_IMAGENET_CATEGORIES")
    tfds_root = Path(importlib.util.find_spec("tensorflow_datasets").origin).parent / "datasets"
    synonyms = _literal(tfds_root / "siscore" / "labels.py", "IMAGENET_LABELS_LIST")
    wnids = (tfds_root / "imagenet2012" / "labels.txt").read_text().split()
    assert len(names) == len(synonyms) == len(wnids) == 1000 and len(set(names)) == 1000
    classes = []
    for i, (name, syn, wnid) in enumerate(zip(names, synonyms, wnids)):
        syns = [s.strip() for s in syn.split(",") if s.strip()]
        classes.append({"id": i, "name": name, "wnid": wnid, "synonyms": syns})
    assert classes[281]["name"] == "tabby" and classes[340]["name"] == "zebra"
    # One class per line: readable diffs, small file.
    OUT.write_text("[\n" + ",\n".join(json.dumps(c, ensure_ascii=False) for c in classes) + "\n]\n")
    print(f"wrote {OUT} ({len(classes)} classes)")


if __name__ == "__main__":
    main(sys.argv[1])
