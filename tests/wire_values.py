"""Valid values of every wire message, derived from the struct definitions.

Both a hypothesis strategy (:func:`strategy_for`) and a fast seeded twin (:func:`random_value`)
honour the ``msgspec.Meta`` constraints of each field (integer ranges, string, bytes and list
lengths) and the topic grammar of the fields a message's ``__post_init__`` checks (``s``: a swarm
key, ``topic``: a topic in that swarm, ``pattern``: a subscription pattern), so every generated
message encodes and decodes back to itself. A field type the derivation does not know raises
``NotImplementedError`` instead of being skipped.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec
from hypothesis import strategies as st

from quicmesh.core.messages import ALL_MESSAGES
from quicmesh.core.wire import MAX_INT, Message

INT_MIN, INT_MAX = -(2**63), 2**64 - 1  # what MessagePack (and msgspec) can carry

_SEGMENT_CHARS = "abcxyz0123456789-_é€😀$"
_SWARMS = ("", "a", "news", "$svc", "é€")

# -- the grammar-checked fields --------------------------------------------------------------------


def _segment(rng: random.Random) -> str:
    return "".join(rng.choice(_SEGMENT_CHARS) for _ in range(rng.randint(1, 6)))


def _fix_grammar(cls: type[Any], kw: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """Replace the grammar-checked fields of ``kw`` by valid values drawn with ``rng``."""
    names = set(kw)
    if "s" in names and issubclass(cls, Message):
        needs_segment = "topic" in names
        s = rng.choice([x for x in _SWARMS if x or not needs_segment])
        kw["s"] = s
        if "topic" in names:
            kw["topic"] = ".".join([s, *(_segment(rng) for _ in range(rng.randrange(3)))])
    elif "topic" in names:
        kw["topic"] = ".".join(_segment(rng) for _ in range(rng.randint(1, 3)))
    if "seq" in names and "payloads" in names:  # the batch's last seq fits the field
        kw["seq"] = min(kw["seq"], MAX_INT - max(0, len(kw["payloads"]) - 1))
    if "pattern" in names:
        segs = [_segment(rng)] + [rng.choice(["*", _segment(rng)]) for _ in range(rng.randrange(3))]
        if rng.random() < 0.3:
            segs.append(">")
        kw["pattern"] = ".".join(segs)
    if "group" in names and isinstance(kw["group"], str):  # a work-queue group name (regex-checked)
        kw["group"] = rng.choice(["", "workers", "w-1.a_b"])
    return kw


def _ints(t: msgspec.inspect.IntType) -> tuple[int, int]:
    lo = INT_MIN if t.ge is None else max(INT_MIN, t.ge)
    hi = INT_MAX if t.le is None else min(INT_MAX, t.le)
    return (lo if t.gt is None else t.gt + 1, hi if t.lt is None else t.lt - 1)


def _max(n: int | None, default: int) -> int:
    return default if n is None else min(n, default)


# -- hypothesis ------------------------------------------------------------------------------------


def strategy_for(t: msgspec.inspect.Type) -> st.SearchStrategy[Any]:
    """A hypothesis strategy for valid values of the msgspec type ``t``."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        return st.integers(*_ints(t))
    if isinstance(t, mi.BoolType):
        return st.booleans()
    if isinstance(t, mi.FloatType):
        return st.floats(allow_nan=False)
    if isinstance(t, mi.StrType):
        return st.text(min_size=t.min_length or 0, max_size=_max(t.max_length, 40))
    if isinstance(t, mi.BytesType):
        return st.binary(min_size=t.min_length or 0, max_size=_max(t.max_length, 64))
    if isinstance(t, mi.NoneType):
        return st.none()
    if isinstance(t, mi.ListType):
        return st.lists(strategy_for(t.item_type), min_size=t.min_length or 0, max_size=_max(t.max_length, 8))
    if isinstance(t, mi.VarTupleType):
        return st.lists(strategy_for(t.item_type), max_size=8).map(tuple)
    if isinstance(t, mi.TupleType):
        return st.tuples(*(strategy_for(i) for i in t.item_types))
    if isinstance(t, mi.DictType):
        return st.dictionaries(strategy_for(t.key_type), strategy_for(t.value_type), max_size=8)
    if isinstance(t, mi.UnionType):
        return st.one_of([strategy_for(u) for u in t.types])
    if isinstance(t, mi.StructType):
        cls = t.cls
        fields = {f.name: strategy_for(f.type) for f in t.fields}
        return st.tuples(st.fixed_dictionaries(fields), st.randoms(use_true_random=False)).map(
            lambda kr: cls(**_fix_grammar(cls, kr[0], kr[1]))
        )
    raise NotImplementedError(f"no strategy for {t!r}: extend strategy_for()")


# -- seeded --------------------------------------------------------------------------------------


def random_value(t: msgspec.inspect.Type, rng: random.Random) -> Any:
    """A random valid value of the msgspec type ``t`` (a fast, seeded twin of :func:`strategy_for`)."""
    mi = msgspec.inspect
    if isinstance(t, mi.IntType):
        lo, hi = _ints(t)
        return rng.choice([lo, hi, min(max(lo, 1), hi), min(max(lo, rng.randrange(256)), hi), rng.randint(lo, hi)])
    if isinstance(t, mi.BoolType):
        return rng.random() < 0.5
    if isinstance(t, mi.FloatType):
        return rng.uniform(-1e9, 1e9)
    if isinstance(t, mi.StrType):
        n = rng.randint(t.min_length or 0, max(t.min_length or 0, _max(t.max_length, 20)))
        return "".join(rng.choice("abcxyz/.*é€😀 ") for _ in range(n))
    if isinstance(t, mi.BytesType):
        n = rng.randint(t.min_length or 0, max(t.min_length or 0, _max(t.max_length, 40)))
        return rng.randbytes(n)
    if isinstance(t, mi.NoneType):
        return None
    if isinstance(t, mi.ListType | mi.VarTupleType):
        lo = getattr(t, "min_length", None) or 0
        items = [random_value(t.item_type, rng) for _ in range(rng.randint(lo, max(lo, 3)))]
        return items if isinstance(t, mi.ListType) else tuple(items)
    if isinstance(t, mi.TupleType):
        return tuple(random_value(i, rng) for i in t.item_types)
    if isinstance(t, mi.DictType):
        return {random_value(t.key_type, rng): random_value(t.value_type, rng) for _ in range(rng.randrange(4))}
    if isinstance(t, mi.UnionType):
        return random_value(rng.choice(t.types), rng)
    if isinstance(t, mi.StructType):
        kw = {f.name: random_value(f.type, rng) for f in t.fields}
        return t.cls(**_fix_grammar(t.cls, kw, rng))
    raise NotImplementedError(f"no random value for {t!r}: extend random_value()")


def struct_info(cls: type[Message]) -> msgspec.inspect.StructType:
    """msgspec's description of a message class (always a struct)."""
    info = msgspec.inspect.type_info(cls)
    assert isinstance(info, msgspec.inspect.StructType)
    return info


MESSAGE_INFO = {cls: struct_info(cls) for cls in ALL_MESSAGES}
"""Every message class of the node's codec -> its msgspec description."""
messages = st.one_of([strategy_for(info) for info in MESSAGE_INFO.values()])
"""Any valid message of the node's codec."""


def random_message(rng: random.Random, types: tuple[type[Message], ...] = ALL_MESSAGES) -> Message:
    """A random valid message of one of ``types``."""
    msg = random_value(MESSAGE_INFO[rng.choice(types)], rng)
    assert isinstance(msg, Message)
    return msg
