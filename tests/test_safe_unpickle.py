"""Tests for cptrans_jax.safe_unpickle: the pre-load scan and the immutable stand-ins.

The end-to-end attacks (hostile .pth files) are in test_torch_pickle.py; here the scan is checked
against what the standard pickler writes, and each refusal on its own.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools

import pytest

from cptrans_jax.safe_unpickle import (
    ALLOWED_OPCODES,
    MAX_NESTING,
    FreshOrderedDict,
    Frozen,
    Function,
    UnsafePickleError,
    new_ordered_dict,
    scan_pickle,
)


def _scan(data: bytes) -> list[tuple[str, str]]:
    """Scan ``data`` (after 3 bytes of padding) and return the globals it named."""
    seen: list[tuple[str, str]] = []
    end = scan_pickle(
        b"pad" + data + b"trailing", 3, lambda module, name: seen.append((module, name))
    )
    assert end == 3 + len(data)  # just past STOP
    return seen


def test_refused_opcodes_are_exactly_the_object_building_ones() -> None:
    every = {op.name for op in pickletools.opcodes}
    assert every >= ALLOWED_OPCODES
    assert every - ALLOWED_OPCODES == {
        "INST",
        "OBJ",
        "NEWOBJ",
        "NEWOBJ_EX",
        "EXT1",
        "EXT2",
        "EXT4",
        "PERSID",
        "NEXT_BUFFER",
        "READONLY_BUFFER",
    }


def _plain_data() -> object:
    shared = [1, 2]
    recursive: list = ["loop"]
    recursive.append(recursive)
    holder: list = []
    recursive_tuple = (holder,)
    holder.append(recursive_tuple)  # pickled with POP / POP_MARK and a memo lookup
    return {
        "ints": [0, 1, -1, 255, 65535, 2**31 - 1, -(2**31), 2**64, -(2**200)],
        "floats": [0.0, -0.0, 1.5, float("inf")],
        "text": ["", "ascii", "ünïcödé", "\ud800", "x" * 300],
        "bytes": [b"", b"\x00\xff", bytearray(b"ba")],
        "tuples": [(), (1,), (1, 2), (1, 2, 3), (1, 2, 3, 4)],
        "sets": [set(), {1, 2}, frozenset({3})],
        "shared": [shared, shared],
        "recursive": recursive,
        "recursive_tuple": recursive_tuple,
        "none_bool": [None, True, False],
        "ordered": collections.OrderedDict(a=1),
        ("tuple", "key"): {"nested": {"deeper": [[[[1]]]]}},
    }


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_standard_pickles_pass(protocol: int) -> None:
    data = pickle.dumps(_plain_data(), protocol=protocol)
    seen = _scan(data)
    assert ("collections", "OrderedDict") in seen  # GLOBAL or STACK_GLOBAL, both are checked


def test_globals_are_checked_before_a_refused_opcode() -> None:
    def refuse(module: str, name: str) -> None:
        raise UnsafePickleError(f"no {module}.{name}")

    for data in (
        b"\x80\x02(ios\nsystem\n.",  # INST names its global itself
        b"\x80\x02cos\nsystem\n)\x81.",  # NEWOBJ after a GLOBAL
        b"\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93)\x81.",  # ... after a STACK_GLOBAL
    ):
        with pytest.raises(UnsafePickleError, match=r"no os\.system"):
            scan_pickle(data, 0, check_global=refuse)


@pytest.mark.parametrize(
    ("data", "opcode"),
    [
        (b"\x80\x02(ccollections\nOrderedDict\no.", "OBJ"),
        (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "NEWOBJ"),
        (b"\x80\x04ccollections\nOrderedDict\n)}\x92.", "NEWOBJ_EX"),
        (b"\x80\x02\x82\x01.", "EXT1"),
        (b"\x80\x02\x83\x01\x00.", "EXT2"),
        (b"\x80\x02\x84\x01\x00\x00\x00.", "EXT4"),
        (b"P1\n.", "PERSID"),
        (b"\x80\x05\x97.", "NEXT_BUFFER"),
        (b"\x80\x05N\x98.", "READONLY_BUFFER"),
    ],
)
def test_refused_opcode(data: bytes, opcode: str) -> None:
    with pytest.raises(UnsafePickleError, match=rf"refusing pickle opcode {opcode} "):
        _scan(data)


def _nested_tuple(depth: int) -> bytes:
    return b"\x80\x02N" + b"\x85" * depth + b"."


def test_nesting_is_bounded() -> None:
    _scan(_nested_tuple(MAX_NESTING))
    _scan(pickle.dumps([[[[[[1]]]]]] * 3, protocol=2))
    for data in (
        _nested_tuple(MAX_NESTING + 1),
        # A dict keyed by a tuple nested 10**6 deep crashes CPython when the key is hashed; the
        # scan refuses it without executing anything.
        b"\x80\x02}" + _nested_tuple(10**6)[2:-1] + b"Ns.",
        # Lists and dicts count too: APPEND and SETITEM grow their target.
        b"\x80\x02" + b"]" * (MAX_NESTING + 1) + b"a" * MAX_NESTING + b".",
        b"\x80\x02" + b"}N" * MAX_NESTING + b"}" + b"s" * MAX_NESTING + b".",
    ):
        with pytest.raises(UnsafePickleError, match="nested more than"):
            _scan(data)


def test_memo_indices_must_come_in_order() -> None:
    _scan(b"\x80\x02Nq\x00Nq\x01Nq\x00h\x01h\x00\x87.")  # overwriting an index is fine
    with pytest.raises(UnsafePickleError, match="memo index 4294967295"):
        _scan(b"\x80\x02Nr\xff\xff\xff\xff.")
    with pytest.raises(UnsafePickleError, match="memo index 2"):
        _scan(b"\x80\x02Nq\x02.")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x80\x02}",  # no STOP
        b"\x80\x02\xff.",  # unknown opcode
        b"\x80\x02s.",  # stack underflow
        b"\x80\x02(N\x86.",  # TUPLE2 across a MARK
        b"\x80\x02N0t.",  # TUPLE without MARK
        b"\x80\x02h\x05.",  # memo key missing
        b"\x80\x04\x8e" + (2**50).to_bytes(8, "little") + b"abc",  # BINBYTES8 past the end
        b"\x80\x04\x95" + (2**40).to_bytes(8, "little") + b"N.",  # FRAME past the end
        b"\x80\x02X\xff\xff\xff\x7fabc.",  # BINUNICODE past the end
        b"\x80\x02Vabc",  # UNICODE line without newline
    ],
)
def test_malformed_pickle_is_an_unpickling_error(data: bytes) -> None:
    with pytest.raises(pickle.UnpicklingError):
        _scan(data)


def test_frozen_stand_in_refuses_every_change() -> None:
    stand_in = Frozen("torch.FloatStorage")
    assert not hasattr(stand_in, "__dict__")
    with pytest.raises(UnsafePickleError, match=r"'torch\.FloatStorage' \(pickle BUILD\)"):
        stand_in.__setstate__({"x": 1})
    with pytest.raises(UnsafePickleError, match="refusing to set attribute"):
        stand_in._label = "other"
    with pytest.raises(UnsafePickleError, match="refusing to delete attribute"):
        del stand_in._label
    with pytest.raises(UnsafePickleError, match=r"refusing to call 'torch\.FloatStorage'"):
        stand_in()
    assert repr(stand_in) == "<stand-in for torch.FloatStorage>"


def test_function_forwards_calls_but_not_attributes() -> None:
    def add(a: int, b: int = 1) -> int:
        return a + b

    stand_in = Function("m.add", add)
    assert stand_in(2) == 3 and stand_in(2, 5) == 7
    with pytest.raises(UnsafePickleError):
        stand_in.__setstate__((None, {"__defaults__": ()}))
    with pytest.raises(UnsafePickleError):
        stand_in.__defaults__ = ()
    assert not hasattr(stand_in, "__dict__") and add.__defaults__ == (1,)


def test_fresh_ordered_dict() -> None:
    first, second = new_ordered_dict(), new_ordered_dict()
    assert first is not second and isinstance(first, collections.OrderedDict)
    first.__setstate__({"_metadata": {"": {"version": 1}}})  # what torch.save writes
    first.__setstate__(None)
    assert not vars(first)  # attributes are dropped
    for state in ((None, {"__class__": dict}), {1: 2}, [("a", 1)]):
        with pytest.raises(UnsafePickleError, match="refusing to modify a collections"):
            first.__setstate__(state)
    with pytest.raises(UnsafePickleError, match="called with 1 argument"):
        new_ordered_dict([("a", 1)])
    assert isinstance(first, FreshOrderedDict)


def test_pickle_round_trip_through_the_stand_ins() -> None:
    # The C unpickler really calls __setstate__ (BUILD) on the stand-ins and the fresh dicts.
    class Unpickler(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            if (module, name) == ("collections", "OrderedDict"):
                return Function("collections.OrderedDict", new_ordered_dict)
            return Frozen(f"{module}.{name}")

    def load(data: bytes) -> object:
        end = scan_pickle(data, 0, lambda module, name: None)
        return Unpickler(io.BytesIO(data[:end])).load()

    od = collections.OrderedDict(a=1)
    od._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    loaded = load(pickle.dumps(od, protocol=2))
    assert isinstance(loaded, FreshOrderedDict) and loaded == {"a": 1} and not vars(loaded)
    with pytest.raises(UnsafePickleError, match=r"'torch\.X' \(pickle BUILD\)"):
        load(b"\x80\x02ctorch\nX\n}X\x01\x00\x00\x00aK\x01sb.")
