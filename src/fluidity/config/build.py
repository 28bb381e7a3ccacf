"""Layer 2 of the loader: the typed tree, built from the raw one.

``Builder`` walks the dataclass fields and the raw tree (``fluidity.config.sources``)
together, converting each value to its annotated type (see
``fluidity.config.fields``) and checking the field's rules. Unknown keys,
missing required keys and wrong types stop the walk with one ``ConfigError``
line: ``<origin>: <key.path>: <problem>``. A section's own ``__post_init__``
checks (layer 3) raise ``ConfigError`` too; the builder prefixes their message
with origin and path. Secret fields (``repr=False``) are never echoed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal, NoReturn, TypeVar, cast, get_args, get_origin, get_type_hints

from fluidity.config.fields import (
    bounds_ok,
    describe,
    is_required,
    is_scalar,
    is_value_type,
    leaves,
    section_type,
    shown,
    unwrap_optional,
)
from fluidity.config.sources import Key, Sources, dotted, env_name
from fluidity.errors import ConfigError

T = TypeVar("T")

_MISMATCH: Any = object()


class Builder:
    """Walks dataclass fields and the raw tree together; see the module docstring.

    ``prefix`` (``FLUIDITY_AGENT__``) names the environment variable a missing key
    could be set with.
    """

    def __init__(self, sources: Sources, prefix: str) -> None:
        self._sources = sources
        self._prefix = prefix

    def fail(self, path: Key, problem: str) -> NoReturn:
        """Raise ``ConfigError``: ``problem`` prefixed by the origin of ``path`` and ``path``."""
        label = self._sources.origin(path).label
        raise ConfigError(f"{label}: {dotted(path)}: {problem}" if path else f"{label}: {problem}")

    def build(self, cls: type[T], raw: object, path: Key) -> T:
        """Construct dataclass ``cls`` from mapping ``raw`` found at ``path``."""
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected {describe(cls)}, got {shown(raw)}")
        fields = {f.name: f for f in dataclasses.fields(cast(Any, cls)) if f.init}
        for key in raw:
            if key not in fields:
                self.fail((*path, str(key)), f"unknown key; expected one of: {', '.join(fields)}")
        hints = get_type_hints(cls)
        kwargs = {}
        for name, f in fields.items():
            here = (*path, name)
            if name in raw:
                kwargs[name] = self.convert(hints[name], f, raw[name], here)
            elif is_required(f):
                kwargs[name] = self.missing(hints[name], f, here)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            self.fail(path, str(exc))

    def missing(self, tp: Any, f: dataclasses.Field[Any], path: Key) -> object:
        """A required key is absent: a section is built from nothing (naming its
        first missing key), anything else is an error."""
        if section_type(tp) is tp:
            return self.build(tp, {}, path)
        hint = env_name(self._prefix, dotted(path))
        self.fail(path, f"missing required key; expected {describe(tp, f)}; add it or set ${hint}")

    def convert(self, tp: Any, f: dataclasses.Field[Any], raw: object, path: Key) -> object:
        """``raw`` as type ``tp``, checked against the rules of field ``f``."""
        value = self._convert_type(tp, f, raw, path)
        if value is _MISMATCH or not bounds_ok(f, value):
            text = f"a value of type {type(raw).__name__} (hidden)" if not f.repr else shown(raw)
            quote = " (quote it in YAML)" if str in leaves(tp) and is_scalar(raw) else ""
            self.fail(path, f"expected {describe(tp, f)}, got {text}{quote}")
        check: Callable[[Any], str | None] | None = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            self.fail(path, problem)
        return value

    def _convert_type(self, tp: Any, f: dataclasses.Field[Any], raw: object, path: Key) -> object:
        inner = unwrap_optional(tp)
        if inner is not tp:
            return None if raw is None else self._convert_type(inner, f, raw, path)
        if get_origin(tp) is tuple:
            return self._convert_tuple(tp, f, raw, path)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(raw, tp):
            return raw
        if is_value_type(tp):
            return self._convert_value_type(tp, raw, path)
        if section_type(tp) is tp:
            return self.build(tp, raw, path)
        return _convert_scalar(tp, raw)

    def _convert_tuple(self, tp: Any, f: dataclasses.Field[Any], raw: object, path: Key) -> object:
        item_type, ellipsis = get_args(tp)
        if ellipsis is not Ellipsis:
            raise TypeError(f"config type {tp} unsupported: use tuple[X, ...]")
        if not isinstance(raw, list | tuple):
            return _MISMATCH
        items = [self._convert_type(item_type, f, x, (*path, f"[{i}]")) for i, x in enumerate(raw)]
        return _MISMATCH if _MISMATCH in items else tuple(items)

    def _convert_value_type(self, tp: Any, raw: object, path: Key) -> object:
        if isinstance(raw, tp):
            return raw
        base_dir = self._sources.origin(path).base_dir
        try:
            return tp.from_config(raw, key=dotted(path), base_dir=base_dir)
        except ConfigError as exc:
            self.fail(path, str(exc))


def _convert_scalar(tp: Any, raw: object) -> object:
    """``raw`` as a bool, int, float, non-empty str or Literal; else ``_MISMATCH``."""
    if get_origin(tp) is Literal:
        return raw if any(type(raw) is type(c) and raw == c for c in get_args(tp)) else _MISMATCH
    if tp is bool or isinstance(raw, bool):
        return raw if tp is bool and isinstance(raw, bool) else _MISMATCH
    if tp is int:
        return raw if isinstance(raw, int) else _MISMATCH
    if tp is float:
        return _finite_float(raw)
    if tp is str:
        return raw if isinstance(raw, str) and raw else _MISMATCH
    raise TypeError(f"config type {tp!r} unsupported; see fluidity.config.fields")


def _finite_float(raw: object) -> object:
    if not isinstance(raw, int | float):
        return _MISMATCH
    try:
        value = float(raw)
    except OverflowError:
        return _MISMATCH
    return value if math.isfinite(value) else _MISMATCH
