"""Read PyTorch ``state_dict`` checkpoints into numpy arrays without importing torch.

``torch.save`` (torch >= 1.6) writes a zip archive laid out as::

    <archive>/data.pkl          # pickle of the saved object; tensors are persistent ids
    <archive>/byteorder         # "little" or "big" (absent in old files: little)
    <archive>/data/<key>        # raw bytes of storage <key>
    <archive>/.format_version, <archive>/version, ...

The top folder name ``<archive>`` is whatever the file was called when it was saved, so it is
discovered from the ``data.pkl`` entry rather than assumed.

The legacy format (torch < 1.6, or ``torch.save(..., _use_new_zipfile_serialization=False)``) is
also read. It is a plain sequence of pickles and raw data in one file::

    pickle(MAGIC_NUMBER) pickle(1001) pickle(sys_info)
    pickle(obj)                 # persistent ids ("storage", type, key, location, numel, view)
    pickle([key, ...])          # storage keys, in the order their data follows
    for each key: int64 LE element count, then count * element_size bytes (little-endian)

Such a file is read into memory whole. Since the storage data follows the object pickle, that
pickle is unpickled twice: a dry run that only records each storage's type and size (so the data
can be located), then the real one. The even older tar format (torch <= 0.1.x) is refused with
a clear error.

Unpickling an arbitrary pickle can execute arbitrary code, so every pickle is read with a
restricted :class:`pickle.Unpickler` whose ``find_class`` only resolves the handful of globals a
plain tensor ``state_dict`` needs (tensor/parameter rebuild functions, typed storage classes,
``collections.OrderedDict``) and maps each one to a local numpy implementation. Any other
global (``os.system``, a model class, a TorchScript ``__torch__`` type, ...) raises
:class:`ValueError` naming it; nothing from the checkpoint is ever imported or called.

Nor can a checkpoint change how later checkpoints load. Pickle's ``BUILD`` opcode writes into
whatever object it is given, so a shared stand-in would let one file poison every later load in
the process; :mod:`cptrans_jax.safe_unpickle` describes the defence. In short: each pickle is
scanned before it is loaded, and exactly the scanned bytes are unpickled (only the opcodes a
state dict needs, so no ``INST``/``OBJ``/``NEWOBJ``; lengths, memo indices and nesting are
bounded); every global resolves to a *fresh*, immutable stand-in per reference that refuses
``BUILD`` and attribute writes; storage types cannot be called; the rebuild functions check
what they are given; and ``BUILD`` is only accepted on an ``OrderedDict`` the load itself
created (torch's ``_metadata`` attribute, which is dropped). Every refusal is a one-line
:class:`ValueError` naming the file.

Supported storage dtypes: float32, float64, float16, bfloat16, int64, int32, int16, int8, uint8,
bool. numpy has no native bfloat16, so **bfloat16 tensors are returned as float32**; the
conversion is exact (bfloat16 is the upper half of a float32). ``ml_dtypes`` is used for it when
importable, otherwise the bits are shifted into place by hand. Tensors saved from a GPU load
fine (the device tag is ignored); big-endian checkpoints are converted to native byte order.

Public API: :func:`load_torch_state_dict`.
"""

from __future__ import annotations

import errno
import io
import math
import os
import pickle
import reprlib
import struct
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import IO, Any

import numpy as np

from cptrans_jax.safe_unpickle import (
    Frozen,
    Function,
    UnsafePickleError,
    new_ordered_dict,
    scan_pickle,
)

try:  # Optional: ml_dtypes ships with jaxlib, but this module must not depend on it.
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - exercised only where ml_dtypes is absent
    _ml_dtypes = None

__all__ = ["load_torch_state_dict"]

# Keys under which training scripts commonly nest the real state dict, tried in this order when
# the top-level dict holds no tensors of its own.
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")

_MAX_WRAPPER_DEPTH = 3

_DATAPARALLEL_PREFIX = "module."

# Legacy (pre-1.6, or `_use_new_zipfile_serialization=False`) files are a bare sequence of
# pickles; they start with the PROTO opcode.
_PICKLE_PROTO = b"\x80"
_ZIP_MAGIC = b"PK"
# Even older (torch <= 0.1.x) files are tar archives: "ustar" at offset 257 of the header.
_TAR_MAGIC_OFFSET = 257
_TAR_MAGIC = b"ustar"
_HEAD_SIZE = _TAR_MAGIC_OFFSET + len(_TAR_MAGIC)

# torch.serialization.MAGIC_NUMBER / PROTOCOL_VERSION of the legacy format.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001
# Legacy storage data is always little-endian, prefixed by an int64 element count.
_LEGACY_COUNT = struct.Struct("<q")

_RESAVE_HINT = "re-save it with a recent torch: `torch.save(torch.load(p), p2)`"
_ONLY_STATE_DICTS = "only plain tensor state dicts are supported"

# data.pkl is read into memory to be scanned; a state dict's pickle is a few MB at most.
_MAX_PICKLE_BYTES = 1 << 30
# A tensor may expand its storage (stride 0) only up to this size once copied.
_MAX_EXPANDED_BYTES = 1 << 30


class _BriefRepr(reprlib.Repr):
    """For error messages about values read from a pickle: bounded in length and depth."""

    def __init__(self) -> None:
        super().__init__()
        self.maxstring = self.maxother = 80
        self.maxlevel = 3

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, (Frozen, bool, float, bytes, type(None))):
            return super().repr_instance(x, level)
        return f"<{type(x).__name__}>"  # e.g. a dict subclass, whose repr could be huge


_brief = _BriefRepr()


class _CheckpointError(ValueError):
    """A ValueError whose message already names the file (the rest get the path prepended)."""


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class _StorageType(Frozen):
    """Stand-in for a ``torch.<X>Storage`` class: only its element dtype matters here."""

    __slots__ = ("name", "dtype", "is_bfloat16")

    def __init__(self, label: str, name: str, dtype: str, is_bfloat16: bool = False) -> None:
        super().__init__(label)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "dtype", np.dtype(dtype))
        # bfloat16 is read as raw uint16 bits and widened to float32 per tensor.
        object.__setattr__(self, "is_bfloat16", is_bfloat16)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _StorageType) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


class _Storage(Frozen):
    """A loaded storage record: a flat, read-only array of ``numel`` elements."""

    __slots__ = ("type", "data")

    def __init__(self, storage_type: _StorageType, data: np.ndarray) -> None:
        super().__init__(f"storage of {storage_type.name}")
        object.__setattr__(self, "type", storage_type)
        object.__setattr__(self, "data", data)


# name -> (numpy dtype, is bfloat16). Stand-ins are built from these per reference, so no load
# can change what the next one sees.
_STORAGE_SPECS: Mapping[str, tuple[str, bool]] = MappingProxyType(
    {
        "FloatStorage": ("float32", False),
        "DoubleStorage": ("float64", False),
        "HalfStorage": ("float16", False),
        "BFloat16Storage": ("uint16", True),
        "LongStorage": ("int64", False),
        "IntStorage": ("int32", False),
        "ShortStorage": ("int16", False),
        "CharStorage": ("int8", False),
        "ByteStorage": ("uint8", False),
        "BoolStorage": ("bool", False),
    }
)


def _bfloat16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen raw bfloat16 bit patterns (uint16) to float32 exactly."""
    if _ml_dtypes is not None:
        return bits.view(_ml_dtypes.bfloat16).astype(np.float32)
    # bfloat16 is the top 16 bits of a float32, so shifting them up reproduces the value
    # bit-for-bit (NaN payloads and signed zeros included).
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _rebuild_tensor_v2(
    storage: _Storage,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    requires_grad: bool = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """numpy counterpart of ``torch._utils._rebuild_tensor_v2``; autograd fields are dropped."""
    del requires_grad, backward_hooks, metadata  # meaningless without torch
    if not isinstance(storage, _Storage):
        raise ValueError(f"tensor rebuild got {type(storage).__name__}, expected a storage")
    if not all(isinstance(v, (tuple, list)) for v in (size, stride)):
        raise ValueError(
            f"invalid tensor geometry: size={_brief.repr(size)}, stride={_brief.repr(stride)}"
        )
    size = tuple(int(n) for n in size)
    stride = tuple(int(s) for s in stride)
    storage_offset = int(storage_offset)
    flat = storage.data
    if len(size) != len(stride) or any(n < 0 for n in size) or any(s < 0 for s in stride):
        raise ValueError(f"invalid tensor geometry: size={size}, stride={stride}")
    if storage_offset < 0:
        raise ValueError(f"invalid tensor storage offset {storage_offset}")

    numel = math.prod(size)
    if numel > flat.size and numel * flat.itemsize > _MAX_EXPANDED_BYTES:
        raise ValueError(
            f"refusing tensor of size {size}: it expands its storage of {flat.size} elements "
            f"past {_MAX_EXPANDED_BYTES} bytes"
        )
    if 0 in size:
        out = np.empty(size, dtype=flat.dtype)
    else:
        # as_strided does no bounds checking, so a corrupt or hostile checkpoint could
        # otherwise make it read arbitrary process memory. Check the furthest element first.
        last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
        if last >= flat.size:
            raise ValueError(
                f"tensor of size {size}, stride {stride}, offset {storage_offset} "
                f"reaches past its storage of {flat.size} elements"
            )
        view = np.lib.stride_tricks.as_strided(
            flat[storage_offset:],
            shape=size,
            strides=tuple(s * flat.itemsize for s in stride),
            writeable=False,
        )
        # Copy so the result is contiguous, writable and does not pin the whole storage
        # (a slice of a large tensor would otherwise keep all of it alive).
        out = view.copy(order="C")

    if not out.dtype.isnative:  # big-endian checkpoint on a little-endian host, or vice versa
        out = out.astype(out.dtype.newbyteorder("="))
    if storage.type.is_bfloat16:
        out = _bfloat16_bits_to_float32(out)
    return out


def _rebuild_tensor(
    storage: _Storage, storage_offset: int, size: tuple[int, ...], stride: tuple[int, ...]
) -> np.ndarray:
    """``torch._utils._rebuild_tensor`` (torch < 0.4 pickles): the same without autograd."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


class _DryTensor(Frozen):
    """A tensor in the legacy format's dry run, before its storage's bytes have been read."""

    __slots__ = ()

    def __init__(self) -> None:
        super().__init__("tensor (legacy dry run)")


def _dry_rebuild_tensor(*args: Any) -> _DryTensor:
    """Stand-in for the tensor rebuild functions while storage data is not yet available."""
    del args
    return _DryTensor()


def _rebuild_parameter(
    data: np.ndarray, requires_grad: bool = False, backward_hooks: Any = None
) -> np.ndarray:
    """``torch._utils._rebuild_parameter``: a Parameter is just its data here."""
    del requires_grad, backward_hooks
    if not isinstance(data, (np.ndarray, _DryTensor)):
        raise UnsafePickleError(
            f"refusing a parameter made of {_brief.repr(data)}, not a tensor (pickle REDUCE)"
        )
    return data


def _rebuild_parameter_with_state(
    data: np.ndarray, requires_grad: bool, backward_hooks: Any, state: Any
) -> np.ndarray:
    """``torch._utils._rebuild_parameter_with_state``: Python attributes on it are dropped."""
    del state
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _get_layout(name: str) -> str:
    """``torch.serialization._get_layout``: layouts are only ever echoed back, keep the name."""
    if not isinstance(name, str):
        raise ValueError(f"invalid tensor layout {_brief.repr(name)}")
    return name


def _globals_table(*, dry_run: bool) -> Mapping[tuple[str, str], Callable[[], Any]]:
    """The complete set of globals a checkpoint may reference, each mapped to a factory.

    ``find_class`` calls the factory, so every reference gets a new local, side-effect free
    stand-in (see :mod:`cptrans_jax.safe_unpickle`); nothing is imported from the names the
    pickle supplies. In the legacy format's dry run tensors are not built.
    """
    table: dict[tuple[str, str], Callable[[], Any]] = {
        ("collections", "OrderedDict"): partial(
            Function, "collections.OrderedDict", new_ordered_dict
        ),
        ("torch", "strided"): partial(Frozen, "torch.strided"),
    }
    # The local functions carry torch's names.
    for module, func in [
        ("torch._utils", _rebuild_tensor_v2),
        ("torch._utils", _rebuild_tensor),
        ("torch._utils", _rebuild_parameter),
        ("torch._utils", _rebuild_parameter_with_state),
        ("torch.serialization", _get_layout),
    ]:
        run = (
            _dry_rebuild_tensor
            if dry_run and func in (_rebuild_tensor_v2, _rebuild_tensor)
            else func
        )
        table[(module, func.__name__)] = partial(Function, f"{module}.{func.__name__}", run)
    # Old legacy files may name the CUDA storage classes; the device does not matter here.
    for module in ("torch", "torch.cuda"):
        for name, (dtype, is_bfloat16) in _STORAGE_SPECS.items():
            label = f"{module}.{name}"
            table[(module, name)] = partial(_StorageType, label, name, dtype, is_bfloat16)
    return MappingProxyType(table)


_SAFE_GLOBALS = _globals_table(dry_run=False)
# Globals for the legacy format's first (dry) pass over the object pickle: same allow-list, but
# tensors are not built, since their storages' bytes only come after the pickle.
_DRY_RUN_GLOBALS = _globals_table(dry_run=True)


def _check_global(path: str, module: str, name: str) -> None:
    if (module, name) in _SAFE_GLOBALS:
        return
    hint = ""
    if module.startswith("__torch__"):
        hint = (
            " (this looks like a TorchScript archive from torch.jit.save; "
            "save model.state_dict() with torch.save instead)"
        )
    raise _CheckpointError(
        _one_line(
            f"{path}: refusing to load global '{module:.100}.{name:.100}' from the "
            f"checkpoint; {_ONLY_STATE_DICTS}{hint}"
        )
    )


def _scan(data: bytes, start: int, path: str) -> bytes:
    """Check the pickle at ``data[start:]`` and return exactly its bytes, for unpickling.

    See :func:`cptrans_jax.safe_unpickle.scan_pickle`.
    """
    try:
        end = scan_pickle(data, start, check_global=partial(_check_global, path))
    except UnsafePickleError as exc:
        raise _CheckpointError(_one_line(f"{path}: {exc}; {_ONLY_STATE_DICTS}")) from None
    return data[start:end]


class _SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in ``self._globals`` and no persistent ids.

    ``data`` is a pickle :func:`_scan` returned. Refusals and the stand-ins' errors come out
    of :meth:`load` as one-line ValueErrors naming the file.
    """

    _globals: Mapping[tuple[str, str], Callable[[], Any]] = _SAFE_GLOBALS

    def __init__(self, data: bytes, *, path: str) -> None:
        super().__init__(io.BytesIO(data))
        self._path = path

    def load(self) -> Any:
        try:
            return super().load()
        except _CheckpointError:
            raise
        except UnsafePickleError as exc:
            message = f"{self._path}: {exc}; {_ONLY_STATE_DICTS}"
        except ValueError as exc:  # from a stand-in (bad tensor geometry, ...) or numpy
            message = f"{self._path}: {exc}"
        raise _CheckpointError(_one_line(message)) from None

    def find_class(self, module: str, name: str) -> Any:
        _check_global(self._path, module, name)
        return self._globals[(module, name)]()

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f"unexpected persistent id {_brief.repr(pid)}")


class _RestrictedUnpickler(_SafeUnpickler):
    """Unpickler for ``data.pkl`` that resolves only :data:`_SAFE_GLOBALS`.

    Storages are persistent ids ``("storage", storage_type, key, location, numel)``; their bytes
    are read from ``<prefix>data/<key>`` in the archive, once per key, since views and tied
    weights share one storage.
    """

    def __init__(
        self,
        data: bytes,
        *,
        archive: zipfile.ZipFile,
        prefix: str,
        byteorder: str,
        path: str,
    ) -> None:
        super().__init__(data, path=path)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage:
        # Messages name no file: load() prepends the path.
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise ValueError(f"unsupported persistent id {_brief.repr(pid)}")
        _, storage_type, key, _location, numel = pid
        key = _storage_key(key)
        if not isinstance(storage_type, _StorageType):
            raise ValueError(f"storage {key!r} has unsupported type {_brief.repr(storage_type)}")
        numel = _as_int(numel, "storage size")
        if key in self._storages:
            return self._storages[key]

        record = f"{self._prefix}data/{key}"
        try:
            raw = self._archive.read(record)
        except KeyError:
            raise ValueError(f"storage record '{record}' is missing") from None
        dtype = storage_type.dtype.newbyteorder("<" if self._byteorder == "little" else ">")
        nbytes = numel * dtype.itemsize
        if len(raw) < nbytes:
            raise ValueError(
                f"storage record '{record}' holds {len(raw)} bytes, "
                f"expected {nbytes} ({numel} x {storage_type.name})"
            )
        data = np.frombuffer(raw, dtype=dtype, count=numel)
        storage = _Storage(storage_type, data)
        self._storages[key] = storage
        return storage


@dataclass(frozen=True)
class _LegacyStorageRef:
    """A legacy persistent id: root storage ``key`` and an optional ``(key, offset, numel)``."""

    type: _StorageType
    key: str
    numel: int
    view: tuple[str, int, int] | None


def _as_int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid {what} {_brief.repr(value)}")
    return value


def _storage_key(key: Any) -> str:
    if not isinstance(key, str):
        raise ValueError(f"invalid storage key {_brief.repr(key)}")
    return key


def _parse_legacy_pid(pid: Any) -> _LegacyStorageRef:
    if not (isinstance(pid, tuple) and len(pid) == 6 and pid[0] in ("storage", b"storage")):
        raise ValueError(f"unsupported persistent id {_brief.repr(pid)}")
    _, storage_type, key, _location, numel, view = pid
    key = _storage_key(key)
    if not isinstance(storage_type, _StorageType):
        raise ValueError(f"storage {key!r} has unsupported type {_brief.repr(storage_type)}")
    numel = _as_int(numel, "storage size")
    if view is not None:
        if not (isinstance(view, tuple) and len(view) == 3):
            raise ValueError(f"invalid storage view {_brief.repr(view)}")
        view_key, offset, view_numel = view
        view_key = _storage_key(view_key)
        offset = _as_int(offset, "storage view offset")
        view_numel = _as_int(view_numel, "storage view size")
        if offset + view_numel > numel:
            raise ValueError(
                f"storage view [{offset}, {offset + view_numel}) reaches past its "
                f"storage of {numel} elements"
            )
        view = (view_key, offset, view_numel)
    return _LegacyStorageRef(storage_type, key, numel, view)


class _LegacyUnpickler(_SafeUnpickler):
    """Unpickler for the object pickle of a legacy checkpoint.

    With ``storages=None`` it is the dry run: tensors are not rebuilt, and the type and size of
    every storage referenced is recorded in :attr:`records`. Otherwise storages (and views of
    them) are served from ``storages``, keyed as in the file.
    """

    def __init__(self, data: bytes, *, path: str, storages: Mapping[str, _Storage] | None) -> None:
        super().__init__(data, path=path)
        self._storages = storages
        if storages is None:
            self._globals = _DRY_RUN_GLOBALS
        self.records: dict[str, tuple[_StorageType, int]] = {}
        self._views: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage | None:
        ref = _parse_legacy_pid(pid)
        seen = self.records.setdefault(ref.key, (ref.type, ref.numel))
        if seen != (ref.type, ref.numel):
            raise ValueError(
                f"storage {ref.key!r} is referenced as both "
                f"{seen[1]} x {seen[0].name} and {ref.numel} x {ref.type.name}"
            )
        if self._storages is None:
            return None
        root = self._storages[ref.key]
        if ref.view is None:
            return root
        view_key, offset, view_numel = ref.view
        if view_key not in self._views:
            self._views[view_key] = _Storage(root.type, root.data[offset : offset + view_numel])
        return self._views[view_key]


def _read_legacy_storages(
    data: bytes,
    pos: int,
    records: Mapping[str, tuple[_StorageType, int]],
    keys: list[str],
    path: str,
) -> dict[str, _Storage]:
    """Read the raw storages at ``data[pos:]``, which follow the key list, in its order."""
    if set(keys) != set(records) or len(set(keys)) != len(keys):
        raise ValueError(
            f"{path}: legacy checkpoint's storage list ({len(keys)} keys) does not match the "
            f"{len(records)} storages its tensors use"
        )
    storages: dict[str, _Storage] = {}
    for key in keys:
        storage_type, numel = records[key]
        if len(data) - pos < _LEGACY_COUNT.size:
            raise ValueError(f"{path}: truncated legacy checkpoint (storage {key!r} is missing)")
        (count,) = _LEGACY_COUNT.unpack_from(data, pos)
        pos += _LEGACY_COUNT.size
        if count != numel:
            raise ValueError(
                f"{path}: storage {key!r} holds {count} elements, expected {numel} "
                f"({storage_type.name})"
            )
        nbytes = numel * storage_type.dtype.itemsize
        if nbytes > len(data) - pos:
            raise ValueError(
                f"{path}: truncated legacy checkpoint (storage {key!r} needs {nbytes} bytes, "
                f"{len(data) - pos} left)"
            )
        dtype = storage_type.dtype.newbyteorder("<")
        array = np.frombuffer(data, dtype=dtype, count=numel, offset=pos)  # a view, no copy
        storages[key] = _Storage(storage_type, array)
        pos += nbytes
    return storages


def _load_legacy(file: IO[bytes], path: str) -> Any:
    """Load a legacy (non-zip, torch < 1.6 style) checkpoint; see the module docstring."""
    # Read whole: the storages would be read anyway, and in memory every pickle can be scanned
    # and then unpickled from exactly the bytes that were scanned.
    data = file.read()
    pos = 0

    def next_pickle() -> bytes:
        nonlocal pos
        pickled = _scan(data, pos, path)
        pos += len(pickled)
        return pickled

    def load_plain() -> Any:
        return _SafeUnpickler(next_pickle(), path=path).load()

    corrupt = (
        EOFError,
        OSError,
        pickle.UnpicklingError,
        struct.error,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        OverflowError,
        RecursionError,
    )
    try:
        magic = load_plain()
        if type(magic) is not int or magic != _LEGACY_MAGIC_NUMBER:
            raise ValueError(
                f"{path}: not a PyTorch checkpoint: a pickle, but neither a zip checkpoint "
                "(torch.save, torch >= 1.6) nor a legacy one (no torch magic number)"
            )
        version = load_plain()
        if type(version) is not int or version != _LEGACY_PROTOCOL_VERSION:
            raise ValueError(
                f"{path}: unsupported legacy PyTorch checkpoint protocol version "
                f"{_brief.repr(version)}"
            )
        load_plain()  # sys_info: byte order and C type sizes; the data is little-endian anyway

        # Scanned once; both passes read the same bytes.
        pickled = next_pickle()
        dry_run = _LegacyUnpickler(pickled, path=path, storages=None)
        dry_run.load()
        keys = load_plain()
        if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
            raise ValueError(f"{path}: corrupt legacy checkpoint (bad storage key list)")
        storages = _read_legacy_storages(data, pos, dry_run.records, keys, path)

        return _LegacyUnpickler(pickled, path=path, storages=storages).load()
    except ValueError:
        raise
    except corrupt as exc:
        raise ValueError(
            f"{path}: corrupt or truncated legacy PyTorch checkpoint ({exc!r:.200})"
        ) from exc


def _find_prefix(archive: zipfile.ZipFile, path: str) -> str:
    """Return ``"<archive>/"``, the top folder holding ``data.pkl``."""
    for name in archive.namelist():
        folder, sep, leaf = name.rpartition("/")
        if leaf == "data.pkl" and sep and "/" not in folder:
            return folder + "/"
    raise ValueError(
        f"{path}: zip file has no '<archive>/data.pkl' entry; expected a PyTorch zip "
        "checkpoint written by torch.save"
    )


def _not_a_zip_error(path: str, head: bytes) -> ValueError:
    if head.startswith(_ZIP_MAGIC):
        return ValueError(f"{path}: corrupt or truncated zip file (PyTorch zip checkpoint)")
    return ValueError(
        f"{path}: not a PyTorch checkpoint; expected a zip checkpoint (torch.save, "
        "torch >= 1.6) or a legacy pickle checkpoint (torch < 1.6)"
    )


def _load_pickled_object(file: IO[bytes], path: str) -> Any:
    head = file.read(_HEAD_SIZE)
    file.seek(0)
    if head.startswith(_PICKLE_PROTO):
        return _load_legacy(file, path)
    if head[_TAR_MAGIC_OFFSET:_HEAD_SIZE] == _TAR_MAGIC:
        raise ValueError(
            f"{path}: this is the very old tar-based PyTorch checkpoint format (torch <= 0.1.x), "
            f"which is not supported; {_RESAVE_HINT}"
        )
    try:
        archive = zipfile.ZipFile(file)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        # zipfile raises a zoo of exception types for damaged central directories.
        raise _not_a_zip_error(path, head) from exc

    # Everything below can trip over a damaged archive (bad CRC, truncated member, garbage
    # pickle); surface that as one ValueError naming the file. Our own ValueErrors pass through.
    corrupt = (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        OSError,
        pickle.UnpicklingError,
        struct.error,
        TypeError,
        AttributeError,
        IndexError,
        KeyError,
        RecursionError,
    )
    with archive:
        try:
            prefix = _find_prefix(archive, path)
            byteorder = "little"  # torch's default for files without a byteorder record
            if f"{prefix}byteorder" in archive.namelist():
                byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace")
                if byteorder not in ("little", "big"):
                    raise ValueError(f"{path}: unknown byteorder record {byteorder!r}")
            info = archive.getinfo(f"{prefix}data.pkl")
            if info.file_size > _MAX_PICKLE_BYTES:
                raise ValueError(
                    f"{path}: refusing a {info.file_size}-byte data.pkl (more than "
                    f"{_MAX_PICKLE_BYTES}); {_ONLY_STATE_DICTS}"
                )
            data = _scan(archive.read(info), 0, path)
            unpickler = _RestrictedUnpickler(
                data, archive=archive, prefix=prefix, byteorder=byteorder, path=path
            )
            return unpickler.load()
        except ValueError:
            raise
        except corrupt as exc:
            raise ValueError(f"{path}: corrupt PyTorch zip checkpoint ({exc!r:.200})") from exc


def _tensor_items(obj: Mapping[Any, Any]) -> dict[str, np.ndarray]:
    # Non-tensor entries (ints, strings, nested dicts, ...) are not parameters: skip them.
    return {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, np.ndarray)}


def _extract_state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping):
        raise ValueError(
            f"{path}: checkpoint holds a {type(obj).__name__}, expected a dict of tensors"
        )
    # Unwrap {"state_dict": {...}}-style checkpoints, but only when the outer dict has no
    # tensors of its own: otherwise it *is* the state dict and e.g. a parameter named "model"
    # must not be mistaken for a wrapper. The depth bound stops a self-referencing pickle
    # ({"state_dict": <itself>}) from looping forever.
    for _ in range(_MAX_WRAPPER_DEPTH + 1):
        if _tensor_items(obj):
            break
        inner = next(
            (obj[k] for k in _WRAPPER_KEYS if k in obj and isinstance(obj[k], Mapping)), None
        )
        if inner is None or inner is obj:
            if obj:
                keys = ", ".join(_brief.repr(k) for k in list(obj)[:10])
                raise ValueError(
                    f"{path}: no tensors found at the top level or under any of "
                    f"{list(_WRAPPER_KEYS)}; top-level keys: {keys}"
                )
            return {}
        obj = inner
    else:
        raise ValueError(f"{path}: state dict nested deeper than {_MAX_WRAPPER_DEPTH} wrappers")

    tensors = _tensor_items(obj)
    # nn.DataParallel / DistributedDataParallel prefix every key with "module."; drop it only
    # when all keys carry it so an unrelated submodule that happens to be named "module" stays.
    if all(k.startswith(_DATAPARALLEL_PREFIX) for k in tensors):
        tensors = {k[len(_DATAPARALLEL_PREFIX) :]: v for k, v in tensors.items()}
    return tensors


def load_torch_state_dict(path: str | os.PathLike[str]) -> dict[str, np.ndarray]:
    """Load a ``torch.save`` state dict as ``{name: numpy array}`` without importing torch.

    Args:
        path: A checkpoint written by ``torch.save``: the zip format (torch >= 1.6) or the
            legacy pickle format (torch < 1.6, ``_use_new_zipfile_serialization=False``; the
            older tar format is not supported). Its top-level object must be a dict of tensors,
            or a dict wrapping one under ``state_dict``, ``model_state_dict``, ``model`` or
            ``net``.

    Returns:
        A new dict mapping parameter/buffer names to C-contiguous, writable numpy arrays with
        the tensors' shapes and dtypes (bfloat16 is widened to float32). Non-tensor entries are
        dropped, and a ``module.`` prefix shared by all keys is stripped.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: The file is not a PyTorch checkpoint (garbage, tar format, truncated or
            corrupt), references a global outside the allow-list, or holds no dict of
            tensors.
    """
    path_str = os.fspath(path)
    try:
        file = open(path_str, "rb")  # noqa: SIM115 - closed by the `with` just below
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "PyTorch checkpoint not found", path_str) from None
    with file:
        obj = _load_pickled_object(file, path_str)
    return _extract_state_dict(obj, path_str)
