"""Stages `trunk` and `finetune`: cached activations at the cut, resume after SIGKILL, LP-FT training,
and which params rerun which stage.

The stage tests run on real photos (cats-dogs-dev) through the tiny cuttable test backbone, so
each pass takes a second; the cut itself is checked on the real backbones in tests/test_cut.py.
"""

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

from pipeline import planner
from pipeline.finetune import artifact as ft_artifact
from pipeline.finetune.artifact import load_split
from pipeline.graph import load_graph
from pipeline.params import ParamsError
from stages import data as data_stage
from stages import finetune, trunk
from tests import tiny_backbone
from tests.stage_helpers import SHARED_DATA, make_ctx, run_stage, section

REPO = Path(__file__).resolve().parents[1]
PHOTOS = SHARED_DATA / "cats-dogs-dev"


def trunk_params(**kw):
    kw = {"enabled": True, "unfreeze": "conv2", "views": 2, "batch_size": 4, "shard_size": 8, **kw}
    return {"backbone": section(_backbone_cls(), "backbone"),
            "finetune": section(trunk.FinetuneParams, "finetune", **kw)}


def _backbone_cls():
    from stages.features import BackboneParams

    return BackboneParams


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """The data stage over 12 real photos per class (train 12 / val 6 / test 6 or so)."""
    if not PHOTOS.is_dir():
        pytest.skip(f"{PHOTOS} is absent (real photos live in ../shared/data next to the repo)")
    tmp = tmp_path_factory.mktemp("ft")
    params = {"data": section(data_stage.DataParams, "data", source="folder", path=str(PHOTOS),
                              val_fraction=0.25, test_fraction=0.25, max_per_class=6)}
    run_stage(data_stage.STAGE, params, tmp / "data")
    return tmp / "data"


@pytest.fixture(scope="module")
def trunk_dir(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trunk") / "out"
    ctx = make_ctx(trunk.STAGE, trunk_params(), out, inputs={"data": data_dir})
    trunk.extract(ctx, tiny_backbone.make_cuttable())
    trunk.finalize(ctx)
    return out


def test_trunk_rows_are_the_cut_of_the_centre_and_augmented_views(data_dir, trunk_dir):
    from pipeline import images, resize
    from pipeline.models import cut

    bb = tiny_backbone.make_cuttable()
    c = cut.split(bb, "conv2")
    info = json.loads((trunk_dir / "info.json").read_text())
    assert info["activation_shape"] == [16, 16, 8] and info["rows_per_image"] == {"train": 3, "val": 1, "test": 1}
    acts, labels, ids = load_split(trunk_dir, "train")
    assert acts.shape[:2] == (len(labels), 3) and acts.dtype == np.float16
    assert all(ft_artifact.split_assembled(trunk_dir, s) for s in ("train", "val", "test"))
    assert not ft_artifact.split_assembled(trunk_dir, "absent") and not (trunk_dir / "train" / "shards").exists()
    assert ft_artifact.read_trunk_classes(trunk_dir) == data_stage.load_data(data_dir).classes
    ds = data_stage.load_data(data_dir)
    src = next(ds.sources("train"))
    img = images.decode_image(src, min_size=max(bb.spec.resize_size, bb.spec.input_size))  # as the stages decode
    centre = resize.resize_and_crop(img, bb.spec)[None].astype(np.float32)
    # Row 0 is the backbone's own preprocessing: through the top it gives embed's features.
    np.testing.assert_allclose(np.asarray(c.top(bb.params, acts[:1, 0])), np.asarray(bb.embed(bb.params, centre)),
                               atol=1e-3 * float(np.abs(bb.embed(bb.params, centre)).max()))
    assert not np.array_equal(acts[0, 1], acts[0, 0]) and not np.array_equal(acts[0, 1], acts[0, 2])


def _worker(data_dir, out, *args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.trunk_worker", str(data_dir), str(out), *args],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_then_resume_gives_identical_activations(data_dir, trunk_dir, tmp_path):
    out = tmp_path / "out"
    proc = _worker(data_dir, out, "--delay", "0.3")
    shard_dir = out / "train" / "shards"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(shard_dir.glob("*.npy")):
        time.sleep(0.05)
    assert proc.poll() is None, f"worker ended before it could be killed: {proc.communicate()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = list(shard_dir.glob("*.npy"))
    assert len(done) == 1 and not (out / "train" / "activations.npy").exists()
    ctx = make_ctx(trunk.STAGE, trunk_params(), out, inputs={"data": data_dir})
    stats = trunk.extract(ctx, tiny_backbone.make_cuttable())
    assert stats["resumed_shards"] == 1
    trunk.finalize(ctx)
    for split in ("train", "val", "test"):
        a, b = load_split(out, split), load_split(trunk_dir, split)
        assert np.array_equal(a[0], b[0]) and a[2] == b[2]  # bit-identical: the random views are seeded


def _probe(trunk_dir, out: Path) -> None:
    """A logistic-regression probe on the centre views' features, saved as the heads stage saves it."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.heads.trained import save_head
    from pipeline.models import cut

    bb = tiny_backbone.make_cuttable()
    c = cut.split(bb, "conv2")
    acts, y, _ = load_split(trunk_dir, "train")
    feats = np.asarray(c.top(bb.params, acts[:, 0]))
    lr = LogisticRegression(C=0.01, max_iter=2000).fit(feats, y)  # weak on purpose: room to improve
    classes = json.loads((trunk_dir / "classes.json").read_text())
    out.mkdir(parents=True)
    save_head(out, "logreg", "linear", {"W": lr.coef_.T, "b": lr.intercept_}, {}, classes)


def test_finetune_beats_its_probe_on_train_loss_and_keeps_the_best_val_epoch(data_dir, trunk_dir, tmp_path):
    _probe(trunk_dir, tmp_path / "heads")
    params = {"backbone": section(_backbone_cls(), "backbone"),
              "finetune_train": section(finetune.FinetuneTrainParams, "finetune_train", epochs=6, batch_size=8,
                                        lr_head=3e-3, lr_backbone=3e-3, patience=6, warmup_epochs=0.5)}
    ctx = make_ctx(finetune.STAGE, params, tmp_path / "ft", inputs={"trunk": trunk_dir, "heads": tmp_path / "heads"})
    summary = finetune.train(ctx, tiny_backbone.make_cuttable())
    m = json.loads((tmp_path / "ft" / "metrics.json").read_text())
    head = m["heads"]["finetune"]
    assert {"train", "val", "test", "hyperparameters"} <= set(head)  # the heads stage's structure
    assert set(head["test"]) >= {"accuracy", "mean_per_class_accuracy", "log_loss", "confusion_matrix"}
    # LP-FT: epoch 0 is the probe, so the kept params can only be as good on val or better.
    assert m["probe"]["val"]["accuracy"] == pytest.approx(m["start"]["val_accuracy"])
    assert m["best_train_loss"] < m["start"]["train_loss"]
    hist = m["history"]
    best = max([(m["start"]["val_accuracy"], -m["start"]["val_loss"], 0)]
               + [(h["val_accuracy"], -h["val_loss"], h["epoch"]) for h in hist])
    assert summary["best_epoch"] == head["hyperparameters"]["best_epoch"] == best[2]
    assert head["val"]["accuracy"] == pytest.approx(best[0], abs=1e-4)  # history rounds to 5 digits
    assert (tmp_path / "ft" / "predictions_finetune.json").exists() and (tmp_path / "ft" / "finetune.npz").exists()
    # One type, one writer, one reader: the typed metrics write the same JSON back.
    got = ft_artifact.read_metrics(tmp_path / "ft")
    assert got.heads.heads["finetune"].splits["test"] == head["test"] and got.history == hist
    (tmp_path / "again").mkdir()
    ft_artifact.write_metrics(tmp_path / "again", got)
    assert json.loads((tmp_path / "again" / "metrics.json").read_text()) == m
    _check_pixel_model(data_dir, trunk_dir, tmp_path / "ft")


def _check_pixel_model(data_dir: Path, trunk_dir: Path, ft_dir: Path) -> None:
    """The gradient stages' view of the fine-tuned classifier (backbone with the trained top merged
    in, on pixels) gives the logits the stage computed from the cached activations."""
    from pipeline import images, resize
    from pipeline.finetune import model as finetuned
    from pipeline.gradients import model as model_lib
    from pipeline.sources import load_data

    bb = tiny_backbone.make_cuttable()
    merged, head = finetuned.load_finetuned(ft_dir, bb)
    preds = json.loads((ft_dir / "predictions_finetune.json").read_text())["predictions"]
    acts, _, ids = load_split(trunk_dir, "test")
    model, seg = model_lib.multi_head_model(bb, {"imagenet": "imagenet", "finetune": head}, {"finetune": merged})
    src = next(load_data(data_dir).sources("test"))
    img = images.decode_image(src, min_size=max(bb.spec.resize_size, bb.spec.input_size))
    pixels = resize.resize_and_crop(img, bb.spec)[None].astype(np.float32)
    logits = np.asarray(model.apply(model.params, pixels))[0, slice(*seg["finetune"])]
    assert head.classes[int(np.argmax(logits))] == preds[0]["pred"] and preds[0]["id"] == ids[0]
    p = np.exp(logits - logits.max())
    assert float(p.max() / p.sum()) == pytest.approx(preds[0]["p_pred"], abs=1e-3)  # float16 cache rounding


def test_the_fine_tuned_classifier_is_one_more_head_to_every_reader(tmp_path):
    """`read_with_finetune` adds the finetune stage's head to the heads stage's; the disabled
    stage's stub reads as no head."""
    from pipeline.heads import artifact
    from pipeline.heads.artifact import HeadMetrics, HeadsMetrics

    report = {"accuracy": 0.5, "mean_per_class_accuracy": 0.5, "log_loss": 0.7}
    heads = HeadsMetrics(classes=["cat", "dog"], heads={"logreg": HeadMetrics(hyper={"C": 1.0}, splits={"test": report})})
    for d in ("heads", "ft", "off"):
        (tmp_path / d).mkdir()
    artifact.write_metrics(tmp_path / "heads", heads)
    tuned = HeadMetrics(hyper={"best_epoch": 2}, splits={"val": report, "test": {**report, "accuracy": 0.75}})
    ft = ft_artifact.FinetuneMetrics(heads=HeadsMetrics(classes=["cat", "dog"], heads={"finetune": tuned}),
                                     probe={"test": {"accuracy": 0.5}}, start={"val_loss": 0.7}, best_train_loss=0.4,
                                     history=[{"epoch": 1, "val_accuracy": 0.5}], seconds={"total": 1.0},
                                     best_probe={"head": "logreg", "split": "test", "accuracy": 0.5, "gain": 0.25})
    ft_artifact.write_metrics(tmp_path / "ft", ft)
    ft_artifact.write_metrics(tmp_path / "off", None)
    assert json.loads((tmp_path / "off" / "metrics.json").read_text()) == {"enabled": False}
    assert ft_artifact.read_metrics(tmp_path / "ft") == ft and ft_artifact.read_metrics(tmp_path / "off") is None
    both = ft_artifact.read_with_finetune(tmp_path / "heads", tmp_path / "ft")
    assert list(both.heads) == ["logreg", "finetune"] and both.heads["finetune"] == tuned
    assert both.classes == heads.classes and both.heads["logreg"] == heads.heads["logreg"]
    assert ft_artifact.read_with_finetune(tmp_path / "heads", tmp_path / "off") == heads
    assert ft_artifact.read_with_finetune(tmp_path / "heads") == heads
    assert ft_artifact.read_with_finetune(tmp_path / "absent", tmp_path / "ft") is None
    # Neither the stub nor the writer's shape: the damaged-output error, naming the file and the fix.
    from pipeline.errors import UserError

    (tmp_path / "off" / "metrics.json").write_text('{"enabled": true}')
    with pytest.raises(UserError, match=r"off/metrics.json.*--force finetune"):
        ft_artifact.read_metrics(tmp_path / "off")


def test_bad_cut_names_the_key_and_near_layers():
    with pytest.raises(ParamsError, match=r"finetune.unfreeze: .*'head_cnv'.*Did you mean 'head_conv'"):
        trunk.check_cut("efficientnet_lite0", "head_cnv")
    with pytest.raises(ParamsError, match="shard_size"):
        section(trunk.FinetuneParams, "finetune", batch_size=3, shard_size=8)


def test_learning_rate_reruns_only_finetune_and_views_rerun_the_trunk(tmp_path):
    graph = load_graph()

    def keys(*overrides):
        params = planner.resolve_params(graph, [], list(overrides))
        return {n: p.key for n, p in planner.plan(graph, params, tmp_path).items()}

    base = keys()
    lr = keys("finetune_train.lr_backbone=0.00001")
    # Disabled (the default): no fine-tuned head exists, so the gradient stages stay put.
    assert {n for n in base if base[n] != lr[n]} == {"finetune", "report"}
    views = keys("finetune.views=8")
    assert {n for n in base if base[n] != views[n]} == {"trunk", "finetune", "report"}
    # Enabled: the gradient stages read the fine-tuned head (adversarial.head: finetune), so they follow it.
    on = keys("finetune.enabled=true")
    on_lr = keys("finetune.enabled=true", "finetune_train.lr_backbone=0.00001")
    assert {n for n in on if on[n] != on_lr[n]} == {"finetune", "ideal", "adversarial", "report"}
    on_views = keys("finetune.enabled=true", "finetune.views=8")
    assert {n for n in on if on[n] != on_views[n]} == {"trunk", "finetune", "ideal", "adversarial", "report"}


def test_refit_on_train_val_for_the_chosen_epochs(trunk_dir, tmp_path):
    _probe(trunk_dir, tmp_path / "heads")
    params = {"backbone": section(_backbone_cls(), "backbone"),
              "finetune_train": section(finetune.FinetuneTrainParams, "finetune_train", epochs=2, batch_size=8,
                                        lr_head=3e-3, lr_backbone=3e-3, patience=2, refit=True)}
    ctx = make_ctx(finetune.STAGE, params, tmp_path / "ft", inputs={"trunk": trunk_dir, "heads": tmp_path / "heads"})
    summary = finetune.train(ctx, tiny_backbone.make_cuttable())
    hyper = json.loads((tmp_path / "ft" / "metrics.json").read_text())["heads"]["finetune"]["hyperparameters"]
    assert hyper["refit"]["epochs"] == hyper["best_epoch"] == summary["best_epoch"]
    if hyper["best_epoch"]:
        n = sum(len(load_split(trunk_dir, s)[1]) for s in ("train", "val"))
        assert hyper["refit"]["images"] == n
