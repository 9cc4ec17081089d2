"""The sample Flask app that flaskstack deploys.

It stands for the user's app: the roles know it only through the variables in
the inventory (entry point, requirements file, static folder, migrate command).

Configuration comes from the environment, read by ``from_prefixed_env``:

* ``FLASK_SECRET_KEY``: required outside debug and testing.
* ``FLASK_SQLALCHEMY_DATABASE_URI``: defaults to SQLite in the instance folder.
* ``FLASK_INSTANCE_PATH``: where the instance folder (the SQLite file) lives.
* ``FLASK_RELEASE_ID``: defaults to the ``REVISION`` file that flaskstack
  writes at the root of every release.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from flask import Flask, jsonify, render_template
from flask_migrate import Migrate
from flask_sock import Sock
from sqlalchemy import text

from .models import Visit, db

RELEASE_FILE = Path(__file__).resolve().parent.parent / "REVISION"
# Alembic's migrations, shipped in every release: `flask --app hello db upgrade`.
MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def _release_id() -> str:
    try:
        return RELEASE_FILE.read_text(encoding="utf-8").strip() or "unknown"
    except OSError:
        return "development"


def create_app(config: dict | None = None) -> Flask:
    """Build the app; ``config`` overrides everything (tests use it)."""
    app = Flask(
        __name__,
        instance_path=os.environ.get("FLASK_INSTANCE_PATH") or None,
        instance_relative_config=True,
    )
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{Path(app.instance_path) / 'hello.db'}",
        RELEASE_ID=_release_id(),
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    if not app.config.get("SECRET_KEY") and not (app.debug or app.testing):
        raise RuntimeError("FLASK_SECRET_KEY is not set")

    db.init_app(app)
    Migrate(app, db, directory=str(MIGRATIONS))
    _register_routes(app)
    _register_websockets(app)
    return app


def _register_routes(app: Flask) -> None:
    @app.get("/")
    def index():
        visit = Visit(path="/")
        db.session.add(visit)
        db.session.commit()
        return render_template(
            "index.html",
            visits=db.session.query(Visit).count(),
            release=app.config["RELEASE_ID"],
            host=socket.gethostname(),
        )

    @app.get("/healthz")
    def healthz():
        try:
            db.session.execute(text("SELECT 1 FROM visit LIMIT 1"))
            database = "ok"
        except Exception as exc:  # noqa: BLE001 - any failure means unhealthy
            db.session.rollback()
            database = f"error: {type(exc).__name__}"
        healthy = database == "ok"
        body = {
            "status": "ok" if healthy else "error",
            "release": app.config["RELEASE_ID"],
            # Which host answered: behind a load balancer, each request may be another's.
            "host": socket.gethostname(),
            "database": database,
        }
        return jsonify(body), 200 if healthy else 503


def _register_websockets(app: Flask) -> None:
    sock = Sock(app)

    @sock.route("/ws/echo")
    def echo(ws) -> None:
        """Send every message back; a WebSocket needs a threaded or async worker."""
        while True:
            message = ws.receive()
            if message is None:
                break
            ws.send(message)
