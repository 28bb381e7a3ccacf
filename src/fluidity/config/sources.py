"""Layer 1 of the loader: the raw tree, and where each part of it came from.

The YAML file gives a nested mapping (``read_yaml_mapping``). Each environment
variable and each command-line override *replaces* the value at one key path
(``Sources.assign``), after checking that path against the section dataclasses.
Every replacement records its ``Origin`` -- the label errors name and the
directory relative paths resolve against -- so the typed layer
(``fluidity.config.build``) can say where a bad value came from. Raises
``ConfigError`` with ``<origin>: <key.path>: <problem>``.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from fluidity.config.fields import field_names, is_value_type, kind, section_type, unwrap_optional
from fluidity.errors import ConfigError

Key = tuple[str, ...]
"""A key path in the tree: ``("tls", "cert")`` is ``tls.cert``; list items are ``"[i]"``."""


def dotted(path: Key) -> str:
    """``tls.cert``, ``targets.ports[1]``: a key path as users write it."""
    return ".".join(path).replace(".[", "[")


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
            f"got {kind(document)}"
        )
    return document


def _yaml_problem(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}not valid YAML: {exc.problem or exc.context}"


class Sources:
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
        raise ConfigError(f"{label}: empty key; expected one of: {', '.join(field_names(cls))}")
    tp: Any = cls
    for depth, part in enumerate(parts):
        section = section_type(tp)
        key = ".".join(parts[: depth + 1])
        if section is None:
            parent = ".".join(parts[:depth])
            raise ConfigError(f"{label}: {key}: unknown key; {parent} has no sub-keys")
        names = field_names(section)
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
    inner = unwrap_optional(tp)
    if inner is str or is_value_type(inner):
        return None if inner is not tp and text in ("null", "~") else text
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else exc
        raise ConfigError(f"{label}: {dotted(path)}: not a YAML value: {problem}") from None
