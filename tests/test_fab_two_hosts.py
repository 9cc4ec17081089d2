"""`fab deploy` to two hosts at once: the demo target and a second container like it.

The second host is made by the demo's own playbook (playbooks/local_target.yml)
with another name and ports (SSH 127.0.0.1:2223, HTTP 127.0.0.1:8081), both are
provisioned by `ansible-playbook site.yml` from one inventory, and then `fab
deploy` and `fab rollback` act on both in parallel: same release id on both,
each serving it through its own nginx. The second container is removed at the end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml

from bench.appvariants import breaks_import, variant
from tests.targets import HOST_BASELINE_OFF, connection, run, start_target

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HOSTS = {"demo": (2222, 8080), "demo2": (2223, 8081)}

pytestmark = pytest.mark.target
# Release ids are content hashes: a label of this run's own makes every variant a new release,
# even on a demo target that earlier runs left releases on.
RUN = uuid.uuid4().hex[:8]


def health(http_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def inventory(demo_target, tmp_path_factory):
    start_target("flaskstack-demo2", *HOSTS["demo2"])
    folder = tmp_path_factory.mktemp("two-hosts")
    hosts = {name: connection(ssh_port) for name, (ssh_port, _) in HOSTS.items()}
    (folder / "group_vars").mkdir()
    (folder / "hosts.yml").write_text(yaml.safe_dump({"flaskstack": {"hosts": hosts}}))
    # The demo's own app settings, with its paths made absolute for this folder; without its
    # workers and broker: each host's own Redis would split the queues (the workers scenario
    # runs workers on two hosts with a shared Redis host).
    text = (ROOT / "inventory" / "local" / "group_vars" / "flaskstack.yml").read_text()
    group_vars = yaml.safe_load(text.replace("{{ inventory_dir }}/../..", str(ROOT)))
    group_vars["flaskstack_apps"] = [
        {k: v for k, v in app.items() if k not in ("broker", "broker_password", "workers", "timers")}
        for app in group_vars["flaskstack_apps"]
    ]
    # The baseline is the demo's own test (the demo keeps what make demo set): fab is this one's.
    group_vars.update(HOST_BASELINE_OFF)
    (folder / "group_vars" / "flaskstack.yml").write_text(yaml.safe_dump(group_vars))
    # The inventory's app on both (the demo may serve a newer variant an earlier test left).
    provision = run(
        str(BIN / "ansible-playbook"), "site.yml", "-i", str(folder), "-e", "app_allow_older=true"
    )
    assert provision.returncode == 0, provision.output[-3000:]
    yield str(folder)
    subprocess.run(["docker", "rm", "-f", "flaskstack-demo2"], capture_output=True, check=False)
    # The demo as `make demo` leaves it: its inventory's release, workers and timers.
    back = run(
        str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local", "-e", "app_allow_older=true"
    )
    assert back.returncode == 0, back.output[-3000:]


def test_fab_deploys_one_release_to_both_hosts_in_parallel(inventory, tmp_path):
    result = run(
        str(BIN / "fab"),
        "deploy",
        "-i",
        inventory,
        "--app",
        "hello",
        "--src",
        str(variant(tmp_path, f"both-{RUN}")),
    )
    assert result.returncode == 0, result.output
    released = re.search(r"== package: \S+  hello ([0-9a-f]{12})", result.stdout).group(1)
    for name, (_, http_port) in HOSTS.items():
        assert f"[{name}] hello: ACTIVATED {released}" in result.stdout
        assert health(http_port)["release"] == released
    # One phase for both: a single "activate" line, for the two hosts together.
    assert result.stdout.count("== activate:") == 1

    back = run(str(BIN / "fab"), "rollback", "-i", inventory)
    assert back.returncode == 0, back.output
    releases = {health(http_port)["release"] for _, http_port in HOSTS.values()}
    assert len(releases) == 1 and released not in releases


def test_a_release_that_fails_on_every_host_leaves_both_serving(inventory, tmp_path):
    before = {name: health(port)["release"] for name, (_, port) in HOSTS.items()}
    src = variant(tmp_path, f"broken-both-{RUN}", breaks_import)
    result = run(str(BIN / "fab"), "deploy", "-i", inventory, "--app", "hello", "--src", str(src))
    assert result.returncode == 1
    for name in HOSTS:
        assert f"[{name}] FAILED" in result.stdout
    assert {name: health(port)["release"] for name, (_, port) in HOSTS.items()} == before


def test_one_unreachable_host_stops_the_deploy_before_any_host_switches(inventory, tmp_path):
    hosts_file = Path(inventory) / "hosts.yml"
    hosts = yaml.safe_load(hosts_file.read_text())
    broken = Path(inventory).parent / "one-gone"
    (broken / "group_vars").mkdir(parents=True)
    (broken / "group_vars" / "flaskstack.yml").write_text(
        (Path(inventory) / "group_vars" / "flaskstack.yml").read_text()
    )
    hosts["flaskstack"]["hosts"]["demo2"]["ansible_port"] = 2299
    (broken / "hosts.yml").write_text(yaml.safe_dump(hosts))
    before = health(HOSTS["demo"][1])["release"]
    result = run(
        str(BIN / "fab"),
        "deploy",
        "-i",
        str(broken),
        "--app",
        "hello",
        "--src",
        str(variant(tmp_path, f"x-{RUN}")),
    )
    assert result.returncode == 1
    assert "demo2 (127.0.0.1:2299) is unreachable" in result.output
    assert "== package" not in result.output
    assert health(HOSTS["demo"][1])["release"] == before
