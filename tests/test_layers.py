"""The packages stand in layers: a lower one never imports a higher one.

``proto`` is the floor every actor and tool stands on, so it imports none of
them; the monitor (``tui``) and the commands (``cli``) both stand on
``proto``, and the monitor never reaches into the commands. Read from the
source with ``ast``, so an import inside a function counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UPPER = ("broker", "brain", "worker", "plans", "tui", "cli")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "proto": UPPER,
    "tui": ("cli",),
}


def imported(path: Path) -> set[str]:
    """The absolute module names ``path`` imports (``from . import`` resolved)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = "llmo." + ".".join(path.relative_to(ROOT).parent.parts)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] == "llmo" and len(parts) > 1:
        return parts[1]
    return parts[0] if parts[0] in UPPER or parts[0] == "proto" else None


def violations(package: str) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for module in sorted(imported(path)):
            if layer_of(module) in FORBIDDEN[package]:
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layers_do_not_import_higher_ones(package):
    assert (ROOT / package / "__init__.py").exists()
    assert violations(package) == []


def test_the_check_sees_an_offending_import(tmp_path, monkeypatch):
    (tmp_path / "tui").mkdir()
    (tmp_path / "tui" / "bad.py").write_text(
        "def f():\n    from llmo.cli.tools import open_session\n    from . import feed\n"
    )
    (tmp_path / "proto").mkdir()
    (tmp_path / "proto" / "bad.py").write_text("import llmo.worker.shell\nfrom .. import brain\n")
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    assert violations("tui") == [
        "tui/bad.py imports llmo.cli.tools",
        "tui/bad.py imports llmo.cli.tools.open_session",
    ]
    assert violations("proto") == [
        "proto/bad.py imports llmo.brain",
        "proto/bad.py imports llmo.worker.shell",
    ]
