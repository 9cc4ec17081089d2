"""flaskstack_skip_unchanged's two halves, without a target: the control node's digest of a
run's inputs (flaskstack/unchanged.py) and the host's state and record (the flaskstack_state
script, run on this machine as the `raw` tasks run it: python3 -c <script> <JSON>). The demo
target's tests run it for real: a skipped run, and drift that makes the next run run every task."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess

import yaml

from flaskstack import unchanged
from tests.targets import ROOT, app_defaults, sample_app

MODULE = ROOT / "roles/flaskstack/files/flaskstack_state.py"
spec = importlib.util.spec_from_file_location("flaskstack_state", MODULE)
state_module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(state_module)
filter_spec = importlib.util.spec_from_file_location(
    "flaskstack_filters", ROOT / "roles/flaskstack/filter_plugins/flaskstack.py"
)
filters = importlib.util.module_from_spec(filter_spec)
filter_spec.loader.exec_module(filters)


class Vars(dict):
    """hostvars of one host: a variable that cannot be templated raises on access."""

    def __getitem__(self, name):
        value = super().__getitem__(name)
        if isinstance(value, Exception):
            raise value
        return value

    def get(self, name, default=None):  # as hostvars: a variable that cannot be templated raises
        if name not in self:
            return default
        return self[name]


class Unreadable(dict):
    """A mapping whose items fail as they are read."""

    def items(self):
        raise KeyError("not templated")


def digest(tmp_path, variables=None, **more):
    app = tmp_path / "app"
    inventory = tmp_path / "inventory"
    for folder in (app, inventory):
        folder.mkdir(exist_ok=True)
    if not (app / "hello.py").exists():
        (app / "hello.py").write_text("app = 1\n")
        (inventory / "hosts.yml").write_text("flaskstack: {hosts: {demo: {}}}\n")
    hostvars = Vars({"flaskstack_apps": [{"name": "hello", "src": str(app)}], **(variables or {})})
    args = {
        "groups": {"flaskstack": ["demo"], "all": ["demo"], "ungrouped": []},
        "others": {"demo": ["", ["hello"]]},
        "inventory_dir": str(inventory),
        "apps": [{"name": "hello", "src": str(app)}],
        "defaults": {"exclude": [".git", "instance"]},
        **more,
    }
    return unchanged.digests(hostvars, **args)


def test_the_digest_changes_with_what_a_run_is_given_and_only_with_that(tmp_path):
    """Both digests (the inputs, and the provision digest: the same but for the apps' code)
    change with what the run is given; the app's code changes the first only."""
    base = digest(tmp_path)
    assert base == digest(tmp_path)

    def both_differ(found: dict) -> bool:
        return found["inputs"] != base["inputs"] and found["provision"] != base["provision"]

    # How the run is made, the shortcut's own settings and a task's private facts: the same run.
    for name, value in [
        ("ansible_verbosity", 3),
        ("omit", "__omit_place_holder__5f1c"),
        ("playbook_dir", "/elsewhere"),
        ("flaskstack_skip_unchanged", False),
        ("__flaskstack_python3", {"stdout": "python3 present"}),
    ]:
        assert digest(tmp_path, {name: value}) == base, name
    # A variable (from the inventory, -e, a lookup), an address in the cluster, another host's
    # apps (the inventory's checks compare a load balancer's with an app host's), a group, the
    # project's own code.
    assert both_differ(digest(tmp_path, {"nginx_worker_connections": 2048}))
    assert both_differ(digest(tmp_path, {"ansible_port": 2200}))
    assert both_differ(digest(tmp_path, others={"demo": ["10.0.0.5", ["hello"]]}))
    assert both_differ(digest(tmp_path, others={"demo": ["", ["hello"]], "lb": ["", ["hello", "other"]]}))
    assert both_differ(digest(tmp_path, groups={"flaskstack": ["demo", "app2"]}))
    assert both_differ(digest(tmp_path, project={**unchanged.project_digest(), "roles": "another"}))
    # A variable this run cannot template counts by its error, and does not stop the run.
    broken = digest(tmp_path, {"half_made": KeyError("nope")})
    assert both_differ(broken) and broken != digest(tmp_path, {"half_made": "value"})
    # Nor one whose inner value fails as it is read (Ansible templates nested values lazily).
    assert digest(tmp_path, {"half_made": {"inner": Unreadable(x=1)}}) == broken
    # The app's source (not what it excludes): the inputs only. The inventory's folder: both.
    (tmp_path / "app" / "instance").mkdir()
    (tmp_path / "app" / "instance" / "dev.db").write_text("local data")
    assert digest(tmp_path) == base
    (tmp_path / "app" / "hello.py").write_text("app = 2\n")
    changed_app = digest(tmp_path)
    assert changed_app["inputs"] != base["inputs"] and changed_app["provision"] == base["provision"]
    (tmp_path / "inventory" / "hosts.yml").write_text("flaskstack: {hosts: {demo: {ansible_port: 22}}}\n")
    changed_inventory = digest(tmp_path)
    assert changed_inventory["inputs"] != changed_app["inputs"]
    assert changed_inventory["provision"] != changed_app["provision"]


def test_the_filter_digests_what_the_checks_read_of_the_other_hosts():
    """The digest as the role makes it, before the inventory's checks (the filter): apps the
    app model refuses get none; another host's apps (the checks compare a load balancer's
    with an app host's) and its address count; one that cannot be templated yet (an address
    made from facts, which are read after this) counts by its error, as the host's own
    variables do, instead of leaving the run without a digest."""
    defaults, app = app_defaults(), sample_app("hello")
    groups = {"flaskstack": ["app1"], "flaskstack_lb": ["lb"]}

    def digest(lb_apps, lb_address="10.0.0.9", apps=(app,)):
        hostvars = {
            "app1": Vars({"flaskstack_apps": list(apps)}),
            "lb": Vars({"flaskstack_apps": lb_apps, "flaskstack_private_address": lb_address}),
        }
        found = filters.inputs(hostvars, "app1", groups, str(ROOT / "inventory/local"), list(apps), defaults)
        return found["inputs"]

    base = digest([app])
    assert base and base == digest([app])
    assert digest([app, {**app, "name": "other"}]) != base
    assert digest([app], "10.0.0.8") != base
    from_facts = digest([app], KeyError("ansible_default_ipv4"))
    assert from_facts and from_facts not in (base, digest([app], "")), from_facts
    assert digest([app], KeyError("ansible_default_ipv4")) == from_facts
    assert digest([app], apps=[{**app, "name": "Bad Name"}]) == ""


def test_every_hosts_digest_made_at_once_is_each_hosts_own():
    """unchanged.yml digests every host of the play in one task (the filter inputs_by_host):
    each host's is what the one-host filter makes with that host's apps and app defaults,
    the role's defaults where its inventory sets none (hostvars holds no role defaults), its
    own where it does; a host whose apps the model refuses gets ""."""
    role_defaults = yaml.safe_load((ROOT / "roles/flaskstack/defaults/main.yml").read_text())
    defaults, app = app_defaults(), sample_app("hello")
    # Its own defaults leave the migrations out of its release: its source digest differs.
    own_defaults = {**defaults, "exclude": [*defaults["exclude"], "migrations"]}
    groups = {"flaskstack": ["app1", "app2", "app3"], "flaskstack_lb": ["lb"]}
    inventory = str(ROOT / "inventory/local")
    hostvars = {
        "app1": Vars({"flaskstack_apps": [app], "inventory_dir": inventory}),
        "app2": Vars(
            {"flaskstack_apps": [app], "flaskstack_app_defaults": own_defaults, "inventory_dir": inventory}
        ),
        "app3": Vars({"flaskstack_apps": [{**app, "name": "Bad Name"}], "inventory_dir": inventory}),
        "lb": Vars(
            {"flaskstack_apps": [app], "flaskstack_private_address": "10.0.0.9", "inventory_dir": inventory}
        ),
    }
    found = filters.inputs_by_host(hostvars, ["app1", "app2", "app3", "lb"], groups, role_defaults)
    assert found["app1"] == filters.inputs(hostvars, "app1", groups, inventory, [app], defaults)
    assert found["app2"] == filters.inputs(hostvars, "app2", groups, inventory, [app], own_defaults)
    assert found["app2"] != filters.inputs(hostvars, "app2", groups, inventory, [app], defaults)
    assert found["app3"] == filters.NONE == {"inputs": "", "provision": ""}
    assert found["lb"] == filters.inputs(hostvars, "lb", groups, inventory, [app], defaults)
    assert len({found[host]["inputs"] for host in ("app1", "app2", "lb")}) == 3
    # A host with no apps of its own takes the role's (none), as the role would.
    hostvars["db"] = Vars({"inventory_dir": inventory})
    groups["flaskstack_db"] = ["db"]
    found = filters.inputs_by_host(hostvars, ["db"], groups, role_defaults)
    assert found["db"] == filters.inputs(hostvars, "db", groups, inventory, [], defaults)
    assert found["db"]["inputs"] and found["db"]["provision"]
    # As the task on app1 sees them: the same. Apps hostvars cannot see (a play's vars): no
    # digest for any host, so none is skipped.
    every = ["app1", "app2", "lb"]
    seen = {"flaskstack_apps": [app], "flaskstack_app_defaults": defaults}
    assert filters.inputs_by_host(hostvars, every, groups, role_defaults, here="app1", seen=seen) == {
        host: filters.inputs_by_host(hostvars, every, groups, role_defaults)[host] for host in every
    }
    # A host whose apps cannot be read (a variable undefined for it alone) gets no digest, and
    # the others theirs (counting its apps by their error): its own checks say what is wrong.
    broken = {**hostvars, "lb": Vars({**hostvars["lb"], "flaskstack_apps": KeyError("vault_lb_only")})}
    found = filters.inputs_by_host(broken, every, groups, role_defaults)
    assert found["lb"] == filters.NONE and found["app1"]["inputs"] and found["app2"]["inputs"], found
    play_vars = {**seen, "flaskstack_apps": [app, sample_app("other")]}
    assert filters.inputs_by_host(hostvars, every, groups, role_defaults, here="app1", seen=play_vars) == {
        "app1": filters.NONE,
        "app2": filters.NONE,
        "lb": filters.NONE,
    }


def run_module(args: dict) -> dict:
    """The script as unchanged.yml and record.yml run it on a host; the JSON line it prints."""
    result = subprocess.run(
        ["python3", "-c", MODULE.read_text(), json.dumps(args)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, result.stdout
    return json.loads(lines[0])


def test_the_script_runs_only_outside_check_mode():
    """--check changes nothing on a host, the record included: every task that sends the
    script is skipped in check mode (raw has no check mode of its own)."""
    tasks = ROOT / "roles/flaskstack/tasks"
    for name in ("unchanged.yml", "record.yml"):
        found = [
            task
            for task in yaml.safe_load((tasks / name).read_text())
            if "ansible.builtin.raw" in task and "__flaskstack_state_command" in task["ansible.builtin.raw"]
        ]
        assert found, name
        for task in found:
            when = task["when"] if isinstance(task["when"], list) else [task["when"]]
            assert any(str(w).startswith("not ansible_check_mode") for w in when), (name, task["name"])


def test_the_host_is_compared_with_the_record_of_the_last_complete_run(tmp_path):
    etc = tmp_path / "etc"
    (etc / "nginx" / "sites-enabled").mkdir(parents=True)
    site = etc / "nginx" / "sites-enabled" / "hello.conf"
    site.write_text("server { listen 80; }\n")
    (etc / "resolv.conf").write_text("nameserver 10.0.0.1\n")
    (etc / "sysctl.d").mkdir()
    (etc / "sysctl.d" / "90-flaskstack.conf").write_text("# kernel\nkernel.pid_max = 4194304\n")
    app = tmp_path / "srv" / "hello"
    (app / "releases" / "aaa").mkdir(parents=True)
    (app / "releases" / "aaa" / "big.bin").write_bytes(b"0" * 1000)
    (app / "current").symlink_to(app / "releases" / "aaa")
    record = tmp_path / "lib" / "last-run.json"
    said = tmp_path / "said"
    said.write_text("one")
    args = {
        "inputs": "abc",
        "record": str(record),
        "paths": [
            {"path": str(etc), "exclude": ["resolv.conf"]},
            {"path": str(app), "depth": 1, "content": False},
            {"path": str(app / "releases"), "depth": 1, "content": False},
            # The record's own folder, absent before the first record (as on a new host).
            {"path": str(record.parent)},
        ],
        "commands": [["/bin/cat", str(said)], ["/nonexistent/nft", "list", "ruleset"]],
    }

    first = run_module(args)
    assert first["unchanged"] is False and first["reason"] == "no record of a complete run on this host"
    written = run_module({**args, "write": True})
    assert written["reason"] == "recorded" and record.exists()
    assert oct(record.stat().st_mode & 0o777) == "0o600"
    stored = json.loads(record.read_text())
    assert str(site) in stored["state"] and str(etc / "resolv.conf") not in stored["state"]
    assert "sysctl kernel.pid_max" in stored["state"]
    # Depth 1 under the app: its links and folders, not a release's files.
    assert stored["state"][str(app / "current")] == f"link -> {app / 'releases' / 'aaa'}"
    assert not [key for key in stored["state"] if key.endswith("big.bin")]

    again = run_module(args)
    assert again["unchanged"] is True, again["reason"]
    assert again["reason"].startswith("as the last complete run left it (")
    # No digest (input the app model refuses) never matches, even a record made without one.
    run_module({**args, "inputs": "", "write": True})
    assert run_module({**args, "inputs": ""})["unchanged"] is False
    run_module({**args, "write": True})

    # What does not count: an excluded file, a release's own files, the record itself.
    (etc / "resolv.conf").write_text("nameserver 10.0.0.2\n")
    (app / "releases" / "aaa" / "big.bin").write_bytes(b"1" * 1000)
    assert run_module(args)["unchanged"] is True

    # A host that gets every task loses its record before the run changes anything: a run
    # that stops half-way (killed, failed) leaves none, and the next one runs every task
    # whatever the host looks like.
    off = run_module({**args, "compare": False})
    assert off["unchanged"] is False and off["reason"] == "flaskstack_skip_unchanged is off"
    assert not record.exists(), "a run of every task (skip_unchanged off) kept the record"
    assert run_module(args)["reason"] == "no record of a complete run on this host"

    # Each kind of drift, named; the host recorded first as it was, put back after.
    def drifted(change, undo=lambda: None, **changed_args) -> str:
        assert run_module({**args, "write": True})["reason"] == "recorded"
        change()
        reason = run_module({**args, **changed_args})["reason"]
        assert not record.exists(), f"a host that gets every task ({reason}) kept its record"
        undo()
        return reason

    assert drifted(lambda: None, inputs="abd").startswith("this run's inputs")
    reason = drifted(
        lambda: site.write_text("server { listen 81; }\n"), lambda: site.write_text("server { listen 80; }\n")
    )
    assert reason == f"the host changed since the last complete run: {site} changed"
    assert f"{site} changed" in drifted(lambda: site.chmod(0o600), lambda: site.chmod(0o644))

    def other_release():
        (app / "current").unlink()
        (app / "current").symlink_to(app / "releases" / "bbb")
        (app / "deploy.lock").write_text("{}")

    def same_release():
        (app / "deploy.lock").unlink()
        (app / "current").unlink()
        (app / "current").symlink_to(app / "releases" / "aaa")

    reason = drifted(other_release, same_release)
    assert f"{app / 'current'} changed" in reason and f"{app / 'deploy.lock'} is new" in reason
    reason = drifted(lambda: said.write_text("two"), lambda: said.write_text("one"))
    assert f"command /bin/cat {said} changed" in reason
    assert f"{site} is gone" in drifted(lambda: shutil.rmtree(etc / "nginx" / "sites-enabled"))


def test_a_record_that_cannot_be_removed_stops_the_run(tmp_path):
    """Every task is to run, so the record must go first; where it cannot, the script says so
    (the task fails on record_kept) instead of letting a half-run pass for whole."""
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the record's folder should be\n")
    result = run_module({"inputs": "abc", "record": str(blocked / "last-run.json"), "compare": False})
    assert result.get("record_kept") is True and result["unchanged"] is False, result
    assert "could not be removed first" in result["reason"], result["reason"]


def test_a_record_too_old_or_of_another_version_is_not_trusted():
    now = {"file /etc/x": "file 0o644 0:0 aa"}
    record = {"version": state_module.VERSION, "at": 1000.0, "inputs": "abc", "state": now}
    assert state_module.compare(record, "abc", now, 600, clock=lambda: 1500.0)[0] is True
    unchanged_, reason = state_module.compare(record, "abc", now, 600, clock=lambda: 1000.0 + 7300)
    assert not unchanged_ and "2 h ago (flaskstack_skip_unchanged_for: 600 s)" in reason
    assert state_module.compare(record, "abc", now, 0, clock=lambda: 1e12)[0] is True
    assert state_module.compare({**record, "version": 0}, "abc", now, 600, clock=lambda: 1500.0)[0] is False


def test_unit_states_are_read_in_one_call_and_say_what_changed():
    calls = []

    def run(argv):
        calls.append(argv)
        out = "Id=nginx.service\nActiveState=active\n\nId=redis-server.service\nActiveState=inactive\n"
        return 0, out, ""

    found = state_module.unit_states(run, ["redis-server.service", "nginx.service", "nginx.service"])
    assert len(calls) == 1
    assert found == {"unit nginx.service": "active", "unit redis-server.service": "inactive"}
    said = state_module.differences({**found, "unit redis-server.service": "active"}, found)
    assert said == ["unit redis-server.service is inactive (was active)"]
    many = {f"file /etc/{i}": "a" for i in range(9)}
    assert state_module.differences(many, {})[-1] == "4 more"


def test_the_apps_folders_come_from_the_app_model(tmp_path):
    """Where the record reads each app: the model's layout (another root here) and config files,
    marked as the deploy plays' (a difference there alone skips the provision play only)."""
    layout = unchanged.model.Layout(root="/opt/apps", config_dir="/etc/apps", run_dir="/run/apps")
    apps = [{"name": "hello", "config_files": [{"path": "instance/config.py", "python": {}}]}]
    found = unchanged.state_paths(apps, {"shared_dirs": ["instance"]}, layout)
    assert {"path": "/opt/apps", "depth": 1, "content": False} in found
    assert {"path": "/opt/apps/hello/releases", "depth": 1, "content": False, "deploy": True} in found
    assert {"path": "/opt/apps/hello/shared/instance/config.py", "deploy": True} in found
    assert found[0]["path"] == "/etc" and "resolv.conf" in found[0]["exclude"]
    assert [spec["path"] for spec in found if not spec.get("deploy")] == [
        *(spec["path"] for spec in unchanged.HOST_PATHS),
        "/opt/apps",
    ]
    # The deepest path an entry lies under decides whose it is: an app's home and what is in
    # it are the app's; the root itself, a folder beside the homes, a home whose name starts
    # with another's, and the host's own paths (even under the root) are not.
    found.append({"path": "/opt/apps/dpkg/status"})
    for path, deployed in [
        ("/opt/apps/hello", True),
        ("/opt/apps/hello/current", True),
        ("/opt/apps/hello/releases/aaa", True),
        ("/opt/apps", False),
        ("/opt/apps/backups", False),
        ("/opt/apps/hello2", False),
        ("/opt/apps/dpkg/status", False),
        ("/etc/nginx/nginx.conf", False),
        ("/elsewhere", False),
    ]:
        assert state_module.deployed(path, found) is deployed, path


def test_only_the_apps_code_and_folders_changed_skips_the_provision_play_only(tmp_path):
    """The record holds the provision digest too (everything but the apps' code): a run whose
    provision digest is the record's, on a host that differs only under the paths marked
    deploy (a new release, another one live), is not unchanged (the deploy plays run every
    task, and the record is gone first) but provision_unchanged; any other difference, or
    another provision digest, and every task runs."""
    etc, app = tmp_path / "etc", tmp_path / "srv" / "hello"
    (app / "releases" / "aaa").mkdir(parents=True)
    etc.mkdir()
    (etc / "site.conf").write_text("server {}\n")
    (app / "current").symlink_to(app / "releases" / "aaa")
    record = tmp_path / "lib" / "last-run.json"
    args = {
        "inputs": "code1",
        "provision_inputs": "prov1",
        "record": str(record),
        "paths": [
            {"path": str(etc)},
            {"path": str(app), "depth": 1, "content": False, "deploy": True},
            {"path": str(app / "releases"), "depth": 1, "content": False, "deploy": True},
            {"path": str(record.parent)},
        ],
    }

    def after_a_complete_run(**changed) -> dict:
        assert run_module({**args, "write": True})["reason"] == "recorded"
        assert json.loads(record.read_text())["provision_inputs"] == "prov1"
        said = run_module({**args, **changed})
        assert said["unchanged"] is True or not record.exists(), said
        return said

    same = after_a_complete_run()
    assert (same["unchanged"], same["provision_unchanged"]) == (True, False)
    # New code: the deploy plays run; the host is as recorded.
    code = after_a_complete_run(inputs="code2")
    assert (code["unchanged"], code["provision_unchanged"]) == (False, True), code
    assert code["reason"] == "as the last complete run left it, but for the code and releases of its apps"
    # New code, and a release a fab deploy put live since.
    run_module({**args, "write": True})
    (app / "releases" / "bbb").mkdir()
    (app / "current").unlink()
    (app / "current").symlink_to(app / "releases" / "bbb")
    fab = run_module({**args, "inputs": "code2"})
    assert (fab["unchanged"], fab["provision_unchanged"]) == (False, True), fab
    assert f"{app / 'current'} changed" in fab["reason"]
    assert f"{app / 'releases' / 'bbb'} is new" in fab["reason"]
    # The same inputs and a fab deploy since: only the deploy plays, to put the inventory's back.
    assert run_module({**args, "write": True})["reason"] == "recorded"
    (app / "current").unlink()
    (app / "current").symlink_to(app / "releases" / "aaa")
    back = run_module(args)
    assert (back["unchanged"], back["provision_unchanged"]) == (False, True), back
    # Anything the provision play writes, or its inputs: every task runs.
    for change, more in [
        (lambda: (etc / "site.conf").write_text("server { listen 81; }\n"), {"inputs": "code2"}),
        (lambda: None, {"inputs": "code2", "provision_inputs": "prov2"}),
        (lambda: None, {"inputs": "code2", "provision_inputs": ""}),
    ]:
        assert run_module({**args, "write": True})["reason"] == "recorded"
        change()
        said = run_module({**args, **more})
        assert (said["unchanged"], said["provision_unchanged"]) == (False, False), said
        assert not record.exists()
        (etc / "site.conf").write_text("server {}\n")
    # A record made without a provision digest (before it existed) never skips provisioning.
    assert run_module({**args, "provision_inputs": "", "write": True})["reason"] == "recorded"
    assert "provision_inputs" not in json.loads(record.read_text())
    said = run_module({**args, "inputs": "code2"})
    assert (said["unchanged"], said["provision_unchanged"]) == (False, False), said
    # A record's age counts from when the provision play last ran: the comparison that skips
    # it answers when that was, the run's record keeps it, and once it is older than max_age
    # every task runs, whether the host is as recorded or has new code.
    assert run_module({**args, "write": True})["reason"] == "recorded"
    first = json.loads(record.read_text())
    assert first["provisioned_at"] == first["at"]
    code = run_module({**args, "inputs": "code2"})
    assert code["provision_unchanged"] is True and code["provisioned_at"] == first["at"]
    run_module({**args, "inputs": "code2", "write": True, "provisioned_at": first["at"] - 7200})
    second = json.loads(record.read_text())
    assert second["provisioned_at"] == first["at"] - 7200 and second["at"] >= first["at"]
    for given in ({"inputs": "code2"}, {"inputs": "code3"}):
        run_module({**args, "inputs": "code2", "write": True, "provisioned_at": first["at"] - 7200})
        said = run_module({**args, **given, "max_age": 600})
        assert (said["unchanged"], said["provision_unchanged"]) == (False, False), said
        assert said["reason"].startswith("the host was last provisioned 2 h ago ("), said
    # With the shortcut off, nothing is skipped.
    run_module({**args, "write": True})
    off = run_module({**args, "inputs": "code2", "compare": False})
    assert (off["unchanged"], off["provision_unchanged"]) == (False, False)


def test_the_provision_digest_leaves_out_the_apps_code_and_where_it_lies(tmp_path):
    """The provision digest is the inputs' but for each app's code: another source tree, or the
    same code in another folder, changes the inputs only; what the app model reads of the
    source (here, requirements that pin the app server) changes both."""
    defaults, app = app_defaults(), sample_app("hello")
    src = tmp_path / "src"
    shutil.copytree(app["src"], src, ignore=shutil.ignore_patterns("__pycache__", "instance", "tests"))
    here = {**app, "src": str(src)}
    groups = {"flaskstack": ["app1"]}
    inventory = str(ROOT / "inventory/local")

    def both(apps):
        hostvars = {"app1": Vars({"flaskstack_apps": apps})}
        return filters.inputs(hostvars, "app1", groups, inventory, apps, defaults)

    base = both([here])
    assert base["inputs"] and base["provision"]
    template = src / "hello" / "templates" / "index.html"
    template.write_text(template.read_text() + "<!-- new code -->\n")
    code = both([here])
    assert code["inputs"] != base["inputs"] and code["provision"] == base["provision"]
    moved = tmp_path / "elsewhere"
    shutil.copytree(src, moved)
    assert both([{**here, "src": str(moved)}])["provision"] == base["provision"]
    assert both([{**here, "server_names": ["other.test"]}])["provision"] != base["provision"]
    requirements = src / "requirements.txt"
    requirements.write_text(requirements.read_text() + "gunicorn==23.0.0\n")
    pinned = both([here])
    assert pinned["provision"] != base["provision"] and pinned["inputs"] != code["inputs"]
