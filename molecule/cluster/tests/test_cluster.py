"""The cluster scenario, checked on each host: the load balancer ends TLS and spreads
requests over both app hosts, its pool has both, and an app host answers the load
balancer only (whatever X-Forwarded-For says)."""

from __future__ import annotations

import json
import shlex

import pytest

LB = "flaskstack-molecule-cluster-lb"
APP_HOSTS = ("flaskstack-molecule-cluster-app1", "flaskstack-molecule-cluster-app2")

# From inside a host: N GETs of url with Host: localhost (TLS by name, its certificate
# self-signed), each answer's status and JSON body on a line.
ASK = """
import json, ssl, sys, urllib.request, urllib.error
context = ssl._create_unverified_context()
for _ in range(int(sys.argv[2])):
    headers = {"Host": "localhost", "X-Forwarded-For": "203.0.113.7"}
    request = urllib.request.Request(sys.argv[1], headers=headers)
    try:
        r = urllib.request.urlopen(request, timeout=10, context=context)
    except urllib.error.HTTPError as e:
        r = e
    print(json.dumps([r.status, r.read().decode()]))
"""


def ask(host, url: str, times: int = 1) -> list[tuple[int, str]]:
    out = host.check_output(f"python3 -c {shlex.quote(ASK)} {shlex.quote(url)} {times}")
    return [tuple(json.loads(line)) for line in out.splitlines()]


@pytest.fixture
def lb(host):
    if host.backend.get_hostname() != LB:
        pytest.skip("checked from the load balancer")
    return host


@pytest.fixture
def app_host(host):
    if host.backend.get_hostname() not in APP_HOSTS:
        pytest.skip("checked on the app hosts")
    return host


def test_the_load_balancer_spreads_requests_over_both_app_hosts(lb):
    answers = ask(lb, "https://localhost/healthz", 20)
    assert {status for status, _ in answers} == {200}
    assert {json.loads(body)["host"] for _, body in answers} == set(APP_HOSTS)


def test_the_load_balancer_pool_has_every_app_host(lb):
    pool = json.loads(lb.check_output("flaskstack-pool status --json"))
    assert pool == {"hello": {name: {"in_pool": True} for name in APP_HOSTS}}
    assert not lb.file("/srv/hello").exists  # it runs no app


def test_an_app_host_answers_the_load_balancer_only(lb):
    # From the load balancer, straight to an app host's backend: served.
    assert ask(lb, "http://10.88.0.11:8081/healthz")[0][0] == 200


def test_an_app_host_refuses_anyone_else(app_host):
    other = "10.88.0.12" if app_host.backend.get_hostname().endswith("app1") else "10.88.0.11"
    assert ask(app_host, f"http://{other}:8081/healthz")[0][0] == 403


def test_the_app_host_serves_its_app_on_its_private_address(app_host):
    own = "10.88.0.11" if app_host.backend.get_hostname().endswith("app1") else "10.88.0.12"
    assert app_host.socket(f"tcp://{own}:8081").is_listening
