"""What a user checks on a host that site.yml provisioned: testinfra, in the container."""

from __future__ import annotations

import json
import re

import pytest

APP = "hello"
HOME = f"/srv/{APP}"


@pytest.mark.parametrize("unit", ["nginx.service", f"{APP}.socket", f"{APP}.service"])
def test_units_are_active_and_enabled(host, unit):
    service = host.service(unit)
    assert service.is_running
    assert service.is_enabled


def test_home_page_answers_through_nginx(host, http):
    status, headers, body = http.get("/")
    assert status == 200
    assert headers["Server"] == "nginx"
    assert "Hello from flaskstack" in body
    assert 'href="/static/style.css"' in body


def test_unknown_path_is_the_apps_404(host, http):
    status, _, body = http.get("/no-such-page")
    assert status == 404
    assert "Not Found" in body


def test_healthz_reports_the_release_that_current_points_to(host, http):
    status, headers, body = http.get("/healthz")
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    health = json.loads(body)
    revision = host.file(f"{HOME}/current/REVISION").content_string.strip()
    hostname = host.check_output("hostname")
    assert health == {"status": "ok", "release": revision, "host": hostname, "database": "ok"}


def test_static_file_is_served_by_nginx_from_disk(host, http):
    status, headers, body = http.get("/static/style.css")
    assert status == 200
    assert headers["Content-Type"] == "text/css"
    # nginx's `expires`, where Flask would have sent "no-cache".
    assert headers["Cache-Control"] == "max-age=604800"
    on_disk = host.file(f"{HOME}/current/hello/static/style.css").content_string
    assert body.strip() == on_disk.strip()
    # The app server never saw the request: its access log (the journal) has no line for it.
    journal = host.check_output(f"journalctl -u {APP}.service --no-pager -o cat")
    assert "GET /healthz" in journal
    assert "/static/style.css" not in journal


def test_distribution_default_site_is_replaced(host):
    assert not host.file("/etc/nginx/sites-enabled/default").exists
    assert host.file("/etc/nginx/sites-enabled/_default.conf").is_symlink
    assert host.file(f"/etc/nginx/sites-enabled/{APP}.conf").is_symlink


def test_env_file_is_root_owned_and_readable_by_the_app_group_only(host):
    env = host.file(f"/etc/flaskstack/{APP}/app.env")
    assert env.user == "root"
    assert env.group == APP
    assert env.mode == 0o640
    assert "FLASK_SECRET_KEY=" in host.check_output(f"cat /etc/flaskstack/{APP}/app.env")


def test_env_values_reach_the_app_exactly(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {APP}.service")
    environ = host.check_output(f"cat /proc/{pid}/environ | tr '\\0' '\\n'").splitlines()
    assert 'HELLO_QUOTING=say "hi" \\ back # not a comment' in environ
    assert f"FLASK_INSTANCE_PATH={HOME}/shared/data" in environ
    assert any(line.startswith("FLASK_SECRET_KEY=") and len(line) > 40 for line in environ)


def test_socket_accepts_nginx_and_nobody_else(host):
    sock = host.file(f"/run/flaskstack/{APP}.sock")
    assert sock.is_socket
    assert sock.user == APP
    assert sock.group == "www-data"
    assert sock.mode == 0o660


def test_app_user_has_no_login_and_no_password(host):
    user = host.user(APP)
    assert user.shell == "/usr/sbin/nologin"
    assert user.password in ("!", "*", "!*")
    assert user.group == APP


def test_data_folder_is_writable_by_the_app_user_only(host):
    data = host.file(f"{HOME}/shared/data")
    assert data.user == APP
    assert data.mode == 0o700
    assert host.file(f"{HOME}/shared/data/hello.db").user == APP


def test_current_points_at_a_release_with_its_own_venv_read_only_to_the_app(host):
    current = host.file(f"{HOME}/current")
    assert current.is_symlink
    release = current.linked_to
    assert release.startswith(f"{HOME}/releases/")
    # The release is root's: the app reads its code and venv and can change neither.
    for path in (release, f"{release}/venv", f"{release}/hello/__init__.py", f"{release}/venv/bin/python3"):
        assert host.file(path).user == "root", path
    for path in (release, f"{release}/hello", f"{release}/venv/bin"):
        assert host.run(f"runuser -u {APP} -- touch {path}/written-by-the-app").rc != 0, path
    # Installed from the wheelhouse: gunicorn and Flask are in the release's venv,
    # not in the system Python (PEP 668). The venv has no pip of its own: it is
    # never changed after it was built.
    listing = host.check_output(
        f"{release}/venv/bin/python -c 'import importlib.metadata as m, json;"
        ' print(json.dumps([d.metadata["Name"] for d in m.distributions()]))\''
    )
    names = {name.lower() for name in json.loads(listing)}
    assert "pip" not in names
    assert {"flask", "gunicorn", "flask-sqlalchemy"} <= names
    assert host.run("python3 -c 'import flask'").rc != 0


def test_shared_instance_folder_is_linked_into_the_release_and_writable(host):
    """Flask's instance folder (shared_dirs' default) is the one writable place in a release."""
    link = host.file(f"{HOME}/current/instance")
    assert link.is_symlink and link.linked_to == f"{HOME}/shared/instance"
    shared = host.file(f"{HOME}/shared/instance")
    assert (shared.user, shared.mode) == (APP, 0o750)
    assert host.run(f"runuser -u {APP} -- touch {HOME}/current/instance/written-by-the-app").rc == 0
    unit = host.check_output(f"systemctl show -p ReadWritePaths --value {APP}.service")
    assert set(unit.split()) == {f"{HOME}/shared/data", f"{HOME}/shared/instance"}


def test_config_files_are_rendered_for_the_app_to_read_only(host):
    config = host.file(f"{HOME}/shared/instance/config.py")
    assert (config.user, config.group, config.mode) == ("root", APP, 0o640)
    assert "GREETING = 'hi from config.py'" in config.content_string
    assert host.run(f"runuser -u {APP} -- sh -c 'echo x >> {HOME}/current/instance/config.py'").rc != 0
    dotenv = host.file(f"{HOME}/current/.env")
    assert dotenv.is_symlink and dotenv.linked_to == f"{HOME}/shared/.env"
    assert 'HELLO_FROM="a \\"dotenv\\" file"' in host.check_output(
        f"runuser -u {APP} -- cat {HOME}/current/.env"
    )


def test_app_processes_run_as_the_app_user(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {APP}.service")
    procs = host.check_output(f"ps -o user=,pid= --ppid {pid} -p {pid}").splitlines()
    users = {line.split()[0] for line in procs}
    assert len(procs) >= 2, procs  # the master and at least one worker
    assert users == {APP}


def test_unknown_host_names_get_no_answer(http):
    """The default server closes the connection (444) for a Host no app claims."""
    result = http.run("/", "unknown.example.org")
    assert result.rc != 0
    assert "RemoteDisconnected" in result.stderr or "Connection reset" in result.stderr


def test_security_headers_and_no_version(host, http):
    for path in ("/", "/static/style.css", "/no-such-page"):
        _, headers, _ = http.get(path)
        assert headers["Server"] == "nginx", path
        assert headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin", path
        assert headers["X-Frame-Options"] == "SAMEORIGIN", path


def test_access_log_has_request_and_upstream_times(host, http):
    http.get("/healthz")
    last = host.check_output(f"tail -n 1 /var/log/nginx/{APP}.access.log")
    assert '"GET /healthz HTTP/1.1" 200' in last
    assert "rt=" in last and "urt=" in last


def test_service_unit_is_sandboxed(exposure):
    score, out = exposure(f"{APP}.service")
    assert score <= 2.0, out


def test_release_tool_reports_the_live_release_and_its_history(host):
    revision = host.file(f"{HOME}/current/REVISION").content_string.strip()
    rows = json.loads(host.check_output(f"flaskstack-release releases {APP} --json"))
    assert rows[0]["release"] == revision
    assert rows[0]["state"] == "live"
    # Who deployed, from where, and the control node's git describe of the source.
    assert re.match(r"ansible-playbook by \S+@\S+, (git \S+|not a git tree)$", rows[0]["note"]), rows[0]
    history = [json.loads(line) for line in host.file(f"{HOME}/history.jsonl").content_string.splitlines()]
    assert [entry["action"] for entry in history[-2:]] == ["pending", "deploy"]
    settings = host.file(f"/etc/flaskstack/{APP}/release.json")
    assert (settings.user, settings.mode) == ("root", 0o644)
    assert "SECRET" not in settings.content_string


# The host baseline (the host role), as a user checks it.
def test_nginx_own_unit_is_sandboxed_and_still_serves(host, http, exposure):
    score, out = exposure("nginx.service")
    assert score <= 3.0, out
    assert host.service("nginx.service").is_running
    capabilities = host.check_output("systemctl show -P CapabilityBoundingSet nginx.service").split()
    assert "cap_net_bind_service" in capabilities and "cap_sys_admin" not in capabilities
    # It still reloads (the deploy path's and certbot's way to new settings and certificates).
    host.check_output("systemctl reload nginx.service")
    assert http.get("/healthz")[0] == 200


def test_the_firewall_lets_in_ssh_and_http_only(host):
    rules = host.check_output("nft list table inet flaskstack")
    assert "policy drop" in rules
    assert re.search(r"tcp dport 22 accept", rules)
    assert re.search(r"tcp dport 80 accept", rules)
    assert "5432" not in rules and "8081" not in rules
    assert host.service("nftables.service").is_enabled


def test_ssh_takes_keys_only_with_modern_algorithms(host):
    effective = host.check_output("sshd -T")
    for setting in (
        "passwordauthentication no",
        "kbdinteractiveauthentication no",
        "permitrootlogin without-password",
        "x11forwarding no",
        "allowtcpforwarding no",
        "maxauthtries 3",
        "loglevel VERBOSE",
    ):
        assert setting in effective, setting
    ciphers = re.search(r"^ciphers (.*)$", effective, re.M).group(1).split(",")
    assert ciphers[0] == "chacha20-poly1305@openssh.com" and not any("cbc" in c for c in ciphers)
    # Post-quantum key exchange first: ML-KEM where this OpenSSH has it (Debian 13's 10.0),
    # else Streamlined NTRU Prime (Debian 12's 9.2).
    first_kex = re.search(r"^kexalgorithms ([^,\n]+)", effective, re.M).group(1)
    if "mlkem768x25519-sha256" in host.check_output("ssh -Q kex").split():
        assert first_kex == "mlkem768x25519-sha256"
    else:
        assert first_kex.startswith("sntrup761x25519-sha512")


def test_security_updates_are_installed_every_day(host):
    config = host.check_output("apt-config dump")
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config
    assert "Debian-Security" in config and 'label=Debian";' not in config
    assert host.service("apt-daily-upgrade.timer").is_enabled
    assert host.package("needrestart").is_installed


def test_core_dumps_are_off_and_the_journal_persists(host):
    assert "hard    core    0" in host.file("/etc/security/limits.d/flaskstack.conf").content_string
    assert host.check_output("systemctl show -P DefaultLimitCORE") == "0"
    assert host.file("/var/log/journal").is_directory
    assert host.check_output("grep -h ^UMASK /etc/login.defs").split() == ["UMASK", "027"]
