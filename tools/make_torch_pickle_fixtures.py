"""Write tiny PyTorch checkpoints (zip and legacy format) that tests/test_torch_pickle.py reads without torch.

Needs torch (a reference-only dependency): run it from an environment that has it, e.g.
  /tmp/torchvenv/bin/python tools/make_torch_pickle_fixtures.py
Writes tests/golden/torch_tiny_{zip,legacy}.pt and the expected arrays in torch_tiny_expected.npz.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).resolve().parents[1] / "tests" / "golden"


def make_state() -> dict:
    torch.manual_seed(0)  # Conv2d/BatchNorm init draws from the global generator
    g = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    state = net.state_dict()  # OrderedDict with _metadata, int64 num_batches_tracked
    base = torch.randn(6, 5, generator=g)
    state["view.transposed"] = base.t()            # non-contiguous: stride (1, 5)
    state["view.rows"] = base[2:4]                  # shares base's storage at offset 10
    state["half"] = torch.randn(7, generator=g).half()
    state["bf16"] = torch.randn(3, 2, generator=g).to(torch.bfloat16)
    state["mask"] = torch.tensor([True, False, True])
    state["param"] = torch.nn.Parameter(torch.arange(4.0))  # pickled via _rebuild_parameter
    return state


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    state = make_state()
    torch.save(state, OUT / "torch_tiny_zip.pt")
    torch.save(state, OUT / "torch_tiny_legacy.pt", _use_new_zipfile_serialization=False)
    expected = {k: (v.detach().float() if v.dtype == torch.bfloat16 else v.detach()).numpy() for k, v in state.items()}
    np.savez(OUT / "torch_tiny_expected.npz", **expected)
    print({k: (tuple(v.shape), str(v.dtype)) for k, v in state.items()})


if __name__ == "__main__":
    main()
