"""`export`: a self-contained classifier folder that runs without this project.

The folder holds, per format asked, ``model.<format>`` (uint8 RGB crops (B, S, S, 3) in, class
probabilities (B, C) out: pixel normalisation, backbone, test-time flips and head inside), plus
``labels.txt`` (one class per line, index = output column), ``preprocess.json`` (the exact
photo -> crop steps, and the model's input and output), ``preprocess.py`` (those steps with PIL
and numpy only) and ``README.md``, a model card: data, backbone, head, params, metrics, how to
load each format in three lines.

Resizing stays outside the model on purpose: the backbone was trained (and the head fit) on PIL's
antialiased bicubic resize, which no converter's resize op reproduces; an in-graph resize would
shift the probabilities by more than the formats differ from each other.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib import resources
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from pipeline import storage
from pipeline.errors import UserError, terminal_safe
from pipeline.predict import formats as fmt_lib
from pipeline.predict.model import Classifier, load_classifier
from pipeline.predict.resolve import RunRef


def model_fn(clf: Classifier) -> Callable:
    """uint8 (B, S, S, 3) centre crops -> (B, C) probabilities, weights closed over as constants.

    Raises:
      UserError: the run's features used corner crops, which need the resized photo, not one crop.
    """
    import jax.numpy as jnp

    pre = clf.preprocess
    if pre.crops != ("center",):
        raise UserError(f"the run's features used crops {list(pre.crops)} (features.augment="
                        f"{clf.run.features.get('augment')!r}); export takes one centre crop per photo. "
                        "Export a run with features.augment none or flip.")
    bp, hp = clf.backbone_params, clf.head_params

    def fn(x):                                                    # (B, S, S, 3) uint8
        views = jnp.stack([x, x[:, :, ::-1]], axis=1) if pre.flip else x[:, None]  # (B, V, S, S, 3)
        return clf.probabilities(bp, hp, views)                  # (B, C)

    return fn


def preprocess_config(clf: Classifier, written: Sequence[str], platform: str) -> dict:
    """The contents of preprocess.json."""
    from pipeline.images import DRAFT_MARGIN

    pre = clf.preprocess
    return {
        "input": {"name": "pixels", "dtype": "uint8", "shape": ["batch", pre.input_size, pre.input_size, 3],
                  "layout": "NHWC, RGB, 0..255"},
        "output": {"name": "probabilities", "dtype": "float32", "shape": ["batch", len(clf.classes)],
                   "meaning": "softmax over labels.txt (line i = column i)"},
        "steps": [
            "decode; apply the EXIF orientation; composite transparency on white; convert to RGB",
            "JPEG only: decode at 1/2, 1/4 or 1/8 scale (PIL Image.draft) when the shorter side "
            "stays >= draft_margin x resize_size",
            f"resize the shorter side to resize_size with PIL's {pre.resize_method} filter "
            "(antialiased); the longer side int(resize_size * long / short)",
            "crop input_size x input_size at the centre: left = round((width - input_size) / 2), "
            "top likewise",
            "inside the model: pixel normalisation" + (", the mirrored view, averaged" if pre.flip else ""),
        ],
        "input_size": pre.input_size, "resize_size": pre.resize_size, "resize_method": pre.resize_method,
        "draft_margin": DRAFT_MARGIN, "flip_inside_model": pre.flip, "reduce": pre.reduce,
        "normalization_inside_model": {"kind": pre.normalization, "mean": list(pre.mean), "std": list(pre.std)},
        "formats": {f: fmt_lib.FILES[f] for f in written}, "stablehlo_platforms": [platform],
        "labels": list(clf.classes),
    }


def export_classifier(run: RunRef, head: str, out: Path, formats: Sequence[str] = ("stablehlo",), *,
                      log: Callable[[str], None] = lambda m: None, check: bool = True,
                      force: bool = False) -> list[Path]:
    """Write the classifier folder, whole or not at all.

    Everything is written into a hidden sibling folder (``.<out>.export-<pid>``), which is then
    renamed to `out`: a killed export leaves no half folder at `out`, and a folder that held an
    earlier export never mixes old files with new ones.

    Args:
      run: from `pipeline.predict.resolve.load_run`.
      head: a head of `run` (see `resolve.choose_head`).
      out: the folder to create. An existing empty folder is fine; one holding files is refused
        unless `force`, which replaces it whole.
      formats: any of ``stablehlo``, ``onnx``, ``tflite``.
      log: progress lines.
      check: run each written model on two crops and compare with jax (recorded in the card).
      force: replace an existing non-empty `out`.

    Returns:
      The files written (their final paths under `out`).
    """
    fmts = list(dict.fromkeys(formats))
    for f in fmts:
        if f not in fmt_lib.FORMATS:
            raise UserError(f"--format {f!r}: choose one of {', '.join(fmt_lib.FORMATS)}.")
        fmt_lib.require(f)  # fail before any slow conversion
    out = Path(out)
    work = _start(out, force)   # before the slow part: a bad --out fails at once
    try:
        names = _write_folder(run, head, work, fmts, log, check)
        _swap_in(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return [out / n for n in names]


def _start(out: Path, force: bool) -> Path:
    """Check `out` and create the private sibling folder the export is built in."""
    from pipeline.errors import describe_os_error

    if out.is_symlink():
        raise UserError(f"--out {str(out)!r} is a symbolic link; pass the folder's real path (the "
                        f"export replaces the folder by a rename, which would replace the link).")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder; choose a folder name for "
                        f"the export (it is created).")
    if out.is_dir():
        try:
            full = any(out.iterdir())
        except OSError as e:
            raise UserError(describe_os_error(e, "--out")) from None
        if full and not force:
            raise UserError(f"--out {str(out)!r} already holds files (an earlier export?); pass "
                            f"--force to replace the folder whole, or choose another --out. "
                            f"Nothing was written.")
    parent = out.absolute().parent
    for stale in parent.glob(f".{out.name}.export-*") if parent.is_dir() else ():
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not storage.pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)   # left by a killed export
    work = parent / f".{out.name}.export-{os.getpid()}"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
    except OSError as e:
        raise UserError(f"--out {str(out)!r} cannot be written: creating the folder {str(work)!r} "
                        f"to build it in failed ({e.strerror or type(e).__name__}); choose a folder "
                        f"you may write to.") from None
    return work


def _swap_in(work: Path, out: Path) -> None:
    """Rename the finished folder to `out`, replacing what was there (empty, or --force)."""
    from pipeline import folders

    if not out.exists():
        os.replace(work, out)
        return
    if folders.exchange(work, out):   # one atomic step: `out` is the old folder, then the new
        shutil.rmtree(work, ignore_errors=True)
        return
    trash = out.absolute().parent / f".{out.name}.replaced-{os.getpid()}"
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(out, trash)
    os.replace(work, out)
    shutil.rmtree(trash, ignore_errors=True)


def _write_folder(run: RunRef, head: str, out: Path, fmts: Sequence[str],
                  log: Callable[[str], None], check: bool) -> list[str]:
    """Write every file of the export into `out`; returns their names."""
    import jax

    written: list[Path] = []
    checks: dict[str, float] = {}
    clfs: dict[str, Classifier] = {}
    for f in fmts:
        # StableHLO keeps the run's depthwise choice (fast on this platform); the converters get
        # the library convolution, which they map to their own depthwise op. Same numbers.
        dw = None if f == "stablehlo" else "xla"
        clf = clfs.get(dw or "run") or load_classifier(run, head, depthwise=dw)
        clfs[dw or "run"] = clf
        fn = model_fn(clf)
        path = out / fmt_lib.FILES[f]
        log(f"export: writing {path.name} ...")
        seconds = fmt_lib.write(f, fn, clf.preprocess.input_size, path)
        log(f"export: {path.name} ({path.stat().st_size / 1e6:.1f} MB) in {seconds:.1f} s")
        if check:
            checks[f] = _check(f, path, clf)
        written.append(path)
    clf = next(iter(clfs.values()))
    # One class per line: a control character in a class name (a newline!) is written escaped,
    # so line i is always column i; preprocess.json's "labels" keeps the exact names.
    (out / "labels.txt").write_text("".join(f"{terminal_safe(c)}\n" for c in clf.classes))
    cfg = preprocess_config(clf, fmts, jax.default_backend())
    (out / "preprocess.json").write_text(json.dumps(cfg, indent=1))
    (out / "preprocess.py").write_text(resources.files("pipeline.predict").joinpath(
        "preprocess_template.py").read_text())
    from pipeline.predict.card import model_card

    (out / "README.md").write_text(model_card(run, head, clf, fmts, checks))
    written += [out / n for n in ("labels.txt", "preprocess.json", "preprocess.py", "README.md")]
    return [p.name for p in written]


def _check(fmt: str, path: Path, clf: Classifier) -> float:
    """Largest |probability difference| of the written model against jax on two random crops."""
    import jax

    size, flip = clf.preprocess.input_size, clf.preprocess.flip
    x = np.random.default_rng(0).integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    views = np.stack([x, x[:, :, ::-1]], axis=1) if flip else x[:, None]
    # The same function with the weights as arguments: compiles faster than with them as constants.
    want = np.asarray(clf.jitted()(clf.backbone_params, clf.head_params, views))
    if fmt == "stablehlo":
        got = np.asarray(jax.export.deserialize(bytearray(path.read_bytes())).call(x))
    elif fmt == "onnx":
        import onnxruntime as ort

        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    else:
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(path))
        i = it.get_input_details()[0]["index"]
        it.resize_tensor_input(i, x.shape)
        it.allocate_tensors()
        it.set_tensor(i, x)
        it.invoke()
        got = it.get_tensor(it.get_output_details()[0]["index"])
    diff = float(np.abs(np.asarray(got) - want).max())
    if not diff < 1e-3:
        raise RuntimeError(f"export: {path.name} differs from the jax classifier by {diff:.3g} in "
                           "probability on random crops; the conversion is wrong, do not use it.")
    return diff
