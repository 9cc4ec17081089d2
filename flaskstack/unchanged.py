"""What a run of site.yml is given, as one digest (flaskstack_skip_unchanged).

A host is skipped when this digest and the host's own state (the flaskstack_state script,
roles/flaskstack/files) are both as at the end of the last complete run. The digest covers
everything a run reads on the control node: the project's code (roles, playbooks, templates,
this package), the inventory's folder (group_vars, host_vars, its templates/), each app's
source (as its release id does), and every variable the host has in this run, templated (so
-e, a dynamic inventory and lookups count too), with the groups, and the addresses of the other
hosts, which a load balancer's or a database host's settings name, and their apps' names, which
the inventory's checks compare (made before those checks, it must change when their verdict can).

A second digest, the provision digest, is the same but for the apps' code: in its place, what
the app model reads of each app's source (model.project: how it is installed, which packages,
its static folder), and each app's src path left out. Only the deploy plays read an app's code
and where it lies (its release, its id, its git note); the provision play reads the app model,
so a run whose provision digest and host state outside the apps' folders are as the last
complete run left them skips the provision play and runs the deploy plays (a code-only deploy).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Mapping
from pathlib import Path

from flaskstack import model, packaging

PROJECT = Path(__file__).resolve().parent.parent
# The project's parts a run reads; the rest (tests, bench, docs) changes no host.
PROJECT_PARTS = ("roles", "playbooks", "templates", "flaskstack", "site.yml", "ansible.cfg")
NOT_SOURCE = ["__pycache__", "*.pyc", ".pytest_cache", ".git"]

# Variables that say how this run is made, not what a host should be: the shortcut's own
# settings, Ansible's magic variables (some change every run: omit's placeholder, the
# verbosity, the limit), facts, and the roles' private ones (__name: a task's own).
CONNECTION = ("ansible_host", "ansible_port", "ansible_user", "ansible_become_user")
MAGIC = frozenset(
    {
        "omit",
        "playbook_dir",
        "inventory_file",
        "groups",
        "hostvars",
        "vars",
        "environment",
        "play_hosts",
        "role_names",
        "module_setup",
        "discovered_interpreter_python",
    }
)


# What of a host the record holds besides each app's folders (the flaskstack_state script walks
# them): all of /etc (every settings file the roles write, the packages' own, users, units and
# their enablement) but for the files the system rewrites by itself (the loader's cache follows
# the packages), the packages installed, the tools in /usr/local and flaskstack's own state.
HOST_PATHS = (
    {"path": "/etc", "exclude": ["resolv.conf", "adjtime", "mtab", "ld.so.cache", ".pwd.lock"]},
    {"path": "/usr/local"},
    {"path": "/var/lib/dpkg/status"},
    {"path": "/var/lib/flaskstack"},
)


def state_paths(apps: list, defaults: Mapping, layout: model.Layout) -> list[dict]:
    """The paths the host's state is read from: HOST_PATHS, which apps the root holds, and each
    app's folders one level deep (which release is live, which are kept, a deploy's lock) and
    config files, where the app model puts them. Each app's are marked "deploy": the deploy
    plays write them (and fab deploy), so a difference there alone does not make the provision
    play run (the flaskstack_state script: the deepest path an entry lies under decides, so
    the root's own entries beside the apps' homes are not the apps')."""
    found = [dict(spec) for spec in HOST_PATHS] + [{"path": layout.root, "depth": 1, "content": False}]
    for raw in apps:
        app = model.merge(dict(defaults), dict(raw))
        app["config_paths"] = model.config_paths(app)
        where = model.paths(app, layout)
        found += [
            {"path": where[folder], "depth": 1, "content": False, "deploy": True}
            for folder in ("home", "releases_dir", "shared_dir")
        ]
        found += [{"path": config["target"], "deploy": True} for config in where["configs"]]
    return found


def templated(read: Callable[[], object]) -> str:
    """A value as JSON, templated as it is read (Ansible templates nested values lazily); one
    that cannot be templated counts by its error's name."""
    try:
        return json.dumps(read(), sort_keys=True, default=str)
    except Exception as error:  # noqa: BLE001 - a variable this run never reads may not template
        return f"<{type(error).__name__}>"


def run_variables(hostvars: Mapping) -> dict:
    """The host's variables that describe what it should be, templated; a variable that
    cannot be templated counts by its name and error."""
    found = {}
    for name in sorted(hostvars):
        if (
            name in MAGIC
            or name.startswith(("__", "flaskstack_skip_unchanged"))
            or (name.startswith("ansible_") and name not in CONNECTION)
        ):
            continue
        found[name] = templated(lambda name=name: hostvars[name])
    return found


def tree_digest(path: Path, exclude: list[str]) -> str:
    """The digest of a file or of a folder's files (names, executable bits, contents)."""
    if path.is_dir():
        return packaging.release_id(path, exclude, [])
    if path.is_file():
        return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return "missing"


def project_digest() -> dict:
    """The digest of each of the project's parts a run reads."""
    return {part: tree_digest(PROJECT / part, NOT_SOURCE) for part in PROJECT_PARTS}


def _hash(parts: Mapping) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def without_src(apps: object) -> object:
    """The apps as the provision play reads them: without where their code lies."""
    if not isinstance(apps, list):
        return apps
    return [{k: v for k, v in app.items() if k != "src"} if isinstance(app, Mapping) else app for app in apps]


def digests(
    hostvars: Mapping,
    groups: Mapping,
    others: Mapping,
    inventory_dir: str,
    apps: list,
    defaults: Mapping,
    project: Mapping | None = None,
) -> dict[str, str]:
    """The two digests of what the run is given for this host: "inputs", everything; and
    "provision", everything but the apps' code (see above). others: what its checks and
    settings read of the other hosts (their addresses and their apps' names); project: the
    project_digest() of this run, if made already (it is every host's)."""
    default_exclude = defaults.get("exclude", [])
    variables = run_variables(hostvars)
    parts = {
        "variables": variables,
        "groups": {name: sorted(hosts) for name, hosts in groups.items() if name.startswith("flaskstack")},
        "others": dict(sorted(others.items())),
        "project": dict(project_digest() if project is None else project),
        "inventory": tree_digest(Path(inventory_dir), NOT_SOURCE) if inventory_dir else "none",
    }
    with_src = [app for app in apps if isinstance(app, Mapping) and app.get("src")]
    code = {
        # As a release id is made (the app's exclude), so local data in the source does not count.
        str(app.get("name")): tree_digest(Path(str(app["src"])), list(app.get("exclude", default_exclude)))
        for app in with_src
    }
    read = {str(app.get("name")): model.project(model.merge(dict(defaults), dict(app))) for app in with_src}
    if "flaskstack_apps" in variables:
        # As templated above (not again: its lookups would run twice); one that could not be
        # templated counts by its error, as above.
        with contextlib.suppress(ValueError):
            read_apps = json.loads(variables["flaskstack_apps"])
            variables = {**variables, "flaskstack_apps": templated(lambda: without_src(read_apps))}
    return {
        "inputs": _hash({**parts, "apps": code}),
        "provision": _hash({**parts, "variables": variables, "apps": read}),
    }
