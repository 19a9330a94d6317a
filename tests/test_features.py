"""Stage `features`: exact preprocessing, padding, sharding, TTA, resume after SIGKILL, flat memory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline import images, resize
from pipeline.features.artifact import load_split
from pipeline.params import ParamsError
from stages import data as data_stage
from stages import features
from tests import image_zoo, tiny_backbone
from tests.stage_helpers import SHARED_DATA, make_ctx, run_stage, section

REPO = Path(__file__).resolve().parents[1]


def write_photos(root: Path, per_class: dict[str, int]) -> None:
    """Small JPEGs of varied sizes and aspect ratios in class folders."""
    k = 0
    for cls, n in per_class.items():
        (root / cls).mkdir(parents=True)
        for i in range(n):
            w, h = 40 + 7 * (k % 5), 30 + 11 * (k % 4)
            image_zoo.textured(w, h, seed=k).save(root / cls / f"{i:02d}.jpg", quality=90)
            k += 1


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A data-stage output over 29 photos in 3 classes (train 21 / val 3 / test 5 or so)."""
    tmp = tmp_path_factory.mktemp("feat")
    write_photos(tmp / "photos", {"a": 11, "b": 9, "c": 9})
    params = {"data": section(data_stage.DataParams, "data", source="folder", path=str(tmp / "photos"))}
    run_stage(data_stage.STAGE, params, tmp / "data")
    return tmp / "data"


@pytest.fixture(scope="module")
def backbone():
    return tiny_backbone.make()


def fparams(**kw):
    return {"backbone": section(features.BackboneParams, "backbone"),
            "features": section(features.FeaturesParams, "features", **kw)}


def extract(data_dir, out, backbone, process_index=0, process_count=1, finalize=True, **kw):
    ctx = make_ctx(features.STAGE, fparams(**kw), out, inputs={"data": data_dir},
                   process_index=process_index, process_count=process_count)
    summary = features.extract(ctx, backbone)
    if finalize:
        summary = features.finalize(ctx)
    return summary, ctx


def reference(data_dir, backbone, split, crops=("center",), flip=False):
    """Features computed image by image, straight from the files: (N, V, D)."""
    ds = data_stage.load_data(data_dir)
    rows = []
    for src in ds.sources(split):
        img = images.decode_image(src)
        v = resize.views(img, backbone.spec, crops, flip).astype(np.float32)
        rows.append(np.asarray(backbone.embed(backbone.params, v)))
    return np.stack(rows)


def test_features_match_image_by_image_reference(data_dir, backbone, tmp_path):
    summary, ctx = extract(data_dir, tmp_path / "out", backbone, batch_size=4, shard_size=8)
    ds = data_stage.load_data(data_dir)
    for split in ("train", "val", "test"):
        feats, labels, ids = load_split(tmp_path / "out", split)
        assert isinstance(feats, np.memmap) and feats.dtype == np.float32
        assert feats.shape == (len(ds.splits[split]), 16)
        assert ids == ds.splits[split].ids and labels.tolist() == ds.splits[split].labels
        assert labels.dtype == np.int32
        # Batched, padded (21 = 5 x 4 + 1) and sharded, yet the same as one image at a time.
        np.testing.assert_allclose(feats, reference(data_dir, backbone, split)[:, 0], rtol=1e-5, atol=1e-5)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["feature_dim"] == 16 and info["dtype"] == "float32"
    assert info["splits"] == {s: len(ds.splits[s]) for s in ("train", "val", "test")}
    assert json.loads((tmp_path / "out" / "classes.json").read_text()) == ["a", "b", "c"]
    assert summary["computed"] == 29 and summary["resumed_shards"] == 0 and summary["images_per_s"] > 0
    assert not list((tmp_path / "out").glob("*/shards")) and not (tmp_path / "out" / "stats").exists()
    assert any("29 images -> 16-d float32" in line for line in ctx.reporter.lines)


def test_flip_mean_in_float16(data_dir, backbone, tmp_path):
    extract(data_dir, tmp_path / "out", backbone, batch_size=4, shard_size=8, augment="flip", dtype="float16")
    feats, _, ids = load_split(tmp_path / "out", "val")
    assert feats.dtype == np.float16 and len(ids) == feats.shape[0]
    ref = reference(data_dir, backbone, "val", flip=True).mean(axis=1)
    np.testing.assert_allclose(feats.astype(np.float32), ref, rtol=2e-3, atol=2e-3)  # float16 storage


def test_crops_as_rows(data_dir, backbone, tmp_path):
    extract(data_dir, tmp_path / "out", backbone, batch_size=2, shard_size=4, augment="crops", n_crops=3,
            reduce="rows")
    feats, labels, ids = load_split(tmp_path / "out", "test")
    ds = data_stage.load_data(data_dir)
    n = len(ds.splits["test"])
    assert feats.shape == (3 * n, 16) and len(ids) == 3 * n and ids[:3] == [f"{ds.splits['test'].ids[0]}#{v}" for v in range(3)]
    assert labels.tolist() == np.repeat(ds.splits["test"].labels, 3).tolist()
    ref = reference(data_dir, backbone, "test", crops=("center", "top_left", "top_right"))
    np.testing.assert_allclose(feats, ref.reshape(3 * n, 16), rtol=1e-5, atol=1e-5)


def test_two_processes_write_shards_that_assemble_to_the_same_result(data_dir, backbone, tmp_path):
    extract(data_dir, tmp_path / "one", backbone, batch_size=4, shard_size=4)
    out = tmp_path / "two"
    s1, _ = extract(data_dir, out, backbone, 1, 2, finalize=False, batch_size=4, shard_size=4)
    names = sorted(p.name for p in (out / "train" / "shards").glob("*.npy"))
    assert names and names[0] != "000000000-000000004.npy"   # process 1 owns the second half
    s0, ctx = extract(data_dir, out, backbone, 0, 2, finalize=False, batch_size=4, shard_size=4)
    assert s0["computed"] + s1["computed"] == 29
    features.finalize(make_ctx(features.STAGE, fparams(batch_size=4, shard_size=4), out, inputs={"data": data_dir}))
    for split in ("train", "val", "test"):
        a, b = load_split(tmp_path / "one", split), load_split(out, split)
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]


def test_finalize_refuses_missing_shards(data_dir, backbone, tmp_path):
    extract(data_dir, tmp_path / "out", backbone, 0, 2, finalize=False, batch_size=4, shard_size=4)
    with pytest.raises(RuntimeError, match="shard.*missing"):
        features.finalize(make_ctx(features.STAGE, fparams(batch_size=4, shard_size=4), tmp_path / "out",
                                   inputs={"data": data_dir}))


def test_params_validation():
    with pytest.raises(ParamsError, match="multiple of batch_size"):
        fparams(batch_size=32, shard_size=100)
    with pytest.raises(ParamsError, match="efficientnet_lite0"):
        section(features.BackboneParams, "backbone", name="efficientnet_b99")


def _worker(data_dir, out, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.features_worker", str(data_dir), str(out), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_gives_identical_features(data_dir, backbone, tmp_path):
    out = tmp_path / "out"
    proc = _worker(data_dir, out, "--batch", "2", "--shard", "4", "--delay", "0.15")
    shard_dir = out / "train" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if len(list(shard_dir.glob("*.npy"))) >= 2:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"worker ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted(p.name for p in shard_dir.glob("*.npy"))
    assert 2 <= len(done) < 6 and not (out / "train" / "features.npy").exists()
    leftover = shard_dir / ".000000020-000000024.npy.tmp999"
    leftover.write_bytes(b"half a shard")  # as a kill mid-write leaves
    summary, _ = extract(data_dir, out, backbone, batch_size=2, shard_size=4)
    assert not leftover.exists()
    assert summary["resumed_shards"] == len(done) and summary["computed"] == 29 - 4 * len(done)
    extract(data_dir, tmp_path / "ref", backbone, batch_size=2, shard_size=4)
    for split in ("train", "val", "test"):
        a, b = load_split(out, split), load_split(tmp_path / "ref", split)
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]       # bit-identical, same order


def test_a_process_cleans_only_its_own_shards_temporaries(tmp_path):
    """Two processes share a split's shard folder: a late one must not delete the temporary a
    faster one is writing, only what a killed run left for its own shards."""
    from pipeline import shards

    ranges = shards.shard_ranges(16, 4)
    mine, theirs = shards.process_block(ranges, 0, 2), shards.process_block(ranges, 1, 2)
    stale = [tmp_path / f".{shards.shard_path(tmp_path, r).name}.tmp111" for r in mine]
    live = [tmp_path / f".{shards.shard_path(tmp_path, r).name}.tmp222" for r in theirs]
    for p in stale + live:
        p.write_bytes(b"partial")
    shards.clean_temporaries(tmp_path, mine)
    assert not any(p.exists() for p in stale) and all(p.exists() for p in live)


def test_a_split_is_assembled_only_once_its_ids_are_written(tmp_path, monkeypatch):
    """The features artifact's split marker: labels.npy first, ids.json last; a write killed in
    between leaves the split unassembled, so finalize assembles it again."""
    from pipeline import shards
    from pipeline.features import artifact

    with pytest.raises(FileNotFoundError, match="not a features stage output"):
        artifact.read_classes(tmp_path)
    artifact.write_classes(tmp_path, ["a", "b"])
    assert artifact.read_classes(tmp_path) == ["a", "b"]

    folder, ranges = tmp_path / "train" / "shards", shards.shard_ranges(5, 2)
    folder.mkdir(parents=True)
    for r in ranges[:-1]:
        shards.write_durable(shards.shard_path(folder, r), np.full((r[1] - r[0], 3), r[0], np.float32))
    with pytest.raises(RuntimeError, match=r"features: 1 shard\(s\) of split train are missing \(first: images 4..4\)"):
        shards.assemble_split("features", "train", folder, artifact.features_path(tmp_path, "train"), ranges, 1, 3,
                              np.float32)
    shards.write_durable(shards.shard_path(folder, ranges[-1]), np.full((1, 3), 4, np.float32))
    shards.assemble_split("features", "train", folder, artifact.features_path(tmp_path, "train"), ranges, 1, 3,
                          np.float32)
    assert not artifact.split_assembled(tmp_path, "train")

    def killed(*a, **k):
        raise KeyboardInterrupt("killed before ids.json")

    with monkeypatch.context() as m:
        m.setattr(shards, "write_durable_json", killed)
        with pytest.raises(KeyboardInterrupt):
            artifact.write_split_labels_ids(tmp_path, "train", np.arange(5) % 2, [f"i{k}" for k in range(5)])
    assert (tmp_path / "train" / "labels.npy").exists() and not artifact.split_assembled(tmp_path, "train")
    artifact.write_split_labels_ids(tmp_path, "train", np.arange(5) % 2, [f"i{k}" for k in range(5)])
    assert artifact.split_assembled(tmp_path, "train") and not artifact.split_assembled(tmp_path, "val")
    x, y, ids = artifact.load_split(tmp_path, "train")
    assert x[:, 0].tolist() == [0, 0, 2, 2, 4] and y.dtype == np.int32 and y.tolist() == [0, 1, 0, 1, 0]
    assert ids == ["i0", "i1", "i2", "i3", "i4"]


def test_two_devices_shard_the_batch(data_dir, backbone, tmp_path):
    # 2 virtual CPU devices, batch 3 (padded to 4 = 2 x 2), in a fresh process.
    proc = _worker(data_dir, tmp_path / "out", "--devices", "2", "--batch", "3", "--shard", "6")
    stdout, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-2000:]
    extract(data_dir, tmp_path / "ref", backbone, batch_size=3, shard_size=6)
    for split in ("train", "val", "test"):
        a, b = load_split(tmp_path / "out", split), load_split(tmp_path / "ref", split)
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "pets-dev").is_dir(), reason=f"real photos not found at {SHARED_DATA}")
def test_lite0_through_the_registry_on_real_photos(tmp_path):
    from pipeline.models import registry

    dp = {"data": section(data_stage.DataParams, "data", source="folder", path=str(SHARED_DATA / "pets-dev"),
                          max_per_class=1, val_fraction=0.0, test_fraction=0.0)}
    run_stage(data_stage.STAGE, dp, tmp_path / "data")
    cache = REPO / "cache"  # converted weights are shared with the other real-weight tests
    summary, _ = run_stage(features.STAGE, fparams(batch_size=16, shard_size=32), tmp_path / "feat",
                           inputs={"data": tmp_path / "data"}, cache_dir=cache)
    feats, labels, ids = load_split(tmp_path / "feat", "train")
    assert feats.shape == (37, 1280) and summary["computed"] == 37
    bb = registry.load_backbone("efficientnet_lite0", cache)
    ds = data_stage.load_data(tmp_path / "data")
    srcs = list(ds.sources("train"))[:3]
    px = np.stack([resize.resize_and_crop(images.decode_image(s), bb.spec) for s in srcs]).astype(np.float32)
    np.testing.assert_allclose(feats[:3], np.asarray(bb.embed(bb.params, px)), rtol=1e-4, atol=1e-4)


def test_tfds_source_through_shards_and_processes(backbone, tmp_path):
    from tests.tfds_fixtures import mock_tfds

    with mock_tfds(tmp_path / "tfds", "cats_vs_dogs", {"train": 30}):
        dp = {"data": section(data_stage.DataParams, "data", source="tfds", name="cats_vs_dogs")}
        run_stage(data_stage.STAGE, dp, tmp_path / "data")
        # Two processes, shards of 4: each reads its own slices of tfds's train split, skipping
        # the records carved into val and test.
        extract(tmp_path / "data", tmp_path / "out", backbone, 1, 2, finalize=False, batch_size=2, shard_size=4)
        extract(tmp_path / "data", tmp_path / "out", backbone, 0, 2, batch_size=2, shard_size=4)
        for split in ("train", "val", "test"):
            feats, labels, ids = load_split(tmp_path / "out", split)
            rec = data_stage.load_data(tmp_path / "data").splits[split]
            assert ids == rec.ids and labels.tolist() == rec.labels
            np.testing.assert_allclose(feats, reference(tmp_path / "data", backbone, split)[:, 0],
                                       rtol=1e-5, atol=1e-5)
