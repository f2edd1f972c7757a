"""Building blocks for unpickling untrusted data; the machinery under :mod:`.torch_pickle`.

Unpickling runs a small stack machine. ``GLOBAL`` fetches objects by name, ``REDUCE`` (and
``INST``/``OBJ``/``NEWOBJ``) calls them, and ``BUILD`` mutates whatever is on the stack: it calls
``obj.__setstate__(state)`` if there is one, and otherwise writes ``state`` straight into
``obj.__dict__`` (bypassing a frozen dataclass's ``__setattr__``) and calls ``setattr`` for
each item of a second "slot state" dict (reaching a function's ``__defaults__``). A restricted
``find_class`` stops the imports but not the mutation: if it hands out an object that outlives
the load, one hostile file changes how every later file in the process loads. So, in layers:

1. :func:`scan_pickle` walks the pickle with :mod:`pickletools` *before* it is loaded, executing
   nothing. Every global it names goes to the caller's check first, so a forbidden global is
   reported as such even when a refused opcode follows. Only :data:`ALLOWED_OPCODES` are
   accepted: what plain data, globals, ``REDUCE``, ``BUILD`` and binary persistent ids need, so
   no ``INST``/``OBJ``/``NEWOBJ``/``NEWOBJ_EX``, no ``EXT*`` (they go through a process-wide
   cache in :mod:`copyreg`), no text ``PERSID`` and no out-of-band buffers. The scan also
   simulates the stack: every length field must fit in the file, memo indices must come in
   order (the C unpickler sizes its memo by the largest index) and nesting is bounded by
   :data:`MAX_NESTING` (hashing a tuple nested a million deep overflows the C stack).
2. The caller's ``find_class`` maps each allowed name to a *factory* and returns a fresh
   stand-in per reference, so nothing a pickle can reach outlives its load.
3. Stand-ins are :class:`Frozen`: ``__slots__`` and no ``__dict__``, ``__setattr__`` and
   ``__delattr__`` refuse, ``__setstate__`` refuses (so ``BUILD`` on one fails), and calling one
   refuses unless it is a :class:`Function`, which forwards calls to a function the pickle
   never gets hold of (nor, therefore, its attributes).
4. The only mutable objects a pickle can then reach are ones its own load created: pickle's
   containers, what the stand-ins return, and the :class:`FreshOrderedDict` that
   :func:`new_ordered_dict` makes for ``collections.OrderedDict()``, whose ``__setstate__``
   accepts only a plain attribute dict (``torch.save`` writes a ``state_dict``'s ``_metadata``
   that way) and drops it.

Refusals raise :class:`UnsafePickleError` (a :class:`ValueError`) saying what was refused; an
unparsable pickle raises :class:`pickle.UnpicklingError`.
"""

from __future__ import annotations

import collections
import io
import pickle
import pickletools
from collections.abc import Callable, Iterator
from typing import Any

__all__ = [
    "ALLOWED_OPCODES",
    "MAX_NESTING",
    "Frozen",
    "FreshOrderedDict",
    "Function",
    "UnsafePickleError",
    "new_ordered_dict",
    "scan_pickle",
]


class UnsafePickleError(ValueError):
    """The pickle asks for something this reader refuses; the message says what (not where)."""


class Frozen:
    """An opaque stand-in for the global ``label`` that a pickle can reference but not change."""

    __slots__ = ("_label",)

    def __init__(self, label: str) -> None:
        object.__setattr__(self, "_label", label)

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError(f"refusing to set attribute {name!r} of '{self._label}'")

    def __delattr__(self, name: str) -> None:
        raise UnsafePickleError(f"refusing to delete attribute {name!r} of '{self._label}'")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refusing to modify '{self._label}' (pickle BUILD)")

    def __call__(self, *args: Any) -> Any:
        raise UnsafePickleError(f"refusing to call '{self._label}' (pickle REDUCE)")

    def __repr__(self) -> str:
        return f"<stand-in for {self._label}>"


class Function(Frozen):
    """A :class:`Frozen` stand-in that forwards calls (``REDUCE``) to ``func``."""

    __slots__ = ("_func",)

    def __init__(self, label: str, func: Callable[..., Any]) -> None:
        super().__init__(label)
        object.__setattr__(self, "_func", func)

    def __call__(self, *args: Any) -> Any:
        return self._func(*args)


class FreshOrderedDict(collections.OrderedDict):
    """An ``OrderedDict`` made by this load; ``BUILD`` may only give it plain attributes."""

    def __setstate__(self, state: Any) -> None:
        # torch.save pickles a state_dict's `_metadata` attribute as {"_metadata": {...}}.
        # Attributes are meaningless here, so an attribute dict is accepted and dropped.
        if state is None or (isinstance(state, dict) and all(type(k) is str for k in state)):
            return
        what = (
            "non-string attribute names"
            if isinstance(state, dict)
            else f"{type(state).__name__} state"
        )
        raise UnsafePickleError(
            f"refusing to modify a collections.OrderedDict (pickle BUILD with {what})"
        )


def new_ordered_dict(*args: Any) -> FreshOrderedDict:
    """What ``collections.OrderedDict()`` unpickles to; pickle fills it with ``SETITEMS``."""
    if args:
        raise UnsafePickleError(
            f"refusing collections.OrderedDict called with {len(args)} argument(s) (pickle REDUCE)"
        )
    return FreshOrderedDict()


# Deeper nesting is refused. A state dict nests a handful of levels; a tuple nested ~10^6 deep
# crashes CPython when it is hashed (as a dict key), inside the unpickler.
MAX_NESTING = 256

# Every opcode the standard pickler emits for plain data (containers, numbers, strings, bytes),
# globals, REDUCE/BUILD and binary persistent ids, at any protocol, with how it moves the
# simulated stack (see _simulate): (kind, operands popped). An explicit list, so an opcode
# added to a later protocol is refused until someone decides it is harmless.
(
    _CONSTANT, _TEXT, _EMPTY, _MARK, _FROM_MARK, _NEST, _UPDATE, _UPDATE_FROM_MARK, _REDUCE,
    _GLOBAL, _STACK_GLOBAL, _PERSID, _POP, _POP_MARK, _DUP, _PUT, _GET, _FRAME, _NOTHING,
) = range(19)  # fmt: skip
_ACTIONS: dict[str, tuple[int, int]] = {
    **dict.fromkeys(
        ["NONE", "NEWTRUE", "NEWFALSE", "INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1",
         "LONG4", "FLOAT", "BINFLOAT", "STRING", "BINSTRING", "SHORT_BINSTRING", "BINBYTES",
         "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"],
        (_CONSTANT, 0),
    ),
    **dict.fromkeys(["UNICODE", "SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8"], (_TEXT, 0)),
    **dict.fromkeys(["EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT", "EMPTY_SET"], (_EMPTY, 0)),
    "MARK": (_MARK, 0),
    **dict.fromkeys(["TUPLE", "LIST", "DICT", "FROZENSET"], (_FROM_MARK, 0)),
    "TUPLE1": (_NEST, 1), "TUPLE2": (_NEST, 2), "TUPLE3": (_NEST, 3),
    # target and what goes into it
    "APPEND": (_UPDATE, 2), "SETITEM": (_UPDATE, 3), "BUILD": (_UPDATE, 2),
    **dict.fromkeys(["APPENDS", "SETITEMS", "ADDITEMS"], (_UPDATE_FROM_MARK, 0)),
    "REDUCE": (_REDUCE, 2), "GLOBAL": (_GLOBAL, 0), "STACK_GLOBAL": (_STACK_GLOBAL, 2),
    "BINPERSID": (_PERSID, 1), "POP": (_POP, 1), "POP_MARK": (_POP_MARK, 0), "DUP": (_DUP, 1),
    **dict.fromkeys(["PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"], (_PUT, 1)),
    **dict.fromkeys(["GET", "BINGET", "LONG_BINGET"], (_GET, 0)),
    "FRAME": (_FRAME, 0), "PROTO": (_NOTHING, 0), "STOP": (_NOTHING, 1),
}  # fmt: skip
ALLOWED_OPCODES = frozenset(_ACTIONS)
_TAKES_MARK = frozenset({_FROM_MARK, _UPDATE_FROM_MARK, _POP_MARK})
_FRAME_HEADER = 9  # FRAME opcode + 8-byte length


def scan_pickle(data: bytes, start: int, check_global: Callable[[str, str], object]) -> int:
    """Check the pickle at ``data[start:]`` without loading it; return where it ends.

    The end is the offset just past its ``STOP`` opcode. Unpickle ``data[start:end]`` (not more)
    so that what runs is exactly what was checked. ``check_global(module, name)`` is called for
    every global the pickle names (for ``STACK_GLOBAL``, where its operands are string
    constants) and should raise to refuse it; the unpickler's ``find_class`` must still check,
    since that is what resolves names.

    Raises:
        UnsafePickleError: A refused opcode, out-of-order memo index, or too deep nesting.
        pickle.UnpicklingError: The pickle is truncated or malformed.
    """
    # In memory, so a length field cannot make a read allocate more than there is.
    file = io.BytesIO(data)
    file.seek(start)
    try:
        _simulate(pickletools.genops(file), len(data), check_global)
    except UnsafePickleError:
        raise
    except ValueError as exc:  # genops: unknown opcode, truncated argument, no STOP
        raise pickle.UnpicklingError(str(exc)) from None
    return file.tell()


def _simulate(
    ops: Iterator[tuple[Any, Any, int | None]],
    size: int,
    check_global: Callable[[str, str], object],
) -> None:
    """Run the pickle machine on nesting depths instead of objects (see :func:`scan_pickle`).

    Each stack item is its nesting depth, or the text itself for a string constant (depth 0),
    which is what ``STACK_GLOBAL`` needs to name its global. A call's result (``REDUCE``) is
    taken to be as deep as its argument tuple, and a mutated container (``APPEND``,
    ``SETITEM(S)``, ``BUILD``, ...) one deeper than what went in. A memo entry keeps the depth
    its object had when stored; only mutable containers can outgrow it, and those are never
    hashed.
    """
    stack: list[int | str] = []
    marks: list[int] = []  # stack lengths at each MARK
    floor = 0  # the innermost MARK's: nothing below it may be popped
    memo: dict[int, int | str] = {}
    items: list[int | str] = []

    def depth(item: int | str) -> int:
        return 0 if type(item) is str else item  # type: ignore[return-value]

    def nest(items: list[int | str]) -> int:
        return 1 + max(map(depth, items), default=0)

    def underflow() -> pickle.UnpicklingError:
        return pickle.UnpicklingError(f"unpickling stack underflow at byte {pos}")

    for opcode, arg, pos in ops:
        kind, count = _ACTIONS.get(opcode.name, (None, 0))
        # The commonest opcodes first, without the general machinery below.
        if kind == _PUT:
            if len(stack) <= floor:
                raise underflow()
            index = len(memo) if opcode.name == "MEMOIZE" else arg
            if not 0 <= index <= len(memo):
                raise UnsafePickleError(f"refusing out-of-order memo index {index} (byte {pos})")
            memo[index] = stack[-1]
            continue
        if kind == _CONSTANT:
            stack.append(0)
            continue
        if kind == _TEXT:
            stack.append(arg)
            continue
        if kind == _GET:
            if arg not in memo:
                raise pickle.UnpicklingError(f"memo key {arg!r} missing at byte {pos}")
            stack.append(memo[arg])  # its depth was checked when it was pushed
            continue
        if kind is None:
            if opcode.name == "INST":  # arg: "module name"; report a forbidden global first
                check_global(*arg.split(" ", 1))
            raise UnsafePickleError(f"refusing pickle opcode {opcode.name} (byte {pos})")

        # Take the operands.
        if kind in _TAKES_MARK or (kind == _POP and marks and len(stack) == floor):
            if not marks:
                raise pickle.UnpicklingError(f"MARK missing at byte {pos}")
            items = stack[floor:]
            del stack[floor:]
            marks.pop()
            floor = marks[-1] if marks else 0
            if kind == _POP:  # POP right after a MARK discards the MARK
                continue
        elif count:
            if len(stack) - count < floor:
                raise underflow()
            items = stack[-count:]
            del stack[-count:]

        # Push the result.
        item: int | str
        if kind == _PERSID:
            item = 0
        elif kind == _EMPTY:
            item = 1
        elif kind in (_FROM_MARK, _NEST):
            item = nest(items)
        elif kind == _UPDATE:
            item = max(depth(items[0]), nest(items[1:]))
        elif kind == _UPDATE_FROM_MARK:
            if len(stack) <= floor:
                raise underflow()
            item = max(depth(stack.pop()), nest(items))
        elif kind == _REDUCE:
            item = depth(items[1])
        elif kind == _GLOBAL:  # arg: "module name"
            check_global(*arg.split(" ", 1))
            item = 0
        elif kind == _STACK_GLOBAL:
            module, qualname = items
            if type(module) is str and type(qualname) is str:
                check_global(module, qualname)
            item = 0
        elif kind == _DUP:
            stack.append(items[0])
            item = items[0]
        elif kind == _MARK:
            marks.append(len(stack))
            floor = len(stack)
            continue
        elif kind == _FRAME:
            if pos is not None and arg > size - pos - _FRAME_HEADER:
                raise pickle.UnpicklingError(f"frame of {arg} bytes runs past the end (byte {pos})")
            continue
        else:  # PROTO, STOP, POP, POP_MARK: nothing to push
            continue
        if depth(item) > MAX_NESTING:
            raise UnsafePickleError(
                f"refusing objects nested more than {MAX_NESTING} levels deep (byte {pos})"
            )
        stack.append(item)
