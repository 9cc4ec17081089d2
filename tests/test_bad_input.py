"""Bad input stops site.yml in its first checks, naming the variable, before any change."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent

APP = {
    "name": "hello",
    "src": str(ROOT / "app"),
    "entry_point": "hello:create_app()",
    "server_names": ["hello.example.com"],
    "static_dir": "hello/static",
}

# The first task of each role that changes a host (the host role's checks run in the
# flaskstack role's, before any change: its other task files are the changing ones).
CHANGING_TASKS = tuple(
    f"TASK [{role} :" for role in ("base", "nginx", "python", "app", "appserver", "postgresql", "redis")
)
CHANGING_TASKS += tuple(f"TASK [host : {part} |" for part in ("firewall", "ssh", "updates", "system"))


def app(**changes):
    return {**APP, **changes}


CASES = {
    "name with spaces": (
        {"flaskstack_apps": [app(name="my app")]},
        r"flaskstack_apps\[0\]\.name is \"my app\"",
    ),
    "name with capitals": (
        {"flaskstack_apps": [app(name="Hello")]},
        r"flaskstack_apps\[0\]\.name is \"Hello\"",
    ),
    "an app named root": (
        {"flaskstack_apps": [app(name="root")]},
        r"flaskstack_apps\[0\]\.name is \"root\": a name of the system's \(an account or a service\)",
    ),
    "an app named as nginx's user": (
        {"flaskstack_apps": [app(name="www-data")]},
        r"flaskstack_apps\[0\]\.name is \"www-data\": a name of the system's",
    ),
    "duplicate names": (
        {"flaskstack_apps": [app(), app(server_names=["other.example.com"])]},
        r"flaskstack_apps has duplicate names: hello",
    ),
    "port out of range": (
        {"flaskstack_apps": [app(http_port=70000)]},
        r"flaskstack_apps\[0\]\.http_port \(hello\) is 70000: use a port from 1 to 65535",
    ),
    "port zero": (
        {"flaskstack_apps": [app(http_port=0)]},
        r"flaskstack_apps\[0\]\.http_port \(hello\) is 0",
    ),
    "port not a number": (
        {"flaskstack_apps": [app(http_port="eighty")]},
        r"http_port.*eighty|eighty.*http_port",
    ),
    "entry point without module:callable": (
        {"flaskstack_apps": [app(entry_point="hello.create_app")]},
        r"flaskstack_apps\[0\]\.entry_point \(hello\) is \"hello.create_app\": use module:callable",
    ),
    "entry point missing": (
        {"flaskstack_apps": [{k: v for k, v in APP.items() if k != "entry_point"}]},
        r"flaskstack_apps\[0\]\.entry_point \(hello\) is \"missing\"",
    ),
    "entry point module not in the source": (
        {"flaskstack_apps": [app(entry_point="nosuchmodule:app")]},
        r"flaskstack_apps\[0\]\.entry_point \(hello\): module \"nosuchmodule\" is not in",
    ),
    "source folder missing": (
        {"flaskstack_apps": [app(src="/nonexistent/app")]},
        r"flaskstack_apps\[0\]\.src \(hello\): /nonexistent/app is not a directory",
    ),
    "requirements file missing": (
        {"flaskstack_apps": [app(requirements="requirements-prod.txt")]},
        r"flaskstack_apps\[0\]\.requirements \(hello\): .*requirements-prod.txt does not exist",
    ),
    "malformed server name": (
        {"flaskstack_apps": [app(server_names=["bad name.example.com"])]},
        r"flaskstack_apps\[0\]\.server_names \(hello\) has malformed names: \[\"bad name.example.com\"\]",
    ),
    "no server names": (
        {"flaskstack_apps": [app(server_names=[])]},
        r"flaskstack_apps\[0\]\.server_names \(hello\) is required",
    ),
    "static_url without slashes": (
        {"flaskstack_apps": [app(static_url="static")]},
        r"flaskstack_apps\[0\]\.static_url \(hello\) is \"static\"",
    ),
    "static_dir escaping the source": (
        {"flaskstack_apps": [app(static_dir="../etc")]},
        r"flaskstack_apps\[0\]\.static_dir \(hello\) is \"../etc\"",
    ),
    "env key that is no variable name": (
        {"flaskstack_apps": [app(env={"BAD-KEY": "x"})]},
        r"flaskstack_apps\[0\]\.env or \.secret_env \(hello\) has keys .*BAD-KEY",
    ),
    "an env value that is not text": (
        {"flaskstack_apps": [app(secret_env={"API_KEYS": ["secret-value"]})]},
        r"flaskstack_apps\[0\]\.secret_env \(hello\) has values that are not text .*\[\"API_KEYS\"\]",
    ),
    "unknown app server": (
        {"flaskstack_apps": [app(server="waitress")]},
        r"server.*waitress|waitress.*server",
    ),
    "unknown key in an app": (
        {"flaskstack_apps": [app(entrypoint="hello:app")]},
        r"entrypoint",
    ),
    "two apps on one host name and port": (
        {"flaskstack_apps": [app(), app(name="other")]},
        r"more than one present app answers for hello.example.com:80",
    ),
    "two apps on one host name's HTTPS port": (
        {
            "flaskstack_apps": [
                app(tls="self-signed"),
                app(name="other", server_names=["Hello.Example.com"], http_port=8080, tls="self-signed"),
            ]
        },
        r"more than one present app answers for hello.example.com:443",
    ),
    "a pyproject.toml without a [project] table": (
        {"flaskstack_apps": [app(src=str(ROOT / "tests" / "data" / "tool-settings-only"))]},
        r"flaskstack_apps\[0\]\.src \(hello\): .*pyproject.toml has no \[project\] table "
        r"\(PEP 621\) and there is no requirements.txt: flaskstack cannot tell what to install; "
        r"export poetry.lock: poetry export -o requirements.txt",
    ),
    "a src layout that is not a project": (
        {"flaskstack_apps": [app(src=str(ROOT / "tests" / "data" / "src-layout-no-project"))]},
        r"flaskstack_apps\[0\]\.entry_point \(hello\): module \"hello\" is in .*/src \(the src layout\)",
    ),
    "a header value that would break nginx": (
        {"flaskstack_apps": [app(content_security_policy='default-src "self"')]},
        r"flaskstack_apps\[0\] \(hello\): referrer_policy and content_security_policy may not contain",
    ),
    "unknown TLS mode": (
        {"flaskstack_apps": [app(tls="letsencrypt")]},
        r"tls.*letsencrypt|letsencrypt.*tls",
    ),
    "provided TLS without a certificate": (
        {"flaskstack_apps": [app(tls="provided")]},
        r"flaskstack_apps\[0\]\.tls_certificate is missing \(hello\): tls: provided needs",
    ),
    "provided TLS with a key that is not PEM": (
        {
            "flaskstack_apps": [
                app(
                    tls="provided",
                    tls_certificate="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                    tls_certificate_key="not-a-key-but-a-secret-value",
                )
            ]
        },
        r"flaskstack_apps\[0\]\.tls_certificate_key is not a PEM private key \(hello\)",
    ),
    "https port out of range": (
        {"flaskstack_apps": [app(tls="self-signed", https_port=99999)]},
        r"flaskstack_apps\[0\]\.https_port \(hello\) is 99999",
    ),
    "https port equal to the http port": (
        {"flaskstack_apps": [app(tls="self-signed", https_port=80)]},
        r"flaskstack_apps\[0\]\.https_port \(hello\) is the same as its http_port \(80\)",
    ),
    "a later role's variable with the wrong type": (
        {"flaskstack_apps": [app()], "appserver_workers": "many"},
        r"appserver_workers",
    ),
    "a later role's variable outside its choices": (
        {"flaskstack_apps": [app()], "appserver_log_level": "verbose"},
        r"appserver_log_level.*verbose|verbose.*appserver_log_level",
    ),
    "gevent under uwsgi": (
        {"flaskstack_apps": [app(server="uwsgi", worker_class="gevent")]},
        r"flaskstack_apps\[0\]\.worker_class \(hello\) is \"gevent\", which flaskstack runs under gunicorn",
    ),
    "preload with gevent": (
        {"flaskstack_apps": [app(worker_class="gevent", preload=True)]},
        r"flaskstack_apps\[0\]\.preload \(hello\) is true with worker_class \"gevent\"",
    ),
    "migrate_once that is not a boolean": (
        {"flaskstack_apps": [app(migrate_once="sometimes")]},
        r"migrate_once.*sometimes|sometimes.*migrate_once",
    ),
    "keeping no release": (
        {"flaskstack_apps": [app()], "app_keep_releases": 0},
        r"app_keep_releases is 0: keep at least 1 release",
    ),
    "a variable under its old name": (
        {"flaskstack_apps": [app()], "python_wheel_platforms": {"x86_64": ["manylinux2014_x86_64"]}},
        r"python_wheel_platforms is now flaskstack_wheel_platforms",
    ),
    "an nginx snippet with neither content nor src": (
        {"flaskstack_apps": [app(nginx_snippets=[{}])]},
        r"flaskstack_apps\[0\]\.nginx_snippets\[0\] \(hello\): give either content",
    ),
    "keeping releases given as null": (
        {"flaskstack_apps": [app()], "app_keep_releases": None},
        r"app_keep_releases",
    ),
    "a shared path that escapes the release": (
        {"flaskstack_apps": [app(shared_dirs=["../../etc"])]},
        r"flaskstack_apps\[0\]\.shared_dirs\[0\] \(hello\) is \"../../etc\": use a path inside the release",
    ),
    "a requirements include that does not exist": (
        {"flaskstack_apps": [app(src=str(ROOT / "tests" / "data" / "missing-include"))]},
        r"flaskstack_apps\[0\]\.requirements \(hello\): .*requirements.txt includes base.txt, "
        r"which does not exist",
    ),
    "a config file that escapes the release": (
        {"flaskstack_apps": [app(config_files=[{"path": "/etc/passwd", "dotenv": {"A": "secret-value"}}])]},
        r"flaskstack_apps\[0\]\.config_files\[0\] \(hello\) is \"/etc/passwd\": use a path inside",
    ),
    "unknown worker class": (
        {"flaskstack_apps": [app(worker_class="eventlet")]},
        r"worker_class.*eventlet|eventlet.*worker_class",
    ),
    "a database without its password": (
        {"flaskstack_apps": [app(database="postgresql")]},
        r"database_password \(hello\) is not set: with database postgresql the app's role needs a password",
    ),
    "an unknown database": (
        {"flaskstack_apps": [app(database="mysql", database_password="secret-value")]},
        r"database.*mysql|mysql.*database",
    ),
    "a worker with an empty command": (
        {"flaskstack_apps": [app(workers=[{"name": "worker", "command": "  "}])]},
        r"flaskstack_apps\[0\]\.workers\[0\]\.command \(hello, worker\) is \" *\": give the command to run",
    ),
    "a worker command with an unbalanced quote": (
        {"flaskstack_apps": [app(workers=[{"name": "worker", "command": "celery -A 'hello worker"}])]},
        r"flaskstack_apps\[0\]\.workers\[0\]\.command \(hello, worker\) is .*quotes balanced",
    ),
    "a worker command with a line break (a directive of its own in the unit)": (
        {"flaskstack_apps": [app(workers=[{"name": "worker", "command": "sh -c 'rq worker\nUser=root'"}])]},
        r"flaskstack_apps\[0\]\.workers\[0\]\.command \(hello, worker\) is .*: "
        r"give the command to run on one line",
    ),
    "two apps sharing Redis in one database": (
        {
            "flaskstack_apps": [
                app(broker="redis", broker_password="secret-value"),
                app(
                    name="shop",
                    server_names=["shop.example.com"],
                    broker="redis",
                    broker_password="secret-value",
                ),
            ]
        },
        r"broker_db is 0 for flaskstack_apps\[0\] \(hello\) and flaskstack_apps\[1\] \(shop\): "
        r"apps that share Redis need a database each",
    ),
    "two processes of one app with one name": (
        {
            "flaskstack_apps": [
                app(
                    workers=[{"name": "jobs", "command": "rq worker"}],
                    timers=[{"name": "jobs", "command": "flask purge", "on_calendar": "daily"}],
                )
            ]
        },
        r"flaskstack_apps\[0\]\.timers\[0\] \(hello\)\.name is \"jobs\", which another of the app's workers "
        r"or timers has",
    ),
    "a worker whose unit is another app's": (
        {
            "flaskstack_apps": [
                app(workers=[{"name": "api", "command": "rq worker"}]),
                app(name="hello-api", server_names=["api.example.com"]),
            ]
        },
        r"flaskstack_apps\[0\]\.workers\[0\]\.name is \"api\": its unit hello-api is the app hello-api's too",
    ),
    "a backup_command YAML read as a boolean": (
        {"flaskstack_apps": [app(backup_command=True)]},
        r"backup_command \(.*\) is true: give a command as a string",
    ),
    "a worker with no instance": (
        {"flaskstack_apps": [app(workers=[{"name": "worker", "command": "rq worker", "count": 0}])]},
        r"flaskstack_apps\[0\]\.workers\[0\]\.count is 0: run 1 to 64 instances \(hello, worker\)",
    ),
    "a worker stopped by an unknown signal": (
        {
            "flaskstack_apps": [
                app(workers=[{"name": "worker", "command": "rq worker", "stop_signal": "SIGSTOP"}])
            ]
        },
        r"flaskstack_apps\[0\]\.workers\[0\]\.stop_signal is \"SIGSTOP\": use one of SIGTERM",
    ),
    "a timer without a calendar": (
        {"flaskstack_apps": [app(timers=[{"name": "purge", "command": "flask purge"}])]},
        r"flaskstack_apps\[0\]\.timers\[0\]\.on_calendar is null: give a systemd calendar expression",
    ),
    "a calendar that systemd rejects": (
        {
            "flaskstack_apps": [
                app(timers=[{"name": "purge", "command": "flask purge", "on_calendar": "nightly"}])
            ]
        },
        r"flaskstack_apps\[0\]\.timers\[0\]\.on_calendar \(hello, purge\) is \"nightly\", "
        r"which systemd rejects",
    ),
    "a broker without its password": (
        {"flaskstack_apps": [app(broker="redis")]},
        r"flaskstack_apps\[0\]\.broker_password \(hello\) is not set",
    ),
    "an unknown broker": (
        {"flaskstack_apps": [app(broker="rabbitmq", broker_password="secret-value")]},
        r"broker.*rabbitmq|rabbitmq.*broker",
    ),
    "a rolling deploy's batch that is no count of hosts": (
        {"flaskstack_apps": [app()], "flaskstack_batch": "150%"},
        r"flaskstack_batch is \"150%\": it must be a number of hosts \(1, 2, ...\) or a percentage "
        r"of them from 1% to 100%",
    ),
}


# The inventory's groups: {group: the host's variables in it}.
GROUP_CASES = {
    "a load balancer with no app hosts": (
        {"flaskstack_lb": {"flaskstack_private_address": "10.0.0.10"}},
        r"The group flaskstack_lb has hosts \(badinput\) but the group flaskstack has none",
    ),
    "an app host behind a load balancer without an address": (
        {"flaskstack_lb": {}, "flaskstack": {}},
        r"badinput: flaskstack_private_address is not set; with load balancers",
    ),
    "a scheduler host that is not an app host": (
        {"flaskstack": {"flaskstack_scheduler_host": "app9"}},
        r"flaskstack_scheduler_host is \"app9\", which is not a host of the group flaskstack \(badinput\)",
    ),
    "an address that is not one": (
        {"flaskstack_lb": {"flaskstack_private_address": "app-one.lan"}, "flaskstack": {}},
        r"badinput: flaskstack_private_address is \"app-one.lan\", not an IPv4 address",
    ),
}


@pytest.mark.parametrize("groups, message", GROUP_CASES.values(), ids=GROUP_CASES.keys())
def test_bad_groups_stop_before_any_change(run_site, groups, message):
    result = run_site({"flaskstack_apps": [app()]}, groups=groups)
    stopped_before_any_change(result, message)


def test_a_database_with_no_database_host_stops_before_any_change(run_site):
    result = run_site({"flaskstack_apps": [app(database="postgresql", database_password="secret-value")]})
    stopped_before_any_change(
        result,
        r"flaskstack_apps hello ask for a database \(database: postgresql\): the inventory group "
        r"flaskstack_db must have one host, and has none",
    )


def test_one_vm_that_is_its_own_database_host_needs_no_address(run_site):
    """The commonest setup (one VM, its app and its PostgreSQL): nothing else reaches the
    host, so its address is 127.0.0.1 and the group checks pass (the run goes on to the
    roles)."""
    apps = {"flaskstack_apps": [app(database="postgresql", database_password="secret-value")]}
    result = run_site(apps, groups={"flaskstack": {}, "flaskstack_db": {}})
    output = result.stdout + result.stderr
    assert "Give a host that is the whole inventory the private address 127.0.0.1" in output, output[-3000:]
    assert "flaskstack_private_address is not set" not in output, output[-3000:]
    assert "TASK [base :" in output, output[-3000:]
    assert "secret-value" not in output


@pytest.mark.parametrize(
    "others, message",
    [
        ({"flaskstack_db": ["another"]}, r"badinput: flaskstack_private_address is not set; with load"),
        ({"flaskstack": ["another"]}, r"badinput: flaskstack_private_address is not set; with load"),
    ],
    ids=["another database host", "another app host"],
)
def test_a_database_host_among_other_hosts_needs_addresses(run_site, others, message):
    """With a second host in the inventory, the others reach this one: its address is asked for."""
    apps = {"flaskstack_apps": [app(database="postgresql", database_password="secret-value")]}
    groups = {"flaskstack": {}} if "flaskstack_db" in others else {"flaskstack": {}, "flaskstack_db": {}}
    stopped_before_any_change(run_site(apps, groups=groups, others=others), message)


def test_a_loopback_address_where_other_hosts_reach_it_is_refused(run_site):
    """127.0.0.1 set by hand on a database host that another app host must reach: it passed
    as an IPv4 address, and PostgreSQL then listened on localhost alone."""
    apps = {"flaskstack_apps": [app(database="postgresql", database_password="secret-value")]}
    loopback = {"flaskstack_private_address": "127.0.0.1"}
    result = run_site(
        apps, groups={"flaskstack": loopback, "flaskstack_db": loopback}, others={"flaskstack": ["another"]}
    )
    stopped_before_any_change(
        result, r"badinput: flaskstack_private_address is 127.0.0.1, a loopback address: the other hosts"
    )


def test_a_scheduler_on_two_app_hosts_needs_its_host_named(run_site):
    """With the first host of the group as the default, adding or reordering a host would
    move Celery beat without anyone asking."""
    beat = app(workers=[{"name": "beat", "command": "celery -A hello.make_celery beat", "scheduler": True}])
    result = run_site({"flaskstack_apps": [beat]}, others={"flaskstack": ["another"]})
    stopped_before_any_change(
        result,
        r"flaskstack_apps hello have a scheduler worker or a timer for one host: with more than one app "
        r"host, set flaskstack_scheduler_host",
    )


def test_a_broker_shared_by_two_app_hosts_needs_a_redis_host(run_site):
    """Each app host's own Redis would split the queues: a job queued on one host would be
    done, and its result kept, on that host only."""
    broker = app(broker="redis", broker_password="secret-value")
    result = run_site({"flaskstack_apps": [broker]}, others={"flaskstack": ["another"]})
    stopped_before_any_change(
        result,
        r"flaskstack_apps hello ask for a broker \(broker: redis\): with more than one app host the "
        r"inventory group flaskstack_redis must have one host .* and has none",
    )


# The host baseline (roles/host) against what the host says about Ansible's own login: the
# local connection passes SSH_CONNECTION and HOME on, as sshd would set them.
SSH_LOGIN = {"SSH_CONNECTION": "10.0.0.5 50412 10.0.0.9 22"}
HOST_CASES = {
    "a firewall that closes the SSH port Ansible came in on": (
        {"host_ssh_port": 2200},
        {},
        r"host_ssh_port is 2200, but Ansible's own SSH connection reached this host on port 22: "
        r"the firewall would close the port Ansible uses",
    ),
    "a firewall that lets SSH in from elsewhere only": (
        {"host_firewall_ssh_from": ["192.168.0.0/16", "2001:db8::/32"]},
        {},
        r"host_firewall_ssh_from is 192.168.0.0/16, 2001:db8::/32, and Ansible's own SSH connection "
        r"comes from 10.0.0.5: the firewall would shut Ansible out",
    ),
    "a port that is not one": (
        {"host_firewall_allow": [{"port": 70000, "from": ["10.0.0.0/8"]}]},
        {},
        r"host_firewall_allow\[0\]\.port is 70000, not a port number",
    ),
    "a rule that could close the chain": (
        {"host_firewall_rules": ["tcp dport 9100 accept; }"]},
        {},
        r"host_firewall_rules\[0\] is .*: one nftables rule per entry, on one line",
    ),
    "password logins off for a user with no key": (
        {},
        {"HOME": "no-keys"},
        r"the user Ansible connects as, has no key in ~/.ssh/authorized_keys, and host_ssh turns "
        r"password logins off: it would lock itself out",
    ),
    "password logins off for a user who logs in with one": (
        {"ansible_password": "secret-value"},
        {},
        r"with a password \(ansible_password\), and host_ssh turns password logins off",
    ),
    "SSH allowed to other users only": (
        {"host_ssh_allow_users": ["someone-else"]},
        {},
        r"host_ssh_allow_users is someone-else, without .*, the user Ansible connects as: it would "
        r"lock itself out",
    ),
    "an unknown kernel setting": (
        {"host_sysctl_settings": {"net.ipv4.tcp_no_such_setting": 1}},
        {},
        r'host_sysctl_settings\["net.ipv4.tcp_no_such_setting"\]: this host\'s kernel has no such setting',
    ),
}


@pytest.mark.parametrize("group_vars, env, message", HOST_CASES.values(), ids=HOST_CASES.keys())
def test_a_host_baseline_that_would_lock_out_stops_before_any_change(
    run_site, tmp_path, group_vars, env, message
):
    """Over SSH (as the local connection plays it), with a key for the user unless a case says."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 deploy@laptop\n")
    login = {**SSH_LOGIN, "HOME": str(home), **env}
    if login["HOME"] == "no-keys":  # a home of its own with no .ssh (Ansible writes ~/.ansible there)
        (tmp_path / "bare-home").mkdir()
        login["HOME"] = str(tmp_path / "bare-home")
    stopped_before_any_change(run_site({"flaskstack_apps": [app()], **group_vars}, env_more=login), message)


def test_the_host_baseline_passes_its_checks_with_a_key_and_the_right_port(run_site, tmp_path):
    """The same login with nothing wrong: the checks pass (the run goes on to the roles)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "authorized_keys").write_text(
        "# the deploy key\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE0 deploy\n"
    )
    result = run_site(
        {"flaskstack_apps": [app()], "host_firewall_ssh_from": ["10.0.0.0/8"]},
        env_more={**SSH_LOGIN, "HOME": str(home)},
    )
    output = result.stdout + result.stderr
    assert "host : check | Refuse a baseline" in output, output[-3000:]
    assert "would lock itself out" not in output and "would close the port" not in output, output[-3000:]
    assert "TASK [base :" in output, output[-3000:]


@pytest.mark.parametrize("group_vars, message", CASES.values(), ids=CASES.keys())
def test_bad_input_stops_before_any_change(run_site, group_vars, message):
    stopped_before_any_change(run_site(group_vars), message)


def stopped_before_any_change(result, message: str) -> None:
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    # Ansible wraps long messages: compare with the white space folded.
    assert re.search(message, " ".join(output.split())), output
    # It stopped inside the flaskstack role, before a role that changes a host began.
    for task in CHANGING_TASKS:
        assert task not in output, f"{task} ran:\n{output}"
    recap = re.search(r"badinput\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert recap and recap.group(1) == "0", output
    assert "secret-value" not in output


def test_the_first_check_reads_every_roles_argument_spec():
    """The flaskstack role checks every role's variables against its spec before any role
    changes a host (assert.yml, over __flaskstack_roles): a role left off that list would
    have its typos found only once the roles before it had run."""
    listed = yaml.safe_load((ROOT / "roles" / "flaskstack" / "vars" / "main.yml").read_text())[
        "__flaskstack_roles"
    ]
    assert sorted(listed) == sorted(
        p.parent.parent.name for p in (ROOT / "roles").glob("*/meta/argument_specs.yml")
    )
    # They are checked in one call, their options merged: no variable may be in two of them.
    declared = [
        name
        for role in listed
        for name in yaml.safe_load((ROOT / "roles" / role / "meta" / "argument_specs.yml").read_text())[
            "argument_specs"
        ]["main"]["options"]
    ]
    assert sorted(name for name in set(declared) if declared.count(name) > 1) == []


def test_no_template_drops_a_failure_in_a_set_statement():
    """Under ansible-core 2.19 a call in `{% set _ = list.append(...) %}` whose argument fails
    (an undefined variable, a filter's or a lookup's error) is skipped without a word: the
    value is never rendered, so neither is its error. A check's message was dropped that way
    and the check passed; a wheelhouse pip could not build left its app out, and the run
    failed two tasks later on a missing key. The roles call such methods as the test of an
    `{% if %}` instead, which evaluates the result and so raises the error."""
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for folder in ("roles", "playbooks", "templates")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".yml", ".j2")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\{%-?\s*set\s+_\s*=", line)
    ]
    assert found == []
