"""A peer side by side: ansistrano deploying the sample app to a twin target, under the same
load as `fab deploy` and `ansible-playbook site.yml` on the demo target.

ansistrano (ansistrano.deploy) is a plain Ansible role: fetch it yourself (it is never
committed here), for example `git clone https://github.com/ansistrano/deploy ansistrano`,
then, after `make demo`:

  .venv/bin/python bench/peer_ansistrano.py --role ansistrano     (or: make bench ANSISTRANO=...)

The twin (container flaskstack-peer, made by the demo's playbook, SSH on 127.0.0.1:2261,
nginx on 127.0.0.1:8261) is set up once as an ansistrano user does by hand
(bench/peer/setup.yml: nginx, a plain gunicorn service on a Unix socket, five workers as the
demo's), then each deploy is bench/peer/deploy.yml: ansistrano's copy_unarchive of the app,
plus the hooks its users add for a Python app: a virtualenv from the same wheels as the
demo's (no index) and the migration after the code update, a restart of gunicorn after the
symlink. Each deploy carries new code (the page says which).

Load: CLIENTS threads x RATE requests per second on keep-alive connections to each
target's nginx (bench/traffic.py: bounded in seconds and requests, 127.0.0.1 only), from
2 s before each command until 2 s after the site answers again, as bench/zero_downtime.py
runs each of its scenarios. Printed: each way's median
time (and range) and its failed requests. The twin is removed at the end.
"""

from __future__ import annotations

import argparse
import functools
import json
import secrets
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's own code: one wheelhouse, one way to make a target

import yaml  # noqa: E402

from appvariants import variant  # noqa: E402
from flaskstack.packaging import build_wheelhouse, read_project, wheelhouse_archive  # noqa: E402
from tests.targets import connection, on_target, twin_target  # noqa: E402
from traffic import live_release  # noqa: E402
from zero_downtime import scenario  # noqa: E402

BIN = ROOT / ".venv" / "bin"
FAB, PLAYBOOK = str(BIN / "fab"), str(BIN / "ansible-playbook")
BACK = ["-e", "app_allow_older=true"]  # site.yml puts the inventory's release back: on purpose
PEER, PEER_SSH, PEER_HTTP = "flaskstack-peer", 2261, 8261
DEMO_HTTP = 8080
SETTLE = 2.0


def under_load(name: str, argv: list[str], port: int, load_args: dict) -> dict:
    """A command under load on one target's nginx, as the zero-downtime benchmark runs one
    (its row: wall_s, sent, failed, samples); exits if the command fails."""
    row = scenario(name, argv, {**load_args, "port": port}, expect_ok=True, settle=SETTLE, may_fail=None,
                   release=functools.partial(live_release, port))  # fmt: skip
    if row["exit"] != 0:
        sys.exit(f"{name}: {' '.join(argv)} failed (its output above)")
    return row


def failing_for(row: dict) -> float:
    """Seconds from the first failed request to the end of the last (0 if none failed)."""
    failed = [(at, latency) for at, latency, ok in row["samples"] if not ok]
    return max(at + latency for at, latency in failed) - min(at for at, _ in failed) if failed else 0.0


def archive(src: Path) -> Path:
    """The app's folder as a .tar.gz, its files at the top (as ansistrano unpacks into a release)."""
    path = src.with_suffix(".tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        for item in sorted(src.iterdir()):
            tar.add(item, arcname=item.name)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", type=Path, required=True, help="a checkout of ansistrano.deploy")
    parser.add_argument("--runs", type=int, default=3, help="deploys of each kind (default 3)")
    parser.add_argument("--clients", type=int, default=4, help="client threads (default 4)")
    parser.add_argument(
        "--rate", type=float, default=25.0, help="requests per second per client (default 25)"
    )
    args = parser.parse_args()
    role = args.role.resolve()
    if not (role / "tasks" / "main.yml").is_file():
        sys.exit(f"--role {args.role}: not a checkout of ansistrano.deploy (no tasks/main.yml)")
    load_args = {"clients": args.clients, "rate": args.rate}
    defaults = yaml.safe_load((ROOT / "roles/flaskstack/defaults/main.yml").read_text())
    gunicorn = defaults["flaskstack_server_packages"]["gunicorn"]

    stamp = time.strftime("%H%M%S")
    rows: list[tuple[str, list[dict]]] = []  # (what, the scenario row of each run)
    with (
        twin_target(PEER, PEER_SSH, PEER_HTTP),
        tempfile.TemporaryDirectory(prefix="flaskstack-peer-") as tmp,
    ):
        work = Path(tmp)
        inventory = work / "hosts.yml"
        inventory.write_text(yaml.safe_dump({"peer": {"hosts": {"twin": connection(PEER_SSH)}}}))
        # The app's secret key on the twin: made here, passed in a file (never on a command line).
        secret = work / "secret.json"
        secret.write_text(json.dumps({"peer_secret_key": secrets.token_hex(24)}))
        secret.chmod(0o600)
        on_twin = [PLAYBOOK, "-i", str(inventory), "-e", f"@{secret}"]
        setup = subprocess.run([*on_twin, "bench/peer/setup.yml"], cwd=ROOT, capture_output=True,
                               text=True, timeout=900, check=False)  # fmt: skip
        if setup.returncode != 0:
            sys.exit(f"the twin's setup failed:\n{setup.stdout[-3000:]}")
        # The same wheels as the demo's: the wheelhouse fab and site.yml build, for the twin's Python.
        python = on_target("python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'", PEER_SSH)
        arch = on_target("uname -m", PEER_SSH).stdout.strip()
        _, folder = build_wheelhouse(
            "hello", read_project(ROOT / "app"), gunicorn, python.stdout.strip(), arch,
            defaults["flaskstack_wheel_platforms"][arch], [], Path.home() / ".cache" / "flaskstack",
        )  # fmt: skip
        peer_vars = {"peer_role": str(role), "peer_wheelhouse": str(wheelhouse_archive(folder)),
                     "peer_gunicorn": gunicorn[0]}  # fmt: skip

        def ansistrano(label: str) -> list[str]:
            extra = {**peer_vars, "peer_archive": str(archive(variant(work, label)))}
            return [*on_twin, "-e", json.dumps(extra), "bench/peer/deploy.yml"]

        # The first deploy starts gunicorn (not timed, as the demo's first is not).
        first = subprocess.run(ansistrano(f"peer-{stamp}-first"), cwd=ROOT, capture_output=True,
                               text=True, timeout=900, check=False)  # fmt: skip
        if first.returncode != 0:
            sys.exit(f"ansistrano's first deploy failed:\n{first.stdout[-3000:]}")
        deploy = [FAB, "deploy", "--app", "hello", "--src"]
        name = "fab deploy, code only (demo)"
        rows.append((name, [
            under_load(name, [*deploy, str(variant(work, f"fab-{stamp}-{n}"))], DEMO_HTTP, load_args)
            for n in range(args.runs)
        ]))  # fmt: skip
        name, full = "ansible-playbook site.yml, full deploy (demo)", []
        for n in range(args.runs):
            # A fab release live first: site.yml has a switch to make (the inventory's release back).
            back = [*deploy, str(variant(work, f"back-{stamp}-{n}"))]
            under_load("fab deploy, before site.yml", back, DEMO_HTTP, load_args)
            site = [PLAYBOOK, "site.yml", "-i", "inventory/local", *BACK]
            full.append(under_load(name, site, DEMO_HTTP, load_args))
        rows.append((name, full))
        name = "ansistrano deploy, code only (twin)"
        rows.append((name, [
            under_load(name, ansistrano(f"peer-{stamp}-{n}"), PEER_HTTP, load_args)
            for n in range(args.runs)
        ]))  # fmt: skip

    print(
        f"\nDeploys under load ({args.clients} clients x {args.rate:g} req/s on keep-alive, GET / through "
        f"each target's nginx, from {SETTLE:g} s before to {SETTLE:g} s after it answers again):"
    )
    print(
        f"{'what':<48} {'median':>8} {'min':>7} {'max':>7} {'runs':>5} {'failed/sent':>14} "
        f"{'failing for':>12}"
    )
    for name, results in rows:
        times = [r["wall_s"] for r in results]
        failed, sent = sum(r["failed"] for r in results), sum(r["sent"] for r in results)
        window = max(failing_for(r) for r in results)
        print(
            f"{name:<48} {statistics.median(times):>7.2f}s {min(times):>6.2f}s {max(times):>6.2f}s "
            f"{len(times):>5} {f'{failed}/{sent}':>14} {f'{window:.1f}s' if failed else '-':>12}"
        )
    print("(failing for: the longest span, in one deploy, from its first failed request to its last)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
