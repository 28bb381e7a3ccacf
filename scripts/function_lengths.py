"""The longest functions and the largest modules of src/fluidity.

``python scripts/function_lengths.py [N]`` lists the N longest functions (10).

A reading aid for keeping functions short (docs/architecture.md; the 400-line
module limit itself is tests/test_layout.py's). Lines are counted from a
function's ``def`` to its last line, docstring and comments included.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fluidity"


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    functions: list[tuple[int, str]] = []
    modules: list[tuple[int, str]] = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        name = str(path.relative_to(PACKAGE))
        modules.append((len(source.splitlines()), name))
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                end = node.end_lineno or node.lineno
                functions.append((end - node.lineno + 1, f"{name}:{node.name}"))
    print(f"{len(modules)} modules, {len(list(PACKAGE.glob('*.py')))} directly in src/fluidity/")
    print("largest modules:")
    for lines, name in sorted(modules, reverse=True)[:3]:
        print(f"  {lines:4d}  {name}")
    print(f"{count} longest functions:")
    for lines, name in sorted(functions, reverse=True)[:count]:
        print(f"  {lines:4d}  {name}")


if __name__ == "__main__":
    main()
