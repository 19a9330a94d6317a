"""Stage `data`: folder and tfds sources, splits, broken files, fingerprint, offline error."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import images, sources
from pipeline.sources import tfds_source
from pipeline.errors import UserError
from pipeline.params import ParamsError
from stages import data as data_stage
from tests import image_zoo
from tests.stage_helpers import SHARED_DATA, run_stage, section

PETS_DEV = SHARED_DATA / "pets-dev"
needs_photos = pytest.mark.skipif(not PETS_DEV.is_dir(), reason=f"real photos not found at {PETS_DEV} "
                                  "(../shared/data relative to the repo root; only in the workplace)")


def params(**kw):
    return {"data": section(data_stage.DataParams, "data", **kw)}


def read(out: Path, name: str):
    return json.loads((out / name).read_text())


@needs_photos
def test_folder_of_real_photos(tmp_path):
    p = params(source="folder", path=str(PETS_DEV), seed=3)
    summary, ctx = run_stage(data_stage.STAGE, p, tmp_path / "a")
    out = tmp_path / "a"
    classes = read(out, "classes.json")
    splits = read(out, "splits.json")
    assert len(classes) == 37 and "beagle" in classes and "Abyssinian" in classes
    from pipeline.sources import dataset

    assert dataset.read_classes(out) == classes and dataset.has_data(out)
    assert not dataset.has_data(tmp_path / "b") and not dataset.has_data(None)
    files = sorted(f"{c.name}/{f.name}" for c in PETS_DEV.iterdir() for f in c.iterdir())
    ids = [i for s in splits.values() for i in s["ids"]]
    assert sorted(ids) == files                                  # every photo in exactly one split
    assert summary["images"] == len(files) and summary["skipped"] == 0
    # Stratified with seeded carving: test 0.2 and val 0.1 of 111, every class keeps a train image.
    assert summary["test"] == round(0.2 * 111) and summary["val"] == round(0.1 * 111)
    assert set(splits["train"]["labels"]) == set(range(37))
    for s in splits.values():
        assert all(classes[l] == i.split("/")[0] for i, l in zip(s["ids"], s["labels"]))
    # Same seed, same splits; another seed, other splits.
    run_stage(data_stage.STAGE, p, tmp_path / "b")
    assert read(tmp_path / "b", "splits.json") == splits
    run_stage(data_stage.STAGE, params(source="folder", path=str(PETS_DEV), seed=4), tmp_path / "c")
    assert read(tmp_path / "c", "splits.json")["val"]["ids"] != splits["val"]["ids"]
    info = read(out, "info.json")
    assert info["fingerprint"] == data_stage.fingerprint(p) and info["splits"]["train"] == summary["train"]
    assert any("111 images in 37 classes" in line for line in ctx.reporter.lines)


def test_broken_and_odd_files_are_skipped_and_listed(tmp_path):
    root = tmp_path / "photos"
    zoo = image_zoo.write_zoo(root / "odd", big=True)
    for name in image_zoo.BROKEN:       # broken files live next to good ones in class "broken_mix"
        (root / "broken_mix").mkdir(exist_ok=True)
        shutil.move(zoo[name], root / "broken_mix" / name)
    (root / "broken_mix" / "keep.png").write_bytes((root / "odd" / "rgb.png").read_bytes())
    (root / "odd" / "notes.txt").write_text("not a photo")
    (root / "stray.jpg").write_bytes((root / "odd" / "gray.jpg").read_bytes())   # no class folder
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.jpg").write_bytes(b"")                                   # ignored silently
    summary, ctx = run_stage(data_stage.STAGE, params(source="folder", path=str(root)), tmp_path / "out")
    skipped = {s["id"]: s for s in read(tmp_path / "out", "skipped.json")}
    for name, kind in image_zoo.BROKEN.items():
        assert skipped[f"broken_mix/{name}"]["kind"] == kind and skipped[f"broken_mix/{name}"]["reason"]
    assert skipped["odd/notes.txt"]["kind"] == "not_an_image_name"
    assert skipped["stray.jpg"]["kind"] == "no_class"
    assert len(skipped) == len(image_zoo.BROKEN) + 2
    splits = read(tmp_path / "out", "splits.json")
    ids = {i for s in splits.values() for i in s["ids"]}
    assert ids == {f"odd/{n}" for n in {**image_zoo.GOOD, **image_zoo.BIG}} | {"broken_mix/keep.png"}
    # Read back through the dataset as the features stage does: upright, right colours.
    ds = data_stage.load_data(tmp_path / "out")
    split_of = {i: (s, k) for s, r in ds.splits.items() for k, i in enumerate(r.ids)}
    def decoded(rel):
        s, k = split_of[rel]
        return np.asarray(images.decode_image(next(ds.sources(s, k, k + 1))))
    rotated = decoded("odd/exif_rotated.jpg").astype(int)
    assert rotated.shape == (120, 80, 3) and np.abs(rotated[10:50].mean((0, 1)) - image_zoo.RED).max() < 10
    assert np.abs(decoded("odd/cmyk.jpg").astype(int) - image_zoo.RED).max() <= 8
    assert decoded("odd/big.jpg").shape == (4000, 5000, 3)
    assert read(tmp_path / "out", "classes.json") == ["broken_mix", "odd"]
    (line,) = [l for l in ctx.reporter.lines if "skipped" in l]
    assert f"skipped {len(skipped)}:" in line and "1 truncated" in line
    assert read(tmp_path / "out", "info.json")["skipped"]["empty"] == 1


def test_split_folders_and_nested_classes(tmp_path):
    root = tmp_path / "ds"
    img = image_zoo.textured(40, 30)
    layout = {"train/dogs/beagle": 6, "train/dogs/pug": 5, "train/cats/mixed": 4, "train/dogs/mixed": 4,
              "validation/dogs/beagle": 1, "validation/cats/mixed": 2}
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True)
        for i in range(n):
            img.save(root / folder / f"{i}.png")
    summary, _ = run_stage(data_stage.STAGE, params(source="folder", path=str(root), test_fraction=0.25),
                           tmp_path / "out")
    classes = read(tmp_path / "out", "classes.json")
    assert classes == ["cats/mixed", "dogs/beagle", "dogs/mixed", "dogs/pug"]
    splits = read(tmp_path / "out", "splits.json")
    assert sorted(splits["val"]["ids"]) == ["validation/cats/mixed/0.png", "validation/cats/mixed/1.png",
                                            "validation/dogs/beagle/0.png"]          # used as given
    assert summary["test"] == round(0.25 * 19)                                      # carved from train
    assert all(i.startswith("train/") for i in splits["test"]["ids"] + splits["train"]["ids"])
    assert read(tmp_path / "out", "info.json")["layout"] == "splits"


def test_max_per_class_subsamples_each_split(tmp_path):
    root = tmp_path / "ds"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(12):
            image_zoo.textured(20, 20, seed=i).save(root / c / f"{i}.png")
    summary, _ = run_stage(data_stage.STAGE, params(source="folder", path=str(root), max_per_class=2),
                           tmp_path / "out")
    splits = read(tmp_path / "out", "splits.json")
    for s in ("train", "val", "test"):
        assert all(np.bincount(splits[s]["labels"], minlength=2) <= 2)
    assert summary["train"] == 4


def test_carve_is_stratified_and_stable():
    by = {"a": list(range(10)), "b": list(range(100, 130)), "c": [200]}
    taken, kept = sources.carve(by, 8, seed=0, name="val")
    assert {c: len(v) for c, v in taken.items()} == {"a": 2, "b": 6, "c": 0}   # 8 x 10/41, 8 x 30/41
    assert kept["c"] == [200]                                                     # a lone image trains
    again, _ = sources.carve({**by, "d": list(range(300, 305))}, 8, seed=0, name="val")
    assert again["b"][:5] == taken["b"][:5] or set(again["b"]) <= set(taken["b"]) | set(by["b"])


def test_fingerprint_sees_added_and_changed_photos(tmp_path):
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    image_zoo.textured(20, 20).save(root / "a" / "1.png")
    p = params(source="folder", path=str(root))
    fp = data_stage.fingerprint(p)
    assert data_stage.fingerprint(p) == fp
    image_zoo.textured(20, 20, seed=1).save(root / "a" / "2.png")
    fp2 = data_stage.fingerprint(p)
    assert fp2 != fp
    st = os.stat(root / "a" / "1.png")
    image_zoo.textured(20, 20, seed=5).save(root / "a" / "1.png")
    os.utime(root / "a" / "1.png", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    assert data_stage.fingerprint(p) != fp2
    assert data_stage.fingerprint(params(source="folder", path=str(tmp_path / "nope"))).startswith("folder-missing")


def test_fingerprint_follows_bytes_not_timestamps(tmp_path):
    """``touch`` or a copy with the same bytes keeps the key; the memo is only a shortcut."""
    root = tmp_path / "ds"
    (root / "a").mkdir(parents=True)
    image_zoo.textured(20, 20).save(root / "a" / "1.png")
    p, memo = params(source="folder", path=str(root)), tmp_path / "cache"
    fp = data_stage.fingerprint(p, memo)
    os.utime(root / "a" / "1.png", ns=(1, 10**18))                  # touch: new mtime, same bytes
    assert data_stage.fingerprint(p, memo) == fp == data_stage.fingerprint(p)
    shutil.copytree(root, tmp_path / "copy")                          # a copy: new stats everywhere
    assert data_stage.fingerprint(params(source="folder", path=str(tmp_path / "copy")), memo) == fp
    # A rewrite that keeps size and mtime is invisible to stat, as to make and DVC; the memo is
    # keyed on the folder's path, so deleting it (or the cache) re-reads every file.
    assert data_stage.fingerprint(params(source="sample"), memo).startswith("sample:folder:")


@needs_photos
def test_fingerprint_is_cheap_once_memoised(tmp_path):
    p = params(source="folder", path=str(SHARED_DATA))
    first = data_stage.fingerprint(p, tmp_path)          # reads every byte once
    t0 = time.perf_counter()
    assert data_stage.fingerprint(p, tmp_path) == first  # then stat only
    assert time.perf_counter() - t0 < 0.5


def test_params_errors(tmp_path):
    with pytest.raises(ParamsError, match=r"data\.path"):
        params(source="folder")
    with pytest.raises(UserError, match="not a folder"):
        run_stage(data_stage.STAGE, params(source="folder", path=str(tmp_path / "missing")), tmp_path / "o")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "bad.jpg").write_bytes(b"")
    with pytest.raises(UserError, match="no decodable image"):
        run_stage(data_stage.STAGE, params(source="folder", path=str(tmp_path / "empty")), tmp_path / "o2")


# ------------------------------------------------------------------------------------------
# tfds


@pytest.mark.parametrize("name,sizes,given", [
    ("oxford_iiit_pet", {"train": 60, "test": 20}, {"test"}),
    ("cats_vs_dogs", {"train": 50}, set()),
])
def test_tfds_mock(tmp_path, name, sizes, given):
    from tests.tfds_fixtures import fake_jpeg, mock_tfds

    with mock_tfds(tmp_path / "tfds", name, sizes):
        summary, _ = run_stage(data_stage.STAGE, params(source="tfds", name=name, data_dir=str(tmp_path / "x")),
                               tmp_path / "out")
        ds = data_stage.load_data(tmp_path / "out")
        n_train = sizes["train"]
        assert summary["val"] == round(0.1 * n_train)
        if "test" in given:
            assert summary["test"] == sizes["test"] and ds.splits["test"].tfds_split == "test"
        else:
            assert summary["test"] == round(0.2 * n_train) and ds.splits["test"].tfds_split == "train"
        assert summary["train"] + summary["val"] + (0 if "test" in given else summary["test"]) == n_train
        assert len(ds.classes) == (37 if name == "oxford_iiit_pet" else 2)
        # Reading a slice back gives the right records, skipping those carved into other splits.
        rec = ds.splits["train"]
        got = list(ds.sources("train", 3, 9))
        assert got == [fake_jpeg("train", i) for i in rec.indices[3:9]]
        assert images.decode_image(got[0]).size == (40, 30)


def test_tfds_real_builder_reads_in_index_order(tmp_path):
    from tests.tfds_fixtures import TinyPets, fake_jpeg, prepare_tiny_pets

    prepare_tiny_pets(tmp_path / "tfds", num_shards=3)
    summary, _ = run_stage(data_stage.STAGE, params(source="tfds", name="tiny_pets", data_dir=str(tmp_path / "tfds"),
                                                    val_fraction=0.2), tmp_path / "out")
    ds = data_stage.load_data(tmp_path / "out")
    assert ds.classes == TinyPets.CLASSES
    assert summary["test"] == TinyPets.SIZES["test"] and summary["val"] == round(0.2 * TinyPets.SIZES["train"])
    rec = ds.splits["train"]
    assert rec.indices == sorted(rec.indices) and len(set(rec.ids)) == len(rec.ids)
    # tfds shuffles records when it prepares them; map each tfds id to the generated image it
    # holds with tfds's own default (interleaved) reader, independent of our sequential reading.
    import tensorflow_datasets as tfds
    plain = tfds.builder("tiny_pets", data_dir=str(tmp_path / "tfds")).as_dataset(
        split="train", read_config=tfds.ReadConfig(add_tfds_id=True), decoders={"image": tfds.decode.SkipDecoding()})
    generated = {ex["tfds_id"].decode(): int(ex["file_name"].decode()[6:-4]) for ex in plain.as_numpy_iterator()}
    got = list(ds.sources("train", 2, 11))
    assert len(got) == 9
    candidates = np.stack([np.asarray(images.decode_image(fake_jpeg("train", j, (36, 28))))
                           for j in range(TinyPets.SIZES["train"])]).astype(int)
    for k, src in enumerate(got):
        # tfds re-encoded the JPEG: not bit-exact, but far closer to its own source than to any other.
        err = np.abs(candidates - np.asarray(images.decode_image(src)).astype(int)).mean(axis=(1, 2, 3))
        assert int(np.argmin(err)) == generated[rec.ids[2 + k]]


def test_tfds_offline_error_names_both_ways_out(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_host_reachable", lambda host, port, timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(sources.DatasetUnavailableError) as info:
        run_stage(data_stage.STAGE, params(source="tfds", data_dir=str(tmp_path / "tfds")), tmp_path / "out")
    msg = str(info.value)
    assert isinstance(info.value, UserError) and "\n" not in msg
    assert "-S data.source=folder -S data.path=FOLDER" in msg
    assert str(tmp_path / "tfds" / "downloads" / "manual") in msg and "images.tar.gz" in msg
    assert time.perf_counter() - t0 < 30
