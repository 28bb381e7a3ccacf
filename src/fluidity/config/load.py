"""The generic loader behind the schema: YAML + environment + overrides -> dataclasses.

A configuration is a tree of frozen dataclasses. The loader knows nothing about
the agent or the server: it walks any such tree with ``typing.get_type_hints``,
so a new section (``lifecycle:``, ``upstream_proxy:``) is plugged in by adding
a field to ``AgentConfig`` or ``ServerConfig`` and nothing else.

The theory, in three layers, each in its own module:

1. **Raw tree** (``fluidity.config.sources``). The YAML file gives a nested
   mapping. Each environment variable ``FLUIDITY_<ROLE>__A__B`` and each
   override ``"a.b"`` *replaces* the value at key path ``a.b`` (file < env <
   overrides). Every replacement records its *origin* — the label errors name
   and the directory relative paths resolve against — so a path from the file
   resolves next to the file, and one from the environment resolves against
   the working directory.
2. **Typed tree** (``fluidity.config.build``). ``Builder`` walks the dataclass
   fields and the raw tree together, converting each value to its annotated
   type (bool, int, float, str, ``Literal``, ``tuple[X, ...]``, ``X | None``,
   nested dataclasses, and value types that follow the ``ConfigValue``
   protocol) and checking the field's rules. Unknown keys, missing required
   keys and wrong types stop the walk with one ``ConfigError`` line:
   ``<origin>: <key.path>: <problem>``.
3. **Cross-field checks** live in each dataclass's ``__post_init__`` and raise
   ``ConfigError``; the builder prefixes their message with origin and path.

Field types and rules (``positive``, ``non_negative``, ``min``, ``max``,
``check``; ``repr=False`` for secrets), the ``Section`` base and the
``ConfigValue`` protocol are in ``fluidity.config.fields``. This module is the
entry point that runs the three layers in order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

from fluidity.config.build import Builder
from fluidity.config.sources import Origin, Sources, read_yaml_mapping

T = TypeVar("T")


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
    sources = Sources(tree, root)
    environ = os.environ if env is None else env
    for name in sorted(n for n in environ if n.startswith(prefix)):
        origin = Origin(f"${name}", Path.cwd())
        parts = name[len(prefix) :].lower().split("__")
        sources.assign(cls, parts, environ[name], origin, text=True)
    for dotted_key, value in (overrides or {}).items():
        if value is not None:
            origin = Origin("command line", Path.cwd())
            sources.assign(cls, dotted_key.split("."), value, origin, text=isinstance(value, str))
    return Builder(sources, prefix).build(cls, sources.tree, ())
