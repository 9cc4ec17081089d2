"""The sample Flask app that flaskstack deploys.

It stands for the user's app: the roles know it only through the variables in
the inventory (entry point, requirements file, static folder, migrate command).

Configuration comes from the environment, read by ``from_prefixed_env``:

* ``FLASK_SECRET_KEY``: required outside debug and testing.
* ``FLASK_SQLALCHEMY_DATABASE_URI``: defaults to SQLite in the instance folder.
* ``FLASK_INSTANCE_PATH``: where the instance folder (the SQLite file) lives.
* ``FLASK_RELEASE_ID``: defaults to the ``REVISION`` file that flaskstack
  writes at the root of every release.
* ``REDIS_URL``: the broker of the background jobs (hello/tasks.py); without it,
  ``/jobs`` answers 503.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import click
from flask import Flask, abort, jsonify, render_template, request
from flask_migrate import Migrate
from flask_sock import Sock
from sqlalchemy import text

from .models import Visit, db
from .tasks import celery_config, celery_init_app, last_tick, slow_sum

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
        REDIS_URL=os.environ.get("REDIS_URL") or None,
    )
    app.config.from_prefixed_env()
    if config:
        app.config.update(config)
    app.config.setdefault("CELERY", celery_config(app.config["REDIS_URL"]))
    if not app.config.get("SECRET_KEY") and not (app.debug or app.testing):
        raise RuntimeError("FLASK_SECRET_KEY is not set")

    db.init_app(app)
    Migrate(app, db, directory=str(MIGRATIONS))
    celery_init_app(app)
    _register_routes(app)
    _register_jobs(app)
    _register_websockets(app)
    return app


def _register_routes(app: Flask) -> None:
    @app.get("/")
    def index():
        visit = Visit(path="/")
        db.session.add(visit)
        db.session.commit()
        tick = last_tick(app)
        return render_template(
            "index.html",
            visits=db.session.query(Visit).count(),
            release=app.config["RELEASE_ID"],
            host=socket.gethostname(),
            tick=tick,
            tick_age=round(time.time() - tick["at"]) if tick else None,
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


def _register_jobs(app: Flask) -> None:
    @app.post("/jobs")
    def queue_job():
        """Queue a slow sum: {"numbers": [1, 2], "seconds": 5} -> 202 {"id": ...}."""
        if not app.config["REDIS_URL"]:
            abort(503, "no broker: REDIS_URL is not set")
        body = request.get_json(silent=True) or {}
        numbers = body.get("numbers", [1, 2, 3])
        seconds = body.get("seconds", 0)
        if not isinstance(numbers, list) or not all(isinstance(n, int) for n in numbers):
            abort(400, "numbers must be a list of integers")
        if not isinstance(seconds, (int, float)) or not 0 <= seconds <= 600:
            abort(400, "seconds must be from 0 to 600")
        result = slow_sum.delay(numbers, seconds)
        return jsonify({"id": result.id}), 202

    @app.get("/jobs/<job_id>")
    def read_job(job_id: str):
        """A queued job's state, and its result once done."""
        if not app.config["REDIS_URL"]:
            abort(503, "no broker: REDIS_URL is not set")
        result = slow_sum.AsyncResult(job_id)
        body = {"id": job_id, "state": result.state}
        if result.successful():
            body["result"] = result.result
        elif result.failed():
            body["error"] = repr(result.result)
        return jsonify(body)

    @app.cli.command("purge-visits")
    @click.option("--days", default=30, show_default=True, help="keep the visits of the last DAYS days")
    def purge_visits(days: int) -> None:
        """Delete old visits (the sample app's scheduled job: a systemd timer runs it)."""
        cutoff = datetime.now(UTC) - timedelta(days=days)
        deleted = db.session.query(Visit).filter(Visit.at < cutoff).delete()
        db.session.commit()
        click.echo(f"purged {deleted} visits older than {days} days")


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
