"""A cold site.yml against its floor (issue 14's goal: <= 1.3x), measured in the same run.

Two twin targets (containers from the demo's image, made by the demo's own playbook, SSH on
127.0.0.1:2262 and :2263) start bare, as the demo target does. On the first, a cold
`ansible-playbook site.yml` with the demo's inventory (its host's connection pointed at the
twin with -e): everything a newcomer's first run does. On the second, the floor: what no tool
can avoid doing to get the same software on the host, timed over SSH as the run's own steps
are: `apt-get update` and one `apt-get install` of exactly the Debian packages the cold run
added (read from the first twin's dpkg afterwards), then a virtualenv with `pip install
--no-index` of the same wheelhouse (built and uploaded as site.yml does; the upload is shown
on its own line, not in the floor). The twins are removed at the end.

  .venv/bin/python bench/cold.py          (after `make demo`: its key and image)
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the project's own code: one wheelhouse, one way to make a target

import yaml  # noqa: E402

from flaskstack.packaging import build_wheelhouse, read_project, wheelhouse_archive  # noqa: E402
from tests.targets import SSH, on_target, twin_target  # noqa: E402

BIN = ROOT / ".venv" / "bin"
PLAYBOOK = str(BIN / "ansible-playbook")
COLD, COLD_SSH, COLD_HTTP = "flaskstack-cold", 2262, 8262
FLOOR, FLOOR_SSH, FLOOR_HTTP = "flaskstack-floor", 2263, 8263
GOAL = 1.3


def timed(what: str, argv: list[str], timeout: float = 1800) -> float:
    start = time.monotonic()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    took = time.monotonic() - start
    if result.returncode != 0:
        sys.exit(f"{what} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    print(f"  {what:<58} {took:7.1f}s", flush=True)
    return took


def ssh(port: int, command: str) -> list[str]:
    """A command as root on a twin (the deploy user through sudo), as on_target runs one."""
    return [
        "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={SSH / 'known_hosts'}",
        "-o", "StrictHostKeyChecking=accept-new", "-i", str(SSH / "id_ed25519"), "-p", str(port),
        "deploy@127.0.0.1", f"sudo -n /bin/sh -c {shlex.quote(command)}",
    ]  # fmt: skip


def packages(port: int) -> set[str]:
    return set(on_target("dpkg-query -W -f '${Package}\\n'", port).stdout.split())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    defaults = yaml.safe_load((ROOT / "roles/flaskstack/defaults/main.yml").read_text())
    gunicorn = defaults["flaskstack_server_packages"]["gunicorn"]
    with twin_target(COLD, COLD_SSH, COLD_HTTP), twin_target(FLOOR, FLOOR_SSH, FLOOR_HTTP):
        bare = packages(FLOOR_SSH)
        print("A cold site.yml (the demo's inventory, on a bare twin):")
        cold = timed(
            "ansible-playbook site.yml",
            [PLAYBOOK, "site.yml", "-i", "inventory/local", "-e", f"ansible_port={COLD_SSH}"],
        )
        added = sorted(packages(COLD_SSH) - bare)
        print(f"  ({len(added)} Debian packages added)")
        python = on_target("python3 -c 'import sys; print(*sys.version_info[:2], sep=\".\")'", FLOOR_SSH)
        arch = on_target("uname -m", FLOOR_SSH).stdout.strip()
        print("The floor (on the other bare twin):")
        apt = "DEBIAN_FRONTEND=noninteractive apt-get -q"
        update = timed("apt-get update", ssh(FLOOR_SSH, f"{apt} update"))
        install = timed(
            f"apt-get install of those {len(added)} packages",
            ssh(FLOOR_SSH, f"{apt} install -y --no-install-recommends {' '.join(added)}"),
        )
        # The wheelhouse site.yml built for the app (cached on this machine), sent as it sends it.
        _, folder = build_wheelhouse(
            "hello", read_project(ROOT / "app"), gunicorn, python.stdout.strip(), arch,
            defaults["flaskstack_wheel_platforms"][arch], [], Path.home() / ".cache" / "flaskstack",
        )  # fmt: skip
        archive = wheelhouse_archive(folder)
        upload = time.monotonic()
        with archive.open("rb") as handle:
            subprocess.run(
                ssh(FLOOR_SSH, "mkdir -p /tmp/wheels && tar -xf - -C /tmp/wheels"),
                stdin=handle, capture_output=True, check=True, timeout=600,
            )  # fmt: skip
        print(f"  {'(the wheelhouse sent, not in the floor)':<58} {time.monotonic() - upload:7.1f}s")
        pip = timed(
            "python3 -m venv, pip install --no-index of the same wheels",
            ssh(FLOOR_SSH, "python3 -m venv /tmp/venv && wheels=$(find /tmp/wheels -name '*.whl') && "
                           "/tmp/venv/bin/pip install -q --no-index "
                           '--find-links "$(dirname "$(echo "$wheels" | head -n 1)")" $wheels'),
        )  # fmt: skip
    floor = update + install + pip
    ratio = cold / floor
    print(f"\n{'what':<40} {'seconds':>8}")
    print(f"{'cold site.yml':<40} {cold:>7.1f}s")
    print(f"{'floor (apt update + install + pip)':<40} {floor:>7.1f}s")
    verdict = "ok" if ratio <= GOAL else "NO"
    print(f"{'cold / floor':<40} {ratio:>7.2f}x  goal <= {GOAL}x  {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
