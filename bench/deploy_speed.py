"""Speed: each way of changing a host, timed without load, against the goals of issue 14.

Run it with `make bench` (after `make demo`; the cluster rows after `make cluster`).
Against the demo target over SSH:

  ansible-playbook site.yml   nothing to do (one host, one app): the host skipped, as the
                              last complete run left it; and the same with every task run
  fab deploy, code only       a new release, same requirements and migrations (wheelhouse
                              and venv reused, migrate_when_changed skips the migration);
                              the sample app's web server, its Celery worker and beat
  fab deploy, same release    nothing to do
  fab rollback                back to the previous release
  fab deploy, new requirement the wheelhouse is rebuilt and uploaded, the venv installed
  ansible-playbook site.yml   a full run that puts the inventory's release back
  ansible-playbook site.yml   new code for the app and nothing else (its source in another
                              folder, given with -e): the provision play skipped, the
                              deploy plays run
  through nginx / direct      requests per second of GET /healthz through nginx, over those
                              of a twin gunicorn (same config, same workers, same release)
                              on a TCP port, both measured by wrk inside the target
                              (10 s, 16 connections each: nothing leaves 127.0.0.1)

on a twin of the demo target with APPS apps (container flaskstack-apps, SSH on 127.0.0.1:2264,
made by the demo's playbook and removed at the end; --apps 0 leaves it out):

  ansible-playbook site.yml   nothing to do with APPS apps on one host (after its cold run,
                              which leaves the record), and one run of every task
  fab deploy, code only       the sample app's web side alone (no workers: issue 14's goal
                              predates them), with its migrate command (app01) and an app
                              with none (the last)

and, when the cluster is up (two load balancers, three app hosts, a database host):

  ansible-playbook site.yml   nothing to do on its 6 hosts (issue 14's goal: <= 1.5x one host)
  fab deploy, code only       one app host (--limit app1), and all three at once (--batch 3)

Each timed command runs RUNS times (new code each time where it must differ); the
median and the range are printed, with the goal and whether the median meets it. The
script exits 1 if a goal is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from appvariants import adds_requirement, variant

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # one way to make a target: the tests'
from tests.targets import connection, twin_target  # noqa: E402

BIN = ROOT / ".venv" / "bin"
FAB, PLAYBOOK = str(BIN / "fab"), str(BIN / "ansible-playbook")
# site.yml puts the inventory's release back after newer fab deploys: on purpose, so asked for.
BACK = ["-e", "app_allow_older=true"]
# Every task, as without flaskstack_skip_unchanged (the cost it saves).
EVERY_TASK = ["-e", "flaskstack_skip_unchanged=false"]
DEMO = "flaskstack-demo"
# The demo's apps as its inventory gives them (a code-only site.yml run gives them with -e,
# the first app's source in another folder: Ansible templates them as it does the inventory's).
APPS = yaml.safe_load((ROOT / "inventory/local/group_vars/flaskstack.yml").read_text())["flaskstack_apps"]
# The twin gunicorn's port inside the demo target (nothing is published on it).
TWIN_PORT = 8099
# The twin with many apps on one host.
MANY, MANY_SSH, MANY_HTTP = "flaskstack-apps", 2264, 8264
# A row of the table: what, seconds of each run, goal in seconds or None.
Row = tuple[str, list[float], float | None]


# Python as a user's shell runs it: it keeps the bytecode it compiles (__pycache__). This
# machine's environment sets PYTHONDONTWRITEBYTECODE=1, which made every timed fab and
# ansible-playbook compile the project's own modules again (fab's imports: 0.36 s -> 0.30 s).
USER_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(argv: list[str], timeout: float = 900, says: str = "") -> float:
    """Seconds a command took; it must succeed, and say `says` if given (what the row times)."""
    start = time.monotonic()
    result = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False, env=USER_ENV
    )
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(argv)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    if says not in " ".join(result.stdout.split()):
        sys.exit(f"{' '.join(argv)} did not say {says!r}:\n{result.stdout[-3000:]}")
    return took


def in_demo(command: str, check: bool = True) -> subprocess.CompletedProcess:
    argv = ["docker", "exec", DEMO, "sh", "-ec", command]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=check)


def wrk(url: str, host: str = "localhost") -> float:
    """Requests per second of GET url, from inside the demo target (wrk, 2 threads, 16
    connections, 10 s)."""
    out = in_demo(f"wrk -t2 -c16 -d10s -H {shlex.quote('Host: ' + host)} {shlex.quote(url)}").stdout
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if errors:
        sys.exit(f"wrk {url}: {errors.group(0)}\n{out}")
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))


def nginx_over_direct(runs: int) -> tuple[list[float], list[float]]:
    """Requests per second through nginx and straight to a twin gunicorn, alternated."""
    in_demo("command -v wrk >/dev/null || (apt-get update -qq && apt-get install -y -qq wrk >/dev/null)")
    # The twin: the live release's gunicorn with the service's own config file and workers,
    # as the app user with its environment (flaskstack-release run), bound to a TCP port
    # instead of the systemd socket. Stopped at the end.
    unit = "flaskstack-bench-twin"
    in_demo(
        f"systemctl stop {unit} 2>/dev/null || true; systemd-run --unit {unit} --collect "
        "/usr/local/sbin/flaskstack-release run hello -- gunicorn "
        f"--config /etc/flaskstack/hello/gunicorn.conf.py --bind 127.0.0.1:{TWIN_PORT} 'hello:create_app()'"
    )
    try:
        deadline = time.monotonic() + 60
        while in_demo(f"python3 -c \"import urllib.request as u; u.urlopen('http://127.0.0.1:{TWIN_PORT}/healthz')\"",
                      check=False).returncode:  # fmt: skip
            if time.monotonic() > deadline:
                sys.exit(
                    "the twin gunicorn did not answer in 60 s:\n"
                    + in_demo(f"journalctl -u {unit} -n 20").stdout
                )
            time.sleep(1)
        nginx, direct = [], []
        for _ in range(runs):
            nginx.append(wrk("http://127.0.0.1/healthz"))
            direct.append(wrk(f"http://127.0.0.1:{TWIN_PORT}/healthz"))
        return nginx, direct
    finally:
        in_demo(f"systemctl stop {unit}", check=False)


def without_migrate(count: int) -> str | None:
    """The twin's app with no migrate command: the last, when there are two or more."""
    return f"app{count:02d}" if count > 1 else None


def many_apps_inventory(work: Path, count: int) -> Path:
    """An inventory for the twin (its connection as the tests write one) with `count` copies
    of the sample app's web side as the demo deploys it (preload, migrations when they
    change, its data in SQLite), each on its own Host name; two app server workers each, to
    fit the machine. One (without_migrate) has no migrate command, its tables made once by
    its init_command: the code-only deploy of an app without one. Each app's
    secret key is made here and lives in the temporary folder only."""
    inventory = work / "apps-inventory"
    (inventory / "group_vars").mkdir(parents=True)
    names = [f"app{n:02d}" for n in range(1, count + 1)]
    apps = [
        {
            "name": name,
            "src": str(ROOT / "app"),
            "entry_point": "hello:create_app()",
            "server_names": [f"{name}.test"],
            "static_dir": "hello/static",
            "preload": True,
            **(
                {"migrate_command": "flask --app hello db upgrade", "migrate_when_changed": ["migrations"]}
                if name != without_migrate(count)
                else {"init_command": "flask --app hello db upgrade"}
            ),
            "env": {"FLASK_INSTANCE_PATH": f"/srv/{name}/shared/data"},
            "secret_env": {"FLASK_SECRET_KEY": secrets.token_urlsafe(36)},
        }
        for name in names
    ]
    # JSON is YAML: the files are written as JSON, read by Ansible's YAML inventory plugin.
    hosts = {"flaskstack": {"hosts": {"many": connection(MANY_SSH)}}}
    (inventory / "hosts.yml").write_text(json.dumps(hosts, indent=1))
    group = {"flaskstack_apps": apps, "appserver_workers": 2}
    (inventory / "group_vars" / "flaskstack.yml").write_text(json.dumps(group, indent=1))
    inventory.chmod(0o700)
    return inventory


def many_apps(work: Path, count: int, runs: int, one_app: float, stamp: str) -> list[Row]:
    """No-change runs with `count` apps on one host, against 2x the one-app figure; then
    code-only deploys of one app's web side, with a migrate command and without."""
    with twin_target(MANY, MANY_SSH, MANY_HTTP):
        inventory = ["-i", str(many_apps_inventory(work, count))]
        cold = timed([PLAYBOOK, "site.yml", *inventory], timeout=3600)  # its first run
        # Every task (the setting itself is not an input: this run's record holds for the next).
        every = timed([PLAYBOOK, "site.yml", *inventory, *EVERY_TASK], timeout=1800)
        nothing = [timed([PLAYBOOK, "site.yml", *inventory]) for _ in range(runs)]
        rows: list[Row] = [
            (f"site.yml, nothing to do, {count} apps on one host", nothing, 2.0 * one_app),
            ("  the same, every task run (skip_unchanged off)", [every], None),
            (f"  its first run (bare twin, {count} apps)", [cold], None),
        ]
        deploys = [("app01", "migrate cmd", 3.0), (without_migrate(count), "none", 1.5)]
        for app, what, goal in deploys:
            if app:
                fab = [FAB, "deploy", *inventory, "--app", app, "--src"]
                times = [timed([*fab, str(variant(work, f"{app}-{stamp}-{n}"))]) for n in range(runs)]
                rows.append((f"fab deploy, code only, web alone, {what}", times, goal))
    return rows


def cluster_up() -> bool:
    names = subprocess.run(["docker", "ps", "--format", "{{.Names}}"], capture_output=True, text=True).stdout
    return {"flaskstack-lb", "flaskstack-lb2", "flaskstack-app1", "flaskstack-db"} <= set(names.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument(
        "--apps", type=int, default=10, help="apps on the many-apps twin (default 10; 0: no twin)"
    )
    args = parser.parse_args()
    stamp = time.strftime("%H%M%S")
    deploy = [FAB, "deploy", "--app", "hello", "--src"]
    rows: list[Row] = []
    timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK])  # start from the inventory's release
    # A complete run with the inventory's own inputs (the one above had -e): the record the
    # next runs find. Then as a user's next run goes (the host skipped), and every task run.
    every = [timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *EVERY_TASK]) for _ in range(args.runs)]
    nothing = [timed([PLAYBOOK, "site.yml", "-i", "inventory/local"]) for _ in range(args.runs)]
    rows.append(("ansible-playbook site.yml, nothing to do", nothing, 8.0))
    rows.append(("  the same, every task run (skip_unchanged off)", every, None))
    with tempfile.TemporaryDirectory(prefix="flaskstack-speed-") as tmp:
        work = Path(tmp)
        code = [timed([*deploy, str(variant(work, f"code-{stamp}-{n}"))]) for n in range(args.runs)]
        rows.append(("fab deploy, code only (web, worker, beat)", code, 3.0))
        last = str(work / f"code-{stamp}-{args.runs - 1}")
        rows.append(("fab deploy, same release", [timed([*deploy, last]) for _ in range(args.runs)], None))
        rows.append(("fab rollback", [timed([FAB, "rollback"]) for _ in range(args.runs)], None))
        # A requirement added: a new wheelhouse (pip download on this machine, upload, install).
        # `six` is small, pure Python and has no dependencies.
        new_requirement = variant(work, f"req-{stamp}", adds_requirement("six==1.17.0"))
        rows.append(("fab deploy, new requirement", [timed([*deploy, str(new_requirement)])], None))
        full = []
        for n in range(args.runs):
            full.append(timed([PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK]))
            if n < args.runs - 1:  # put a fab release live again, so the next run has a switch to make
                timed([*deploy, last])
        rows.append(("ansible-playbook site.yml, full deploy", full, None))

        def new_code(label: str) -> list[str]:
            """site.yml given the demo's apps, the first one's source a new copy (label)."""
            given = work / f"{label}.json"
            apps = [{**APPS[0], "src": str(variant(work, label))}, *APPS[1:]]
            given.write_text(json.dumps({"flaskstack_apps": apps}))
            return [PLAYBOOK, "site.yml", "-i", "inventory/local", "-e", f"@{given}"]

        # New code alone, after a complete run given the same but for the code: the first run
        # below runs every task (the run above was given -e app_allow_older), and records.
        timed(new_code(f"site-{stamp}-first"))
        skipped = "Provisioning skipped: this host is"
        code_site = [timed(new_code(f"site-{stamp}-{n}"), says=skipped) for n in range(args.runs)]
        rows.append(("ansible-playbook site.yml, code only", code_site, None))
        if args.apps:
            rows += many_apps(work, args.apps, args.runs, statistics.median(nothing), stamp)
        if cluster_up():
            cluster = ["-i", "inventory/cluster"]
            # From the inventory's release (a fab deploy may have put a newer one live).
            timed([PLAYBOOK, "site.yml", *cluster, *BACK])
            timed([PLAYBOOK, "site.yml", *cluster])  # a complete run with its own inputs: the record
            nothing6 = [timed([PLAYBOOK, "site.yml", *cluster]) for _ in range(args.runs)]
            rows.append(
                ("cluster: site.yml, nothing to do, 6 hosts", nothing6, 1.5 * statistics.median(nothing))
            )
            fab = [FAB, "deploy", *cluster, "--app", "hello", "--src"]
            one = [
                timed([*fab, str(variant(work, f"c1-{stamp}-{n}")), "--limit", "app1"])
                for n in range(args.runs)
            ]
            rows.append(("cluster: fab deploy, code only, 1 app host", one, None))
            three = [
                timed([*fab, str(variant(work, f"c3-{stamp}-{n}")), "--batch", "3"]) for n in range(args.runs)
            ]
            rows.append(("cluster: fab deploy, code only, 3 at once", three, 4.0))
            timed([PLAYBOOK, "site.yml", *cluster, *BACK])  # the cluster back on the inventory's release
    nginx, direct = nginx_over_direct(args.runs)

    print(f"flaskstack speed (demo target over SSH, no load; median of {args.runs} runs where it says)")
    print(f"{'what':<46} {'median':>8} {'min':>7} {'max':>7} {'runs':>5} {'goal':>9}  verdict")
    missed = 0
    for name, times, goal in rows:
        median, low, high = statistics.median(times), min(times), max(times)
        verdict = "" if goal is None else "ok" if median <= goal else "NO"
        missed += verdict == "NO"
        shown = "" if goal is None else f"<= {goal:.1f}s"
        print(f"{name:<46} {median:>7.2f}s {low:>6.2f}s {high:>6.2f}s {len(times):>5} {shown:>9}  {verdict}")
    ratio = statistics.median(nginx) / statistics.median(direct)
    verdict = "ok" if ratio >= 0.85 else "NO"
    missed += verdict == "NO"
    print(
        "\nGET /healthz, requests per second (wrk in the target, 16 connections, 10 s; "
        f"median of {args.runs}):"
        f"\n  through nginx     {statistics.median(nginx):8.1f}  ({', '.join(f'{r:.0f}' for r in nginx)})"
        f"\n  direct gunicorn   {statistics.median(direct):8.1f}  ({', '.join(f'{r:.0f}' for r in direct)})"
        f"\n  nginx / direct    {ratio:8.0%}  goal >= 85%: {verdict}"
    )
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
