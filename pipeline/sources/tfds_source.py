"""tensorflow-datasets sources: prepare (or explain why not), list and read a dataset's splits.

tensorflow-datasets is imported inside the functions that need it, never at module level.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

from pipeline.errors import UserError
from pipeline.sources.folders import SPLIT_ALIASES


class DatasetUnavailableError(UserError):
    """A tfds dataset that is not prepared here and cannot be downloaded; the message says what to do."""


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
        ours = SPLIT_ALIASES.get(s)
        if ours and ours not in out:
            out[ours] = s
    if "train" not in out:
        raise UserError(f"data.name: {builder.name} has no train split (it has "
                        f"{', '.join(builder.info.splits) or 'none'}).")
    return out
