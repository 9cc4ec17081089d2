"""Variants of the sample app, for the benchmarks and the end-to-end tests.

Each is a copy of app/ whose page says which variant it is (so each is a new
release), with an optional change that breaks it in one known way.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def variant(work: Path, label: str, change: Callable[[Path], object] | None = None) -> Path:
    """A copy of the sample app in work/label, its page marked with the label."""
    src = work / label
    shutil.copytree(ROOT / "app", src, ignore=shutil.ignore_patterns("__pycache__", "tests", "instance"))
    index = src / "hello" / "templates" / "index.html"
    index.write_text(index.read_text().replace("Hello from flaskstack", f"Hello from flaskstack {label}"))
    if change:
        change(src)
    return src


def breaks_import(src: Path) -> None:
    """The package imports a module that does not exist."""
    init = src / "hello" / "__init__.py"
    init.write_text("import flaskstack_no_such_module  # noqa\n" + init.read_text())


def breaks_health(src: Path) -> None:
    """/healthz answers 503 whatever the database says."""
    init = src / "hello" / "__init__.py"
    init.write_text(init.read_text().replace("200 if healthy else 503", "503"))


def fails_when_served(src: Path) -> None:
    """/healthz answers 503 under the app server only: the gate's own WSGI call (no server)
    passes, the health check through the socket after the switch fails."""
    init = src / "hello" / "__init__.py"
    served = '"gunicorn" in __import__("flask").request.environ.get("SERVER_SOFTWARE", "")'
    init.write_text(init.read_text().replace("200 if healthy else 503", f"503 if {served} else 200"))


def lists_interfaces(src: Path) -> None:
    """The factory lists the host's network interfaces (netlink): fine for the app user,
    refused by the service's sandbox (RestrictAddressFamilies)."""
    init = src / "hello" / "__init__.py"
    text = init.read_text().replace("def create_app(", "def _create_app(", 1)
    init.write_text(
        text + "\n\ndef create_app(*args, **kwargs):\n    import socket\n\n"
        "    socket.if_nameindex()\n    return _create_app(*args, **kwargs)\n"
    )


def adds_requirement(requirement: str) -> Callable[[Path], None]:
    """A change that adds a line to requirements.txt."""

    def change(src: Path) -> None:
        with (src / "requirements.txt").open("a") as requirements:
            requirements.write(requirement + "\n")

    return change


def breaks_on_host(name: str) -> Callable[[Path], None]:
    """A change after which /healthz answers 503 on the host called name only (a release
    that one host of a cluster refuses: its own gates stop it there, before the switch)."""

    def change(src: Path) -> None:
        init = src / "hello" / "__init__.py"
        init.write_text(
            init.read_text().replace(
                "200 if healthy else 503", f"503 if socket.gethostname() == {name!r} else 200"
            )
        )

    return change


def breaks_worker(src: Path) -> None:
    """The Celery app the workers load (hello/make_celery.py) fails to import; the web app,
    its gates and its health check are fine."""
    module = src / "hello" / "make_celery.py"
    module.write_text('raise RuntimeError("this release\'s worker cannot start")\n' + module.read_text())
