"""One file, one `app`: a visit counter kept in a JSON file.

Settings come from FLASK_* environment variables (Flask's from_prefixed_env):
FLASK_COUNTER_FILE names the file, in the working folder unless set."""

import json
import os

from flask import Flask

VERSION = "1"

app = Flask(__name__)
app.config.from_prefixed_env()


def _path():
    return app.config.get("COUNTER_FILE", "counter.json")


@app.post("/hit")
def hit():
    count = read()["count"] + 1
    tmp = _path() + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"count": count}, f)
    os.replace(tmp, _path())
    return {"count": count}


@app.get("/")
def read():
    try:
        with open(_path()) as f:
            data = json.load(f)
    except FileNotFoundError:
        data = {"count": 0}
    return {"count": data["count"], "version": VERSION}
