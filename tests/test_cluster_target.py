"""The cluster target (`make cluster`): a load balancer and three app hosts, each a
systemd container with an address of its own on the project's network, provisioned
by `ansible-playbook site.yml -i inventory/cluster` over SSH. Checked as a user
would: the load balancer's HTTPS on localhost:8493 (127.0.0.1) answers from every app host in
turn, an app host answers the load balancer only, an app host stopped and started
under load costs no request, and a second run changes nothing. Removed at the end.
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.traffic import Load
from tests.targets import on_target, run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HTTPS, HTTP = 8493, 8090
APP_HOSTS = ("app1", "app2", "app3")
CONTAINERS = ("flaskstack-lb", *(f"flaskstack-{name}" for name in APP_HOSTS))

pytestmark = pytest.mark.target


def get(path: str = "/healthz", port: int = HTTPS) -> tuple[int, dict, bytes]:
    """GET through the load balancer (Host: localhost), its certificate not checked."""
    if port == HTTPS:
        # "localhost": TLS names the site (SNI) only for a name; nginx refuses a handshake without.
        context = ssl._create_unverified_context()  # noqa: S323 - the cluster's self-signed certificate
        conn = http.client.HTTPSConnection("localhost", port, timeout=20, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def hosts_answering(n: int = 30) -> set[str]:
    return {json.loads(get()[2])["host"] for _ in range(n)}


@pytest.fixture(scope="module")
def cluster(demo_target):
    made = run("make", "cluster")
    assert made.returncode == 0, made.output[-4000:]
    yield made.output
    subprocess.run(["docker", "rm", "-f", *CONTAINERS], capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", "flaskstack-cluster"], capture_output=True, check=False)


def test_make_cluster_prints_the_load_balancers_url(cluster):
    assert "flaskstack cluster: https://localhost:8493" in cluster
    assert "GET /healthz -> 200" in cluster


def test_the_load_balancer_spreads_requests_over_every_app_host(cluster):
    assert hosts_answering() == set(APP_HOSTS)
    status, headers, _ = get("/", port=HTTP)
    assert (status, headers["Location"]) == (301, "https://localhost:8493/")
    status, _, page = get("/")
    assert status == 200 and re.search(rb'served by <code id="host">app[123]</code>', page)
    assert get("/static/style.css")[0] == 200


def test_an_app_host_answers_the_load_balancer_only(cluster):
    """Checked on the connecting address, whatever X-Forwarded-For says."""
    ask = (
        "python3 -c 'import sys, urllib.request, urllib.error\n"
        'r = urllib.request.Request("http://10.87.0.11:8081/healthz",\n'
        '    headers={"Host": "localhost", "X-Forwarded-For": "203.0.113.7"})\n'
        "try: print(urllib.request.urlopen(r, timeout=10).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)'"
    )
    from_lb = subprocess.run(
        ["docker", "exec", "flaskstack-lb", "sh", "-c", ask], capture_output=True, text=True
    )
    from_app = subprocess.run(
        ["docker", "exec", "flaskstack-app2", "sh", "-c", ask], capture_output=True, text=True
    )
    assert (from_lb.stdout.strip(), from_app.stdout.strip()) == ("200", "403"), (
        from_lb.stderr + from_app.stderr
    )


def test_an_app_host_stopped_and_started_under_load_costs_no_request(cluster):
    """docker stop of an app host (its nginx and app go down), then start: the load balancer
    passes over it, and takes it back once it answers; no GET fails meanwhile."""
    load = Load(clients=4, rate=10, path="/healthz", port=HTTPS, tls=True).start()
    time.sleep(2)
    subprocess.run(["docker", "stop", "flaskstack-app2"], check=True, capture_output=True, timeout=120)
    time.sleep(5)
    stopped = hosts_answering(12)
    subprocess.run(["docker", "start", "flaskstack-app2"], check=True, capture_output=True, timeout=120)
    deadline = time.monotonic() + 90
    while "app2" not in hosts_answering(6) and time.monotonic() < deadline:
        time.sleep(1)
    load.stop()
    assert stopped == {"app1", "app3"}
    assert "app2" in hosts_answering(), "app2 never came back into the pool"
    assert load.sent > 100 and load.failures == [], load.failures


def test_a_second_run_changes_nothing(cluster):
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/cluster")
    assert again.returncode == 0, again.output[-3000:]
    for host in ("lb", *APP_HOSTS):
        assert re.search(rf"{host}\s*:\s*ok=\d+\s+changed=0", again.output), again.output[-3000:]
    assert on_target("test ! -e /srv/hello", port=2240, check=False).returncode == 0  # the LB runs no app
