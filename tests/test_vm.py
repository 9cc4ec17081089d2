"""A real VM (`make test-vm`): Debian built from the Debian archive, booted under QEMU,
provisioned by `ansible-playbook site.yml -i inventory/vm` over SSH like any VM. What a
container cannot show: the firewall holding on a kernel of the host's own, the kernel
settings in force, a reboot that comes back serving with no manual step.

QEMU's user network forwards 127.0.0.1 ports to the VM. Its host side accepts every
connection itself and only then tries the VM, so a plain connect() scan finds every
forwarded port "open": a port counts as open here when the VM answers on it (an SSH
banner, an HTTP response, a TLS handshake), and a port the firewall closes gets nothing.
"""

from __future__ import annotations

import json
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.targets import EVERY_TASK, on_target, run

pytestmark = pytest.mark.vm

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SSH_PORT, HTTP_PORT, HTTPS_PORT = 2250, 8250, 8251
# Forwarded ports that must stay closed: the backend port (8081), PostgreSQL's, and 9000.
# A test service listens on each, on every address of the VM (this one-host inventory has
# no load balancer or database), so only the firewall keeps them shut.
CLOSED = {8252: 8081, 8253: 5432, 8254: 9000}


def listen() -> None:
    """Start the test services (again after a reboot) and wait until each answers inside."""
    for inner in CLOSED.values():
        unit = f"flaskstack-test-{inner}"
        vm(
            f"systemctl is-active --quiet {unit} || "
            f"systemd-run --unit {unit} python3 -m http.server --bind 0.0.0.0 {inner}"
        )
    probe = (
        "import sys, urllib.request as u; "
        "[u.urlopen(f'http://127.0.0.1:{p}/', timeout=5) for p in sys.argv[1:]]"
    )
    deadline = time.monotonic() + 60
    while vm(f'python3 -c "{probe}" {" ".join(map(str, CLOSED.values()))}', check=False).returncode != 0:
        assert time.monotonic() < deadline, "the test services did not start"
        time.sleep(2)


# What the run measured, printed at the end: each step's seconds, and the scores.
TIMES: dict[str, object] = {}


# Under software emulation each Ansible task takes about 10 s: a first site.yml run took
# over 20 minutes (apt alone 8), so each command gets an hour.
def timed(name: str, *argv: str):
    start = time.monotonic()
    result = run(*argv, timeout=3600)
    TIMES[name] = round(time.monotonic() - start, 1)
    return result


def answers(port: int, tls: bool = False, timeout: float = 10) -> bytes:
    """What the VM says on a forwarded port (b"" if nothing within the timeout)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            if tls:
                context = ssl._create_unverified_context()  # noqa: S323 - the VM's self-signed certificate
                with context.wrap_socket(sock, server_hostname="localhost") as wrapped:
                    wrapped.sendall(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    return wrapped.recv(200)
            if port != SSH_PORT:
                sock.sendall(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
            return sock.recv(200)
    except (OSError, ssl.SSLError):
        return b""


def healthz(timeout: float = 300) -> dict:
    """GET /healthz over HTTPS through the forwarded port, retried until it answers."""
    deadline = time.monotonic() + timeout
    context = ssl._create_unverified_context()  # noqa: S323 - the VM's self-signed certificate
    while True:
        try:
            with urllib.request.urlopen(
                f"https://localhost:{HTTPS_PORT}/healthz", timeout=20, context=context
            ) as response:
                return json.loads(response.read())
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def vm(command: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
    return on_target(command, port=SSH_PORT, check=check, timeout=timeout)


def changed(output: str) -> int:
    match = re.search(r"\bvm\s*:\s*ok=\d+\s+changed=(\d+)", output)
    assert match, output[-3000:]
    return int(match.group(1))


@pytest.fixture(scope="module")
def provisioned():
    """The VM built (or its image reused), booted, a test service listening on port 9000,
    then provisioned by site.yml. The VM is stopped at the end."""
    booted = timed(
        "build and boot", str(BIN / "ansible-playbook"), "playbooks/local_vm.yml", "-i", "inventory/vm"
    )
    assert booted.returncode == 0, booted.output[-3000:]
    listen()
    # Before flaskstack, the VM answers on every forwarded port it listens on.
    open_before = {port: bool(answers(port)) for port in CLOSED}
    site = timed("site.yml, first run", str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/vm")
    yield {"site": site, "open_before": open_before}
    print("\nmake test-vm (seconds, and the scores):", json.dumps(TIMES))
    stopped = run(
        str(BIN / "ansible-playbook"),
        "playbooks/local_vm.yml",
        "-i",
        "inventory/vm",
        "-e",
        "local_vm_state=absent",
    )
    assert stopped.returncode == 0, stopped.output[-3000:]


def test_a_fresh_vm_is_provisioned_over_ssh_and_serves(provisioned):
    assert provisioned["site"].returncode == 0, provisioned["site"].output[-5000:]
    health = healthz()
    assert health["status"] == "ok"
    assert answers(HTTP_PORT).startswith(b"HTTP/1.1 30")  # HTTP redirects to HTTPS


def test_only_the_allowed_ports_answer(provisioned):
    assert all(provisioned["open_before"].values()), provisioned["open_before"]
    assert answers(SSH_PORT).startswith(b"SSH-2.0-OpenSSH")
    assert answers(HTTP_PORT).startswith(b"HTTP/1.1")
    assert answers(HTTPS_PORT, tls=True).startswith(b"HTTP/1.1 200")
    after = {inner: bool(answers(port, timeout=8)) for port, inner in CLOSED.items()}
    TIMES["VM ports answering, before"] = [
        22,
        *(CLOSED[p] for p, on in provisioned["open_before"].items() if on),
    ]
    TIMES["VM ports answering, after"] = [22, 80, 443, *(inner for inner, on in after.items() if on)]
    assert not any(after.values()), f"the firewall let through: {after}"
    # The test services still listen: the firewall, not their absence, keeps them out.
    listen()


def test_the_kernel_settings_are_in_force(provisioned):
    values = vm(
        "sysctl -n kernel.kptr_restrict net.ipv4.conf.all.rp_filter kernel.dmesg_restrict"
    ).stdout.split()
    assert values == ["2", "1", "1"]


def test_nginx_runs_sandboxed_on_a_kernel_of_its_own(provisioned):
    """The drop-in's exposure on the VM's own systemd (a container's may lack a feature it scores)."""
    out = vm("systemd-analyze security nginx.service --no-pager").stdout
    score = float(re.search(r"Overall exposure level for nginx\.service: ([\d.]+)", out).group(1))
    TIMES["nginx.service exposure"] = score
    assert score <= 3.0, out


def test_a_second_run_changes_nothing(provisioned):
    second = timed(
        "site.yml, second run", str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/vm", *EVERY_TASK
    )
    assert second.returncode == 0, second.output[-5000:]
    assert "Nothing to do: this host is" not in second.output  # every task ran, none changed
    assert changed(second.output) == 0, second.output[-5000:]
    # And as a user's next run goes: nothing changed since that complete run, so the VM is skipped.
    third = timed("site.yml, nothing to do", str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/vm")
    assert third.returncode == 0, third.output[-5000:]
    flat = " ".join(third.output.split())  # as the output folds it
    assert "Nothing to do: this host is as the last complete run left it" in flat, third.output[-3000:]


def test_a_reboot_comes_back_serving(provisioned):
    before = vm("cat /proc/sys/kernel/random/boot_id").stdout.strip()
    vm("systemd-run --on-active=2 systemctl reboot")
    start = time.monotonic()
    deadline = start + 900
    # Until the VM answers from its next boot: on an emulated CPU under load, the shutdown
    # alone can take longer than any fixed wait, and the old boot answers until it ends.
    while time.monotonic() < deadline:
        time.sleep(5)
        if not answers(SSH_PORT).startswith(b"SSH-2.0"):
            continue
        try:
            now = vm("cat /proc/sys/kernel/random/boot_id", check=False)
        except subprocess.TimeoutExpired:
            continue
        if now.returncode == 0 and now.stdout.strip() not in ("", before):
            break
    health = healthz(timeout=600)
    TIMES["reboot until the site answers"] = round(time.monotonic() - start, 1)
    assert health["status"] == "ok"
    assert vm("cat /proc/sys/kernel/random/boot_id").stdout.strip() != before
    assert "table inet flaskstack" in vm("nft list table inet flaskstack").stdout
    assert vm("sysctl -n kernel.kptr_restrict").stdout.strip() == "2"
    listen()
    for port in CLOSED:
        assert answers(port, timeout=8) == b""


def test_lynis_rates_the_host_80_or_more(provisioned):
    vm("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq lynis >/dev/null", timeout=900)
    start = time.monotonic()
    # Minutes on an emulated CPU.
    vm("lynis audit system --quick --no-colors > /var/tmp/lynis.out 2>&1 || true", timeout=1800)
    TIMES["lynis"] = round(time.monotonic() - start, 1)
    report = vm("cat /var/log/lynis-report.dat").stdout
    index = int(re.search(r"^hardening_index=(\d+)", report, re.M).group(1))
    TIMES["lynis hardening index"] = index
    assert index >= 80, vm("grep -E '^suggestion' /var/log/lynis-report.dat").stdout
