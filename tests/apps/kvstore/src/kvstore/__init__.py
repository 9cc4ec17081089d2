"""A key-value store over HTTP, in SQLite in the app's instance folder.

Installed as a package, its instance folder is <venv>/var/kvstore-instance
(Flask's rule for installed apps)."""

import os
import sqlite3

from flask import Flask, abort, g, request

VERSION = "1"


def create_app():
    app = Flask(__name__)
    os.makedirs(app.instance_path, exist_ok=True)
    path = os.path.join(app.instance_path, "store.db")

    def db():
        if "db" not in g:
            g.db = sqlite3.connect(path)
            g.db.execute("CREATE TABLE IF NOT EXISTS kv (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        return g.db

    @app.teardown_appcontext
    def close(exc):
        conn = g.pop("db", None)
        if conn is not None:
            conn.close()

    @app.put("/kv/<key>")
    def put(key):
        with db() as conn:
            conn.execute("REPLACE INTO kv (k, v) VALUES (?, ?)", (key, request.get_data(as_text=True)))
        return "", 204

    @app.get("/kv/<key>")
    def get(key):
        row = db().execute("SELECT v FROM kv WHERE k = ?", (key,)).fetchone()
        if row is None:
            abort(404)
        return row[0]

    @app.get("/version")
    def version():
        return VERSION

    @app.get("/healthz")
    def healthz():
        db().execute("SELECT 1")
        return "ok"

    return app
