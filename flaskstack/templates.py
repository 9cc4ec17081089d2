"""Where each rendered file's template comes from, and how its header names it.

Every file flaskstack writes on a host has one template in the project's
``templates/`` folder, at the file's path on the host plus ``.j2`` (an app's
name is ``app`` there: ``templates/etc/systemd/system/app.service.j2``). An
inventory may hold a ``templates/`` folder of its own: a file there at the same
relative path wins, and the rendered file's header says so.
"""

from __future__ import annotations

from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
TEMPLATES = PROJECT / "templates"


class TemplateError(Exception):
    """No template at that path."""


def inventory_templates(inventory_dir: str) -> Path:
    """An inventory's own templates/ folder (overrides and nginx snippets)."""
    return Path(inventory_dir) / "templates"


def find(relative: str, inventory_dir: str | None = None) -> Path:
    """The template for a host file: the inventory's override if it has one, else flaskstack's."""
    relative = relative.lstrip("/")
    candidates = [inventory_templates(inventory_dir) / relative] if inventory_dir else []
    candidates.append(TEMPLATES / relative)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise TemplateError(f"no template {relative} in {' or '.join(str(p.parent) for p in candidates)}")


def _shown(path: Path) -> str:
    return path.relative_to(PROJECT).as_posix()


def origin(fullpath: str) -> str:
    """The header's words for a template: its path in the checkout, or, for an inventory's
    override, its path in the inventory and what it overrides. Never a path that depends on
    where the checkout or the inventory lies, so every control node renders the same header."""
    path = Path(fullpath).resolve()
    if path.is_relative_to(TEMPLATES):
        return _shown(path)
    parts = path.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "templates":
            relative = Path(*parts[index + 1 :]).as_posix()
            if (TEMPLATES / relative).is_file():
                return f"the inventory's templates/{relative} (overrides flaskstack's templates/{relative})"
            return f"the inventory's templates/{relative}"
    return path.name
