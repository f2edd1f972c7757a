"""Tests for cptrans_jax.torch_pickle: torch-free loading of torch.save state dicts.

Every checkpoint is written by real ``torch.save`` and the loaded arrays are compared bit-for-bit
with ``tensor.numpy()``; malformed inputs are built by hand and must raise clear errors.
"""

from __future__ import annotations

import collections
import functools
import inspect
import io
import pickle
import tarfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from cptrans_jax.torch_pickle import load_torch_state_dict


def _expected(tensor: torch.Tensor) -> np.ndarray:
    """What the loader should return for ``tensor``: bfloat16 is widened to float32."""
    tensor = tensor.detach()
    if tensor.dtype == torch.bfloat16:
        tensor = tensor.float()
    return tensor.contiguous().numpy()


def _assert_same(loaded: dict[str, np.ndarray], reference: dict[str, torch.Tensor]) -> None:
    assert set(loaded) == set(reference)
    for name, tensor in reference.items():
        want = _expected(tensor)
        got = loaded[name]
        assert isinstance(got, np.ndarray), name
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.shape == want.shape, (name, got.shape, want.shape)
        assert got.flags.c_contiguous and got.flags.writeable, name
        # Bit-for-bit, so NaNs, -0.0 and rounding all count.
        assert got.tobytes() == want.tobytes(), name


def _save(obj: object, path: Path) -> Path:
    torch.save(obj, path)
    return path


def _model() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, kernel_size=3),
        torch.nn.BatchNorm2d(4),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 5),
    )


def _dtype_zoo() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    base = torch.randn(3, 5, generator=g)
    special = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-40, 65504.0])
    return {
        "f32": base,
        "f64": base.double() * 1e-3,
        "f16": base.half(),
        "bf16": (base * 7).bfloat16(),
        "f32_special": special,
        "bf16_special": special.bfloat16(),
        "f16_special": special.half(),
        "i64": torch.tensor([[-(2**62), -1, 0], [1, 2**40, 2**62]], dtype=torch.int64),
        "i32": torch.tensor([-(2**31), 0, 2**31 - 1], dtype=torch.int32),
        "i16": torch.tensor([-7, 8], dtype=torch.int16),
        "i8": torch.tensor([-128, 127], dtype=torch.int8),
        "u8": torch.tensor([0, 255], dtype=torch.uint8),
        "bool": torch.tensor([[True, False], [False, True]]),
        "scalar": torch.tensor(3.5),
        "empty": torch.zeros(0, 4),
    }


def test_model_state_dict(tmp_path: Path) -> None:
    sd = _model().state_dict()
    assert any(t.dtype == torch.int64 for t in sd.values())  # BatchNorm's num_batches_tracked
    loaded = load_torch_state_dict(_save(sd, tmp_path / "model.pth"))
    _assert_same(loaded, sd)
    assert list(loaded) == list(sd)  # order preserved


def test_all_dtypes(tmp_path: Path) -> None:
    zoo = _dtype_zoo()
    _assert_same(load_torch_state_dict(_save(zoo, tmp_path / "zoo.pt")), zoo)


def test_str_path_and_bf16_values(tmp_path: Path) -> None:
    t = torch.tensor([1.0, -2.5, 3.140625, 1e30]).bfloat16()
    loaded = load_torch_state_dict(str(_save({"t": t}, tmp_path / "bf.pt")))
    assert loaded["t"].dtype == np.float32
    np.testing.assert_array_equal(loaded["t"], t.float().numpy())


def test_non_contiguous_views_and_shared_storage(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(6, 8, generator=g)
    cube = torch.arange(2 * 3 * 4, dtype=torch.float64).reshape(2, 3, 4)
    bf = torch.randn(4, 6, generator=g).bfloat16()
    views = {
        "base": base,
        "transposed": base.t(),
        "row_slice": base[2:5],  # storage offset 16
        "col_slice": base[:, 3:7],  # offset + row stride 8
        "strided": base[1::2, ::3],
        "permuted": cube.permute(2, 0, 1),
        "expanded": torch.arange(4, dtype=torch.int64)[None].expand(3, 4),  # stride 0
        "bf16_transposed": bf.t(),
        "bf16_slice": bf[1:, 2:],
    }
    assert not views["transposed"].is_contiguous()
    assert views["row_slice"].storage_offset() == 16
    assert views["expanded"].stride() == (0, 1)
    loaded = load_torch_state_dict(_save(views, tmp_path / "views.pt"))
    _assert_same(loaded, views)
    # Shared storage is read once but each result is an independent copy.
    loaded["transposed"][0, 0] = 123.0
    assert loaded["base"][0, 0] == base[0, 0].item()


def test_parameters_and_keep_vars(tmp_path: Path) -> None:
    model = _model()
    sd = model.state_dict(keep_vars=True)  # nn.Parameter objects -> _rebuild_parameter
    assert any(isinstance(t, torch.nn.Parameter) for t in sd.values())
    _assert_same(load_torch_state_dict(_save(sd, tmp_path / "params.pt")), sd)


def test_parameter_with_python_state(tmp_path: Path) -> None:
    # A Parameter carrying Python attributes pickles via _rebuild_parameter_with_state.
    param = torch.nn.Parameter(torch.randn(3, 2))
    param.tag = "frozen"  # type: ignore[attr-defined]
    path = _save({"p": param}, tmp_path / "param_state.pt")
    with zipfile.ZipFile(path) as zf:
        pkl = next(n for n in zf.namelist() if n.endswith("/data.pkl"))
        assert b"_rebuild_parameter_with_state" in zf.read(pkl)
    _assert_same(load_torch_state_dict(path), {"p": param})


def test_bfloat16_without_ml_dtypes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cptrans_jax import torch_pickle

    monkeypatch.setattr(torch_pickle, "_ml_dtypes", None)  # force the bit-shift fallback
    zoo = {k: v for k, v in _dtype_zoo().items() if v.dtype == torch.bfloat16}
    zoo["bf16_view"] = zoo["bf16"].t()[1:]
    _assert_same(load_torch_state_dict(_save(zoo, tmp_path / "bf16.pt")), zoo)


def test_big_endian_checkpoint(tmp_path: Path) -> None:
    # torch writes a "byteorder" record; rebuild a little-endian file as a big-endian one.
    sd = {"a": torch.randn(3, 4), "b": torch.tensor([-(2**40), 5], dtype=torch.int64)}
    src = _save(sd, tmp_path / "le.pt")
    dst = tmp_path / "be.pt"
    swap = {"data/0": "<f4", "data/1": "<i8"}  # storage keys follow first-use order
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            payload = zin.read(info)
            leaf = info.filename.split("/", 1)[1]
            if leaf == "byteorder":
                payload = b"big"
            elif leaf in swap:
                payload = np.frombuffer(payload, dtype=swap[leaf]).byteswap().tobytes()
            zout.writestr(info.filename, payload)
    loaded = load_torch_state_dict(dst)
    _assert_same(loaded, sd)
    assert all(a.dtype.isnative for a in loaded.values())


def test_ordered_dict_metadata_and_non_tensor_values_ignored(tmp_path: Path) -> None:
    sd = _model().state_dict()
    assert isinstance(sd, collections.OrderedDict) and hasattr(sd, "_metadata")
    sd["some_int"] = 7  # type: ignore[assignment]
    sd["some_str"] = "hello"  # type: ignore[assignment]
    sd["nested"] = {"x": 1}  # type: ignore[assignment]
    loaded = load_torch_state_dict(_save(sd, tmp_path / "meta.pt"))
    _assert_same(loaded, {k: v for k, v in sd.items() if isinstance(v, torch.Tensor)})


@pytest.mark.parametrize("key", ["state_dict", "model", "net", "model_state_dict"])
def test_wrapped_state_dict(tmp_path: Path, key: str) -> None:
    sd = _model().state_dict()
    ckpt = {"epoch": 12, "optimizer_lr": 1e-4, "name": "run", key: sd}
    _assert_same(load_torch_state_dict(_save(ckpt, tmp_path / "wrapped.pt")), sd)


def test_tensor_named_like_wrapper_key_is_not_unwrapped(tmp_path: Path) -> None:
    sd = {"model": torch.ones(2), "net": torch.zeros(3)}
    _assert_same(load_torch_state_dict(_save(sd, tmp_path / "names.pt")), sd)


def test_dataparallel_prefix_stripped(tmp_path: Path) -> None:
    sd = _model().state_dict()
    prefixed = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
    _assert_same(load_torch_state_dict(_save(prefixed, tmp_path / "dp.pt")), sd)
    # Wrapped and prefixed together, as DDP training scripts tend to write them.
    loaded = load_torch_state_dict(_save({"state_dict": prefixed}, tmp_path / "dp_wrapped.pt"))
    _assert_same(loaded, sd)


def test_partial_module_prefix_kept(tmp_path: Path) -> None:
    sd = {"module.weight": torch.ones(2), "head.bias": torch.zeros(2)}
    assert set(load_torch_state_dict(_save(sd, tmp_path / "partial.pt"))) == set(sd)


def test_empty_state_dict(tmp_path: Path) -> None:
    assert load_torch_state_dict(_save({}, tmp_path / "empty.pt")) == {}


def test_archive_folder_name_is_discovered(tmp_path: Path) -> None:
    # torch names the top folder after the file it saved to; renaming must not matter.
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    src = _save(sd, tmp_path / "original_name.pth")
    renamed = src.rename(tmp_path / "latest_net_G.pth")
    with zipfile.ZipFile(renamed) as zf:
        assert any(n.startswith("original_name/") for n in zf.namelist())
    _assert_same(load_torch_state_dict(renamed), sd)


def test_saved_to_buffer(tmp_path: Path) -> None:
    # torch.save to a file object uses the folder name "archive".
    sd = {"w": torch.randn(4, 2)}
    buf = io.BytesIO()
    torch.save(sd, buf)
    path = tmp_path / "buffer.pt"
    path.write_bytes(buf.getvalue())
    _assert_same(load_torch_state_dict(path), sd)


def _torch_like_zip(path: Path, data_pkl: bytes, records: dict[str, bytes] | None = None) -> Path:
    """A zip laid out as torch.save writes one (to a buffer, hence the folder name)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/.format_version", "1")
        zf.writestr("archive/.storage_alignment", "64")
        zf.writestr("archive/byteorder", "little")
        for name, payload in (records or {}).items():
            zf.writestr(f"archive/{name}", payload)
        zf.writestr("archive/version", "3\n")
        zf.writestr("archive/.data/serialization_id", "0" * 40)
    return path


def test_forbidden_global_is_refused(tmp_path: Path) -> None:
    # Hand-assembled protocol-2 pickle of `os.system("echo pwned")`; never executed here.
    payload = b"\x80\x02cos\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
    path = _torch_like_zip(tmp_path / "evil.pt", payload)
    with pytest.raises(ValueError, match=r"os\.system"):
        load_torch_state_dict(path)


def test_forbidden_global_inside_tensor_dict_is_refused(tmp_path: Path) -> None:
    # A legitimate-looking checkpoint whose pickle also asks for builtins.eval.
    payload = b"\x80\x02}q\x00X\x01\x00\x00\x00aq\x01cbuiltins\neval\nq\x02s."
    path = _torch_like_zip(tmp_path / "evil2.pt", payload)
    with pytest.raises(ValueError, match=r"builtins\.eval"):
        load_torch_state_dict(path)


def test_out_of_bounds_tensor_is_refused(tmp_path: Path) -> None:
    # A tensor claiming 100 elements over a 4-element storage must not read past it.
    pickle_bytes = (
        b"\x80\x02}q\x00X\x01\x00\x00\x00wq\x01ctorch._utils\n_rebuild_tensor_v2\nq\x02"
        b"((X\x07\x00\x00\x00storageq\x03ctorch\nFloatStorage\nq\x04X\x01\x00\x00\x000q\x05"
        b"X\x03\x00\x00\x00cpuq\x06K\x04tq\x07QK\x00Kd\x85q\x08K\x01\x85q\x09\x89"
        b"ccollections\nOrderedDict\nq\x0a)Rq\x0btq\x0cRq\x0ds."
    )
    records = {"data/0": np.arange(4, dtype="<f4").tobytes()}
    path = _torch_like_zip(tmp_path / "oob.pt", pickle_bytes, records)
    with pytest.raises(ValueError, match="past its storage"):
        load_torch_state_dict(path)


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "does_not_exist.pth"
    with pytest.raises(FileNotFoundError, match="does_not_exist.pth"):
        load_torch_state_dict(missing)


def test_garbage_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(b"this is not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match="zip checkpoint") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def _save_legacy(obj: object, path: Path) -> Path:
    torch.save(obj, path, _use_new_zipfile_serialization=False)
    assert not zipfile.is_zipfile(path)
    return path


def _legacy_zoo() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(6, 8, generator=g)
    return {
        **_dtype_zoo(),
        "base": base,
        "transposed": base.t(),  # non-contiguous view of the same storage
        "row_slice": base[2:5],  # storage offset 16
        "strided": base[1::2, ::3],
        "i64_t": torch.arange(12, dtype=torch.int64).reshape(3, 4).t(),
        "f16_slice": base.half()[3:, 1:],
    }


def test_legacy_format_dtypes_and_views(tmp_path: Path) -> None:
    zoo = _legacy_zoo()
    assert zoo["row_slice"].storage_offset() == 16
    loaded = load_torch_state_dict(_save_legacy(zoo, tmp_path / "legacy.pth"))
    _assert_same(loaded, zoo)
    assert list(loaded) == list(zoo)
    # Shared storage is read once but each result is an independent copy.
    loaded["transposed"][0, 0] = 123.0
    assert loaded["base"][0, 0] == zoo["base"][0, 0].item()


def test_legacy_model_with_parameters_and_prefix(tmp_path: Path) -> None:
    sd = _model().state_dict(keep_vars=True)  # Parameters + int64 num_batches_tracked
    prefixed = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
    path = _save_legacy({"state_dict": prefixed, "epoch": 4}, tmp_path / "legacy_model.pth")
    _assert_same(load_torch_state_dict(path), sd)


def test_legacy_empty_state_dict(tmp_path: Path) -> None:
    assert load_torch_state_dict(_save_legacy({}, tmp_path / "legacy_empty.pth")) == {}


@pytest.mark.parametrize("fraction", [0.02, 0.1, 0.5, 0.999])
def test_legacy_truncated(tmp_path: Path, fraction: float) -> None:
    data = _save_legacy(_model().state_dict(), tmp_path / "full.pth").read_bytes()
    path = tmp_path / "legacy_truncated.pth"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="truncated") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def _legacy_frame(main_pickle: bytes, keys: list[str]) -> bytes:
    sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
    return b"".join(
        [
            pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2),
            pickle.dumps(1001, protocol=2),
            pickle.dumps(sys_info, protocol=2),
            main_pickle,
            pickle.dumps(keys, protocol=2),
        ]
    )


class _FakeStorage:
    """Pickled as a legacy persistent id, optionally a view ``(key, offset, numel)``."""

    def __init__(self, view: tuple[str, int, int] | None) -> None:
        self.view = view


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride)

    def __reduce__(self) -> tuple:
        # torch < 0.4 pickled tensors through _rebuild_tensor; exercise it alongside views.
        return (torch._utils._rebuild_tensor, self.args)


class _LegacyPickler(pickle.Pickler):
    def persistent_id(self, obj: object) -> tuple | None:
        if isinstance(obj, _FakeStorage):
            return ("storage", torch.FloatStorage, "root", "cpu", 10, obj.view)
        return None


def test_legacy_storage_views(tmp_path: Path) -> None:
    # Old torch could pickle views of a storage; torch 2 never writes them, so build by hand.
    buf = io.BytesIO()
    obj = {
        "whole": _FakeTensor(_FakeStorage(None), 0, (2, 5), (5, 1)),
        "view": _FakeTensor(_FakeStorage(("view1", 4, 6)), 1, (2, 2), (1, 2)),
    }
    _LegacyPickler(buf, protocol=2).dump(obj)
    data = np.arange(10, dtype="<f4")
    path = tmp_path / "legacy_views.pth"
    path.write_bytes(
        _legacy_frame(buf.getvalue(), ["root"]) + (10).to_bytes(8, "little") + data.tobytes()
    )
    reference = torch.load(path, weights_only=False)  # the hand-built file is valid for torch
    np.testing.assert_array_equal(reference["view"].numpy(), [[5, 7], [6, 8]])
    _assert_same(load_torch_state_dict(path), reference)


def test_legacy_forbidden_global_is_refused(tmp_path: Path) -> None:
    # Hand-assembled protocol-2 pickle of `os.system("echo pwned")`; never executed here.
    payload = b"\x80\x02cos\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03."
    path = tmp_path / "legacy_evil.pth"
    path.write_bytes(_legacy_frame(payload, []))
    with pytest.raises(ValueError, match=r"os\.system") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_legacy_forbidden_global_next_to_tensors(tmp_path: Path) -> None:
    path = _save_legacy({"w": torch.ones(3), "fn": print}, tmp_path / "legacy_fn.pth")
    with pytest.raises(ValueError, match=r"builtin\w*\.print") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_legacy_whole_model_is_refused(tmp_path: Path) -> None:
    path = _save_legacy(torch.nn.Linear(2, 2), tmp_path / "legacy_module.pth")
    with pytest.raises(ValueError, match="refusing to load global") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_legacy_storage_size_mismatch(tmp_path: Path) -> None:
    path = _save_legacy({"w": torch.arange(4.0)}, tmp_path / "legacy_size.pth")
    data = bytearray(path.read_bytes())
    header = (4).to_bytes(8, "little") + np.arange(4, dtype="<f4").tobytes()
    start = bytes(data).rindex(header)
    data[start : start + 8] = (5).to_bytes(8, "little")
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="holds 5 elements, expected 4") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_tar_format_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "ancient.pth"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pickle")
        tar.addfile(info, io.BytesIO(b""))
    with pytest.raises(ValueError, match="tar") as info_:
        load_torch_state_dict(path)
    assert str(path) in str(info_.value)


def test_plain_pickle_is_not_accepted(tmp_path: Path) -> None:
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"w": [1, 2, 3]}, protocol=2))
    with pytest.raises(ValueError, match="zip checkpoint") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_zip(tmp_path: Path, fraction: float) -> None:
    src = _save(_model().state_dict(), tmp_path / "full.pt")
    data = src.read_bytes()
    path = tmp_path / "truncated.pt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ValueError, match="truncated") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_corrupt_storage_bytes(tmp_path: Path) -> None:
    # Valid zip structure, but a member's bytes were flipped: the CRC check must catch it.
    sd = {"w": torch.arange(64, dtype=torch.float32)}
    src = _save(sd, tmp_path / "ok.pt")
    data = bytearray(src.read_bytes())
    marker = np.arange(64, dtype="<f4").tobytes()
    start = bytes(data).index(marker)
    data[start + 20] ^= 0xFF
    path = tmp_path / "corrupt.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="corrupt") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hi")
    with pytest.raises(ValueError, match="data.pkl") as info:
        load_torch_state_dict(path)
    assert str(path) in str(info.value)


def test_non_dict_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected a dict"):
        load_torch_state_dict(_save([torch.ones(1)], tmp_path / "list.pt"))


def test_dict_without_tensors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tensors found"):
        load_torch_state_dict(_save({"epoch": 3, "gen": {"w": 1}}, tmp_path / "none.pt"))


def test_self_referencing_wrapper_terminates(tmp_path: Path) -> None:
    ckpt: dict[str, object] = {"epoch": 1}
    ckpt["state_dict"] = ckpt
    with pytest.raises(ValueError, match="no tensors found|nested deeper"):
        load_torch_state_dict(_save(ckpt, tmp_path / "cycle.pt"))


# Hostile pickles. pickle's BUILD opcode writes into whatever object it is given, so a loader that
# hands a pickle a shared object (a storage-type stand-in, a rebuild function) lets one file
# change how every later file in the process loads. Each hostile file below must be refused with
# a one-line ValueError naming it, and must leave the loader exactly as it was: legitimate
# bf16/f16/f32 checkpoints load bit-identically before and after it, in the same process.

_STORAGE_NAMES = (
    "FloatStorage",
    "DoubleStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "IntStorage",
    "ShortStorage",
    "CharStorage",
    "ByteStorage",
    "BoolStorage",
)
_STORAGE_CLASSES = tuple((m, n) for m in ("torch", "torch.cuda") for n in _STORAGE_NAMES)
_FUNCTIONS = (
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch.serialization", "_get_layout"),
)
_ORDERED_DICT = ("collections", "OrderedDict")
_ALLOWED_GLOBALS = (*_STORAGE_CLASSES, *_FUNCTIONS, _ORDERED_DICT, ("torch", "strided"))

# The report's file: BUILD {"is_bfloat16": False} on the shared BFloat16Storage stand-in, which
# made every later bfloat16 checkpoint load as raw uint16 bits.
_ISSUE_PAYLOAD = b"\x80\x02ctorch\nBFloat16Storage\n}X\x0b\x00\x00\x00is_bfloat16\x89sb0}."

_PROTO2 = b"\x80\x02"
_RETURN_EMPTY = b"0}."  # POP what was attacked and return {}: a load that gets here "succeeds"
_FALSE = b"\x89"
_EMPTY_TUPLE = b")"


def _glob(module: str, name: str) -> bytes:
    return f"c{module}\n{name}\n".encode()


def _text(value: str) -> bytes:
    data = value.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _attrs(**items: bytes) -> bytes:
    """A pickled dict {name: value}; values are pickle fragments."""
    return b"}" + b"".join(_text(k) + v + b"s" for k, v in items.items())


def _build(target: bytes, state: bytes) -> bytes:
    return _PROTO2 + target + state + b"b" + _RETURN_EMPTY


def _slots(**items: bytes) -> bytes:
    """BUILD state (None, {name: value}): pickle setattr()s each item."""
    return b"N" + _attrs(**items) + b"\x86"


def _label(module_name: tuple[str, str]) -> str:
    return ".".join(module_name)


def _slot_attack(target: tuple[str, str]) -> dict[str, bytes]:
    if target in _FUNCTIONS:
        return {"__defaults__": _EMPTY_TUPLE}  # breaks every later call that relies on them
    return {"is_bfloat16": _FALSE, "__doc__": _text("x")}


def _refused_payloads() -> list:
    cases = [pytest.param(_ISSUE_PAYLOAD, id="issue-report")]
    for target in _ALLOWED_GLOBALS:
        cases.append(
            pytest.param(
                _build(_glob(*target), _attrs(is_bfloat16=_FALSE, __defaults__=_EMPTY_TUPLE)),
                id=f"build-dict-{_label(target)}",
            )
        )
        cases.append(
            pytest.param(
                _build(_glob(*target), _slots(**_slot_attack(target))),
                id=f"build-slots-{_label(target)}",
            )
        )
    utils = "torch._utils"
    layout = _glob("torch.serialization", "_get_layout")
    for attr, value in [
        ("__code__", layout),
        ("__kwdefaults__", _attrs(metadata=b"N")),
        ("__dict__", b"}"),
        ("__class__", _glob(*_ORDERED_DICT)),
    ]:
        cases.append(
            pytest.param(
                _build(_glob(utils, "_rebuild_tensor_v2"), _slots(**{attr: value})),
                id=f"build-slots-_rebuild_tensor_v2.{attr}",
            )
        )
    cases.append(
        pytest.param(
            _build(_glob("torch", "FloatStorage"), _slots(__class__=_glob(*_ORDERED_DICT))),
            id="build-slots-FloatStorage.__class__",
        )
    )
    # Instantiating the allow-listed classes (and a function) with the other opcodes.
    for module, name in [
        ("torch", "FloatStorage"),
        ("torch", "BFloat16Storage"),
        ("torch.cuda", "HalfStorage"),
        _ORDERED_DICT,
        (utils, "_rebuild_parameter"),
    ]:
        for opcode, payload in [
            ("INST", _PROTO2 + b"(i" + f"{module}\n{name}\n".encode()),
            ("OBJ", _PROTO2 + b"(" + _glob(module, name) + b"o"),
            ("NEWOBJ", _PROTO2 + _glob(module, name) + b")\x81"),
            ("NEWOBJ_EX", b"\x80\x04" + _glob(module, name) + b")}\x92"),
        ]:
            cases.append(pytest.param(payload + _RETURN_EMPTY, id=f"{opcode}-{module}.{name}"))
    for name in ("FloatStorage", "BFloat16Storage"):
        cases.append(
            pytest.param(_PROTO2 + _glob("torch", name) + b")R" + _RETURN_EMPTY, id=f"call-{name}")
        )
    cases += [
        pytest.param(
            _PROTO2 + _glob("torch.cuda", "LongStorage") + b"(K\x04tR" + _RETURN_EMPTY,
            id="call-cuda.LongStorage-with-size",
        ),
        # A rebuild function that passes its argument through hands back the shared object.
        pytest.param(
            _PROTO2
            + _glob(utils, "_rebuild_parameter")
            + _glob("torch", "BFloat16Storage")
            + b"\x85R"
            + _attrs(is_bfloat16=_FALSE)
            + b"b"
            + _RETURN_EMPTY,
            id="build-on-storage-returned-by-_rebuild_parameter",
        ),
        pytest.param(
            _PROTO2
            + _glob(utils, "_rebuild_parameter_with_state")
            + b"("
            + _glob("torch", "HalfStorage")
            + _FALSE
            + b"N}tR"
            + _attrs(is_bfloat16=b"\x88")  # float16 files would decode as bfloat16
            + b"b"
            + _RETURN_EMPTY,
            id="build-on-storage-returned-by-_rebuild_parameter_with_state",
        ),
        # An OrderedDict the load made may only get a plain attribute dict (torch's _metadata).
        pytest.param(
            _build(_glob(*_ORDERED_DICT) + b")R", _slots(__class__=_glob("torch", "IntStorage"))),
            id="build-slots-on-OrderedDict-instance",
        ),
        pytest.param(
            _build(_glob(*_ORDERED_DICT) + b")R", b"}K\x01K\x02s"),
            id="build-non-str-attribute-on-OrderedDict-instance",
        ),
        pytest.param(
            _PROTO2 + _glob(*_ORDERED_DICT) + b"(]tR" + _RETURN_EMPTY,
            id="OrderedDict-called-with-arguments",
        ),
        # Opcodes torch never writes: the copyreg extension registry and text persistent ids.
        pytest.param(_PROTO2 + b"\x82\x01" + _RETURN_EMPTY, id="EXT1"),
        pytest.param(_PROTO2 + b"P0\n" + _RETURN_EMPTY, id="PERSID"),
        # A dict keyed by a deeply nested tuple (10**6 levels crash CPython when hashed).
        pytest.param(_PROTO2 + b"}N" + b"\x85" * 300 + b"Ns.", id="nested-300-deep"),
        # The C unpickler sizes its memo by the largest index: 2**32 entries of 8 bytes.
        pytest.param(_PROTO2 + b"Nr\xff\xff\xff\xff" + _RETURN_EMPTY, id="memo-index-2**32"),
    ]
    return cases


def _storage_pid(numel: int) -> bytes:
    """Persistent id of FloatStorage record '0' of ``numel`` elements, as torch writes it."""
    return (
        b"("
        + _text("storage")
        + _glob("torch", "FloatStorage")
        + _text("0")
        + _text("cpu")
        + b"J"
        + numel.to_bytes(4, "little")
        + b"tQ"
    )


def _tensor_call(size: tuple[int, ...], stride: tuple[int, ...], numel: int) -> bytes:
    """``_rebuild_tensor_v2`` over :func:`_storage_pid`."""

    def ints(values: tuple[int, ...]) -> bytes:
        return b"(" + b"".join(b"J" + v.to_bytes(4, "little", signed=True) for v in values) + b"t"

    return (
        _glob("torch._utils", "_rebuild_tensor_v2")
        + b"("
        + _storage_pid(numel)
        + b"K\x00"
        + ints(size)
        + ints(stride)
        + _FALSE
        + _glob(*_ORDERED_DICT)
        + b")RtR"
    )


# Hostile or broken in other ways: refused as corrupt rather than "refusing ...", but still one
# ValueError naming the file (the old loader raised MemoryError for the first two).
_MALFORMED_PAYLOADS = [
    pytest.param(b"\x80\x04\x8e" + (2**50).to_bytes(8, "little") + b"abc", id="bytes8-2**50"),
    pytest.param(b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.", id="frame-2**40"),
    pytest.param(_PROTO2 + b"\xff.", id="unknown-opcode"),
    pytest.param(_PROTO2 + b"}", id="no-STOP"),
    pytest.param(_PROTO2 + b"s.", id="stack-underflow"),
]


@pytest.fixture(scope="module")
def legit(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Path, dict[str, torch.Tensor]]]:
    """Legitimate bf16/f16/f32 checkpoints (zip and legacy) and what they must load as."""
    folder = tmp_path_factory.mktemp("legit")
    torch.manual_seed(5)
    sd = torch.nn.Linear(3, 2).bfloat16().state_dict()  # an OrderedDict with `_metadata`
    base = torch.randn(4, 3)
    sd.update(
        {
            "bf16": (base * 3).bfloat16(),
            "bf16_t": (base * 3).bfloat16().t(),
            "f16": base.half(),
            "f32": base,
            "param_bf16": torch.nn.Parameter(base.bfloat16()),
        }
    )
    assert hasattr(sd, "_metadata")
    reference = {k: v.detach() for k, v in sd.items()}
    return [
        (_save(sd, folder / "legit.pth"), reference),
        (_save_legacy(sd, folder / "legit_legacy.pth"), reference),
    ]


def _check_legit(legit: list[tuple[Path, dict[str, torch.Tensor]]]) -> None:
    for path, reference in legit:
        loaded = load_torch_state_dict(path)
        _assert_same(loaded, reference)
        assert loaded["bf16"].dtype == np.float32  # not raw uint16 bits


def _snapshot(value: object) -> object:
    if inspect.isfunction(value):
        return (value.__code__, value.__defaults__, value.__kwdefaults__, dict(vars(value)))
    if isinstance(value, functools.partial):
        return (value.func, value.args, value.keywords)
    if isinstance(value, Mapping):
        return {k: _snapshot(v) for k, v in value.items()}
    if inspect.ismodule(value):
        return value
    if isinstance(value, type):
        return {k: _snapshot(v) for k, v in vars(value).items()}
    if hasattr(value, "__dict__"):
        return dict(vars(value))
    return value


def _loader_state() -> dict[str, object]:
    """Everything at module level in the loader that a hostile pickle could try to change."""
    from cptrans_jax import safe_unpickle, torch_pickle

    return {
        f"{module.__name__}.{name}": _snapshot(value)
        for module in (torch_pickle, safe_unpickle)
        for name, value in vars(module).items()
        if not name.startswith("__")
    }


def _hostile_file(tmp_path: Path, fmt: str, payload: bytes) -> Path:
    path = tmp_path / f"hostile_{fmt}.pth"
    if fmt == "zip":
        return _torch_like_zip(path, payload)
    path.write_bytes(_legacy_frame(payload, []))  # the object pickle of a legacy checkpoint
    return path


def _assert_refused(path: Path, match: str) -> None:
    with pytest.raises(ValueError, match=match) as info:
        load_torch_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message


def test_issue_payload_is_the_report_s_file() -> None:
    rebuilt = _build(_glob("torch", "BFloat16Storage"), _attrs(is_bfloat16=_FALSE))
    assert rebuilt == _ISSUE_PAYLOAD


def test_attacks_cover_the_whole_allow_list() -> None:
    from cptrans_jax import torch_pickle

    assert set(torch_pickle._SAFE_GLOBALS) == set(_ALLOWED_GLOBALS)
    assert set(torch_pickle._DRY_RUN_GLOBALS) == set(_ALLOWED_GLOBALS)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", _refused_payloads())
def test_hostile_pickle_is_refused_and_changes_nothing(
    tmp_path: Path, legit: list, fmt: str, payload: bytes
) -> None:
    before = _loader_state()
    _check_legit(legit)
    path = _hostile_file(tmp_path, fmt, payload)
    _assert_refused(path, "refusing")
    assert _loader_state() == before
    _check_legit(legit)


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
@pytest.mark.parametrize("payload", _MALFORMED_PAYLOADS)
def test_malformed_pickle_is_one_value_error(
    tmp_path: Path, legit: list, fmt: str, payload: bytes
) -> None:
    before = _loader_state()
    _assert_refused(_hostile_file(tmp_path, fmt, payload), "corrupt")
    assert _loader_state() == before
    _check_legit(legit)


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        # A 4-byte storage expanded (stride 0) to 2**40 elements: 4 TiB once copied.
        (_PROTO2 + _tensor_call((2**20, 2**20), (0, 0), 1) + b".", "refusing tensor of size"),
        # BUILD on a tensor the load rebuilt (ndarray.__setstate__).
        (_PROTO2 + _tensor_call((4,), (1,), 4) + b"}b.", "corrupt"),
        # BUILD on the storage record itself.
        (_PROTO2 + _storage_pid(4) + _attrs(data=b"N") + b"b" + _RETURN_EMPTY, "refusing"),
    ],
    ids=["expanded-to-4TiB", "build-on-rebuilt-tensor", "build-on-storage"],
)
def test_hostile_tensor_is_refused(tmp_path: Path, legit: list, payload: bytes, match: str) -> None:
    records = {"data/0": np.arange(4, dtype="<f4").tobytes()}
    _assert_refused(_torch_like_zip(tmp_path / "tensor.pth", payload, records), match)
    _check_legit(legit)


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "real-pass"])
@pytest.mark.parametrize(
    "payload",
    [
        _ISSUE_PAYLOAD,
        _build(_glob("torch._utils", "_rebuild_tensor_v2"), _slots(__defaults__=_EMPTY_TUPLE)),
        _build(_glob(*_ORDERED_DICT), _slots(__doc__=_text("x"))),
        _PROTO2 + _glob("torch.cuda", "BFloat16Storage") + b")R" + _RETURN_EMPTY,
    ],
    ids=["issue-report", "_rebuild_tensor_v2.__defaults__", "OrderedDict.__doc__", "call"],
)
def test_legacy_reader_passes_each_refuse(legit: list, payload: bytes, dry_run: bool) -> None:
    # The legacy object pickle is read twice (a dry run that only sizes the storages, then the
    # real pass), with different stand-ins for the rebuild functions; both must refuse. The
    # pre-load scan is skipped here, to check the stand-ins on their own.
    from cptrans_jax.torch_pickle import _LegacyUnpickler

    storages = None if dry_run else {}
    unpickler = _LegacyUnpickler(payload, path="x.pth", storages=storages)
    with pytest.raises(ValueError, match=r"^x\.pth: refusing"):
        unpickler.load()
    _check_legit(legit)


def test_stand_ins_are_fresh_and_frozen() -> None:
    # Each reference to an allowed global gets its own immutable stand-in.
    from cptrans_jax.torch_pickle import _SafeUnpickler

    unpickler = _SafeUnpickler(b"", path="x.pth")
    for module, name in _ALLOWED_GLOBALS:
        first, second = unpickler.find_class(module, name), unpickler.find_class(module, name)
        assert first is not second
        assert not hasattr(first, "__dict__")
        with pytest.raises(ValueError, match="refusing"):
            first.__setstate__({})
        with pytest.raises(ValueError, match="refusing"):
            first.anything = 1
