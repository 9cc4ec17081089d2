"""Zero-downtime benchmark: constant HTTP load through nginx while releases change.

Run it with `make bench` (which first runs `make demo`): the load goes to the demo
target's nginx on 127.0.0.1:8080 only, from a few client threads that each send
requests at a fixed pace on keep-alive connections (bench/traffic.py: a request
that a reloading nginx closed unanswered is sent again and counted as retried),
and it is bounded (at most MAX_SECONDS per scenario, at most MAX_REQUESTS in
all). For each scenario it prints requests sent, failed (a non-2xx answer or a
connection error), retried, p50/p99/max latency, the command's wall time and
exit code, and which release serves afterwards:

  (d) a config change applied by ansible-playbook (gunicorn's max_requests)
  (a) fab deploy of a good release
  (b) fab deploy of a release that fails to import        -> must exit non-zero
  (c) fab deploy of a release whose health check fails    -> must exit non-zero
  (f) a full ansible-playbook site.yml run: the inventory's release back, settings back
  (e) fab rollback to the previous release (the one from (a))
  (g) kill -9 of gunicorn's main process (systemd starts it again)
  (h) docker restart of the whole target (a VM rebooted)

Target: 0 failed requests in every deploy scenario, and after (b) and (c) the
release that served before still serves; after (g) only the requests the killed
processes held may fail (at most one per client); after (h) the site serves again
by itself (requests fail while the target is down: counted, with the time it took
to serve again). The script exits 1 if a target is missed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from appvariants import breaks_health, breaks_import, variant
from traffic import MAX_SECONDS, Load, live_release, percentile

# site.yml puts the inventory's release back after newer fab deploys: on purpose, so asked for.
BACK = ["-e", "app_allow_older=true"]
TARGET = "flaskstack-demo"  # the demo target's container
ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"


def serving_again(timeout: float, release=live_release) -> float:
    """Seconds until the target answers its health path again (release: how to ask it)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            release()
            break
        except (OSError, ValueError, http.client.HTTPException):
            time.sleep(0.2)
    return time.monotonic() - started


def scenario(
    name: str,
    argv: list[str],
    load_args: dict,
    expect_ok: bool,
    settle: float,
    may_fail: int | None = 0,
    release=live_release,
) -> dict:
    """One command under load. may_fail: the failed requests allowed (None: counted only);
    release: what serves (before and after; the demo's live release unless given)."""
    before = release()
    load = Load(**load_args).start()
    time.sleep(settle)
    started = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=MAX_SECONDS, check=False)
    took = time.monotonic() - started + serving_again(MAX_SECONDS, release)
    time.sleep(settle)
    load.stop()
    after = release()
    output = (result.stdout + result.stderr).strip().splitlines()
    reason = next(
        (
            line
            for line in output
            if any(x in line for x in ("does not", "health check through", "rollout stopped"))
        ),
        "",
    )
    row = {
        "scenario": name,
        "sent": load.sent,
        "failed": len(load.failures),
        "retried": load.retried,
        "p50_ms": percentile(load.latencies, 0.50) * 1000,
        "p99_ms": percentile(load.latencies, 0.99) * 1000,
        "max_ms": max(load.latencies, default=0) * 1000,
        "wall_s": took,
        "exit": result.returncode,
        "before": before,
        "after": after,
        "reason": reason.strip()[:150],
        "failures": sorted(set(load.failures))[:5],
    }
    ok = (may_fail is None or row["failed"] <= may_fail) and (result.returncode == 0) == expect_ok
    if not expect_ok:
        ok = ok and after == before
    row["ok"] = ok
    if result.returncode != 0 and expect_ok:
        print("\n".join(output[-30:]), file=sys.stderr)
    return row


def report(rows: list[dict]) -> None:
    """The table of scenarios, then what each left serving."""
    print()
    columns = ("sent", "failed", "retried", "p50 ms", "p99 ms", "max ms", "wall s")
    header = f"{'scenario':<44} " + " ".join(f"{c:>7}" for c in columns) + " exit"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(
            f"{r['scenario']:<44} {r['sent']:>7} {r['failed']:>7} {r['retried']:>7} "
            f"{r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} {r['max_ms']:>7.1f} {r['wall_s']:>7.2f} "
            f"{r['exit']:>4}  {'ok' if r['ok'] else 'MISSED'}"
        )
    print()
    for r in rows:
        serving = "unchanged" if r["after"] == r["before"] else f"{r['before']} -> {r['after']}"
        extra = f"; reason: {r['reason']}" if r["exit"] else ""
        errors = f"; errors: {r['failures']}" if r["failures"] else ""
        print(f"{r['scenario']}: serving {serving}{extra}{errors}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--rate", type=float, default=25.0, help="requests per second per client (default 25)"
    )
    parser.add_argument(
        "--settle", type=float, default=2.0, help="seconds of load before and after each command"
    )
    args = parser.parse_args()
    load_args = {"clients": args.clients, "rate": args.rate}
    fab, playbook = str(BIN / "fab"), str(BIN / "ansible-playbook")
    env_note = (
        f"{os.cpu_count()} CPUs; load: {args.clients} clients x {args.rate:g} req/s on keep-alive, GET /"
    )
    print(f"flaskstack zero-downtime benchmark ({env_note})", flush=True)

    # Start from the inventory's own release, with the inventory's settings.
    subprocess.run(
        [playbook, "site.yml", "-i", "inventory/local", *BACK], cwd=ROOT, check=True, capture_output=True
    )
    stamp = time.strftime("%H%M%S")
    rows = []
    with tempfile.TemporaryDirectory(prefix="flaskstack-bench-") as tmp:
        work = Path(tmp)
        # (d) first, so that it changes the settings only (the inventory's release is live);
        # (f) after (a)-(c), so that it switches the release back and restores the settings.
        deploy = [fab, "deploy", "--app", "hello", "--src"]
        plan = [
            ("(d) ansible-playbook, config change", [playbook, "site.yml", "-i", "inventory/local", *BACK,
                                                     "-e", "appserver_max_requests=5000"], True),
            ("(a) fab deploy, good release", [*deploy, str(variant(work, f"good-{stamp}"))], True),
            ("(b) fab deploy, release fails to import",
             [*deploy, str(variant(work, f"noimport-{stamp}", breaks_import))], False),
            ("(c) fab deploy, health check fails",
             [*deploy, str(variant(work, f"unhealthy-{stamp}", breaks_health))], False),
            ("(f) ansible-playbook site.yml, full deploy",
             [playbook, "site.yml", "-i", "inventory/local", *BACK], True),
            ("(e) fab rollback", [fab, "rollback"], True),
        ]  # fmt: skip
        for name, argv, expect_ok in plan:
            print(f"-- {name} ...", flush=True)
            rows.append(scenario(name, argv, load_args, expect_ok, args.settle))
        # Faults: wall s is the time until the site answers again.
        kill = "kill -9 $(systemctl show -p MainPID --value hello.service)"
        faults = [
            ("(g) kill -9 of gunicorn's main process", ["docker", "exec", TARGET, "sh", "-c", kill],
             args.clients),
            ("(h) docker restart of the target", ["docker", "restart", TARGET], None),
        ]  # fmt: skip
        for name, argv, may_fail in faults:
            print(f"-- {name} ...", flush=True)
            rows.append(scenario(name, argv, load_args, True, args.settle, may_fail=may_fail))
    # Leave the demo as `make demo` leaves it.
    subprocess.run(
        [playbook, "site.yml", "-i", "inventory/local", *BACK], cwd=ROOT, check=True, capture_output=True
    )

    report(rows)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
