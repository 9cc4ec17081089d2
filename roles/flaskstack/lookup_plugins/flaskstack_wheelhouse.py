"""Lookup flaskstack_wheelhouse: an app's wheelhouse for a target (flaskstack/packaging.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

try:
    from flaskstack import model, packaging
except ImportError:  # ansible-playbook from elsewhere: the package lies beside roles/
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from flaskstack import model, packaging

DOCUMENTATION = r"""
name: flaskstack_wheelhouse
short_description: Build (once) each app's wheelhouse for a target Python and architecture
description:
  - Downloads binary wheels for each app's requirements and server packages into the control
    node's cache unless they are there already; returns one dict, app name -> C(key), C(path),
    C(archive), C(upload) (where the host gets the archive) and C(notes) (what the deploy says of it).
  - Keyword arguments C(apps) (resolved apps), C(python), C(architecture), C(platforms),
    C(pip_args), C(cache_dir).
  - Every app in one call, so that a failure (pip's message) stops the task that asked. A lookup
    called in a Jinja C({% set %}) statement, once per app, failed without a word under
    ansible-core 2.19 and left the app out of the result.
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        found = {}
        for app in kwargs["apps"]:
            try:  # the model says where the host gets it
                key, folder = packaging.build_wheelhouse(
                    app["name"],
                    packaging.read_project(Path(app["src"]).resolve(), app["requirements"]),
                    [str(p) for p in app["server_packages"]],
                    str(kwargs["python"]),
                    str(kwargs["architecture"]),
                    [str(p) for p in kwargs.get("platforms") or []],
                    [str(a) for a in kwargs.get("pip_args") or []],
                    Path(kwargs["cache_dir"]),
                    [str(p) for p in app.get("build_from_source") or []],
                )
            except packaging.WheelhouseError as exc:
                raise AnsibleError(str(exc)) from None
            archive = str(packaging.wheelhouse_archive(folder))
            upload = model.wheelhouse_upload(app, key)
            found[app["name"]] = {
                "key": key, "path": str(folder), "archive": archive, "upload": upload,
                "notes": packaging.wheelhouse_notes(folder),
            }  # fmt: skip
        return [found]
