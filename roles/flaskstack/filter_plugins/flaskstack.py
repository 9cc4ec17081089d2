"""The app model's filters (flaskstack/model.py and flaskstack/templates.py; this is their Ansible face)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

try:
    from flaskstack import host as baseline
    from flaskstack import model, packaging, templates, unchanged
except ImportError:  # ansible-playbook from elsewhere: the package lies beside roles/
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    from flaskstack import host as baseline
    from flaskstack import model, packaging, templates, unchanged


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


def public_ports(apps):
    """The ports nginx answers the given apps on (each app's, model.app_ports), sorted."""
    return sorted({port for app in apps for port in model.app_ports(dict(app))})


def host_errors(settings, probe):
    """Why the host baseline (roles/host) must not be applied to this host (flaskstack/host.py)."""
    return baseline.baseline_errors(dict(settings), dict(probe))


def sysctl(baseline_settings, settings, missing=None):
    """The kernel settings to write: the baseline (less the keys this host lacks) with
    host_sysctl_settings over it."""
    return baseline.sysctl(dict(baseline_settings), dict(settings or {}), list(missing or []))


def root_login(setting, user):
    """sshd's PermitRootLogin for host_ssh_permit_root_login and the user Ansible connects as."""
    return baseline.root_login(str(setting), str(user))


def _others(hostvars, groups):
    """What a host's checks read of every host of the groups: its address and its apps' names
    (a load balancer and an app host must have the same apps). Each counts by its error where
    it cannot be templated yet (an address made from facts: they are read after the digest)."""
    ours = {name for group, hosts in groups.items() if group.startswith("flaskstack") for name in hosts}

    def names(theirs):  # another host's apps, whatever they are (its own checks judge them)
        if not isinstance(theirs, list):
            return theirs
        return [a.get("name") if isinstance(a, dict) else a for a in theirs]

    return {
        name: [
            unchanged.templated(lambda name=name: hostvars[name].get("flaskstack_private_address", "")),
            unchanged.templated(lambda name=name: names(hostvars[name].get("flaskstack_apps"))),
        ]
        for name in sorted(ours)
    }


# No digest: every task runs.
NONE = {"inputs": "", "provision": ""}


def inputs(hostvars, host, groups, inventory_dir, apps, defaults, others=None, project=None):
    """The digests of what this run is given for host (flaskstack/unchanged.py: inputs and
    provision), or "" for both for apps the app model refuses: made before the inventory's
    checks (tasks/main.yml), it leaves saying what is wrong to them, and "" never matches a
    record and is never recorded. others and project: what every host's digest shares, made
    once by inputs_by_host."""
    if not isinstance(apps, list) or model.app_errors(list(apps), dict(defaults), base_dir=inventory_dir):
        return dict(NONE)
    return unchanged.digests(
        hostvars[host],
        groups,
        _others(hostvars, groups) if others is None else others,
        inventory_dir,
        list(apps),
        dict(defaults),
        project=project,
    )


def inputs_by_host(hostvars, hosts, groups, role_defaults, here=None, seen=None):
    """inputs() of each of hosts, in one task run on the control node (unchanged.yml runs it
    once for the play): a task costs each host its own process, and processes that template
    the same password lookup at once wait a whole second for its lock. Each host's apps and
    app defaults are its own (hostvars holds no role defaults: role_defaults, the flaskstack
    role's defaults file, stands in where the inventory sets none). seen: those two as the
    task running this on host here sees them; set where hostvars cannot see them (a play's
    vars, a role's parameters), every host gets no digest, and every task runs. Only here's
    view can be compared: such vars that differ from host to host yet agree with hostvars on
    here go unseen (site.yml's plays set none). A host whose apps cannot be read (a variable
    undefined for it alone) gets no digest: the inventory's checks then say what is wrong,
    on that host, where this task would fail every host in the name of the one running it."""

    def own(host, name):
        return hostvars[host].get(name, role_defaults[name])

    if here is not None and any(
        unchanged.templated(lambda name=name: own(here, name))
        != unchanged.templated(lambda value=value: value)
        for name, value in (seen or {}).items()
    ):
        return {host: dict(NONE) for host in hosts}
    others, project = _others(hostvars, groups), unchanged.project_digest()
    found = {}
    for host in hosts:
        try:
            found[host] = inputs(
                hostvars,
                host,
                groups,
                hostvars[host].get("inventory_dir"),
                own(host, "flaskstack_apps"),
                own(host, "flaskstack_app_defaults"),
                others=others,
                project=project,
            )
        except Exception:  # noqa: BLE001 - any error templating this host's apps: its checks name it
            found[host] = dict(NONE)
    return found


def state_paths(apps, defaults, root, config_dir, run_dir):
    """The paths the host's state is read from (flaskstack/unchanged.py)."""
    layout = model.Layout(root=root, config_dir=config_dir, run_dir=run_dir)
    return unchanged.state_paths(list(apps), dict(defaults), layout)


class FilterModule:
    def filters(self):
        return {
            "flaskstack_app_errors": app_errors,
            "flaskstack_batch_error": batch_error,
            "flaskstack_git_note": git_note,
            "flaskstack_host": host,
            "flaskstack_host_errors": host_errors,
            "flaskstack_inputs_by_host": inputs_by_host,
            "flaskstack_root_login": root_login,
            "flaskstack_state_paths": state_paths,
            "flaskstack_sysctl": sysctl,
            "flaskstack_public_ports": public_ports,
            "flaskstack_python_settings": python_settings,
            "flaskstack_template_origin": templates.origin,
        }
