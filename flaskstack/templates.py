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


def find(relative: str, inventory_dir: str | None = None) -> Path:
    """The template for a host file: the inventory's override if it has one, else flaskstack's."""
    relative = relative.lstrip("/")
    candidates = [Path(inventory_dir) / "templates" / relative] if inventory_dir else []
    candidates.append(TEMPLATES / relative)
    for path in candidates:
        if path.is_file():
            return path.resolve()
    raise TemplateError(f"no template {relative} in {' or '.join(str(p.parent) for p in candidates)}")


def _shown(path: Path) -> str:
    try:
        return path.relative_to(PROJECT).as_posix()
    except ValueError:
        return path.as_posix()


def origin(fullpath: str) -> str:
    """The header's words for a template: its path in the checkout, and what it overrides."""
    path = Path(fullpath).resolve()
    if path.is_relative_to(TEMPLATES):
        return _shown(path)
    parts = path.parts
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] == "templates" and (TEMPLATES.joinpath(*parts[index + 1 :])).is_file():
            return f"{_shown(path)} (overrides {_shown(TEMPLATES.joinpath(*parts[index + 1 :]))})"
    return _shown(path)
