"""wiki, the sample app under uWSGI: through nginx, on the systemd socket, sandboxed."""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("unit", ["wiki.socket", "wiki.service"])
def test_units_are_active_and_enabled(host, unit):
    assert host.service(unit).is_running
    assert host.service(unit).is_enabled


def test_page_and_health_answer_through_nginx(host, http):
    status, _, body = http.get("/", "wiki.test")
    assert status == 200 and "Hello from flaskstack" in body
    status, _, body = http.get("/healthz", "wiki.test")
    assert status == 200
    assert json.loads(body)["release"] == host.file("/srv/wiki/current/REVISION").content_string.strip()


def test_uwsgi_serves_on_the_socket_systemd_holds(host):
    journal = host.check_output("journalctl -u wiki.service --no-pager -o cat")
    assert "Starting uWSGI" in journal
    assert "SystemD socket activation detected" in journal
    assert "GET /healthz => generated" in journal
    sock = host.file("/run/flaskstack/wiki.sock")
    assert sock.is_socket and sock.user == "wiki" and sock.group == "www-data"


def test_uwsgi_processes_run_as_the_app_user_with_threads(host):
    pid = host.check_output("systemctl show -p MainPID --value wiki.service")
    procs = host.check_output(f"ps -o user=,comm= --ppid {pid} -p {pid}").splitlines()
    assert len(procs) >= 2
    assert {line.split()[0] for line in procs} == {"wiki"}
    assert "threads = " in host.file("/etc/flaskstack/wiki/uwsgi.ini").content_string


def test_service_unit_is_sandboxed(exposure):
    score, out = exposure("wiki.service")
    assert score <= 2.0, out
