"""Zero-downtime benchmark: constant HTTP load through nginx while releases change.

Run it with `make bench` (which first runs `make demo`): the load goes to the demo
target's nginx on 127.0.0.1:8080 only, from a few client threads that each send
requests at a fixed pace on keep-alive connections (bench/traffic.py: a request
that a reloading nginx closed unanswered is sent again and counted as retried),
and it is bounded (at most COMMAND_SECONDS per command and the load as long, at most MAX_REQUESTS in
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
to serve again). The script exits 1 if a target is missed. It also draws bench/zero_downtime.png: each
scenario's requests (latency over time, failed ones red) with the command's phases and
steps marked.
"""

from __future__ import annotations

import argparse
import http.client
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from appvariants import breaks_health, breaks_import, variant
from traffic import MAX_SECONDS, Load, live_release, percentile

# site.yml puts the inventory's release back after newer fab deploys: on purpose, so asked for.
BACK = ["-e", "app_allow_older=true"]
TARGET = "flaskstack-demo"  # the demo target's container
ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
CHART = ROOT / "bench" / "zero_downtime.png"
# A full site.yml run takes minutes on this machine (2-3 under the bench's load): each command
# gets this long, and the load lasts as long (MAX_SECONDS more for the site to answer again).
COMMAND_SECONDS = 900


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
    load = Load(**load_args, seconds=COMMAND_SECONDS + 2 * settle + MAX_SECONDS).start()
    time.sleep(settle)
    started = time.monotonic()
    returncode, lines = run_timed(argv)
    took = time.monotonic() - started + serving_again(MAX_SECONDS, release)
    time.sleep(settle)
    load.stop()
    after = release()
    output = [line for _, line in lines]
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
        "exit": returncode,
        "before": before,
        "after": after,
        "reason": reason.strip()[:150],
        "failures": sorted(set(load.failures))[:5],
        # For the chart: each request (seconds from the command's start, latency, ok) and the
        # command's steps (name, start, end).
        "samples": [(at - started, latency, ok) for at, latency, ok in load.samples],
        "steps": steps([(at - started, line) for at, line in lines]),
    }
    ok = (may_fail is None or row["failed"] <= may_fail) and (returncode == 0) == expect_ok
    if not expect_ok:
        ok = ok and after == before
    row["ok"] = ok
    if returncode != 0 and expect_ok:
        print("\n".join(output[-30:]), file=sys.stderr)
    return row


def run_timed(argv: list[str]) -> tuple[int, list[tuple[float, str]]]:
    """Run a command (killed after COMMAND_SECONDS); its exit code and each line it printed (stdout
    and stderr), with the time.monotonic() it arrived at."""
    lines = []
    with subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        watchdog = threading.Timer(COMMAND_SECONDS, proc.kill)
        watchdog.start()
        try:
            lines = [(time.monotonic(), line.rstrip("\n")) for line in proc.stdout]
        finally:
            watchdog.cancel()
        return proc.wait(), lines


# fab's phases ("== upload and prepare: 3.21s", printed as each ends) and the release tool's
# steps ("[demo]   switch   ok       0.01s ...", printed together when the activation ends).
PHASE = re.compile(r"^== (?P<name>[^:]+): (?P<secs>\d+\.\d+)s$")
STEP = re.compile(r"^\[[^\]]+\]\s+(?P<name>[a-z][a-z ]*?)\s+(?:ok|FAILED)\s+(?P<secs>\d+\.\d+)s")


def steps(lines: list[tuple[float, str]]) -> list[tuple[str, float, float, str]]:
    """(name, start, end, "phase" or "step") of each in a command's timed output. A phase ends when
    its line arrives. Steps arrive together at the end of their activation, each with its
    duration, one after the other: the last ends when they arrive, each earlier one when the
    next begins (a few hundredths of a second early: the SSH round trip)."""
    found = []
    block: list[tuple[str, float]] = []

    def close(at: float) -> None:
        start = at - sum(secs for _, secs in block)
        for name, secs in block:
            found.append((name, start, start + secs, "step"))
            start += secs
        block.clear()

    last = 0.0
    for at, line in lines:
        if m := STEP.match(line):
            block.append((m["name"], float(m["secs"])))
            last = at
            continue
        if block:
            close(last)
        if m := PHASE.match(line):
            found.append((m["name"], at - float(m["secs"]), at, "phase"))
    if block:
        close(last)
    return sorted(found, key=lambda s: s[1])


def draw(rows: list[dict], path: Path) -> None:
    """One panel per scenario: each request's latency over time (failed ones red), the
    command's phases and steps shaded and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker
    from matplotlib.lines import Line2D

    cols = 2
    fig, axes = plt.subplots(
        (len(rows) + cols - 1) // cols,
        cols,
        figsize=(14, 3.2 * ((len(rows) + cols - 1) // cols)),
        squeeze=False,
    )
    for ax, row in zip(axes.flat, rows, strict=False):
        good = [(t, lat * 1000) for t, lat, ok in row["samples"] if ok]
        bad = [(t, lat * 1000) for t, lat, ok in row["samples"] if not ok]
        if good:
            ax.scatter(*zip(*good, strict=True), s=3, color="tab:blue")
        if bad:
            ax.scatter(*zip(*bad, strict=True), s=18, color="red", marker="x")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.set_xlabel("seconds from the command's start")
        ax.set_ylabel("latency, ms")
        ax.set_title(f"{row['scenario']}: {row['sent']} requests, {row['failed']} failed", fontsize=10)
        # Steps shaded, named at the top (steps too short to name apart share a label); fab's
        # phases (which hold the steps) as bars at the bottom.
        low, top = ax.get_ylim()
        short = 0.03 * (ax.get_xlim()[1] - ax.get_xlim()[0])
        labels: list[list] = []  # [x, text] of each label
        for i, (name, start, end, _) in enumerate(m for m in row["steps"] if m[3] == "step"):
            ax.axvspan(start, end, color=("0.82", "0.92")[i % 2], zorder=0)
            if labels and end - start < short and start - labels[-1][0] < short:
                labels[-1][1] += f"+{name}"
            else:
                labels.append([(start + end) / 2 if end - start >= short else start, name])
        for x, text in labels:
            ax.text(x, top, text, rotation=90, fontsize=7, ha="center", va="top")
        for i, (name, start, end, _) in enumerate(m for m in row["steps"] if m[3] == "phase"):
            ax.hlines(low * 1.3, start, end, color=("tab:green", "tab:olive")[i % 2], linewidth=4)
            ax.text((start + end) / 2, low * (1.6 if i % 2 else 2.2), name, fontsize=6, ha="center")
    for ax in axes.flat[len(rows) :]:
        ax.set_visible(False)
    legend = [
        Line2D([], [], color="tab:blue", marker="o", markersize=3, linestyle="", label="answered (2xx)"),
        Line2D([], [], color="red", marker="x", linestyle="", label="failed (an error, or not 2xx)"),
    ]
    fig.legend(handles=legend, loc="upper center", ncols=2, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    fig.savefig(path, dpi=90)
    plt.close(fig)


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
    draw(rows, CHART)
    print(f"\nlatency over time, each step marked: {CHART.relative_to(ROOT)}")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
