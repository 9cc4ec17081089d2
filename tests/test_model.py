"""The app model (flaskstack/model.py) and the template layout, without a host."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from flaskstack import model, templates
from tests.targets import app_defaults, sample_app

ROOT = Path(__file__).resolve().parent.parent
APP = {
    "name": "shop",
    "src": str(ROOT / "app"),
    "entry_point": "hello:create_app()",
    "server_names": ["s.test"],
}
DEFAULTS = {
    "state": "present",
    "server": "gunicorn",
    "worker_class": "gevent",
    "tls": "off",
    "nginx_snippets": [],
}
PACKAGES = {"server_packages": {"gunicorn": ["gunicorn==1"]}, "worker_packages": {"gevent": ["gevent==2"]}}


def test_every_path_follows_the_layout_settings():
    layout = model.Layout(root="/data/apps", config_dir="/etc/webapps", run_dir="/run/web")
    (app,) = model.resolve(
        [{**APP, "tls": "self-signed", "secret_env": {"K": "v"}}], DEFAULTS, layout, **PACKAGES
    )
    assert app["home"] == "/data/apps/shop"
    assert app["current"] == "/data/apps/shop/current"
    assert app["env_file"] == "/etc/webapps/shop/app.env"
    assert app["release_settings"] == "/etc/webapps/shop/release.json"
    assert app["tls_certificate_file"] == "/etc/webapps/shop/tls/fullchain.pem"
    assert app["socket"] == "/run/web/shop.sock"
    assert app["health_host"] == "s.test"
    assert app["server_packages"] == ["gunicorn==1", "gevent==2"]
    # Secrets never enter the resolved app; their names do.
    assert "secret_env" not in app and app["secret_env_keys"] == ["K"]
    assert layout.host()["config_dir"] == "/etc/webapps"


def test_an_app_that_pins_its_app_server_gets_its_own(tmp_path):
    """microblog pins gunicorn==21.2.0 (and so do most apps made for Heroku or Docker):
    flaskstack's own pin beside it could never be installed, so the app's is, and the
    report says so. One it does not pin (gevent here) is still added."""
    (tmp_path / "requirements.txt").write_text("Flask==3.1.3\nGunicorn==21.2.0\n")
    (app,) = model.resolve(
        [{**APP, "src": str(tmp_path)}], DEFAULTS, model.Layout("/srv", "/etc", "/run"), **PACKAGES
    )
    assert app["server_packages"] == ["gevent==2"]
    assert (
        "gunicorn: the app's requirements pin it, so theirs is installed, not gunicorn==1"
        in app["project"]["notes"]
    )
    assert app["release_extra"][:1] == ["gevent==2"]


def test_a_postgresql_app_is_dumped_before_each_migration_unless_it_says_how():
    layout = model.Layout("/srv", "/etc", "/run")
    app = {**APP, "database": "postgresql", "database_env": "FLASK_SQLALCHEMY_DATABASE_URI"}
    (dumped,) = model.resolve([app], {**DEFAULTS, "backup_command": ""}, layout, **PACKAGES)
    assert dumped["backup_command"] == 'pg_dump --format=custom --no-owner "$FLASK_SQLALCHEMY_DATABASE_URI"'
    (own,) = model.resolve([{**app, "backup_command": "true"}], DEFAULTS, layout, **PACKAGES)
    assert own["backup_command"] == "true"
    (sqlite,) = model.resolve([APP], {**DEFAULTS, "backup_command": ""}, layout, **PACKAGES)
    assert sqlite["backup_command"] == ""


def test_acme_certificates_stay_where_certbot_keeps_them():
    (app,) = model.resolve(
        [{**APP, "tls": "acme"}],
        DEFAULTS,
        model.Layout("/srv", "/etc/flaskstack", "/run/flaskstack"),
        **PACKAGES,
    )
    assert app["tls_certificate_key_file"] == "/etc/letsencrypt/live/shop/privkey.pem"


@pytest.mark.parametrize(
    "snippet, message",
    [
        ({"content": "x", "src": "y"}, r"nginx_snippets\[0\] \(shop\): give either content"),
        ({}, r"nginx_snippets\[0\] \(shop\): give either content"),
        ({"src": "missing.conf.j2"}, r"nginx_snippets\[0\]\.src \(shop\): .*missing.conf.j2 does not exist"),
    ],
)
def test_a_malformed_snippet_is_named(snippet, message, tmp_path):
    errors = model.app_errors(
        [{**APP, "nginx_snippets": [snippet]}], {**DEFAULTS, **_ports()}, base_dir=tmp_path
    )
    assert len(errors) == 1 and re.search(message, errors[0]), errors


def test_a_snippet_file_is_found_from_the_inventory(tmp_path):
    (tmp_path / "templates").mkdir()
    (tmp_path / "templates" / "extra.conf.j2").write_text("# extra\n")
    app = {**APP, "nginx_snippets": [{"src": "extra.conf.j2"}]}
    assert model.app_errors([app], {**DEFAULTS, **_ports()}, base_dir=str(tmp_path)) == []
    (resolved,) = model.resolve(
        [app],
        DEFAULTS,
        model.Layout("/srv", "/etc/flaskstack", "/run/flaskstack"),
        base_dir=str(tmp_path),
        **PACKAGES,
    )
    assert resolved["nginx_snippets"] == [
        {"src": "extra.conf.j2", "path": str(tmp_path / "templates" / "extra.conf.j2")}
    ]


def _ports() -> dict:
    return {
        "requirements": "requirements.txt",
        "http_port": 80,
        "https_port": 443,
        "static_url": "/static/",
        "static_dir": "static",
        "health_path": "/healthz",
        "worker_class": "sync",
    }


def test_an_inventory_template_wins_and_says_what_it_overrides(tmp_path):
    ours = templates.find("etc/nginx/nginx.conf.j2", str(tmp_path))
    assert ours == ROOT / "templates" / "etc" / "nginx" / "nginx.conf.j2"
    assert templates.origin(str(ours)) == "templates/etc/nginx/nginx.conf.j2"
    override = tmp_path / "templates" / "etc" / "nginx" / "nginx.conf.j2"
    override.parent.mkdir(parents=True, exist_ok=True)
    override.write_text("# mine\n")
    assert templates.find("etc/nginx/nginx.conf.j2", str(tmp_path)) == override
    assert templates.origin(str(override)) == (
        "the inventory's templates/etc/nginx/nginx.conf.j2 "
        "(overrides flaskstack's templates/etc/nginx/nginx.conf.j2)"
    )
    with pytest.raises(templates.TemplateError):
        templates.find("etc/nothing.j2", str(tmp_path))


def test_roles_hold_no_template_and_every_template_is_used():
    assert list((ROOT / "roles").rglob("*.j2")) == []
    named = set()
    for tasks in (ROOT / "roles").rglob("*.yml"):
        text = tasks.read_text()
        # A lookup of its own, or an entry of a list of files rendered by one task (a string in
        # its Jinja, or a YAML entry).
        named |= set(re.findall(r"'([\w./-]+\.j2)'", text))
        named |= set(re.findall(r"\{path: \S+, template: ([\w./-]+\.j2),", text))
    # The app server's settings file is named by the model: one per server.
    named |= {f"etc/flaskstack/app/{name}.j2" for name in model.SERVER_CONFIG.values()}
    shipped = {p.relative_to(ROOT / "templates").as_posix() for p in (ROOT / "templates").rglob("*.j2")}
    assert named == shipped
    listed = (ROOT / "templates" / "README.md").read_text()
    assert all(f"`{name}`" in listed for name in shipped)


@pytest.mark.parametrize("tool", ["release.py", "pool.py"])
def test_the_host_tools_run_on_the_oldest_supported_host_python(tool):
    """flaskstack/release.py and pool.py run on the target's system Python: Debian 11 has 3.9."""
    import ast

    source = (ROOT / "flaskstack" / tool).read_text()
    ast.parse(source, feature_version=(3, 9))
    assert "match " not in source and "datetime.UTC" not in source


@pytest.mark.parametrize("batch", [1, 2, 3, "1", "2", "25%", "34%", "50%", "99%", "100%", 10])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_fab_batches_hosts_as_ansibles_serial_does(batch, count):
    """fab deploy --batch and the deploy play's serial (flaskstack_batch) switch the same hosts together."""
    from ansible.utils.helpers import pct_to_int

    hosts, left = [f"app{i}" for i in range(count)], [f"app{i}" for i in range(count)]
    serial = []  # Ansible's PlaybookExecutor._get_serialized_batches, for one serial value
    while left:
        size = pct_to_int(batch, count)
        serial.append(left[:size])
        left = left[size:]
    assert model.batch_error(batch) == ""
    assert model.batches(hosts, batch) == serial


@pytest.mark.parametrize("batch", [0, "0", "0%", "101%", "150%", "-1", "x", "1.5", "", True, "10 %"])
def test_a_batch_that_is_no_count_or_percentage_is_named(batch):
    message = model.batch_error(batch)
    assert message.startswith(f"flaskstack_batch is {json.dumps(batch)}: it must be a number")


def test_fab_checks_what_a_code_push_reads():
    errors = model.source_errors(
        [{**APP, "src": "/nonexistent"}, {"name": "gone", "state": "absent"}], DEFAULTS
    )
    assert errors == ["flaskstack_apps[0].src (shop): /nonexistent is not a directory on the control node."]
    assert model.name_errors([{"src": "x"}])[0].startswith('flaskstack_apps[0].name is "None"')


@pytest.mark.parametrize(
    "shared, message",
    [
        (
            {"shared_dirs": ["../etc"]},
            r'shared_dirs\[0\] \(shop\) is "\.\./etc": use a path inside the release',
        ),
        ({"shared_dirs": ["/var/data"]}, r'shared_dirs\[0\] \(shop\) is "/var/data"'),
        ({"shared_files": ["venv/x"]}, r'shared_files\[0\] \(shop\) is "venv/x"'),
        (
            {"shared_dirs": ["instance"], "shared_files": ["instance/config.py"]},
            r'shared_files\[0\] \(shop\) is "instance/config.py": it overlaps the shared path "instance"',
        ),
    ],
)
def test_a_shared_path_must_stay_inside_the_release(shared, message):
    errors = model.app_errors([{**APP, **shared}], {**DEFAULTS, **_ports()})
    assert len(errors) == 1 and re.search(message, errors[0]), errors


@pytest.mark.parametrize(
    "setting, message",
    [
        ({"migrate_when_changed": ["migrations"]}, None),
        (
            {"migrate_when_changed": ["migration"]},
            r"migrate_when_changed\[0\] \(shop\): .*/app/migration does not exist: the migrations",
        ),
        (
            {"migrate_when_changed": ["../migrations"]},
            r'migrate_when_changed\[0\] \(shop\) is "\.\./migrations"',
        ),
        (
            {"migrate_when_changed": "migrations"},
            r'migrate_when_changed \(shop\) is "migrations": give a list',
        ),
        ({"migrate_when_changed": ["migrations"], "migrate_command": ""}, r"migrate_command is empty"),
    ],
)
def test_migrate_when_changed_names_paths_the_source_has(setting, message):
    """A path the source lacks would never change, so its migrations would never run: refused,
    by site.yml and by fab deploy (which checks what a code push reads)."""
    app = {
        **APP,
        "requirements": "requirements.txt",
        "migrate_command": "flask --app hello db upgrade",
        **setting,
    }
    for errors in (model.app_errors([app], {**DEFAULTS, **_ports()}), model.source_errors([app], DEFAULTS)):
        if message is None:
            assert errors == []
        else:
            assert len(errors) == 1 and re.search(message, errors[0]), errors


def test_shared_paths_are_linked_targets_and_the_only_writable_ones():
    layout = model.Layout("/srv", "/etc/flaskstack", "/run/flaskstack")
    app = {**APP, "shared_dirs": ["instance", "uploads"], "shared_files": ["settings.ini"]}
    (resolved,) = model.resolve([app], DEFAULTS, layout, **PACKAGES)
    assert resolved["shared"] == [
        {"path": "instance", "kind": "dir", "target": "/srv/shop/shared/instance"},
        {"path": "uploads", "kind": "dir", "target": "/srv/shop/shared/uploads"},
        {"path": "settings.ini", "kind": "file", "target": "/srv/shop/shared/settings.ini"},
    ]
    assert resolved["writable_paths"] == [
        "/srv/shop/shared/data", "/srv/shop/shared/instance", "/srv/shop/shared/uploads",
        "/srv/shop/shared/settings.ini",
    ]  # fmt: skip


@pytest.mark.parametrize(
    "config, message",
    [
        ({"path": "instance/config.py"}, r"config_files\[0\] \(shop\): give a path and one of"),
        ({"path": "a.py", "python": {}, "dotenv": {}}, r"config_files\[0\] \(shop\): give a path and one of"),
        ({"path": "a.py", "python": "SECRET = 1"}, r"config_files\[0\] \(shop\)\.python is not a dict"),
        (
            {"path": "a.py", "template": "none.j2"},
            r"config_files\[0\] \(shop\)\.template: .*none\.j2 does not exist",
        ),
        ({"path": "../a.py", "dotenv": {}}, r'config_files\[0\] \(shop\) is "\.\./a\.py": use a path inside'),
    ],
)
def test_a_malformed_config_file_is_named_without_its_values(config, message, tmp_path):
    errors = model.app_errors(
        [{**APP, "config_files": [config]}], {**DEFAULTS, **_ports()}, base_dir=str(tmp_path)
    )
    assert len(errors) == 1 and re.search(message, errors[0]), errors
    assert "SECRET = 1" not in errors[0]


def test_config_files_are_linked_unless_a_shared_folder_holds_them():
    layout = model.Layout("/srv", "/etc/flaskstack", "/run/flaskstack")
    app = {
        **APP,
        "shared_dirs": ["instance"],
        "config_files": [
            {"path": "instance/config.py", "python": {"SECRET_KEY": "s3cret"}},
            {"path": ".env", "dotenv": {"A": "b"}},
        ],
    }
    (resolved,) = model.resolve([app], DEFAULTS, layout, **PACKAGES)
    assert "config_files" not in resolved and "s3cret" not in repr(resolved)
    assert resolved["configs"] == [
        {"path": "instance/config.py", "target": "/srv/shop/shared/instance/config.py"},
        {"path": ".env", "target": "/srv/shop/shared/.env"},
    ]
    assert {"path": ".env", "kind": "config", "target": "/srv/shop/shared/.env"} in resolved["shared"]
    assert "/srv/shop/shared/.env" not in resolved["writable_paths"]
    assert "shared config .env" in resolved["release_extra"]
    # The shared folder itself and the instance folder are made elsewhere: no folder here.
    assert resolved["config_folders"] == []
    deeper = {
        **app,
        "config_files": [{"path": "instance/a/b.cfg", "dotenv": {}}, {"path": "c/d.ini", "dotenv": {}}],
    }
    (resolved,) = model.resolve([deeper], DEFAULTS, layout, **PACKAGES)
    assert resolved["config_folders"] == ["/srv/shop/shared/instance/a", "/srv/shop/shared/c"]
    assert model.python_settings({"SECRET_KEY": "it's", "N": 3}) == 'N = 3\nSECRET_KEY = "it\'s"\n'


def test_a_config_file_in_a_shared_folder_may_not_climb_out_of_it():
    app = {
        **APP,
        "shared_dirs": ["instance"],
        "config_files": [{"path": "instance/../../x.py", "dotenv": {}}],
    }
    errors = model.app_errors([app], {**DEFAULTS, **_ports()})
    assert len(errors) == 1 and 'config_files[0] (shop) is "instance/../../x.py"' in errors[0], errors


def test_fab_checks_each_app_with_its_own_source(tmp_path):
    """Each app's own src, not the one of the app before it."""
    other = tmp_path / "other"
    other.mkdir()
    apps = [APP, {**APP, "name": "two", "src": str(other)}]
    assert model.source_errors(apps, DEFAULTS | {"requirements": "requirements.txt"}) == [
        f"flaskstack_apps[1].requirements (two): {other}/requirements.txt does not exist, "
        "and there is no pyproject.toml with a [project] table."
    ]


def test_workers_and_timers_become_units_and_only_the_scheduler_host_runs_the_scheduler():
    app = {
        "name": "shop",
        "workers": [
            {"name": "worker", "command": "celery -A shop.tasks worker -n w{instance}@%h", "count": 2},
            {"name": "beat", "command": "celery -A shop.tasks beat", "scheduler": True},
        ],
        "timers": [
            {"name": "purge", "command": "flask --app shop purge", "on_calendar": "daily"},
            {"name": "tmp", "command": "sh -c 'rm -f /tmp/x*'", "on_calendar": "hourly", "every_host": True},
        ],
    }
    here = model.processes(app, scheduler_here=True)
    assert here["worker_units"] == ["shop-worker@1.service", "shop-worker@2.service", "shop-beat@1.service"]
    assert here["timer_units"] == ["shop-purge.timer", "shop-tmp.timer"]
    elsewhere = model.processes(app, scheduler_here=False)
    assert elsewhere["worker_units"] == ["shop-worker@1.service", "shop-worker@2.service"]
    assert elsewhere["timer_units"] == ["shop-tmp.timer"]
    assert elsewhere["process_unit_files"] == [
        "/etc/systemd/system/shop-worker@.service",
        "/etc/systemd/system/shop-tmp.service",
        "/etc/systemd/system/shop-tmp.timer",
    ]
    worker = here["workers"][0]
    # Arguments quoted for systemd; {instance} is the instance, Celery's %h stays Celery's.
    assert worker["exec"] == '"celery" "-A" "shop.tasks" "worker" "-n" "w%i@%%h"'
    assert (worker["stop_signal"], worker["stop_timeout"]) == ("SIGTERM", 300)
    assert here["timers"][1]["exec"] == '"sh" "-c" "rm -f /tmp/x*"'


def test_systemd_quote_keeps_an_argument_whole():
    assert model.systemd_quote('say "hi" $HOME 100%\\n') == '"say \\"hi\\" $$HOME 100%%\\\\n"'


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"workers": "celery worker"}, r"workers \(shop\) is not a list"),
        (
            {"workers": [{"name": "w", "command": "x", "nice": 5}]},
            r'workers\[0\] \(shop\) has unknown keys \["nice"\]',
        ),
        ({"workers": [{"name": "W", "command": "x"}]}, r'workers\[0\] \(shop\)\.name is "W"'),
        ({"workers": [{"name": "w", "command": "x", "stop_timeout": 0}]}, r"stop_timeout is 0"),
        ({"workers": [{"name": "w", "command": "x", "scheduler": "yes"}]}, r'scheduler is "yes"'),
        (
            {"timers": [{"name": "t", "command": "x", "on_calendar": "daily", "random_delay": -1}]},
            r"random_delay is -1",
        ),
        ({"broker": "redis", "broker_password": "pw", "broker_db": 16}, r"broker_db \(shop\) is 16"),
        (
            {"broker": "redis", "broker_password": "pw", "broker_env": "A", "env": {"A": "1"}},
            r"broker_env \(shop\) is A",
        ),
    ],
)
def test_malformed_processes_and_brokers_are_named(raw, message):
    errors = model.app_errors([{**sample_app("shop"), **raw}], app_defaults())
    assert errors and re.search(message, errors[0]), errors
