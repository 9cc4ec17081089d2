"""The workers scenario, checked on each host: a job queued through one host's nginx is
done by a worker and read back through the other's; Celery beat and the one-host timer
run on the scheduler host only; a timer's job runs; the worker units are sandboxed as
the web unit is; Redis takes the apps' users only, from the app hosts only; and a deploy
while a job runs lets it finish on the old release, the next job running on the new."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

W1, W2 = "flaskstack-molecule-workers-w1", "flaskstack-molecule-workers-w2"
ADDRESS = {W1: "10.89.0.11", W2: "10.89.0.12"}
ROOT = Path(__file__).resolve().parents[3]

# From inside a host: one request to a host's nginx (Host: localhost), its status and body.
ASK = """
import json, sys, urllib.request, urllib.error
data = sys.argv[3].encode() if sys.argv[3] else None
request = urllib.request.Request(sys.argv[1] + sys.argv[2], data=data, method="POST" if data else "GET",
                                 headers={"Host": "localhost", "Content-Type": "application/json"})
try:
    r = urllib.request.urlopen(request, timeout=10)
except urllib.error.HTTPError as e:
    r = e
print(json.dumps([r.status, r.read().decode()]))
"""


def ask(host, address: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = json.dumps(body) if body is not None else ""
    out = host.check_output(
        f"python3 -c {shlex.quote(ASK)} http://{address} {shlex.quote(path)} {shlex.quote(data)}"
    )
    status, text = json.loads(out)
    return status, json.loads(text) if text.startswith("{") else {"text": text}


def wait_done(host, address: str, job: str, seconds: float) -> dict:
    deadline = time.monotonic() + seconds
    while True:
        status, body = ask(host, address, f"/jobs/{job}")
        assert status == 200, body
        if body["state"] in ("SUCCESS", "FAILURE") or time.monotonic() > deadline:
            return body
        time.sleep(1)


# Every Celery worker of the scenario: two on each host (count: 2).
WORKERS = {f"worker{n}@{host}" for n in (1, 2) for host in (W1, W2)}
# A command as the app runs one (its user, environment and release).
AS_APP = "flaskstack-release run hello --"
CELERY = f"{AS_APP} celery -A hello.make_celery"


def workers_answer(host, seconds: float) -> None:
    """Wait until every worker of both hosts answers a ping through the broker (the app's own
    Celery, run as the app): after Redis restarted, each is connected again before a test
    queues a job. (A ping travels by Redis' pub/sub and its reply by a list: not quite the
    connection a worker takes jobs on.)"""
    deadline = time.monotonic() + seconds
    while True:
        result = host.run(f"{CELERY} inspect ping --timeout 3 --json")
        answered = set()
        for line in result.stdout.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    answered = set(json.loads(line))
        if answered >= WORKERS:
            return
        assert time.monotonic() < deadline, (
            f"only {sorted(answered)} of {sorted(WORKERS)} answer: {result.stderr[-1000:]}"
        )
        time.sleep(2)


def job_evidence(w1, w2, since: float) -> str:
    """Where a job that did not finish may be: the broker's queue and its unacknowledged
    messages (kombu's), what the workers run and hold, and their logs since it was queued."""
    count = (
        "import os, redis; r = redis.Redis.from_url(os.environ['REDIS_URL']); "
        "print('queued', r.llen('celery'), 'unacked', r.hlen('unacked'))"
    )
    said = [
        w1.run(f"{AS_APP} python -c {shlex.quote(count)}").stdout,
        w1.run(f"{CELERY} inspect active --timeout 3 --json").stdout,
        w1.run(f"{CELERY} inspect reserved --timeout 3 --json").stdout,
    ]
    for target in (w1, w2):
        said.append(
            target.run(
                f"journalctl --no-pager -o short-precise -u 'hello-worker@*' --since @{int(since)} | tail -40"
            ).stdout
        )
    return "\n".join(said)


def systemd_logged(target, text: str, *, since: float = 0, first: bool = False) -> float:
    """When systemd on a host last (first: first, since a time) logged a line with text."""
    pick = "head -1" if first else "tail -1"
    out = target.check_output(
        f"journalctl -o short-unix --no-pager -t systemd --since @{int(since)} | grep '{text}' | {pick}"
    )
    assert out, f"systemd logged no '{text}' on {target.backend.get_hostname()}"
    return float(out.split()[0])


def live_release(host) -> str:
    return json.loads(host.check_output("flaskstack-release status hello --json"))["live"]


@pytest.fixture
def name(host):
    return host.backend.get_hostname()


@pytest.fixture
def w2(host):
    if host.backend.get_hostname() != W2:
        pytest.skip("checked from w2 (the scheduler host)")
    return host


def test_a_job_queued_through_one_host_is_done_and_read_back_through_the_other(w2):
    status, queued = ask(w2, ADDRESS[W2], "/jobs", {"numbers": [20, 22]})
    assert status == 202, queued
    done = wait_done(w2, ADDRESS[W1], queued["id"], 30)
    assert done["state"] == "SUCCESS", done
    assert done["result"]["sum"] == 42
    assert done["result"]["host"] in (W1, W2)


def test_every_host_runs_its_workers_and_the_scheduler_host_alone_runs_beat(host, name):
    for unit in ("hello-worker@1.service", "hello-worker@2.service"):
        assert host.service(unit).is_running, unit
        assert host.service(unit).is_enabled, unit
    beat = host.file("/etc/systemd/system/hello-scheduler@.service")
    if name == W2:
        assert beat.exists and host.service("hello-scheduler@1.service").is_running
    else:
        assert not beat.exists
        assert "hello-scheduler" not in host.check_output(
            "systemctl list-units --all --plain --no-legend 'hello-*'"
        )


def test_the_periodic_job_runs_and_only_the_scheduler_host_sends_it(w2):
    deadline = time.monotonic() + 90
    while True:
        _, page = ask(w2, ADDRESS[W1], "/")
        text = page.get("text", "")
        if 'id="tick-host"' in text or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert f'<code id="tick-host">{W1}</code>' in text or f'<code id="tick-host">{W2}</code>' in text, text
    # Sent by beat on w2 (whichever worker ran it): beat's own log says it sent the task.
    sent = w2.check_output("journalctl --no-pager -o cat -u hello-scheduler@1.service")
    assert "Scheduler: Sending due task tick (hello.tasks.tick)" in sent


def test_timers_run_where_they_belong_and_a_job_runs_when_triggered(host, name):
    assert host.service("hello-vacuum.timer").is_running  # every_host: true
    purge = host.service("hello-purge.timer")
    if name != W2:
        assert not host.file("/etc/systemd/system/hello-purge.timer").exists
        return
    assert purge.is_running and purge.is_enabled
    # A timer's job, started as the timer would: one-shot, as the app, in its sandbox.
    host.run_expect([0], "systemctl start hello-purge.service")
    result = host.check_output("systemctl show -p Result --value hello-purge.service")
    assert result == "success"
    log = host.check_output("journalctl --no-pager -o cat -u hello-purge.service")
    assert "purged 0 visits older than 30 days" in log
    assert host.check_output("systemctl show -p User --value hello-purge.service") == "hello"


def test_worker_units_are_sandboxed_as_the_web_unit(host, exposure):
    web, _ = exposure("hello.service")
    worker, text = exposure("hello-worker@1.service")
    assert worker <= web + 0.05, text
    assert worker <= 2.0, text
    unit = host.file("/etc/systemd/system/hello-worker@.service").content_string
    assert "KillMode=mixed" in unit and "KillSignal=SIGTERM" in unit and "TimeoutStopSec=120" in unit


# RESP over a socket, from the host: the replies to commands separated by "--" (AUTH <user>
# <password> first), then PING's.
REDIS = """
import socket, sys
s = socket.create_connection((sys.argv[1], 6379), timeout=5)
commands = " ".join(sys.argv[2:]).split(" -- ") + ["PING"]
for words in (c.split() for c in commands):
    parts = b"".join(b"$%d\\r\\n%s\\r\\n" % (len(w.encode()), w.encode()) for w in words)
    s.sendall(b"*%d\\r\\n" % len(words) + parts)
reply = b""
while b"PONG" not in reply and b"NOAUTH" not in reply[-300:]:
    chunk = s.recv(4096)
    if not chunk:
        break
    reply += chunk
print(reply.decode().replace("\\r\\n", " "))
"""


def test_redis_takes_each_app_user_from_the_app_hosts_and_no_one_else(host, name):
    env = host.file("/etc/flaskstack/hello/app.env").content_string
    url = next(line for line in env.splitlines() if line.startswith("REDIS_URL="))
    password = url.split(":")[2].split("@")[0]
    assert url.endswith('@10.89.0.11:6379/0"')
    good = host.check_output(f"python3 -c {shlex.quote(REDIS)} 10.89.0.11 AUTH hello {shlex.quote(password)}")
    assert good.startswith("+OK +PONG"), good
    # RQ's workers ask for CLIENT LIST when they start (rq 1.15 and later): allowed. What could
    # change the server or every app's data is not.
    listed = host.check_output(
        f"python3 -c {shlex.quote(REDIS)} 10.89.0.11 AUTH hello {shlex.quote(password)} -- CLIENT LIST"
    )
    assert listed.startswith("+OK $") and " user=hello " in listed and listed.endswith("+PONG "), listed
    for command in ("FLUSHALL", "CONFIG GET maxmemory", "ACL LIST"):
        refused = host.check_output(
            f"python3 -c {shlex.quote(REDIS)} 10.89.0.11 AUTH hello {shlex.quote(password)} -- {command}"
        )
        assert refused.startswith("+OK -NOPERM"), (command, refused)
    wrong = host.check_output(f"python3 -c {shlex.quote(REDIS)} 10.89.0.11 AUTH default x")
    assert "WRONGPASS" in wrong or "NOAUTH" in wrong, wrong
    if name == W1:
        dropin = host.file("/etc/systemd/system/redis-server.service.d/flaskstack.conf").content_string
        assert "IPAddressDeny=any" in dropin
        assert "IPAddressAllow=localhost 10.89.0.11 10.89.0.12" in dropin
        users = host.file("/etc/redis/flaskstack-users.acl").content_string
        assert re.search(r"^user default off$", users, re.M)
        assert re.search(r"^user hello on #[0-9a-f]{64} ", users, re.M)  # a hash, not the password
        assert password not in users


def test_a_deploy_that_moves_the_scheduler_while_a_job_runs(w2, tmp_path):
    """The user's path: ansible-playbook with a new release of the app, and the scheduler
    moved from w2 to w1 (flaskstack_scheduler_host), while a worker runs a 60-second job.
    The job is queued as the release is prepared, so its worker is asked to stop while it
    runs: it is not killed, it finishes on the release it started on, and the next job runs
    on the new one. w2 stops Celery beat and its one-host timer before w1 starts them."""
    from testinfra import get_host

    w1 = get_host(f"ansible://{W1}", ansible_inventory=w2.backend.ansible_inventory)
    hosts = {W1: w1, W2: w2}
    workers_answer(w2, 90)
    before = live_release(w2)
    sys.path.insert(0, str(ROOT))
    from bench.appvariants import variant

    src = variant(tmp_path, f"during-a-job-{int(time.time())}")
    shown = subprocess.run(
        [ROOT / ".venv/bin/ansible-inventory", "-i", os.environ["MOLECULE_INVENTORY_FILE"], "--host", W2],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    apps = json.loads(shown.stdout)["flaskstack_apps"]
    apps[0]["src"] = str(src)
    (tmp_path / "vars.json").write_text(
        json.dumps({"flaskstack_apps": apps, "flaskstack_scheduler_host": W1})
    )
    # ansible-playbook's own banners, printed as each task starts, whatever the caller's
    # settings; bounded in time (the loop below reads until it exits).
    shown_as_default = {
        "ANSIBLE_STDOUT_CALLBACK": "default",
        "ANSIBLE_DISPLAY_OK_HOSTS": "1",
        "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "1",
    }
    deploy = subprocess.Popen(
        ["timeout", "900", ROOT / ".venv/bin/ansible-playbook", "playbooks/deploy.yml",
         "-i", os.environ["MOLECULE_INVENTORY_FILE"], "-e", f"@{tmp_path / 'vars.json'}"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"), **shown_as_default},
    )  # fmt: skip
    output, long_job, queued, problem = [], None, 0.0, ""
    for line in deploy.stdout:
        output.append(line)
        # The new release is prepared (its venv made), then each host's check and switch come:
        # queued now, a 60-second job has started before any worker is asked to stop (15-50 s
        # later), and runs on after it.
        if long_job is None and not problem and "TASK [app : release | Prepare each new release]" in line:
            queued = time.time()
            try:
                status, long_job = ask(w2, ADDRESS[W2], "/jobs", {"numbers": [1], "seconds": 60})
                problem = "" if status == 202 else f"the job was refused: {status} {long_job}"
            except Exception as exc:  # noqa: BLE001 - said after the deploy, with its output
                problem = f"the job could not be queued: {exc}"
    code = deploy.wait()
    assert code == 0 and not problem and long_job, f"{problem}\n" + "".join(output)[-4000:]
    after = live_release(w2)
    assert after != before
    done = wait_done(w2, ADDRESS[W2], long_job["id"], 90)
    assert done["state"] == "SUCCESS", f"{done}\n{job_evidence(w1, w2, queued)}"
    assert done["result"]["release"] == before  # it ran to its end on the old release
    # ... after its worker was asked to stop: the deploy waited for it, nothing killed it.
    # (Both workers of a host are asked in one call: the first line is theirs.)
    ran_on = hosts[done["result"]["host"]]
    stopping = systemd_logged(ran_on, "Stopping hello-worker@", since=queued, first=True)
    assert done["result"]["started"] < stopping < done["result"]["finished"], stopping
    status, next_job = ask(w2, ADDRESS[W2], "/jobs", {"numbers": [2, 2]})
    assert status == 202
    done = wait_done(w2, ADDRESS[W2], next_job["id"], 30)
    assert done["state"] == "SUCCESS" and done["result"]["release"] == after, done

    assert w1.service("hello-scheduler@1.service").is_running
    assert w1.service("hello-purge.timer").is_running
    assert not w2.file("/etc/systemd/system/hello-scheduler@.service").exists
    assert not w2.service("hello-scheduler@1.service").is_running
    assert not w2.file("/etc/systemd/system/hello-purge.timer").exists

    stopped = systemd_logged(w2, "Stopped hello-scheduler@1.service")
    assert stopped < systemd_logged(w1, "Started hello-scheduler@1.service")


# Last: Redis restarted twice under the app, and w2's packets dropped for a while. Workers
# and web processes of w2 reconnect over the next minute or so, and a job queued meanwhile
# was lost once (no worker ever received it; the queue and kombu's unacked messages were
# empty): the deploy test above runs before it, on connections nothing disturbed.
def test_a_host_that_is_no_app_host_cannot_reach_redis(host, name):
    """systemd's address filter, not only the password: w2 taken off Redis' allow list (as a
    host that is not an app host) gets no connection at all; put back, it connects again."""
    if name != W2:
        pytest.skip("checked from w2, against w1's Redis")
    from testinfra import get_host

    w1 = get_host(f"ansible://{W1}", ansible_inventory=host.backend.ansible_inventory)
    dropin = "/etc/systemd/system/redis-server.service.d/flaskstack.conf"
    original = w1.file(dropin).content_string
    probe = f"python3 -c {shlex.quote(REDIS)} 10.89.0.11 AUTH default x"
    try:
        w1.run_expect(
            [0],
            f"sed -i 's/ 10.89.0.12//' {dropin} && systemctl daemon-reload && systemctl restart redis-server",
        )
        refused = host.run(probe)
        assert refused.rc != 0 and ("timed out" in refused.stderr or "refused" in refused.stderr), refused
    finally:
        w1.run_expect([0], f"printf '%s' {shlex.quote(original)} > {dropin}")
        w1.run_expect([0], "systemctl daemon-reload && systemctl restart redis-server")
    assert "WRONGPASS" in host.check_output(probe)
    # Redis restarted twice under the app: the web's and the workers' connections come back
    # (the web's first publish may wait for its reconnection), and jobs flow again.
    deadline = time.monotonic() + 90
    while True:
        try:
            status, queued = ask(host, ADDRESS[W2], "/jobs", {"numbers": [5, 5]})
            if status == 202 and wait_done(host, ADDRESS[W1], queued["id"], 30)["state"] == "SUCCESS":
                break
        except AssertionError:
            pass
        assert time.monotonic() < deadline, "jobs did not flow again after Redis restarted"
        time.sleep(2)
    # And every worker of both hosts is back on the broker, w2's (whose packets were dropped)
    # too.
    workers_answer(host, 90)
