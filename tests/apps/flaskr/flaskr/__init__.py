"""Notes, kept in SQLite in the instance folder; settings from instance/config.py."""

import contextlib
import os

from flask import Flask

VERSION = "1"


def create_app(test_config=None):
    app = Flask(__name__, instance_relative_config=True)
    app.config.from_mapping(SECRET_KEY="dev", DATABASE=os.path.join(app.instance_path, "flaskr.sqlite"))
    if test_config is None:
        app.config.from_pyfile("config.py", silent=True)
    else:
        app.config.from_mapping(test_config)
    with contextlib.suppress(OSError):
        os.makedirs(app.instance_path)

    from . import db, notes

    db.init_app(app)
    app.register_blueprint(notes.bp)
    return app
