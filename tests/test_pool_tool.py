"""flaskstack-pool, a load balancer's pool tool, run as a command on real folders.

Each test writes the pool's settings as the nginx role does (two apps, three app hosts
whose backends are real HTTP servers on 127.0.0.1) and runs the tool. nginx itself is
not here: `nginx` and `systemctl` are small scripts first on PATH that record what the
tool asked (a test makes `nginx -t` fail); the cluster target test runs the tool against
a real nginx under load (tests/test_cluster_target.py).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The tool as the host's wrapper runs it (templates/usr/local/sbin/flaskstack-pool.j2).
TOOL = "import sys; from flaskstack.pool import main; sys.exit(main(sys.argv[3:], sys.argv[1], sys.argv[2]))"


class Backend(http.server.ThreadingHTTPServer):
    """An app host's nginx as the load balancer reaches it: /healthz answers self.status."""

    def __init__(self):
        self.status = 200
        self.hosts_seen: list[str] = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                backend.hosts_seen.append(self.headers["Host"])
                self.send_response(backend.status if self.path == "/healthz" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server_address[1]}"


class LB:
    def __init__(self, tmp: Path, backends: dict[str, Backend]):
        self.tmp = tmp
        self.settings = tmp / "etc" / "pool.json"
        self.state = tmp / "var" / "pool.json"
        self.upstreams = tmp / "nginx" / "flaskstack-pool"
        self.calls = tmp / "calls.log"
        self.bin = tmp / "bin"
        self.bin.mkdir()
        for name in ("nginx", "systemctl"):
            script = self.bin / name
            script.write_text(
                f'#!/bin/sh\necho "{name} $*" >> {self.calls}\n'
                f'[ "{name}" = nginx ] && [ -e {tmp}/nginx-refuses ] && '
                '{ echo "emerg: bad" >&2; exit 1; }\n'
                "exit 0\n"
            )
            script.chmod(0o755)
        servers = [{"host": name, "address": b.address} for name, b in backends.items()]
        self.settings.parent.mkdir(parents=True)
        self.settings.write_text(
            json.dumps(
                {
                    "upstream_dir": str(self.upstreams),
                    "server_options": "max_fails=1 fail_timeout=10s",
                    "apps": {
                        "hello": {"servers": servers, "health_path": "/healthz", "host_header": "hello.test"},
                        "shop": {"servers": servers, "health_path": "/healthz", "host_header": "shop.test"},
                    },
                }
            )
        )

    def run(self, *args: str) -> subprocess.CompletedProcess:
        env = {**os.environ, "PATH": f"{self.bin}:{os.environ['PATH']}", "PYTHONPATH": str(ROOT)}
        return subprocess.run(
            [sys.executable, "-c", TOOL, str(self.settings), str(self.state), *args],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )

    def lines(self, app: str) -> list[str]:
        return [
            x for x in (self.upstreams / f"{app}.conf").read_text().splitlines() if x.startswith("server ")
        ]

    def status(self) -> dict:
        return json.loads(self.run("status", "--json").stdout)


@pytest.fixture
def backends():
    found = {name: Backend() for name in ("app1", "app2", "app3")}
    yield found
    for b in found.values():
        b.shutdown()
        b.server_close()


@pytest.fixture
def lb(tmp_path, backends):
    lb = LB(tmp_path, backends)
    assert lb.run("render").returncode == 0
    return lb


def test_render_writes_every_app_host_once_and_then_changes_nothing(lb, backends):
    assert lb.lines("hello") == [
        f"server {b.address} max_fails=1 fail_timeout=10s;  # {name}" for name, b in backends.items()
    ]
    again = lb.run("render")
    assert again.returncode == 0 and again.stdout == ""
    assert lb.run("render", "--check").stdout == ""


def test_out_marks_a_host_down_in_each_app_and_in_puts_it_back(lb):
    out = lb.run("out", "app2", "--why", "fab deploy by me")
    assert out.returncode == 0, out.stderr
    assert "app2: out of the pool of hello" in out.stdout and "app2: out of the pool of shop" in out.stdout
    for app in ("hello", "shop"):
        down = [line for line in lb.lines(app) if " down;" in line]
        assert len(down) == 1 and down[0].endswith("(fab deploy by me)") and "# app2" in down[0]
    assert lb.status()["hello"]["app2"]["in_pool"] is False
    assert lb.status()["hello"]["app1"] == {"in_pool": True}
    # nginx -t before the reload, the reload after it.
    assert lb.calls.read_text().splitlines() == ["nginx -t -q", "systemctl reload nginx"]
    # A run of the nginx role (render) keeps what the rollout did.
    assert lb.run("render").stdout == "" and " down;" in lb.lines("hello")[1]

    back = lb.run("in", "app2", "--check")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "app2: hello: GET /healthz via" in back.stdout and "-> 200" in back.stdout
    assert not any(" down;" in line for app in ("hello", "shop") for line in lb.lines(app))
    assert lb.status()["shop"]["app2"] == {"in_pool": True}
    # A host in the pool already: nothing to do, no reload (a deploy asks for every host).
    reloads = lb.calls.read_text().count("systemctl reload")
    again = lb.run("in", "app2", "--check")
    assert again.returncode == 0 and "app2: already in the pool of hello" in again.stdout
    assert lb.calls.read_text().count("systemctl reload") == reloads


def test_only_the_named_app_changes(lb):
    assert lb.run("out", "app1", "--app", "shop").returncode == 0
    assert not any(" down;" in line for line in lb.lines("hello"))
    assert " down;" in lb.lines("shop")[0]


def test_the_last_host_in_a_pool_stays_in(lb):
    assert lb.run("out", "app1", "app2").returncode == 0
    last = lb.run("out", "app3", "--app", "hello")
    assert last.returncode == 0
    assert "app3: kept in the pool of hello: it is the last host there" in last.stdout
    assert lb.status()["hello"]["app3"] == {"in_pool": True}


def test_a_host_that_does_not_answer_stays_out_and_the_command_fails(lb, backends):
    assert lb.run("out", "app3").returncode == 0
    backends["app3"].status = 503
    back = lb.run("in", "app3", "--check", "--app", "hello")
    assert back.returncode == 1
    assert "app3: LEFT OUT of the pool of hello" in back.stdout
    assert lb.status()["hello"]["app3"]["in_pool"] is False
    # The health check asks as the load balancer would: the app's own Host name.
    assert backends["app3"].hosts_seen[-1] == "hello.test"


def test_a_refused_config_puts_the_files_and_the_state_back(lb, tmp_path):
    before = (lb.upstreams / "hello.conf").read_text()
    (tmp_path / "nginx-refuses").touch()
    out = lb.run("out", "app1")
    assert out.returncode == 1
    assert "nginx -t refused the new pool (nothing changed): emerg: bad" in out.stderr
    assert (lb.upstreams / "hello.conf").read_text() == before
    assert lb.status()["hello"]["app1"] == {"in_pool": True}
    assert "systemctl" not in lb.calls.read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["out", "app9"], "hello: app9 not in its pool (hosts: app1, app2, app3)"),
        (["in", "app1", "--app", "blog"], "no app blog in this load balancer's pool (apps: hello, shop)"),
    ],
)
def test_unknown_hosts_and_apps_are_named_and_nothing_changes(lb, args, message):
    result = lb.run(*args)
    assert result.returncode == 1 and message in result.stderr
    assert not lb.state.exists()


def test_an_app_gone_from_the_settings_keeps_its_file_and_changes_nothing(lb):
    """Its site may still include the file until the nginx role removes the site."""
    settings = json.loads(lb.settings.read_text())
    del settings["apps"]["shop"]
    lb.settings.write_text(json.dumps(settings))
    result = lb.run("render")
    assert result.returncode == 0 and result.stdout == ""
    assert (lb.upstreams / "shop.conf").exists()
    assert "shop" not in lb.status()


def test_without_settings_the_tool_says_what_the_host_is_not(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", TOOL, str(tmp_path / "none.json"), str(tmp_path / "state.json"), "status"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    assert result.returncode == 1
    assert "is missing: not a load balancer (group flaskstack_lb)?" in result.stderr
