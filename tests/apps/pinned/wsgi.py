"""A module at the root named by a WSGI server's convention (wsgi:application),
its requirements split across files and pinned by hash."""

import os
import sqlite3

from flask import Flask, request

VERSION = "1"

application = Flask(__name__)


def connect():
    os.makedirs(application.instance_path, exist_ok=True)
    conn = sqlite3.connect(os.path.join(application.instance_path, "log.db"))
    conn.execute("CREATE TABLE IF NOT EXISTS entry (id INTEGER PRIMARY KEY, text TEXT)")
    return conn


@application.post("/log")
def log():
    with connect() as conn:
        conn.execute("INSERT INTO entry (text) VALUES (?)", (request.get_data(as_text=True),))
    return "", 204


@application.get("/")
def entries():
    with connect() as conn:
        rows = conn.execute("SELECT text FROM entry ORDER BY id").fetchall()
    return {"version": VERSION, "entries": [r[0] for r in rows]}
