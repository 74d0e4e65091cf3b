"""Write the ``TYPE_CHECKING`` imports of ``nnunet_transfer/__init__.py`` from its ``_PUBLIC`` table.

    python scripts/public_api.py           # rewrite the block
    python scripts/public_api.py --check   # exit 1 if the block differs from the table

The table is read from the source file (no import of the package), so this runs without an environment.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

INIT = Path(__file__).resolve().parents[1] / "nnunet_transfer" / "__init__.py"
BEGIN = "if TYPE_CHECKING:  # written by scripts/public_api.py from _PUBLIC: do not edit by hand\n"
END = "# end of the written block\n"


def read_table(source: str) -> dict[str, tuple[str, ...]]:
    """``_PUBLIC`` as written in ``source`` (parsed up to the written block, which may be empty now)."""
    for node in ast.parse(source[:source.find(BEGIN)]).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "_PUBLIC":
            return ast.literal_eval(node.value)
    raise SystemExit(f"{INIT}: no _PUBLIC table")


def _isort_key(name: str) -> tuple[int, str]:
    """ruff's isort order within one import: CONSTANTS, then Classes, then functions."""
    return (0 if name.isupper() else 1 if name[:1].isupper() else 2), name


def render(table: dict[str, tuple[str, ...]]) -> str:
    """The block: one sorted ``from nnunet_transfer.MODULE import (...)`` per module, modules sorted."""
    lines = [BEGIN]
    for module in sorted(table):
        names = sorted(table[module], key=_isort_key)
        lines.append(f"    from nnunet_transfer.{module} import (\n")
        lines.extend(f"        {name} as {name},\n" for name in names)  # "as": re-exported (PEP 484)
        lines.append("    )\n")
    lines.append(END)
    return "".join(lines)


def main(argv: list[str]) -> int:
    source = INIT.read_text()
    start, end = source.find(BEGIN), source.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"{INIT}: the written block's markers are missing")
    new = source[:start] + render(read_table(source)) + source[end + len(END):]
    if "--check" in argv:
        if new != source:
            print(f"{INIT}: the TYPE_CHECKING imports differ from _PUBLIC; run python scripts/public_api.py")
            return 1
        return 0
    INIT.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
