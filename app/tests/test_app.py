"""The sample app's own tests, with Flask's test client."""

from __future__ import annotations

import socket

import pytest

from hello import create_app
from hello.models import db


@pytest.fixture
def app(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.db'}",
        }
    )
    with app.app_context():
        db.create_all()
    return app


@pytest.fixture
def client(app):
    return app.test_client()


def test_home_page_counts_visits_and_links_the_stylesheet(client):
    first = client.get("/")
    second = client.get("/")
    assert first.status_code == 200
    assert b'href="/static/style.css"' in first.data
    assert b'<strong id="visits">1</strong>' in first.data
    assert b'<strong id="visits">2</strong>' in second.data
    assert f'<code id="host">{socket.gethostname()}</code>'.encode() in first.data


def test_healthz_reports_status_release_and_database(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "ok",
        "release": "development",
        "host": socket.gethostname(),
        "database": "ok",
    }


def test_healthz_fails_when_the_tables_are_missing(tmp_path):
    app = create_app(
        {
            "TESTING": True,
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'empty.db'}",
        }
    )
    response = app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json()["status"] == "error"


def test_release_id_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FLASK_RELEASE_ID", "20261123-abc1234")
    monkeypatch.setenv("FLASK_SECRET_KEY", "from-env")
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(tmp_path))
    app = create_app()
    assert app.config["RELEASE_ID"] == "20261123-abc1234"
    assert app.config["SECRET_KEY"] == "from-env"
    assert app.config["SQLALCHEMY_DATABASE_URI"] == f"sqlite:///{tmp_path / 'hello.db'}"


def test_missing_secret_key_is_refused(monkeypatch):
    monkeypatch.delenv("FLASK_SECRET_KEY", raising=False)
    with pytest.raises(RuntimeError, match="FLASK_SECRET_KEY"):
        create_app()


def test_db_upgrade_command_creates_the_tables(tmp_path, monkeypatch):
    """The command line the demo's migrate_command runs: flask --app hello db upgrade."""
    monkeypatch.setenv("FLASK_INSTANCE_PATH", str(tmp_path))
    app = create_app({"SECRET_KEY": "x"})
    result = app.test_cli_runner().invoke(args=["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "hello.db").exists()
    assert app.test_client().get("/healthz").status_code == 200


def test_websocket_echo_over_a_real_server(app):
    """The echo route through a real HTTP server (werkzeug's, in a thread)."""
    import threading

    import simple_websocket
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ws = simple_websocket.Client.connect(f"ws://127.0.0.1:{server.server_port}/ws/echo")
        try:
            ws.send("hello, socket")
            assert ws.receive(timeout=5) == "hello, socket"
        finally:
            ws.close()
    finally:
        server.shutdown()


def test_migrations_create_the_schema_and_run_again_safely(tmp_path):
    """`flask --app hello db upgrade`, the demo's migrate_command, on a new and on a current database."""
    from flask_migrate import upgrade

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'm.db'}"})
    with app.app_context():
        upgrade()
        upgrade()
    response = app.test_client().get("/healthz")
    assert response.status_code == 200
    assert response.get_json()["database"] == "ok"


def test_migrations_adopt_a_database_made_by_create_all(app):
    from flask_migrate import upgrade
    from sqlalchemy import text

    with app.app_context():
        upgrade()
        assert db.session.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0001"


def test_a_job_is_queued_and_read_back(tmp_path):
    from hello.tasks import celery_config

    app = create_app(
        {
            "TESTING": True,
            "SECRET_KEY": "test",
            "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path / 'test.db'}",
            # A broker is configured; Celery runs the job in this process (no worker).
            "REDIS_URL": "redis://127.0.0.1:1/0",
            "CELERY": {**celery_config(None), "task_always_eager": True, "task_store_eager_result": True},
        }
    )
    client = app.test_client()
    queued = client.post("/jobs", json={"numbers": [2, 3, 4]})
    assert queued.status_code == 202
    job = client.get(f"/jobs/{queued.get_json()['id']}").get_json()
    assert job["state"] == "SUCCESS"
    assert job["result"]["sum"] == 9
    assert job["result"]["release"] == "development"
    assert client.post("/jobs", json={"numbers": "x"}).status_code == 400


def test_jobs_need_a_broker(client):
    assert client.post("/jobs", json={}).status_code == 503


def test_purge_visits_keeps_recent_ones(app):
    client = app.test_client()
    client.get("/")
    result = app.test_cli_runner().invoke(args=["purge-visits", "--days", "1"])
    assert "purged 0 visits older than 1 days" in result.output
