from flask import Blueprint, current_app, request, session

from . import VERSION
from .db import get_db

bp = Blueprint("notes", __name__)


@bp.get("/")
def index():
    rows = get_db().execute("SELECT body FROM note ORDER BY id").fetchall()
    return {"version": VERSION, "notes": [row["body"] for row in rows]}


@bp.post("/")
def add():
    db = get_db()
    db.execute("INSERT INTO note (body) VALUES (?)", (request.form["body"],))
    db.commit()
    session["last"] = request.form["body"]  # a signed cookie: needs the SECRET_KEY
    return {"added": request.form["body"]}, 201


@bp.get("/about")
def about():
    return {"secret_key": "from config.py" if current_app.config["SECRET_KEY"] != "dev" else "dev"}
