"""Where labelled images come from: class folders on disk, or tensorflow-datasets.

The data stage uses this module to list a source, fix its splits and verify its images; the
stages after it (features, adversarial) use `load_data` and `DataSet.sources` to read the images
of a split back in the same order, whatever the source.

Folder layouts (decided here, documented in the README):
- one sub-folder per class: ``root/<class>/.../*.jpg``; or
- split folders: ``root/train/<class>/...``, ``root/val/<class>/...`` (``validation`` is read as
  ``val``), ``root/test/<class>/...``; the splits present are used as given, missing ones are
  carved from train.
- A class is the path of the folder that directly holds the images, relative to the root (or to
  the split folder): nested ``dogs/beagle/x.jpg`` is class ``dogs/beagle``, not ``beagle``, so
  two leaves with the same name under different parents (``cats/mixed``, ``dogs/mixed``) stay
  two classes. Images lying directly in the root are not in any class and are listed as skipped.
- Hidden files and folders (name starting with ``.``) and ``__MACOSX`` are ignored; files whose
  suffix is not an image suffix (``Thumbs.db``, ``notes.txt``) are listed as skipped.

Only the standard library is imported at module level: `fingerprint`s run while deciding what is
up to date. tensorflow-datasets is imported inside the functions that need it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import socket
import zlib
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence
from urllib.parse import urlparse

from pipeline.errors import UserError

SPLITS = ("train", "val", "test")
#: File name suffixes read as images from folders (lower case).
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff")
_SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}
_IGNORED_NAMES = {"__MACOSX"}


class DatasetUnavailableError(UserError):
    """A tfds dataset that is not prepared here and cannot be downloaded; the message says what to do."""


# ----------------------------------------------------------------------------------------------
# Folders


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _IGNORED_NAMES


def walk_files(root: Path) -> Iterator[tuple[str, os.stat_result]]:
    """Every visible file under `root`, as (posix path relative to root, stat), sorted.

    Symlinked folders are followed once (a link back up the tree is not followed again).
    """
    seen: set[str] = set()
    out: list[tuple[str, os.stat_result]] = []

    def visit(folder: Path, rel: str) -> None:
        real = os.path.realpath(folder)
        if real in seen:
            return
        seen.add(real)
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if _visible(e.name)), key=lambda e: e.name)
        for e in entries:
            child = f"{rel}{e.name}"
            if e.is_dir(follow_symlinks=True):
                visit(Path(e.path), child + "/")
            elif e.is_file(follow_symlinks=True):
                out.append((child, e.stat(follow_symlinks=True)))

    visit(Path(root), "")
    return iter(sorted(out, key=lambda t: t[0]))


def check_folder(path: str | None) -> Path:
    """The folder source's root, or a UserError naming ``data.path`` and the fix."""
    if not path:
        raise UserError("data.path: data.source is 'folder' but data.path is not set; pass "
                        "-S data.path=FOLDER (one sub-folder per class).")
    if str(path).startswith("gs://"):
        raise UserError(f"data.path: {path} is on GCS; a folder source must be a local folder. Copy "
                        "it locally (gsutil -m cp -r), or prepare it as a tfds dataset and set "
                        "data.source=tfds with data.data_dir on GCS.")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise UserError(f"data.path: {path} is not a folder (resolved to {root.resolve()}). Pass "
                        "-S data.path=FOLDER holding one sub-folder per class, or train/ val/ test/ "
                        "sub-folders each holding one sub-folder per class.")
    return root


@dataclasses.dataclass
class FolderScan:
    """What a folder holds.

    Attributes:
      layout: ``classes`` (one sub-folder per class) or ``splits`` (train/ val/ test/).
      files: split name (or None for the ``classes`` layout) -> list of (id, class name, size,
        mtime_ns); id is the posix path relative to the root.
      ignored: (id, kind, reason) for files that cannot be in any class.
    """

    layout: str
    files: dict[str | None, list[tuple[str, str, int, int]]]
    ignored: list[tuple[str, str, str]]


def scan_folder(root: Path) -> FolderScan:
    """List a folder source's images and classes (stat only; nothing is decoded here)."""
    top = sorted(e.name for e in os.scandir(root) if e.is_dir() and _visible(e.name))
    split_dirs = [d for d in top if d.lower() in _SPLIT_ALIASES]
    layout = "classes"
    if any(_SPLIT_ALIASES[d.lower()] == "train" for d in split_dirs):
        others = [d for d in top if d not in split_dirs]
        if others:
            raise UserError(
                f"data.path: {root} mixes split folders ({', '.join(split_dirs)}) with other "
                f"folders ({', '.join(others[:5])}). Use either train/ val/ test/ each holding "
                "class folders, or class folders only.")
        names = [_SPLIT_ALIASES[d.lower()] for d in split_dirs]
        if len(set(names)) != len(names):
            raise UserError(f"data.path: {root} has two folders for the same split "
                            f"({', '.join(split_dirs)}); keep one of val/ and validation/.")
        layout = "splits"
    files: dict[str | None, list[tuple[str, str, int, int]]] = {}
    ignored: list[tuple[str, str, str]] = []
    for rel, st in walk_files(root):
        parts = rel.split("/")
        split = None
        if layout == "splits":
            if parts[0] not in split_dirs:
                ignored.append((rel, "no_class", "a file outside the split folders"))
                continue
            split = _SPLIT_ALIASES[parts[0].lower()]
            parts = parts[1:]
        if len(parts) < 2:
            ignored.append((rel, "no_class", "not inside a class folder"))
            continue
        if os.path.splitext(parts[-1])[1].lower() not in IMAGE_SUFFIXES:
            ignored.append((rel, "not_an_image_name",
                            f"suffix is not one of {', '.join(IMAGE_SUFFIXES)}"))
            continue
        files.setdefault(split, []).append((rel, "/".join(parts[:-1]), st.st_size, st.st_mtime_ns))
    return FolderScan(layout, files, ignored)


def folder_fingerprint(path: str | None) -> str:
    """Cheap fingerprint of a folder: every visible file's path, size and mtime (stat, no reads).

    Adding, removing, renaming or rewriting a photo changes it. A bare ``touch`` changes it too
    (mtime), which reruns the data stage; its outputs then record a content digest.
    """
    try:
        root = check_folder(path)
    except UserError:
        return f"folder-missing:{path}"
    h = hashlib.sha256()
    for rel, st in walk_files(root):
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return f"folder:{h.hexdigest()[:32]}"


# ----------------------------------------------------------------------------------------------
# Splits


def _seeded_order(items: Sequence[Any], *key: Any) -> list[int]:
    """A permutation of range(len(items)) that depends only on the key (seed, split, class)."""
    import random

    rng = random.Random(zlib.crc32(json.dumps(key, default=str).encode()))
    order = list(range(len(items)))
    rng.shuffle(order)
    return order


def carve(by_class: Mapping[str, list[Any]], n_target: int, seed: int, name: str
          ) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Take about `n_target` items out of a pool, stratified by class.

    Each class gives its share of `n_target` (largest remainders, ties broken by a seeded draw)
    and always keeps at least one item in the pool when it has two or more. Which items a class
    gives depends only on (seed, name, class), so adding a photo to one class does not reshuffle
    the others.

    Args:
      by_class: class -> items, each list in a canonical (sorted) order.
      n_target: how many items to take in total.
      seed: the split seed.
      name: the split being carved (``val``, ``test``), part of the seed.

    Returns:
      (taken, kept): class -> items, each in the input order.
    """
    total = sum(len(v) for v in by_class.values())
    classes = sorted(by_class)
    if total == 0 or n_target <= 0:
        return {c: [] for c in classes}, {c: list(by_class[c]) for c in classes}
    cap = {c: max(0, len(by_class[c]) - 1) for c in classes}
    quota = {c: n_target * len(by_class[c]) / total for c in classes}
    count = {c: min(cap[c], math.floor(quota[c])) for c in classes}
    tie = _seeded_order(classes, seed, name, "ties")
    rank = sorted(range(len(classes)), key=lambda i: (-(quota[classes[i]] - math.floor(quota[classes[i]])), tie[i]))
    left = n_target - sum(count.values())
    for i in rank * 2:  # a second pass hands out what capped classes could not take
        if left <= 0:
            break
        c = classes[i]
        if count[c] < cap[c]:
            count[c] += 1
            left -= 1
    taken, kept = {}, {}
    for c in classes:
        items = by_class[c]
        chosen = set(_seeded_order(items, seed, name, c)[: count[c]])
        taken[c] = [x for i, x in enumerate(items) if i in chosen]
        kept[c] = [x for i, x in enumerate(items) if i not in chosen]
    return taken, kept


def limit_per_class(by_class: Mapping[str, list[Any]], k: int | None, seed: int, split: str
                    ) -> dict[str, list[Any]]:
    """Keep at most `k` items per class (a seeded subsample, input order kept); None keeps all."""
    if k is None:
        return {c: list(v) for c, v in by_class.items()}
    out = {}
    for c, items in by_class.items():
        chosen = set(_seeded_order(items, seed, "limit", split, c)[:k])
        out[c] = [x for i, x in enumerate(items) if i in chosen]
    return out


# ----------------------------------------------------------------------------------------------
# tensorflow-datasets


def tfds_default_data_dir() -> str:
    """tfds's default data dir, computed as tfds does, without importing it."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def tfds_fingerprint(name: str, data_dir: str | None) -> str:
    """Cheap fingerprint of a tfds dataset: name, data dir, and the prepared versions found there.

    A newly prepared version (or a re-prepared one: its dataset_info.json is rewritten) changes
    it. On GCS only the name and dir count (listing a bucket is not cheap).
    """
    root = data_dir or tfds_default_data_dir()
    parts = [f"tfds:{name}", root]
    if not root.startswith("gs://"):
        base = Path(root).expanduser() / name.split(":")[0].split("/")[0]
        if base.is_dir():
            for info in sorted(base.glob("**/dataset_info.json")):
                st = info.stat()
                parts.append(f"{info.relative_to(base)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def _host_reachable(host: str, port: int, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _unavailable_message(name: str, manual_dir: str, files: Sequence[tuple[str, str]], cause: str) -> str:
    listing = "; ".join(f"{fn} (from {url})" for fn, url in files) or "the files its tfds page lists"
    return (
        f"tensorflow-datasets cannot download '{name}' here ({cause}), and it is not prepared in "
        f"the data dir. Two ways out: (1) use a folder of images instead, with "
        f"-S data.source=folder -S data.path=FOLDER, where FOLDER holds one sub-folder per class "
        f"(or train/, val/, test/ each holding class folders); or (2) download the files on a "
        f"machine with network and put them, unchanged, in tfds's manual download folder "
        f"{manual_dir} : {listing}; then rerun, and tfds prepares '{name}' from them.")


def prepare_tfds(name: str, data_dir: str | None) -> Any:
    """A prepared tfds builder for `name`, downloading it if needed.

    Raises:
      UserError: unknown dataset name.
      DatasetUnavailableError: not prepared and cannot be downloaded (offline); the message
        names the folder source and the manual download folder as ways out.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        first = str(e).splitlines()[0] if str(e) else name
        raise UserError(f"data.name: tensorflow-datasets has no dataset {name!r} ({first}).") from None
    if builder.is_prepared():
        return builder
    root = data_dir or tfds_default_data_dir()
    download_dir = os.path.join(root, "downloads")
    manual_dir = os.path.join(download_dir, "manual")
    infos = builder.url_infos or {}
    files = [(info.filename or os.path.basename(urlparse(url).path), url) for url, info in infos.items()]
    from etils import epath  # the data dir may be a bucket (gs://...), where os.path sees nothing

    have_manual = bool(files) and all((epath.Path(manual_dir) / fn).exists() for fn, _ in files)
    if files and not have_manual:
        hosts = sorted({(urlparse(u).hostname, urlparse(u).port or (443 if u.startswith("https") else 80))
                        for _, u in files})
        down = [h for h, p in hosts if h and not _host_reachable(h, p)]
        if down:
            # Fail in seconds: tfds would retry each URL with backoff for minutes first.
            raise DatasetUnavailableError(
                _unavailable_message(name, manual_dir, files, f"{', '.join(down)} cannot be reached"))
    try:
        builder.download_and_prepare(
            download_dir=download_dir,
            download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    except (OSError, tfds.download.DownloadError) as e:  # requests' errors are OSErrors
        raise DatasetUnavailableError(
            _unavailable_message(name, manual_dir, files, f"{type(e).__name__}: {str(e)[:200]}")) from None
    return builder


def tfds_keys(builder: Any) -> tuple[str, str]:
    """(image feature key, label feature key) of an image-classification tfds dataset."""
    import tensorflow_datasets as tfds

    feats = builder.info.features
    sup = builder.info.supervised_keys
    if sup and len(sup) == 2 and isinstance(sup[0], str) and isinstance(sup[1], str):
        image_key, label_key = sup
    else:
        image_key = next((k for k, f in feats.items() if isinstance(f, tfds.features.Image)), None)
        label_key = next((k for k, f in feats.items() if isinstance(f, tfds.features.ClassLabel)), None)
    if (image_key not in feats or label_key not in feats
            or not isinstance(feats[image_key], tfds.features.Image)
            or not isinstance(feats[label_key], tfds.features.ClassLabel)):
        raise UserError(f"data.name: {builder.name} is not an image-classification dataset (it needs "
                        f"an Image feature and a ClassLabel feature; it has {', '.join(feats)}).")
    return image_key, label_key


def tfds_read(builder: Any, split: str, with_images: bool) -> Any:
    """The tf.data pipeline over a tfds split (or slice ``train[a:b]``) in file order.

    Images are not decoded (their encoded bytes come back) and the reading is sequential
    (``interleave_cycle_length=1``), so the n-th record is absolute index n of the split: the
    same index tfds's slicing uses. Every record carries its ``tfds_id``.
    """
    import tensorflow_datasets as tfds

    image_key, label_key = tfds_keys(builder)
    skip = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
            if isinstance(f, tfds.features.Image)}
    ds = builder.as_dataset(
        split=split, shuffle_files=False, decoders=skip,
        read_config=tfds.ReadConfig(add_tfds_id=True, interleave_cycle_length=1))
    keep = [image_key] if with_images else []
    return ds.map(lambda ex: {"tfds_id": ex["tfds_id"], "label": ex[label_key],
                              **{"image": ex[k] for k in keep}})


def tfds_splits(builder: Any) -> dict[str, str]:
    """Our split name -> tfds split name, for the splits tfds has (train, val, test)."""
    out = {}
    for s in builder.info.splits:
        ours = _SPLIT_ALIASES.get(s)
        if ours and ours not in out:
            out[ours] = s
    if "train" not in out:
        raise UserError(f"data.name: {builder.name} has no train split (it has "
                        f"{', '.join(builder.info.splits) or 'none'}).")
    return out


# ----------------------------------------------------------------------------------------------
# Reading the data stage's output


@dataclasses.dataclass(frozen=True)
class SplitRecords:
    """One split as the data stage fixed it.

    Attributes:
      ids: image ids in reading order (relative paths, or tfds ids).
      labels: class index per image.
      indices: tfds only: absolute index of each image in `tfds_split` (ascending).
      tfds_split: tfds only: the tfds split the images come from.
    """

    ids: list[str]
    labels: list[int]
    indices: list[int] | None = None
    tfds_split: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


@dataclasses.dataclass(frozen=True)
class DataSet:
    """The data stage's output, read back. Use `sources` to read a split's images in order."""

    root: Path
    info: Mapping[str, Any]
    classes: list[str]
    splits: Mapping[str, SplitRecords]

    def sources(self, split: str, start: int = 0, stop: int | None = None) -> Iterator[bytes | Path]:
        """The images of ``split[start:stop]`` in order: a Path (folder) or encoded bytes (tfds).

        `pipeline.images.decode_image` takes either. Folder images are read by whoever decodes
        them (in parallel threads); tfds records are read sequentially here.
        """
        rec = self.splits[split]
        stop = len(rec) if stop is None else min(stop, len(rec))
        if start >= stop:
            return iter(())
        if self.info["source"] == "folder":
            base = Path(self.info["path"])
            return (base / i for i in rec.ids[start:stop])
        return self._tfds_sources(rec, start, stop)

    def _tfds_sources(self, rec: SplitRecords, start: int, stop: int) -> Iterator[bytes]:
        import tensorflow_datasets as tfds

        # Pin the version the data stage read, so a newer prepared version is never mixed in.
        builder = tfds.builder(f"{self.info['name'].split(':')[0]}:{self.info['version']}",
                               data_dir=self.info.get("data_dir"))
        want = rec.indices[start:stop]
        ds = tfds_read(builder, f"{rec.tfds_split}[{want[0]}:{want[-1] + 1}]", with_images=True)
        pos = 0
        for n, ex in enumerate(ds.as_numpy_iterator()):
            if want[0] + n != want[pos]:
                continue  # a record of another split (val carved from train) lies between ours
            got = ex["tfds_id"].decode()
            if got != rec.ids[start + pos]:
                raise UserError(
                    f"tfds dataset {self.info['name']} changed since the data stage ran: record "
                    f"{rec.tfds_split}[{want[pos]}] is {got}, expected {rec.ids[start + pos]}. "
                    "Rerun with --force data.")
            yield ex["image"]
            pos += 1
            if pos == len(want):
                return
        raise UserError(f"tfds dataset {self.info['name']} has fewer records in {rec.tfds_split} "
                        "than when the data stage ran. Rerun with --force data.")


def load_data(data_dir: str | os.PathLike) -> DataSet:
    """Read the data stage's output folder (classes.json, splits.json, info.json)."""
    root = Path(data_dir)
    info = json.loads((root / "info.json").read_text())
    classes = json.loads((root / "classes.json").read_text())
    raw = json.loads((root / "splits.json").read_text())
    splits = {s: SplitRecords(ids=v["ids"], labels=v["labels"], indices=v.get("indices"),
                              tfds_split=v.get("tfds_split")) for s, v in raw.items()}
    return DataSet(root, info, classes, splits)
