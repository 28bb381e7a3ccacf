"""What a config field is: its type, its rules, and how messages describe it.

The loader (``fluidity.config.load``) and the schema modules share this
vocabulary. A section is a frozen dataclass; each field's annotated type is
one of bool, int, float, str, ``Literal``, ``tuple[X, ...]``, ``X | None``, a
nested section, or a value type following ``ConfigValue``. Field rules sit in
``field(metadata={...})``; numeric rules apply to the value, or to each item of
a tuple::

    positive=True       number > 0          min=N / max=N   inclusive bounds
    non_negative=True   number >= 0         check=f         f(value) -> problem | None

A field declared with ``repr=False`` is a secret: its value is never echoed in
an error message either. Nothing here reads files or the environment.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Literal,
    Protocol,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

from fluidity.errors import ConfigError


class ConfigValue(Protocol):
    """A value type parsed from one string of text (``Address``, ``FileOrPem``).

    ``from_config`` raises ``ConfigError`` with the bare problem (``expected
    host:port, got 'x'``); the loader adds the origin and the key path.
    """

    config_expected: ClassVar[str]

    @classmethod
    def from_config(cls, value: object, *, key: str, base_dir: Path) -> ConfigValue: ...


class Section:
    """Optional base of section dataclasses: checks the field rules when a section is
    built in code too (the loader checks them anyway, naming the key path)."""

    def __post_init__(self) -> None:
        check_fields(self)


def check_fields(obj: object) -> None:
    """Raise ``ConfigError`` naming the first field of dataclass ``obj`` that breaks
    its numeric rules or its ``check``."""
    hints = get_type_hints(type(obj))
    for f in dataclasses.fields(cast(Any, obj)):
        value = getattr(obj, f.name)
        text = "(hidden)" if not f.repr else repr(value)
        if not bounds_ok(f, value):
            raise ConfigError(f"{f.name}: expected {describe(hints[f.name], f)}, got {text}")
        check: Callable[[Any], str | None] | None = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{f.name}: {problem}")


def check_order(low_name: str, low: float, high_name: str, high: float) -> None:
    """A cross-field rule for ``__post_init__``: ``ConfigError`` if ``high < low``."""
    if high < low:
        raise ConfigError(
            f"{high_name} ({high}) is below {low_name} ({low}); raise {high_name} or lower "
            f"{low_name}"
        )


# -- numeric rules ----------------------------------------------------------------------------


def _bounds(f: dataclasses.Field[Any] | None) -> tuple[float | None, float | None, bool]:
    """(low, high, low_is_exclusive) from a field's metadata."""
    meta = f.metadata if f else {}
    if meta.get("positive"):
        return 0, meta.get("max"), True
    low = 0 if meta.get("non_negative") else meta.get("min")
    return low, meta.get("max"), False


def bounds_ok(f: dataclasses.Field[Any], value: object) -> bool:
    """Whether ``value`` (or each item of a tuple) keeps ``f``'s numeric rules;
    values that are not numbers always do."""
    if isinstance(value, tuple):
        return all(bounds_ok(f, item) for item in value)
    if not isinstance(value, int | float) or isinstance(value, bool):
        return True
    low, high, exclusive = _bounds(f)
    too_low = low is not None and (value <= low if exclusive else value < low)
    return not too_low and (high is None or value <= high)


def _bounds_text(f: dataclasses.Field[Any] | None) -> str:
    low, high, exclusive = _bounds(f)
    if low is not None and high is not None and not exclusive:
        return f" from {low} to {high}"
    parts = [f"> {low}" if exclusive else f">= {low}"] if low is not None else []
    parts += [f"<= {high}"] if high is not None else []
    return "".join(" " + p for p in parts)


# -- descriptions, for messages ---------------------------------------------------------------

_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(tp: Any, f: dataclasses.Field[Any] | None = None) -> str:
    """What a value of type ``tp`` under field ``f``'s rules looks like, for messages."""
    inner = unwrap_optional(tp)
    if inner is not tp:
        return f"{describe(inner, f)} or null"
    if get_origin(tp) is Literal:
        return "one of: " + ", ".join(str(c) for c in get_args(tp))
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        return f"a list of {_PLURALS.get(item) or describe(item) + ' items'}{_bounds_text(f)}"
    if is_value_type(tp):
        return str(tp.config_expected)
    if section_type(tp) is tp:
        return "a mapping with keys: " + ", ".join(field_names(tp))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
    return words[tp] + (_bounds_text(f) if tp in (int, float) else "")


def shown(raw: object) -> str:
    """``raw`` as an error message quotes it: its repr, cut short or named by kind."""
    if raw is None:
        return "null"
    text = repr(raw)
    if len(text) <= 60:
        return text
    return kind(raw) if isinstance(raw, Mapping | list | tuple) else text[:57] + "..."


def kind(raw: object) -> str:
    """``a mapping``, ``a list``, ``a str``: what sort of raw value ``raw`` is."""
    if isinstance(raw, Mapping):
        return "a mapping"
    return "a list" if isinstance(raw, list | tuple) else f"a {type(raw).__name__}"


# -- type inspection --------------------------------------------------------------------------


def unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; ``tp`` itself otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1 or len(get_args(tp)) != 2:
            raise TypeError(f"config type {tp} unsupported: only X | None unions")
        return args[0]
    return tp


def is_value_type(tp: Any) -> bool:
    """Whether ``tp`` follows ``ConfigValue`` (is parsed from text by ``from_config``)."""
    return isinstance(tp, type) and hasattr(tp, "from_config")


def section_type(tp: Any) -> Any:
    """The dataclass behind ``tp`` or ``tp | None`` if it is a section, else None."""
    inner = unwrap_optional(tp)
    is_section = isinstance(inner, type) and dataclasses.is_dataclass(inner)
    return inner if is_section and not is_value_type(inner) else None


def field_names(cls: Any) -> list[str]:
    """The keys of section ``cls``, in declaration order."""
    return [f.name for f in dataclasses.fields(cls) if f.init]


def is_required(f: dataclasses.Field[Any]) -> bool:
    """Whether field ``f`` has no default."""
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def leaves(tp: Any) -> Iterator[Any]:
    """The scalar types a value of ``tp`` is built from (``str`` for ``tuple[str, ...]``)."""
    inner = unwrap_optional(tp)
    yield from leaves(get_args(inner)[0]) if get_origin(inner) is tuple else [inner]


def is_scalar(raw: object) -> bool:
    """Whether raw value ``raw`` is a number or a boolean (YAML wrote it unquoted)."""
    return isinstance(raw, int | float | bool)


def changed_keys(old: object, new: object, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two configs, sections walked into
    (``tls.cert``, ``limits.max_tunnels``); values are never included (they may be secrets)."""
    if not (isinstance(old, Section) and isinstance(new, Section)) or type(old) is not type(new):
        return [prefix.rstrip(".") or "config"] if old != new else []
    found: list[str] = []
    for f in dataclasses.fields(cast(Any, old)):
        found += changed_keys(getattr(old, f.name), getattr(new, f.name), f"{prefix}{f.name}.")
    return found
