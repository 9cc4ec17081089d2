"""Lookup flaskstack_apps: the app model's apps, resolved and packaged (flaskstack/model.py)."""

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
name: flaskstack_apps
short_description: Each app of flaskstack_apps with its defaults, paths and release
description:
  - Merges C(flaskstack_app_defaults) beneath each app, adds every path and name the roles
    use (flaskstack/model.py), and packages each present app's source as a release
    (content-hashed id, archive in the control node's cache). Secrets are left out.
  - Keyword arguments C(apps), C(defaults), C(root), C(config_dir), C(run_dir), C(server_packages),
    C(worker_packages), C(cache_dir), C(health_host), C(base_dir) (the inventory's folder),
    C(scheduler_here) (this host runs the scheduler workers and the one-host timers).
"""


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        layout = model.Layout(kwargs["root"], kwargs["config_dir"], kwargs["run_dir"])
        apps = model.resolve(
            list(kwargs["apps"]),
            dict(kwargs["defaults"]),
            layout,
            server_packages=dict(kwargs["server_packages"]),
            worker_packages=dict(kwargs.get("worker_packages") or {}),
            health_host=kwargs.get("health_host") or "",
            base_dir=kwargs.get("base_dir"),
            scheduler_here=bool(kwargs.get("scheduler_here", True)),
        )
        for app in apps:
            if app["state"] != "present":
                continue
            try:
                _, release = packaging.package(app, Path(kwargs["cache_dir"]))
            except packaging.WheelhouseError as exc:
                raise AnsibleError(str(exc)) from None
            except OSError as exc:
                raise AnsibleError(f"cannot package {app['src']}: {exc}") from exc
            app.update(model.release_paths(app, release.id), archive=release.archive)
        return apps
