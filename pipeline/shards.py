"""Checkpointed feature shards: durable writes, resume, and assembly into one ``.npy`` per split.

A shard holds the rows of a contiguous range of a split's images and is named after that global
range (``000000512-000001024.npy``), so the shards written by any process of a multi-host run,
in this run or in an earlier killed one, fit together by name alone.

A shard file appears under its final name only when it is complete: it is written to a temporary
name, flushed and fsynced, then renamed (atomic on POSIX), and the folder is fsynced so that the
rename survives a power cut. A killed run leaves at most a temporary file, which is ignored and
overwritten.

Assembly streams shard after shard into the final ``.npy`` with plain writes: one shard is in
memory at a time and nothing is memory-mapped for writing (mapped pages would count in the
process's resident memory), so peak memory does not grow with the number of images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

Range = tuple[int, int]


def shard_ranges(n: int, shard_size: int) -> list[Range]:
    """Split ``range(n)`` into consecutive ranges of `shard_size` (the last may be shorter)."""
    return [(s, min(s + shard_size, n)) for s in range(0, n, shard_size)]


def process_block(ranges: Sequence[Range], index: int, count: int) -> list[Range]:
    """The contiguous block of `ranges` that process `index` of `count` computes."""
    k = len(ranges)
    return list(ranges[index * k // count:(index + 1) * k // count])


def contiguous(ranges: Sequence[Range]) -> list[list[Range]]:
    """Group ranges into runs where each starts where the previous one stopped."""
    groups: list[list[Range]] = []
    for r in ranges:
        if groups and groups[-1][-1][1] == r[0]:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def shard_path(folder: Path, r: Range) -> Path:
    return Path(folder) / f"{r[0]:09d}-{r[1]:09d}.npy"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: Path, array: np.ndarray) -> None:
    """Write `array` as ``.npy`` at `path` so that the file exists only when complete."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def is_done(folder: Path, r: Range, rows_per_item: int) -> bool:
    """Whether the shard for `r` exists with the right number of rows (header read only)."""
    p = shard_path(folder, r)
    if not p.exists():
        return False
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, _, _ = read_header(f)  # the header only, not the data
    except (OSError, ValueError):
        p.unlink(missing_ok=True)  # unreadable: recompute it
        return False
    return shape[0] == (r[1] - r[0]) * rows_per_item


def clean_temporaries(folder: Path, ranges: Sequence[Range]) -> None:
    """Remove temporary files a killed run left behind for the shards of `ranges`.

    Only this process's own ranges (`process_block`): in a multi-host run the other processes
    share the folder and may be writing their shards' temporaries right now. (Cleaning the whole
    folder let a process that reached a split late delete a faster process's shard mid-write,
    which then failed on its rename: seen in tests/test_scale_out.py with 2 processes.)
    """
    for r in ranges:
        for p in Path(folder).glob(f".{shard_path(folder, r).name}.tmp*"):
            p.unlink(missing_ok=True)


def assemble(dest: Path, parts: Iterable[Path], shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Concatenate shard files into one ``.npy`` of `shape`, one shard in memory at a time.

    Raises:
      ValueError: a shard's dtype or width does not match, or the rows do not add up to shape[0].
    """
    dest = Path(dest)
    dtype = np.dtype(dtype)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    rows = 0
    with open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                 "fortran_order": False, "shape": tuple(shape)})
        for p in parts:
            a = np.load(p)
            if a.dtype != dtype or a.shape[1:] != tuple(shape[1:]):
                raise ValueError(f"{p}: shard is {a.dtype}{a.shape}, expected {dtype} rows of {shape[1:]}")
            f.write(np.ascontiguousarray(a).tobytes())
            rows += a.shape[0]
        f.flush()
        os.fsync(f.fileno())
    if rows != shape[0]:
        tmp.unlink()
        raise ValueError(f"{dest}: shards hold {rows} rows, expected {shape[0]}")
    os.replace(tmp, dest)
    _fsync_dir(dest.parent)


def assemble_split(stage: str, split: str, folder: Path, dest: Path, ranges: Sequence[Range],
                   rows_per_item: int, width: int, dtype: np.dtype) -> None:
    """Check that every shard of a split is in `folder`, then `assemble` them into `dest`.

    Args:
      stage, split: named in the error.
      folder: the split's shards; ranges: its `shard_ranges`, in order.
      rows_per_item: rows per image in each shard; width: columns per row.

    Raises:
      RuntimeError: a shard is missing or incomplete (a process did not finish).
    """
    missing = [r for r in ranges if not is_done(folder, r, rows_per_item)]
    if missing:
        raise RuntimeError(f"{stage}: {len(missing)} shard(s) of split {split} are missing (first: images "
                           f"{missing[0][0]}..{missing[0][1] - 1}); a process did not finish. Rerun to compute them.")
    n = ranges[-1][1] if ranges else 0
    assemble(dest, [shard_path(folder, r) for r in ranges], (n * rows_per_item, width), dtype)


def write_split_tail(split_dir: Path, labels: np.ndarray, ids: Sequence[str]) -> None:
    """Write an assembled split's labels.npy, then its ids.json: ids.json is the split's last
    durable write, so its presence (`split_written`) means the whole split is on disk."""
    write_durable(Path(split_dir) / "labels.npy", np.asarray(labels, np.int32))
    write_durable_json(Path(split_dir) / "ids.json", list(ids))


def split_written(split_dir: Path) -> bool:
    """Whether `write_split_tail` finished for this split (its ids.json, written last, exists)."""
    return (Path(split_dir) / "ids.json").is_file()


def write_durable_json(path: Path, obj: object) -> None:
    """Write JSON at `path` so that the file exists only when complete (as `write_durable`)."""
    import json

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=None if isinstance(obj, list) else 1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_process_stats(out: Path, process_index: int, stats: dict, compile_seconds: float) -> dict:
    """Round this process's timings and leave them in ``out/stats/p<index>.json`` for `finalize`.

    Returns:
      `stats`, with ``seconds`` rounded and ``compile_seconds`` added.
    """
    stats["seconds"] = round(stats["seconds"], 3)
    stats["compile_seconds"] = round(compile_seconds, 3)
    (Path(out) / "stats").mkdir(exist_ok=True)
    write_durable_json(Path(out) / "stats" / f"p{process_index}.json", stats)
    return stats


def read_process_stats(out: Path) -> list[dict]:
    """Every process's stats written by `write_process_stats`, in process order."""
    import json

    return [json.loads(p.read_text()) for p in sorted((Path(out) / "stats").glob("p*.json"))]
