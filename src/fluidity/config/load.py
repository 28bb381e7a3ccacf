"""The generic loader behind the schema: YAML + environment + overrides -> dataclasses.

A configuration is a tree of frozen dataclasses. This module knows nothing about
the agent or the server: it walks any such tree with ``typing.get_type_hints``,
so a new section (``lifecycle:``, ``upstream_proxy:``) is plugged in by adding
a field to ``AgentConfig`` or ``ServerConfig`` and nothing else.

The theory, in three layers:

1. **Raw tree.** The YAML file gives a nested mapping. Each environment
   variable ``FLUIDITY_<ROLE>__A__B`` and each override ``"a.b"`` *replaces*
   the value at key path ``a.b`` (file < env < overrides). Every replacement
   records its *origin* — the label errors name and the directory relative
   paths resolve against — so a path from the file resolves next to the file,
   and one from the environment resolves against the working directory.
2. **Typed tree.** ``_Builder`` walks the dataclass fields and the raw tree
   together, converting each value to its annotated type (bool, int, float,
   str, ``Literal``, ``tuple[X, ...]``, ``X | None``, nested dataclasses, and
   value types that follow the ``ConfigValue`` protocol) and checking the
   field's rules. Unknown keys, missing required keys and wrong types stop the
   walk with one ``ConfigError`` line: ``<origin>: <key.path>: <problem>``.
3. **Cross-field checks** live in each dataclass's ``__post_init__`` and raise
   ``ConfigError``; the builder prefixes their message with origin and path.

Field rules sit in ``field(metadata={...})``; numeric rules apply to the value,
or to each item of a tuple::

    positive=True       number > 0          min=N / max=N   inclusive bounds
    non_negative=True   number >= 0         check=f         f(value) -> problem | None

A field declared with ``repr=False`` is a secret: its value is never echoed
in an error message either.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
from collections.abc import Callable, Hashable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import (
    Any,
    ClassVar,
    Literal,
    NoReturn,
    Protocol,
    TypeVar,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
)

import yaml

from fluidity.errors import ConfigError

T = TypeVar("T")
Key = tuple[str, ...]
"""A key path in the tree: ``("tls", "cert")`` is ``tls.cert``; list items are ``"[i]"``."""


def dotted(path: Key) -> str:
    """``tls.cert``, ``targets.ports[1]``: a key path as users write it."""
    return ".".join(path).replace(".[", "[")


class ConfigValue(Protocol):
    """A value type parsed from one string of text (``Address``, ``FileOrPem``).

    ``from_config`` raises ``ConfigError`` with the bare problem (``expected
    host:port, got 'x'``); the loader adds the origin and the key path.
    """

    config_expected: ClassVar[str]

    @classmethod
    def from_config(cls, value: object, *, key: str, base_dir: Path) -> ConfigValue: ...


@dataclass(frozen=True)
class Origin:
    """Where a raw value came from: ``label`` starts error messages, ``base_dir``
    is where relative file paths in that value resolve."""

    label: str
    base_dir: Path


def env_name(prefix: str, key: str) -> str:
    """The environment variable for dotted ``key``: ``env_name("FLUIDITY_AGENT__",
    "tls.cert") == "FLUIDITY_AGENT__TLS__CERT"``."""
    return prefix + "__".join(key.split(".")).upper()


def load_config(
    cls: type[T],
    *,
    role: str,
    path: Path | None,
    env: Mapping[str, str] | None,
    overrides: Mapping[str, object] | None,
) -> T:
    """Build ``cls`` from the YAML file at ``path`` (``None``: no file), then the
    ``FLUIDITY_<ROLE>__*`` variables of ``env`` (``None``: ``os.environ``), then
    ``overrides`` (dotted keys; ``None`` values are skipped as "flag not given";
    strings for non-text keys are parsed like environment values).

    Raises ``ConfigError`` with a one-line message naming origin, key and fix.
    """
    prefix = f"FLUIDITY_{role.upper()}__"
    if path is None:
        tree: dict[str, object] = {}
        root = Origin(f"{role} config", Path.cwd())
    else:
        tree = read_yaml_mapping(path)
        root = Origin(str(path), path.parent.absolute())
    sources = _Sources(tree, root)
    environ = os.environ if env is None else env
    for name in sorted(n for n in environ if n.startswith(prefix)):
        origin = Origin(f"${name}", Path.cwd())
        parts = name[len(prefix) :].lower().split("__")
        sources.assign(cls, parts, environ[name], origin, text=True)
    for dotted_key, value in (overrides or {}).items():
        if value is not None:
            origin = Origin("command line", Path.cwd())
            sources.assign(cls, dotted_key.split("."), value, origin, text=isinstance(value, str))
    return _Builder(sources, prefix).build(cls, sources.tree, ())


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
        shown = "(hidden)" if not f.repr else repr(value)
        if not _bounds_ok(f, value):
            raise ConfigError(f"{f.name}: expected {describe(hints[f.name], f)}, got {shown}")
        check: Callable[[Any], str | None] | None = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            raise ConfigError(f"{f.name}: {problem}")


# -- layer 1: the raw tree and where each part of it came from ---------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load`` that refuses duplicate keys instead of keeping the last."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Hashable, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_mapping(path: Path) -> dict[str, object]:
    """Read the YAML file at ``path`` as a mapping (an empty file is ``{}``)."""
    label = str(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{label}: config file not found ({path.absolute()})") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read config file: {exc.strerror}") from None
    try:
        document = yaml.load(data, Loader=_UniqueKeyLoader)  # a SafeLoader subclass
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{label}: {_yaml_problem(exc)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: not valid YAML: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError(
            f"{label}: the top level must be a mapping of keys (like 'listen: host:port'), "
            f"got {_kind(document)}"
        )
    return document


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {exc.problem or exc.context}"


class _Sources:
    """The raw tree plus the origin of each replaced key path."""

    def __init__(self, tree: dict[str, object], root: Origin) -> None:
        self.tree = tree
        self.root = root
        self._origins: dict[Key, Origin] = {}

    def origin(self, path: Key) -> Origin:
        """The origin of the longest prefix of ``path`` that was replaced."""
        for end in range(len(path), 0, -1):
            if path[:end] in self._origins:
                return self._origins[path[:end]]
        return self.root

    def assign(
        self, cls: type, parts: list[str], raw: object, origin: Origin, *, text: bool
    ) -> None:
        """Replace the value at key path ``parts`` (checked against ``cls``) by ``raw``;
        with ``text``, ``raw`` is a string parsed by ``_parse_text``."""
        path, leaf = _resolve_key(cls, parts, origin.label)
        value = _parse_text(raw, leaf, origin.label, path) if text else raw
        node = self.tree
        for part in path[:-1]:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[path[-1]] = value
        for known in [k for k in self._origins if k[: len(path)] == path]:
            del self._origins[known]
        self._origins[path] = origin


def _resolve_key(cls: type, parts: list[str], label: str) -> tuple[Key, Any]:
    """Check that ``parts`` names a key of ``cls``; return it and its annotated type."""
    if parts == [""]:
        raise ConfigError(f"{label}: empty key; expected one of: {', '.join(_field_names(cls))}")
    tp: Any = cls
    for depth, part in enumerate(parts):
        section = _section_type(tp)
        key = ".".join(parts[: depth + 1])
        if section is None:
            parent = ".".join(parts[:depth])
            raise ConfigError(f"{label}: {key}: unknown key; {parent} has no sub-keys")
        names = _field_names(section)
        if part not in names:
            raise ConfigError(f"{label}: {key}: unknown key; expected one of: {', '.join(names)}")
        tp = get_type_hints(section)[part]
    return tuple(parts), tp


def _parse_text(raw: object, tp: Any, label: str, path: Key) -> object:
    """Turn an environment string into a raw value.

    Text keys (strings, addresses, file paths, PEM) take the string verbatim, so
    ``[::1]:80``, ``-----BEGIN ...`` and ``pa#ss`` survive; ``null`` or ``~``
    clears an optional one. Other keys parse it as YAML: ``5``, ``true``,
    ``[a, b]``, ``{k: v}``.
    """
    text = str(raw)
    inner = _unwrap_optional(tp)
    if inner is str or _is_value_type(inner):
        return None if inner is not tp and text in ("null", "~") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
        raise ConfigError(f"{label}: {dotted(path)}: not a YAML value: {problem}") from None


# -- layer 2: typed values -----------------------------------------------------------------

_MISMATCH: Any = object()


class _Builder:
    """Walks dataclass fields and the raw tree together; see the module docstring."""

    def __init__(self, sources: _Sources, prefix: str) -> None:
        self._sources = sources
        self._prefix = prefix

    def fail(self, path: Key, problem: str) -> NoReturn:
        label = self._sources.origin(path).label
        raise ConfigError(f"{label}: {dotted(path)}: {problem}" if path else f"{label}: {problem}")

    def build(self, cls: type[T], raw: object, path: Key) -> T:
        """Construct dataclass ``cls`` from mapping ``raw`` found at ``path``."""
        if not isinstance(raw, Mapping):
            self.fail(path, f"expected {describe(cls)}, got {_shown(raw)}")
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
            elif _is_required(f):
                kwargs[name] = self.missing(hints[name], f, here)
        try:
            return cls(**kwargs)
        except ConfigError as exc:
            self.fail(path, str(exc))

    def missing(self, tp: Any, f: dataclasses.Field[Any], path: Key) -> object:
        """A required key is absent: a section is built from nothing (naming its
        first missing key), anything else is an error."""
        if _section_type(tp) is tp:
            return self.build(tp, {}, path)
        hint = env_name(self._prefix, dotted(path))
        self.fail(path, f"missing required key; expected {describe(tp, f)}; add it or set ${hint}")

    def convert(self, tp: Any, f: dataclasses.Field[Any], raw: object, path: Key) -> object:
        """``raw`` as type ``tp``, checked against the rules of field ``f``."""
        value = self._convert_type(tp, f, raw, path)
        if value is _MISMATCH or not _bounds_ok(f, value):
            shown = f"a value of type {type(raw).__name__} (hidden)" if not f.repr else _shown(raw)
            quote = " (quote it in YAML)" if str in _leaves(tp) and _is_scalar(raw) else ""
            self.fail(path, f"expected {describe(tp, f)}, got {shown}{quote}")
        check: Callable[[Any], str | None] | None = f.metadata.get("check")
        problem = check(value) if check and value is not None else None
        if problem:
            self.fail(path, problem)
        return value

    def _convert_type(self, tp: Any, f: dataclasses.Field[Any], raw: object, path: Key) -> object:
        inner = _unwrap_optional(tp)
        if inner is not tp:
            return None if raw is None else self._convert_type(inner, f, raw, path)
        if get_origin(tp) is tuple:
            return self._convert_tuple(tp, f, raw, path)
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(raw, tp):
            return raw
        if _is_value_type(tp):
            return self._convert_value_type(tp, raw, path)
        if _section_type(tp) is tp:
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
    raise TypeError(f"config type {tp!r} unsupported; see fluidity.config.load")


def _finite_float(raw: object) -> object:
    if not isinstance(raw, int | float):
        return _MISMATCH
    try:
        value = float(raw)
    except OverflowError:
        return _MISMATCH
    return value if math.isfinite(value) else _MISMATCH


# -- rules and descriptions ------------------------------------------------------------------


def _bounds(f: dataclasses.Field[Any] | None) -> tuple[float | None, float | None, bool]:
    """(low, high, low_is_exclusive) from a field's metadata."""
    meta = f.metadata if f else {}
    if meta.get("positive"):
        return 0, meta.get("max"), True
    low = 0 if meta.get("non_negative") else meta.get("min")
    return low, meta.get("max"), False


def _bounds_ok(f: dataclasses.Field[Any], value: object) -> bool:
    if isinstance(value, tuple):
        return all(_bounds_ok(f, item) for item in value)
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


_PLURALS = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def describe(tp: Any, f: dataclasses.Field[Any] | None = None) -> str:
    """What a value of type ``tp`` under field ``f``'s rules looks like, for messages."""
    inner = _unwrap_optional(tp)
    if inner is not tp:
        return f"{describe(inner, f)} or null"
    if get_origin(tp) is Literal:
        return "one of: " + ", ".join(str(c) for c in get_args(tp))
    if get_origin(tp) is tuple:
        item = get_args(tp)[0]
        return f"a list of {_PLURALS.get(item) or describe(item) + ' items'}{_bounds_text(f)}"
    if _is_value_type(tp):
        return str(tp.config_expected)
    if _section_type(tp) is tp:
        return "a mapping with keys: " + ", ".join(_field_names(tp))
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
    return words[tp] + (_bounds_text(f) if tp in (int, float) else "")


def _shown(raw: object) -> str:
    if raw is None:
        return "null"
    text = repr(raw)
    if len(text) <= 60:
        return text
    return _kind(raw) if isinstance(raw, Mapping | list | tuple) else text[:57] + "..."


def _kind(raw: object) -> str:
    if isinstance(raw, Mapping):
        return "a mapping"
    return "a list" if isinstance(raw, list | tuple) else f"a {type(raw).__name__}"


# -- type inspection --------------------------------------------------------------------------


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``X | None``; ``tp`` itself otherwise."""
    if get_origin(tp) in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if len(args) != 1 or len(get_args(tp)) != 2:
            raise TypeError(f"config type {tp} unsupported: only X | None unions")
        return args[0]
    return tp


def _is_value_type(tp: Any) -> bool:
    return isinstance(tp, type) and hasattr(tp, "from_config")


def _section_type(tp: Any) -> Any:
    """The dataclass behind ``tp`` or ``tp | None`` if it is a section, else None."""
    inner = _unwrap_optional(tp)
    is_section = isinstance(inner, type) and dataclasses.is_dataclass(inner)
    return inner if is_section and not _is_value_type(inner) else None


def _field_names(cls: Any) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.init]


def _is_required(f: dataclasses.Field[Any]) -> bool:
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING


def _leaves(tp: Any) -> Iterator[Any]:
    """The scalar types a value of ``tp`` is built from (``str`` for ``tuple[str, ...]``)."""
    inner = _unwrap_optional(tp)
    yield from _leaves(get_args(inner)[0]) if get_origin(inner) is tuple else [inner]


def _is_scalar(raw: object) -> bool:
    return isinstance(raw, int | float | bool)
