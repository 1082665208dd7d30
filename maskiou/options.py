"""Configurations that refuse nonsense when they are made.

Every configuration dataclass of maskiou (:class:`maskiou.MaskIoUConfig`,
:class:`maskiou.head.HeadConfig`, the add-on's ``AddonConfig``, the trainer's ``TrainConfig``)
calls :func:`check_fields` from its ``__post_init__``. A field's annotation says what it takes
(``Literal[...]`` for a choice, ``int``, ``float``, ``bool``, ``str``, ``X | None``,
``list[int]``) and :func:`bounded` adds a numeric range; a value outside them raises
:class:`ConfigError` with one line naming the class, the field, the value and what is allowed.
The command-line flags are made from the same fields (``choices`` from the ``Literal``), so a
choice is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import sys
import types
import typing
from typing import Any, Literal, Union


class ConfigError(ValueError):
    """A configuration value outside what its field allows."""


def bounded(default: Any, low: float | None = None, high: float | None = None, *,
            low_open: bool = False) -> Any:
    """A dataclass field with ``default`` whose value must lie in [``low``, ``high``]
    (``(low, high]`` with ``low_open``); either bound may be None."""
    return dataclasses.field(default=default, metadata={"low": low, "high": high,
                                                        "low_open": low_open})


@functools.cache
def field_types(cls: type) -> dict[str, Any]:
    """The resolved annotations of a dataclass (strings under ``from __future__ import
    annotations`` become types)."""
    return typing.get_type_hints(cls)


def choices_of(kind: Any) -> tuple[Any, ...] | None:
    """The values of a ``Literal[...]`` (or ``Literal[...] | None``) annotation, else None."""
    if typing.get_origin(kind) is Literal:
        return typing.get_args(kind)
    if _is_union(kind):
        for arg in typing.get_args(kind):
            found = choices_of(arg)
            if found is not None:
                return found
    return None


def _is_union(kind: Any) -> bool:
    return typing.get_origin(kind) in (Union, types.UnionType)


def _fits(value: Any, kind: Any) -> bool:
    """Whether ``value`` has the type ``kind`` (the shapes our configs use)."""
    if kind is Any:
        return True
    origin = typing.get_origin(kind)
    if origin is Literal:
        return value in typing.get_args(kind) and not (
            isinstance(value, bool) and not any(isinstance(a, bool) for a in typing.get_args(kind)))
    if _is_union(kind):
        return any(_fits(value, arg) for arg in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple):
        args = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and all(_fits(v, args[0]) for v in value) \
            if args else isinstance(value, (list, tuple))
    if dataclasses.is_dataclass(kind):
        return isinstance(value, kind)
    return isinstance(value, kind) if isinstance(kind, type) else True


def _describe(kind: Any) -> str:
    choices = choices_of(kind)
    if choices is not None:
        allowed = ", ".join(repr(c) for c in choices)
        return f"one of {allowed}" + (" or None" if _fits(None, kind) else "")
    name = getattr(kind, "__name__", None)
    return f"a {name}" if name else str(kind).replace("typing.", "")


def check_fields(obj: Any) -> None:
    """Raise :class:`ConfigError` for the first field of the dataclass instance ``obj`` whose
    value does not fit its annotation or its :func:`bounded` range."""
    cls = type(obj)
    kinds = field_types(cls)
    for f in dataclasses.fields(obj):
        value, kind = getattr(obj, f.name), kinds[f.name]
        where = f"{cls.__name__}.{f.name}"
        if not _fits(value, kind):
            raise ConfigError(f"{where}: {value!r} is not {_describe(kind)}")
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if value is None or (low is None and high is None):
            continue
        below = low is not None and (value <= low if f.metadata.get("low_open") else value < low)
        if below or (high is not None and value > high):
            lo = "-inf" if low is None else low
            hi = "inf" if high is None else high
            left = "(" if f.metadata.get("low_open") or low is None else "["
            raise ConfigError(f"{where}: {value!r} is outside {left}{lo}, {hi}]")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (``prog: error: ...``, exit 2),
    without the usage block: a bad flag or value reads like every other refusal of the CLIs."""

    def error(self, message: str) -> typing.NoReturn:
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)
