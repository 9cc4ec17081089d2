"""Cluster benchmark: constant HTTPS load through the load balancer while hosts change.

Run it with `make bench` (which first runs `make cluster`): the load goes to the
cluster's first load balancer on localhost:8493 (127.0.0.1) only, bounded as the
zero-downtime benchmark's is (bench/traffic.py); a deploy takes hosts out of the second's
pool too, and (d) changes the first's only, the one the load goes through. Scenarios:

  (a1) fab deploy of a good release to one app host (--limit app1)
  (a)  fab deploy of a good release to the three, one at a time (the default)
  (b)  an app host stopped (docker stop), then started again
  (c)  fab deploy of a release that app2 refuses: the rollout stops in batch 2
  (d)  requests per second through the load balancer, three app hosts in its
       pool vs one (wrk, 10 s, 16 connections, GET /healthz)

Targets: 0 failed requests in (a1), (a), (b) and (c); after (c) app1 serves the new
release and app2, app3 the one they had, every host back in the pool; (b)'s app
host back in the pool once it answers. Every container of the cluster shares this
machine's CPUs, so (d) shows what the load balancer costs and how requests spread,
not what three machines would give. The script exits 1 if a target is missed.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from appvariants import breaks_on_host, variant
from traffic import MAX_SECONDS
from zero_downtime import report, scenario

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
INVENTORY = "inventory/cluster"
URL = "https://localhost:8493"
APP_HOSTS = ("app1", "app2", "app3")


def fleet() -> str:
    """Which release each app host has live, asked of each host: "app1=<id> app2=<id> ..."."""
    found = []
    for name in APP_HOSTS:
        info = subprocess.run(
            ["docker", "exec", f"flaskstack-{name}", "flaskstack-release", "info"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        found.append(f"{name}={json.loads(info.stdout)['apps']['hello']['live']}")
    return " ".join(found)


def pool(*argv: str) -> str:
    result = subprocess.run(
        ["docker", "exec", "flaskstack-lb", "flaskstack-pool", *argv],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    return result.stdout


def answered_by(host: str, tries: int = 6) -> bool:
    """Whether one of a few GETs through the load balancer is answered by host."""
    context = ssl._create_unverified_context()  # noqa: S323 - the cluster's self-signed certificate
    for _ in range(tries):
        try:
            with urllib.request.urlopen(f"{URL}/healthz", timeout=10, context=context) as response:  # noqa: S310 - https only
                if json.loads(response.read())["host"] == host:
                    return True
        except (OSError, ValueError):
            pass
    return False


def every_host_in_pool() -> bool:
    return all(s["in_pool"] for s in json.loads(pool("status", "--json"))["hello"].values())


def requests_per_second(seconds: int = 10, connections: int = 16) -> float:
    result = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", f"{URL}/healthz"],
        capture_output=True, text=True, check=True, timeout=seconds + 60,
    )  # fmt: skip
    return float(re.search(r"Requests/sec:\s+([0-9.]+)", result.stdout).group(1))


def main() -> int:
    load_args = {"clients": 4, "rate": 10.0, "path": "/healthz", "port": 8493, "tls": True}
    print(
        f"flaskstack cluster benchmark ({os.cpu_count()} CPUs; 2 load balancers, 3 app hosts; "
        f"load through the first: 4 clients x 10 req/s on keep-alive, HTTPS GET /healthz; "
        f"at most {MAX_SECONDS} s each)",
        flush=True,
    )
    fab = [str(BIN / "fab"), "deploy", "-i", INVENTORY, "--app", "hello", "--src"]
    stamp = time.strftime("%H%M%S")
    rows = []
    with tempfile.TemporaryDirectory(prefix="flaskstack-bench-") as tmp:
        work = Path(tmp)
        one = str(variant(work, f"one-{stamp}"))
        plan = [
            ("(a1) fab deploy, one app host", [*fab, one, "--limit", "app1"], True),
            ("(a) fab deploy, 3 app hosts one at a time", [*fab, str(variant(work, f"all-{stamp}"))], True),
            ("(b) docker stop, then start, of app2",
             ["sh", "-c", "docker stop flaskstack-app2 && sleep 5 && docker start flaskstack-app2"], True),
            ("(c) fab deploy, app2 refuses the release",
             [*fab, str(variant(work, f"no-app2-{stamp}", breaks_on_host("app2")))], False),
        ]  # fmt: skip
        for name, argv, expect_ok in plan:
            print(f"-- {name} ...", flush=True)
            row = scenario(name, argv, load_args, expect_ok, 2.0, release=fleet)
            if name.startswith("(b)"):
                # Until the load balancer sends it requests again (its passive check).
                started = time.monotonic()
                while not answered_by("app2") and time.monotonic() - started < MAX_SECONDS:
                    time.sleep(0.5)
                row["wall_s"] += time.monotonic() - started
                row["ok"] = row["ok"] and answered_by("app2")
            if name.startswith("(c)"):
                before = dict(x.split("=") for x in row["before"].split())
                after = dict(x.split("=") for x in row["after"].split())
                row["ok"] = (
                    row["failed"] == 0
                    and row["exit"] == 1
                    and after["app1"] != before["app1"]
                    and (after["app2"], after["app3"]) == (before["app2"], before["app3"])
                )
            row["ok"] = row["ok"] and every_host_in_pool()
            rows.append(row)
    report(rows)

    print("\n(d) requests per second through the load balancer (wrk, 16 connections, 10 s, GET /healthz)")
    three = requests_per_second()
    pool("out", "app2", "app3", "--why=bench: one app host")
    one_host = requests_per_second()
    pool("in", "app2", "app3", "--check")
    print(f"  3 app hosts in the pool: {three:8.1f} req/s")
    print(f"  1 app host in the pool:  {one_host:8.1f} req/s  (3 vs 1: {three / one_host:.2f}x)")
    print("  (every container shares this machine's CPUs: not what three machines would give)")
    return 0 if all(r["ok"] for r in rows) and every_host_in_pool() else 1


if __name__ == "__main__":
    sys.exit(main())
