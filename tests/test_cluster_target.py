"""The cluster target (`make cluster`): a load balancer, three app hosts and a database
host, each a systemd container with an address of its own on the project's network,
provisioned by `ansible-playbook site.yml -i inventory/cluster` over SSH. Checked as a
user would: the load balancer's HTTPS on localhost:8493 (127.0.0.1) answers from every
app host in turn, an app host answers the load balancer only, an app host stopped and
started under load costs no request, a second run changes nothing, rolling deploys by
fab and by ansible-playbook (good, failed, killed) cost no request, a batch of every
app host switches them together (and a release all of them refuse, or one host out of
reach, changes none), and the app hosts share one PostgreSQL database (TLS, pg_hba,
nightly dumps). Removed at the end.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from bench.appvariants import breaks_import, breaks_on_host, variant
from bench.traffic import Load
from tests.targets import EVERY_TASK, on_target, run

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
HTTPS, HTTP = 8493, 8090
HTTPS2 = 8494  # the second load balancer's
APP_HOSTS = ("app1", "app2", "app3")
LBS = {"lb": 2240, "lb2": 2245}  # each load balancer's SSH port
CONTAINERS = (*(f"flaskstack-{name}" for name in (*LBS, *APP_HOSTS)), "flaskstack-db")
INVENTORY = "inventory/cluster"
# Release ids are content hashes: a label of this run's own makes every variant a new release.
RUN = uuid.uuid4().hex[:8]

# A target test, run on its own (make test-cluster) beside the demo's (make test-target).
pytestmark = [pytest.mark.target, pytest.mark.cluster]


def get(path: str = "/healthz", port: int = HTTPS) -> tuple[int, dict, bytes]:
    """GET through the load balancer (Host: localhost), its certificate not checked."""
    if port in (HTTPS, HTTPS2):
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


def releases_seen(n: int = 30) -> dict[str, str]:
    """Which release each app host serves, as seen through the load balancer."""
    seen = {}
    for _ in range(n):
        body = json.loads(get()[2])
        seen[body["host"]] = body["release"]
    return seen


def serving() -> dict[str, str]:
    """Which release each app host has live, asked of each host (in the pool or not)."""
    found = {}
    for number, name in enumerate(APP_HOSTS, 1):
        info = on_target("flaskstack-release info", port=2240 + number).stdout
        found[name] = json.loads(info)["apps"]["hello"]["live"]
    return found


def fab(*args: str) -> subprocess.CompletedProcess:
    return run(str(BIN / "fab"), *args)


def released(output: str) -> str:
    return re.search(r"== package: \S+  hello ([0-9a-f]{12})", output).group(1)


def pool_status(lb: str = "lb") -> dict:
    return json.loads(on_target("flaskstack-pool status --json", port=LBS[lb]).stdout)["hello"]


def in_every_pool() -> bool:
    """Every app host in the app's pool on both load balancers."""
    return all(s["in_pool"] for lb in LBS for s in pool_status(lb).values())


def remove_cluster() -> None:
    subprocess.run(["docker", "rm", "-f", *CONTAINERS], capture_output=True, check=False)
    subprocess.run(["docker", "network", "rm", "flaskstack-cluster"], capture_output=True, check=False)


@pytest.fixture(scope="module")
def cluster():
    """`make cluster` on fresh hosts (whatever an earlier run left), removed at the end."""
    remove_cluster()
    made = run("make", "cluster")
    assert made.returncode == 0, made.output[-4000:]
    yield made.output
    remove_cluster()


def test_make_cluster_prints_the_load_balancers_url(cluster):
    assert "flaskstack cluster: https://localhost:8493" in cluster
    assert "GET /healthz -> 200" in cluster


def test_the_load_balancer_spreads_requests_over_every_app_host(cluster):
    assert hosts_answering() == set(APP_HOSTS)
    # The second load balancer too (its own HTTPS port here; the same upstream).
    assert {json.loads(get(port=HTTPS2)[2])["host"] for _ in range(30)} == set(APP_HOSTS)
    status, headers, _ = get("/", port=HTTP)
    assert (status, headers["Location"]) == (301, "https://localhost:8493/")
    status, _, page = get("/")
    assert status == 200 and re.search(rb'served by <code id="host">app[123]</code>', page)
    assert get("/static/style.css")[0] == 200


def test_an_app_host_answers_the_load_balancer_only(cluster):
    """Checked on the connecting address, whatever X-Forwarded-For says: app1's firewall lets
    the load balancer in and drops app2's connection; behind it nginx's allow list answers
    403 to anyone else (app1 itself, over its private address: loopback to the firewall)."""
    ask = (
        "python3 -c 'import sys, urllib.request, urllib.error\n"
        'r = urllib.request.Request("http://10.87.0.11:8081/healthz",\n'
        '    headers={"Host": "localhost", "X-Forwarded-For": "203.0.113.7"})\n'
        "try: print(urllib.request.urlopen(r, timeout=10).status)\n"
        "except urllib.error.HTTPError as e: print(e.code)\n"
        "except OSError as e: print(e)'"
    )
    answers = {
        name: subprocess.run(["docker", "exec", name, "sh", "-c", ask], capture_output=True, text=True)
        for name in ("flaskstack-lb", "flaskstack-lb2", "flaskstack-app2", "flaskstack-app1")
    }
    said = {name: result.stdout.strip() for name, result in answers.items()}
    assert said["flaskstack-lb"] == said["flaskstack-lb2"] == "200", said
    assert "timed out" in said["flaskstack-app2"], said
    assert said["flaskstack-app1"] == "403", said


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


def test_check_mode_on_the_provisioned_cluster_passes(cluster):
    """One host of each kind (the app hosts share every setting but their addresses; the
    second run below covers all six)."""
    check = run(
        str(BIN / "ansible-playbook"), "site.yml", "-i", INVENTORY, "--check", "--diff",
        "--limit", "lb,app1,db",
    )  # fmt: skip
    assert check.returncode == 0, check.output[-3000:]
    for host in ("lb", "app1", "db"):
        assert re.search(rf"{host}\s*:\s*ok=\d+\s+changed=0", check.output), check.output[-3000:]


def test_a_second_run_changes_nothing(cluster):
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/cluster", *EVERY_TASK)
    assert again.returncode == 0, again.output[-3000:]
    for host in (*LBS, *APP_HOSTS, "db"):
        assert re.search(rf"{host}\s*:\s*ok=\d+\s+changed=0", again.output), again.output[-3000:]
    for port in LBS.values():  # a load balancer runs no app
        assert on_target("test ! -e /srv/hello", port=port, check=False).returncode == 0


def test_the_next_run_skips_each_host_as_it_was_left_and_only_those(cluster, tmp_path):
    """After a complete run, the next finds each of the six hosts as it left them and skips
    them all, in one message (every host's digest is made at once, on the control node); a
    host changed by hand since then (app2) gets every task, and the other five are skipped.
    Then new code alone: every host skips the provision play (the load balancers and the
    database host too, in no deploy play, recorded again) and the app hosts switch to it."""
    said = re.compile(r"(\w+): '(Nothing to do|Every task runs|Provisioning skipped): ([^']*(?:''[^']*)*)'")

    def verdicts(output: str) -> dict[str, str]:
        return {host: verdict for host, verdict, _ in said.findall(" ".join(output.split()))}

    hosts = (*LBS, *APP_HOSTS, "db")
    nothing = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/cluster")
    assert nothing.returncode == 0, nothing.output[-3000:]
    assert verdicts(nothing.output) == dict.fromkeys(hosts, "Nothing to do"), nothing.output[-3000:]
    assert "facts | Read the host's facts" not in nothing.output
    on_target("touch /etc/flaskstack-test-by-hand", port=2242)  # app2
    try:
        again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/cluster")
        assert again.returncode == 0, again.output[-3000:]
        assert verdicts(again.output) == {
            **dict.fromkeys(hosts, "Nothing to do"),
            "app2": "Every task runs",
        }, again.output[-3000:]
        flat = " ".join(again.output.split())
        assert "/etc/flaskstack-test-by-hand is new" in flat, again.output[-3000:]
        for host in hosts:
            assert re.search(rf"{host}\s*:\s*ok=\d+\s+changed=0", again.output), again.output[-3000:]
        before = serving()
        new_code = cluster_vars(tmp_path, variant(tmp_path, f"code-only-{RUN}"))
        code = run(str(BIN / "ansible-playbook"), "site.yml", "-i", INVENTORY, "-e", f"@{new_code}")
        assert code.returncode == 0, code.output[-3000:]
        assert verdicts(code.output) == dict.fromkeys(hosts, "Provisioning skipped"), code.output[-3000:]
        assert "TASK [nginx :" not in code.output and in_every_pool()
        now = serving()
        assert len(set(now.values())) == 1 and not set(now.values()) & set(before.values()), (before, now)
        for host in ("lb", "lb2", "db"):
            assert re.search(rf"{host}\s*:\s*ok=\d+\s+changed=0", code.output), code.output[-3000:]
        # Recorded: the load balancers and the database host are skipped whole next time.
        nothing = run(str(BIN / "ansible-playbook"), "site.yml", "-i", INVENTORY, "-e", f"@{new_code}")
        assert verdicts(nothing.output) == dict.fromkeys(hosts, "Nothing to do"), nothing.output[-3000:]
    finally:
        on_target("rm -f /etc/flaskstack-test-by-hand", port=2242)


def test_fab_status_shows_each_app_host_in_the_pool(cluster):
    result = fab("status", "-i", INVENTORY)
    assert result.returncode == 0, result.output
    for name in APP_HOSTS:
        assert f"[{name}] pool     lb: in" in result.stdout and f"[{name}] pool     lb2: in" in result.stdout
    # Each load balancer's own account of its pool agrees: its one app, every app host in.
    for port in LBS.values():
        pool = json.loads(on_target("flaskstack-pool status --json", port=port).stdout)
        assert pool == {"hello": {name: {"in_pool": True} for name in APP_HOSTS}}


def test_a_rolling_fab_deploy_under_load_costs_no_request(cluster, tmp_path):
    """One host at a time (the default behind a load balancer): each leaves the pool, its
    requests finish, it switches, answers through the load balancer's path, and comes back."""
    before = serving()
    load = Load(clients=4, rate=10, path="/healthz", port=HTTPS, tls=True).start()
    result = fab("deploy", "-i", INVENTORY, "--app", "hello", "--src", str(variant(tmp_path, f"roll-{RUN}")))
    load.stop()
    assert result.returncode == 0, result.output
    new = released(result.stdout)
    assert serving() == dict.fromkeys(APP_HOSTS, new) != before
    assert releases_seen() == dict.fromkeys(APP_HOSTS, new)
    out = result.stdout
    # In order, one host per batch, each out of the pool and back.
    batches = [out.index(f"== batch {n}/3 ({name})") for n, name in enumerate(APP_HOSTS, 1)]
    assert batches == sorted(batches), out
    for name in APP_HOSTS:
        for lb in LBS:
            assert (
                f"[{lb}] {name}: out of the pool of hello" in out
                and f"[{lb}] {name}: in the pool of hello" in out
            )
    assert out.count("drained in") == 3 * len(LBS)
    # Out of the pool, the preloaded server's start was each host's check (one import).
    assert out.count("by the restart: out of every pool") == 3, out
    assert in_every_pool()
    assert load.sent > 50 and load.failures == [], load.failures


def test_a_batch_that_fails_stops_the_rollout_and_goes_back(cluster, tmp_path):
    """A release app2 refuses: app1 (batch 1) keeps it, app2 goes back (out of the pool, its
    preloaded server's start is the check, and its first answer, 503, sends it back before
    it is in the pool again), app3 is never touched; every host is in the pool again.
    With --rollback-all, app1 goes back too."""
    before = serving()
    src = variant(tmp_path, f"no-app2-{RUN}", breaks_on_host("app2"))
    load = Load(clients=4, rate=10, path="/healthz", port=HTTPS, tls=True).start()
    result = fab("deploy", "-i", INVENTORY, "--app", "hello", "--src", str(src))
    load.stop()
    assert result.returncode == 1, result.output
    new = released(result.stdout)
    assert (
        "in batch 2/3 (app2)" in result.output
        and "the rollout stopped, that batch was sent back" in result.output
    )
    assert "app1 keep the new release" in result.output
    assert "its first answer, which must be 2xx" in result.stdout
    assert serving() == {"app1": new, "app2": before["app2"], "app3": before["app3"]}
    assert "== batch 3/3" not in result.stdout
    assert f"  app1: hello {new}" in result.stdout and f"  app3: hello {before['app3']}" in result.stdout
    assert in_every_pool()
    assert load.failures == [], load.failures

    # Another such release, --rollback-all: app1 switches to it, then goes back to what it had.
    src = variant(tmp_path, f"no-app2-again-{RUN}", breaks_on_host("app2"))
    again = fab("deploy", "-i", INVENTORY, "--app", "hello", "--src", str(src), "--rollback-all")
    assert again.returncode == 1, again.output
    assert f"[app1] hello: ACTIVATED {released(again.stdout)}" in again.stdout
    assert "every host that switched was sent back" in again.output
    assert serving() == {"app1": new, "app2": before["app2"], "app3": before["app3"]}
    assert in_every_pool()


def test_a_batch_that_is_no_count_is_refused_before_anything(cluster):
    result = fab("deploy", "-i", INVENTORY, "--batch", "0")
    assert result.returncode == 2
    assert 'fab: --batch is "0": it must be a number of hosts' in result.output
    assert "== connect" not in result.output


def cluster_vars(tmp_path, src: Path) -> Path:
    """The cluster's group_vars with the app's src replaced, as an -e @file."""
    settings = yaml.safe_load((ROOT / INVENTORY / "group_vars" / "all.yml").read_text())
    settings["flaskstack_apps"][0]["src"] = str(src)
    path = tmp_path / "apps.yml"
    path.write_text(yaml.safe_dump({"flaskstack_apps": settings["flaskstack_apps"]}))
    return path


def test_a_rolling_ansible_deploy_under_load_costs_no_request(cluster, tmp_path):
    """ansible-playbook switches one host at a time too (the deploy play's serial), through
    the same steps: out of the pool, activate, health, back in once it answers there."""
    extra = cluster_vars(tmp_path, variant(tmp_path, f"ansible-roll-{RUN}"))
    load = Load(clients=4, rate=10, path="/healthz", port=HTTPS, tls=True).start()
    result = run(str(BIN / "ansible-playbook"), "playbooks/deploy.yml", "-i", INVENTORY, "-e", f"@{extra}")
    load.stop()
    assert result.returncode == 0, result.output[-4000:]
    assert result.output.count("PLAY [Deploy | Put each app's release live, batch by batch]") == 3
    live = serving()
    assert len(set(live.values())) == 1 and releases_seen() == live
    assert in_every_pool()
    assert load.sent > 50 and load.failures == [], load.failures


def test_a_failed_ansible_batch_stops_the_rollout_and_says_what_each_host_serves(cluster, tmp_path):
    before = serving()
    extra = cluster_vars(tmp_path, variant(tmp_path, f"ansible-no-app2-{RUN}", breaks_on_host("app2")))
    result = run(str(BIN / "ansible-playbook"), "playbooks/deploy.yml", "-i", INVENTORY, "-e", f"@{extra}")
    assert result.returncode == 2, result.output[-4000:]
    now = serving()
    assert now["app2"] == before["app2"] and now["app3"] == before["app3"] and now["app1"] != before["app1"]
    said = " ".join(result.output.split())
    assert "Deploy stopped: app2 failed (see above); its batch was sent back, earlier batches (app1)" in said
    # The deploy play took app2 out of the pool: its first answer after the restart decided.
    assert "its first answer, which must be 2xx" in said
    assert f"app1: hello {now['app1']}" in result.output and f"app3: hello {before['app3']}" in result.output
    assert in_every_pool()
    # Another such release with app_rollback_all: app1 switches to it, then goes back.
    extra = cluster_vars(tmp_path, variant(tmp_path, f"ansible-no-app2-all-{RUN}", breaks_on_host("app2")))
    result = run(
        str(BIN / "ansible-playbook"), "playbooks/deploy.yml", "-i", INVENTORY, "-e", f"@{extra}",
        "-e", "app_rollback_all=true",
    )  # fmt: skip
    assert result.returncode == 2, result.output[-4000:]
    assert "every host that switched was sent back" in result.output
    assert serving() == now
    assert in_every_pool()
    # Every lock was released: the next deploy goes ahead.
    assert (
        fab(
            "deploy", "-i", INVENTORY, "--app", "hello", "--src", str(variant(tmp_path, f"after-{RUN}"))
        ).returncode
        == 0
    )


def test_a_rolling_deploy_whose_client_is_killed_is_finished_by_the_next(cluster, tmp_path):
    """fab killed while app2 is out of the pool: app2 stays out (the others serve), the lock
    says who held it; `fab unlock --force`, then the same deploy again: every host on the
    release and in the pool. No request fails meanwhile."""
    src = str(variant(tmp_path, f"killed-{RUN}"))
    load = Load(clients=4, rate=10, path="/healthz", port=HTTPS, tls=True).start()
    deploy = subprocess.Popen(
        [str(BIN / "fab"), "deploy", "-i", INVENTORY, "--app", "hello", "--src", src],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    seen = []
    for line in deploy.stdout:
        seen.append(line)
        if line.startswith("[lb] app2: out of the pool of hello"):
            deploy.kill()
            break
    deploy.wait(timeout=60)
    assert any(line.startswith("[lb] app2: out of the pool") for line in seen), "".join(seen)
    assert pool_status()["app2"]["in_pool"] is False
    assert hosts_answering(12) <= {"app1", "app3"}
    assert fab("unlock", "-i", INVENTORY, "--force").returncode == 0
    again = fab("deploy", "-i", INVENTORY, "--app", "hello", "--src", src)
    load.stop()
    assert again.returncode == 0, again.output
    assert "[lb] app2: in the pool of hello" in again.stdout
    assert in_every_pool()
    assert len(set(serving().values())) == 1
    assert load.failures == [], load.failures


def test_a_batch_of_every_app_host_switches_them_in_one_phase(cluster, tmp_path):
    """--batch 3: one release to the three app hosts in parallel (a single activate phase, as
    every host of an inventory without load balancers does); the batch leaves the pool in
    one call (one reload and one drain of the load balancer's nginx, not one per host in
    turn), which keeps the last of them in. `fab rollback` brings every host back to what it
    served."""
    before = serving()
    result = fab(
        "deploy", "-i", INVENTORY, "--app", "hello", "--src", str(variant(tmp_path, f"all-{RUN}")),
        "--batch", "3",
    )  # fmt: skip
    assert result.returncode == 0, result.output
    new = released(result.stdout)
    assert result.stdout.count("== activate") == 1 and "== batch" not in result.stdout, result.stdout
    for name in APP_HOSTS:
        assert f"[{name}] hello: ACTIVATED {new}" in result.stdout
    assert "kept in the pool of hello: it is the last host there" in result.stdout
    # One drain on each load balancer, in one phase.
    assert result.stdout.count("drained in") == len(LBS) and result.stdout.count("== out of the pools") == 1
    # The host kept in the pool gets requests while it switches: its release went through the
    # check gate; the two out of it let their preloaded server's start be the check.
    kept = re.search(r"\[lb\] (app\d): kept in the pool of hello", result.stdout).group(1)
    assert f"[lb2] {kept}: kept in the pool of hello" in result.stdout, result.stdout
    for name in APP_HOSTS:
        gated = f"[{name}]   check    ok" in result.stdout and "(check and answer in one import)" in next(
            line for line in result.stdout.splitlines() if line.startswith(f"[{name}]   check ")
        )
        assert gated == (name == kept), result.stdout
    assert result.stdout.count("by the restart: out of every pool") == 2, result.stdout
    assert serving() == dict.fromkeys(APP_HOSTS, new)
    assert in_every_pool()
    back = fab("rollback", "-i", INVENTORY)
    assert back.returncode == 0, back.output
    assert serving() == before


def test_a_host_one_load_balancer_keeps_in_its_pool_runs_the_gates(cluster, tmp_path):
    """The load balancers' pools differ (app2 and app3 out of lb2's by hand, as a deploy killed
    on lb2's side could leave them): a deploy to app1 takes it out of lb's pool, but lb2 keeps
    it, its last host. app1 gets requests from lb2 while it switches, so its release goes
    through the check gate: a host counts as out only where every load balancer took it out."""
    lb2 = LBS["lb2"]
    try:
        on_target("flaskstack-pool out app2 app3 --app hello --why test --timeout 5", port=lb2)
        result = fab(
            "deploy", "-i", INVENTORY, "--app", "hello", "--src", str(variant(tmp_path, f"lb2-keeps-{RUN}")),
            "--limit", "app1",
        )  # fmt: skip
    finally:  # whatever happened above, lb2's pool whole again (its failure would hide the cause)
        on_target("flaskstack-pool in app2 app3 --app hello", port=lb2, check=False)
    assert result.returncode == 0, result.output
    assert "[lb] app1: out of the pool of hello" in result.stdout, result.stdout
    assert "[lb2] app1: kept in the pool of hello: it is the last host there" in result.stdout, result.stdout
    check = next(line for line in result.stdout.splitlines() if line.startswith("[app1]   check "))
    assert "(check and answer in one import)" in check and "by the restart" not in result.stdout, check
    assert serving()["app1"] == released(result.stdout)
    assert in_every_pool()


def test_a_release_every_host_of_a_batch_refuses_leaves_each_serving_what_it_did(cluster, tmp_path):
    """--batch 3 with a release that does not import: the host kept in the pool (the last
    one there) refuses it at its check gate, the two out of it fail the preloaded server's
    start (its import) and switch back, so every host serves what it did, and every one is
    in the pool."""
    before = serving()
    src = variant(tmp_path, f"broken-all-{RUN}", breaks_import)
    result = fab("deploy", "-i", INVENTORY, "--app", "hello", "--src", str(src), "--batch", "3")
    assert result.returncode == 1, result.output
    for name in APP_HOSTS:
        assert f"[{name}] FAILED" in result.stdout, result.stdout
    assert "ACTIVATED" not in result.stdout, result.stdout
    assert result.stdout.count("restart of hello.service failed") == 2, result.stdout
    assert result.stdout.count("does not build its app") == 1, result.stdout
    assert serving() == before
    assert in_every_pool()


def test_one_app_host_out_of_reach_stops_the_deploy_before_anything(cluster, tmp_path):
    """The cluster's inventory with app3's SSH port wrong: fab says which host it cannot
    reach, before it packages anything, and no host changes."""
    # Two levels under the project, as inventory/cluster: its paths are inventory_dir/../..
    folder = ROOT / ".demo" / f"cluster-one-gone-{RUN}"
    shutil.copytree(ROOT / INVENTORY, folder)
    try:
        hosts = yaml.safe_load((folder / "hosts.yml").read_text())
        hosts["cluster"]["children"]["flaskstack"]["hosts"]["app3"]["ansible_port"] = 2299
        (folder / "hosts.yml").write_text(yaml.safe_dump(hosts))
        before = serving()
        src = variant(tmp_path, f"one-gone-{RUN}")
        result = fab("deploy", "-i", str(folder), "--app", "hello", "--src", str(src), "--batch", "3")
    finally:
        shutil.rmtree(folder)
    assert result.returncode == 1, result.output
    assert "app3 (127.0.0.1:2299) is unreachable" in result.output, result.output
    assert "== package" not in result.output
    assert serving() == before


def test_every_app_host_counts_visits_in_the_one_database(cluster):
    """database: postgresql -> the app hosts share the database host's database: the page's
    visit count goes up by one per request, whichever host answers."""
    seen = []
    for _ in range(9):
        page = get("/")[2].decode()
        seen.append(
            (
                int(re.search(r'<strong id="visits">(\d+)</strong>', page).group(1)),
                re.search(r'<code id="host">(\w+)</code>', page).group(1),
            )
        )
    counts = [count for count, _ in seen]
    assert counts == list(range(counts[0], counts[0] + 9)), seen
    assert {host for _, host in seen} == set(APP_HOSTS)


def test_the_database_takes_the_app_hosts_only_and_over_tls(cluster):
    """pg_hba: hostssl from each app host's address and no other remote line (the load
    balancer is not let in); the app's connections are encrypted (pg_stat_ssl)."""
    url = on_target(
        "sed -n 's/^FLASK_SQLALCHEMY_DATABASE_URI=\"\\(.*\\)\"$/\\1/p' /etc/flaskstack/hello/app.env",
        port=2241,
    )
    url = url.stdout.strip()
    assert url.startswith("postgresql://hello:") and url.endswith("@10.87.0.20:5432/hello?sslmode=require")
    hba = on_target("cat /etc/postgresql/*/main/pg_hba.conf", port=2244).stdout
    rules = [line.split()[:5] for line in hba.splitlines() if line.startswith("hostssl")]
    assert rules == [["hostssl", "hello", "hello", f"10.87.0.{n}/32", "scram-sha-256"] for n in (11, 12, 13)]
    # No other line lets in a remote address (Debian's own are for localhost only).
    others = [
        line.split()
        for line in hba.splitlines()
        if line.startswith("host") and not line.startswith("hostssl")
    ]
    assert {rule[3] for rule in others} <= {"127.0.0.1/32", "::1/128"}, others
    ssl_rows = on_target(
        'runuser -u postgres -- psql -tA -c "SELECT s.ssl FROM pg_stat_ssl s '
        "JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'hello'\"",
        port=2244,
    ).stdout.split()
    assert ssl_rows and set(ssl_rows) == {"t"}, ssl_rows
    # In front of pg_hba, the database host's firewall: an app host connects, neither load
    # balancer gets a connection at all.
    connect = (
        "python3 -c 'import socket; "
        'socket.create_connection(("10.87.0.20", 5432), timeout=5); print("connected")\''
    )
    assert on_target(connect, port=2241).stdout.strip() == "connected"
    for port in LBS.values():
        from_lb = on_target(connect, port=port, check=False)
        assert from_lb.returncode != 0 and "timed out" in from_lb.stderr, from_lb


def test_the_migration_that_made_the_tables_was_preceded_by_a_dump(cluster):
    """database: postgresql without backup_command: pg_dump of the app's database, as the app,
    from the host that migrated (migrate_once: one host), before each migration."""
    listing = "ls /srv/hello/backups/*/backup_command.out 2>/dev/null || true"
    dumps = [
        (port, path) for port in (2241, 2242, 2243) for path in on_target(listing, port=port).stdout.split()
    ]
    assert dumps, "no pre-migration dump on any app host"
    port, path = dumps[0]
    magic = on_target(f"head -c 5 {path}", port=port).stdout
    assert magic == "PGDMP", magic  # pg_dump's custom format


def test_the_nightly_dump_runs_and_restores(cluster):
    """The dump timer is on; its service (started now, as the timer would) writes a dump
    that pg_restore reads back into a scratch database with the same visits."""
    assert on_target("systemctl is-enabled flaskstack-pg-dump.timer", port=2244).stdout.strip() == "enabled"
    on_target("systemctl start flaskstack-pg-dump.service", port=2244)
    dump = on_target(
        "ls -t /var/backups/flaskstack-postgresql/hello-*.dump | head -1", port=2244
    ).stdout.strip()
    assert dump
    as_postgres = "runuser -u postgres -- "
    on_target(f"{as_postgres} dropdb --if-exists scratch && {as_postgres} createdb scratch", port=2244)
    on_target(f"{as_postgres} pg_restore --no-owner -d scratch {dump}", port=2244)
    count = "psql -tA -c 'SELECT count(*) FROM visit' -d"
    restored = on_target(f"{as_postgres} {count} scratch", port=2244).stdout.strip()
    live = on_target(f"{as_postgres} {count} hello && {as_postgres} dropdb scratch", port=2244).stdout.strip()
    assert int(restored) > 0 and int(restored) <= int(live)
