"""Uploads kept beside the code, in <package>/uploads, as Flask's upload pattern shows."""

import os

from flask import Flask, abort, request, send_from_directory
from werkzeug.utils import secure_filename

VERSION = "1"


def create_app():
    app = Flask(__name__)
    app.config["UPLOAD_FOLDER"] = os.path.join(app.root_path, "uploads")
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024

    @app.post("/upload")
    def upload():
        file = request.files.get("file")
        if file is None or not file.filename:
            abort(400)
        name = secure_filename(file.filename)
        file.save(os.path.join(app.config["UPLOAD_FOLDER"], name))
        return {"saved": name}, 201

    @app.get("/files/<name>")
    def download(name):
        return send_from_directory(app.config["UPLOAD_FOLDER"], name)

    @app.get("/")
    def index():
        return {"version": VERSION, "files": sorted(os.listdir(app.config["UPLOAD_FOLDER"]))}

    return app
