"""The fabfile without a target: it reads the Ansible inventory as Ansible does,
explains itself, and stops with a clear message before touching a host it cannot reach."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import fabfile

ROOT = Path(__file__).resolve().parent.parent
FAB = Path(sys.executable).parent / "fab"


def fab(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [FAB, *args], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def unreachable_inventory(tmp_path: Path, apps: list[dict]) -> Path:
    """An inventory of one host, "gone", where nothing listens (127.0.0.1:1), with these apps."""
    inventory = tmp_path / "inv"
    (inventory / "group_vars").mkdir(parents=True, exist_ok=True)
    hosts = {"flaskstack": {"hosts": {"gone": {"ansible_host": "127.0.0.1", "ansible_port": 1}}}}
    (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
    (inventory / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump({"flaskstack_apps": apps}))
    return inventory


def test_the_demo_inventory_gives_the_demo_host_and_its_app():
    (host,) = fabfile.load_inventory(str(ROOT / "inventory" / "local"))
    assert (host.name, host.address, host.port, host.user) == ("demo", "127.0.0.1", 2222, "deploy")
    assert host.become  # a deploy user with sudo, as in production
    assert Path(host.key_file).resolve() == ROOT / ".demo" / "ssh" / "id_ed25519"
    assert [Path(p).resolve() for p in host.known_hosts] == [ROOT / ".demo" / "ssh" / "known_hosts"]
    (app,) = host.apps
    assert (app["name"], Path(app["src"]).resolve(), app["requirements"]) == (
        "hello",
        ROOT / "app",
        "requirements.txt",
    )
    # The role defaults apply beneath the inventory, as in a play: gunicorn is the app server.
    assert app["server_packages"] == ["gunicorn==23.0.0"]
    assert "tests" in app["exclude"]


def test_the_example_inventory_gives_two_hosts_through_sudo():
    hosts = fabfile.load_inventory(str(ROOT / "inventory" / "example"))
    assert [(h.name, h.address, h.user, h.become) for h in hosts] == [
        ("web1.example.com", "203.0.113.10", "deploy", True),
        ("web2.example.com", "203.0.113.11", "deploy", True),
    ]
    assert [a["name"] for a in hosts[0].apps] == ["shop"]
    assert fabfile.load_inventory(str(ROOT / "inventory" / "example"), limit="web2.example.com")[0].name == (
        "web2.example.com"
    )


def test_host_and_group_vars_change_an_app_per_host(tmp_path):
    """host_vars win over group_vars, and absent apps are not deployed."""
    inventory = tmp_path / "inv"
    (inventory / "host_vars").mkdir(parents=True)
    (inventory / "group_vars").mkdir()
    apps = [
        {"name": "one", "src": str(ROOT / "app"), "entry_point": "hello:create_app()", "server_names": ["a"]},
        {"name": "gone", "state": "absent"},
    ]
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"flaskstack": {"hosts": {"a": None, "b": None}}}))
    (inventory / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump({"flaskstack_apps": apps}))
    apps_b = [{**apps[0], "server": "uwsgi", "worker_class": "gthread"}]
    (inventory / "host_vars" / "b.yml").write_text(yaml.safe_dump({"flaskstack_apps": apps_b}))
    a, b = fabfile.load_inventory(str(inventory))
    assert [x["name"] for x in a.apps] == ["one"]
    assert a.apps[0]["server_packages"] == ["gunicorn==23.0.0"]
    assert b.apps[0]["server_packages"] == ["pyuwsgi==2.0.30.post1"]


def test_the_role_defaults_lie_beneath_the_inventory_and_are_templated(tmp_path, monkeypatch):
    """As in a play of the flaskstack role: a default the inventory sets is the inventory's; a
    default that is a template is rendered (flaskstack_cache_dir reads the environment)."""
    inventory = tmp_path / "inv"
    (inventory / "group_vars").mkdir(parents=True)
    app = {
        "name": "one",
        "src": str(ROOT / "app"),
        "entry_point": "hello:create_app()",
        "server_names": ["a"],
    }
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"flaskstack": {"hosts": {"a": None}}}))
    group = {"flaskstack_apps": [app], "flaskstack_root": "/opt/apps", "flaskstack_batch": "50%"}
    (inventory / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump(group))
    monkeypatch.setenv("FLASKSTACK_CACHE_DIR", str(tmp_path / "cache"))
    (host,) = fabfile.load_inventory(str(inventory))
    assert host.apps[0]["home"] == "/opt/apps/one"
    assert host.batch == "50%"
    assert host.cache_dir == tmp_path / "cache"
    assert host.platforms["x86_64"][0].startswith("manylinux")  # a default the inventory does not set


def test_fab_list_and_help_explain_every_task():
    listing = fab("--list")
    assert listing.returncode == 0, listing.stderr
    for name in ("deploy", "rollback", "releases", "status", "logs"):
        assert f"  {name} " in listing.stdout
    helped = fab("--help", "deploy")
    assert helped.returncode == 0
    for option in ("--inventory", "--app", "--limit", "--src", "--vault-password-file"):
        assert option in helped.stdout
    assert "health-gated" in helped.stdout


def test_an_unreachable_host_stops_the_deploy_before_anything(tmp_path):
    app = {
        "name": "hello",
        "src": str(ROOT / "app"),
        "entry_point": "hello:create_app()",
        "server_names": ["x"],
    }
    result = fab("deploy", "--inventory", str(unreachable_inventory(tmp_path, [app])))
    assert result.returncode == 1
    assert "gone (127.0.0.1:1) is unreachable" in result.stdout + result.stderr
    assert "== package" not in result.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["--inventory", "/nonexistent/inventory"], "inventory /nonexistent/inventory does not exist"),
        (["--app", "shop"], "demo: no present app named shop in the inventory"),
        (["--src", "/tmp"], "--src needs --app"),
        (["--limit", "web9"], "no host of the group flaskstack in"),
    ],
    ids=["missing inventory", "unknown app", "src without app", "limit matching nothing"],
)
def test_bad_arguments_are_named(args, message):
    result = fab("deploy", *args)
    assert result.returncode == 2
    assert message in result.stdout + result.stderr


def test_fab_deploy_checks_what_it_pushes_and_reads_nothing_else(tmp_path):
    """The app model's source checks stop fab deploy before any connection; the keys a code
    push does not read (env, secrets) are not templated, so a vault it lacks does not matter."""
    app = {
        "name": "hello",
        "src": str(tmp_path / "nonexistent"),
        "entry_point": "hello:create_app()",
        "server_names": ["x"],
        "env": {"DATABASE_URL": "{{ vault_database_url }}"},
        "secret_env": {"FLASK_SECRET_KEY": "{{ vault_not_given }}"},
    }
    result = fab("deploy", "--inventory", str(unreachable_inventory(tmp_path, [app])))
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert f"flaskstack_apps[0].src (hello): {tmp_path / 'nonexistent'} is not a directory" in output
    assert "unreachable" not in output and "Traceback" not in output
    # With the source in place, the same inventory gets as far as the host.
    app["src"] = str(ROOT / "app")
    result = fab("deploy", "--inventory", str(unreachable_inventory(tmp_path, [app])))
    assert result.returncode == 1 and "gone (127.0.0.1:1) is unreachable" in result.stdout + result.stderr


def test_a_nameless_app_is_named_not_a_traceback(tmp_path):
    inventory = tmp_path / "inv"
    (inventory / "group_vars").mkdir(parents=True)
    (inventory / "hosts.yml").write_text(yaml.safe_dump({"flaskstack": {"hosts": {"a": None}}}))
    apps = [{"src": str(ROOT / "app"), "entry_point": "hello:app"}]
    (inventory / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump({"flaskstack_apps": apps}))
    result = fab("status", "--inventory", str(inventory))
    assert result.returncode == 2
    assert 'a: flaskstack_apps[0].name is "None"' in result.stderr


def test_fab_and_ansible_name_the_same_release(tmp_path):
    """The release id is a content hash of the source and what the model adds to it (server
    packages, shared paths): fab and the flaskstack_apps lookup must compute it alike."""
    import importlib.util

    from flaskstack.packaging import build_release

    plugin = ROOT / "roles" / "flaskstack" / "lookup_plugins" / "flaskstack_apps.py"
    spec = importlib.util.spec_from_file_location("flaskstack_apps_lookup", plugin)
    lookup = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lookup)

    (host,) = fabfile.load_inventory(str(ROOT / "inventory" / "local"))
    (app,) = host.apps
    by_fab = build_release(ROOT / "app", app["name"], app["exclude"], app["release_extra"], tmp_path)
    raw = yaml.safe_load((ROOT / "inventory" / "local" / "group_vars" / "flaskstack.yml").read_text())
    raw_app = {k: v for k, v in raw["flaskstack_apps"][0].items() if k != "secret_env"}
    raw_app["src"] = str(ROOT / "app")
    defaults = yaml.safe_load((ROOT / "roles" / "flaskstack" / "defaults" / "main.yml").read_text())
    (by_ansible,) = lookup.LookupModule().run(
        [], apps=[raw_app], defaults=defaults["flaskstack_app_defaults"], root="/srv",
        config_dir="/etc/flaskstack", run_dir="/run/flaskstack",
        server_packages=defaults["flaskstack_server_packages"],
        worker_packages=defaults["flaskstack_worker_packages"], cache_dir=str(tmp_path),
    )  # fmt: skip
    assert by_ansible["release_id"] == by_fab.id
    assert any(extra.startswith("shared dir instance") for extra in app["release_extra"])


def test_fab_deploy_checks_only_what_it_pushes(tmp_path):
    """--app: another app's missing source does not matter; --src: the folder given is checked,
    not the inventory's (which may not exist on this machine)."""
    base = {"entry_point": "hello:create_app()", "server_names": ["x"]}
    apps = [
        {**base, "name": "hello", "src": str(tmp_path / "not-here")},
        {**base, "name": "other", "src": str(tmp_path / "not-here-either"), "server_names": ["y"]},
    ]
    inventory = unreachable_inventory(tmp_path, apps)
    pushed = fab("deploy", "--inventory", str(inventory), "--app", "hello", "--src", str(ROOT / "app"))
    assert pushed.returncode == 1, pushed.stdout + pushed.stderr
    assert "gone (127.0.0.1:1) is unreachable" in pushed.stdout + pushed.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    wrong = fab("deploy", "--inventory", str(inventory), "--app", "hello", "--src", str(empty))
    assert wrong.returncode == 2
    assert f"flaskstack_apps[0].requirements (hello): {empty}/requirements.txt does not exist" in wrong.stderr
    assert "other" not in wrong.stderr
