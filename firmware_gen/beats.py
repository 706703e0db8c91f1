"""Encode and decode stream beats as integers, with field offsets taken from the hardware layouts."""

from __future__ import annotations

from functools import lru_cache

from amaranth import Shape
from amaranth.lib import data


@lru_cache(maxsize=None)
def _leaves(layout) -> tuple[tuple[tuple, int, int, bool], ...]:
    """Flatten a layout into ``(path, offset, width, signed)`` leaves."""
    out = []

    def walk(shape, path, base):
        if isinstance(shape, data.StructLayout):
            for name, field in shape:
                walk(field.shape, path + (name,), base + field.offset)
        elif isinstance(shape, data.ArrayLayout):
            elem = Shape.cast(shape.elem_shape).width if not isinstance(shape.elem_shape, data.Layout) else shape.elem_shape.size
            for i in range(shape.length):
                walk(shape.elem_shape, path + (i,), base + i * elem)
        else:
            s = Shape.cast(shape)
            out.append((path, base, s.width, s.signed))

    walk(layout, (), 0)
    return tuple(out)


def _get(value, path):
    for key in path:
        value = value[key]
    return value


def encode(layout, value) -> int:
    """``value`` (nested dicts / sequences of ints matching ``layout``) → the beat as an int.

    Every leaf must fit its field; nothing is truncated silently.
    """
    word = 0
    for path, offset, width, signed in _leaves(layout):
        v = int(_get(value, path))
        lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed else (0, (1 << width) - 1)
        if not lo <= v <= hi:
            raise ValueError(f"field {'.'.join(map(str, path))} = {v} does not fit {width}-bit {'signed' if signed else 'unsigned'}")
        word |= (v & ((1 << width) - 1)) << offset
    return word


def decode_leaf_array(layout, word: int, path_prefix: tuple) -> list[int]:
    """Leaves under ``path_prefix`` (in layout order) of an encoded beat, as Python ints."""
    values = []
    for path, offset, width, signed in _leaves(layout):
        if path[: len(path_prefix)] != path_prefix:
            continue
        v = (word >> offset) & ((1 << width) - 1)
        if signed and v >> (width - 1):
            v -= 1 << width
        values.append(v)
    return values
