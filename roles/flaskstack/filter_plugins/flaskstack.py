"""The app model's filters (flaskstack/model.py and flaskstack/templates.py; this is their Ansible face)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from flaskstack import model, packaging, templates
except ImportError:  # ansible-playbook from elsewhere: the package lies beside roles/
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from flaskstack import model, packaging, templates


def app_errors(apps, defaults, base_dir=None, settings=None):
    """Every problem of flaskstack_apps that an argument spec cannot express, one message each.
    settings: other roles' variables the model checks, when they are set (app_keep_releases)."""
    keep = (settings or {}).get("app_keep_releases", model.UNSET)
    return model.app_errors(list(apps), dict(defaults), keep_releases=keep, base_dir=base_dir)


def python_settings(settings):
    """A dict as Python assignments (config_files' python form)."""
    return model.python_settings(json.loads(json.dumps(dict(settings))))


def host(root, config_dir, run_dir):
    """The host-wide paths (flaskstack_host)."""
    return model.Layout(root=root, config_dir=config_dir, run_dir=run_dir).host()


def git_note(src):
    """The control node's `git describe --dirty` of an app's source, as fab deploy notes it."""
    return packaging.git_note(Path(str(src)).resolve())


def batch_error(batch):
    """Why flaskstack_batch is not a batch (a count or a percentage of hosts), or ""."""
    return model.batch_error(batch)


class FilterModule:
    def filters(self):
        return {
            "flaskstack_app_errors": app_errors,
            "flaskstack_batch_error": batch_error,
            "flaskstack_git_note": git_note,
            "flaskstack_host": host,
            "flaskstack_python_settings": python_settings,
            "flaskstack_template_origin": templates.origin,
        }
