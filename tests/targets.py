"""Helpers of the target tests: a command on a test target over the demo's SSH key."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SSH = ROOT / ".demo" / "ssh"


# The user the target tests deploy as: a deploy user with sudo, as in production
# (playbooks/local_target.yml makes it). The tests look at a target as that user too,
# through sudo (on_target): the host role turns root's SSH login off.
DEPLOY_USER = "deploy"


# The host baseline off (host_baseline, each part's default): for the suites whose target
# tests something else (another layout, apps of other shapes). Each of their site.yml runs
# skips the baseline, which the demo target, the default and tls scenarios and the VM test
# with every part on; the switch is what a user sets to leave it to their own tooling.
HOST_BASELINE_OFF = {"host_baseline": False}


# A second run that must change nothing runs every task (flaskstack_skip_unchanged off):
# skipped, it would change nothing whatever the tasks would do.
EVERY_TASK = ("-e", "flaskstack_skip_unchanged=false")
# Where a host keeps the record of the last complete site.yml run (flaskstack_skip_unchanged;
# __flaskstack_record in roles/flaskstack/vars/main.yml).
RECORD = "/var/lib/flaskstack/last-run.json"


def app_defaults() -> dict:
    """flaskstack_app_defaults as the flaskstack role ships them."""
    import yaml

    return yaml.safe_load((ROOT / "roles/flaskstack/defaults/main.yml").read_text())[
        "flaskstack_app_defaults"
    ]


def sample_app(name: str) -> dict:
    """The sample app (app/) as a flaskstack_apps entry the app model accepts."""
    return {
        "name": name,
        "src": str(ROOT / "app"),
        "entry_point": "hello:create_app()",
        "server_names": ["a"],
    }


def connection(port: int) -> dict:
    """An inventory host's connection settings for a test target whose sshd is on 127.0.0.1:port."""
    return {
        "ansible_host": "127.0.0.1",
        "ansible_port": port,
        "ansible_user": DEPLOY_USER,
        "ansible_become": True,
        "ansible_ssh_private_key_file": str(SSH / "id_ed25519"),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={SSH / 'known_hosts'} "
        "-o StrictHostKeyChecking=accept-new",
    }


def module_here(role: str, module: str, args: dict, *flags: str) -> dict:
    """A role's own module run by Ansible on this machine (ad hoc, connection local), as a task
    runs it; its result."""
    result = subprocess.run(
        [str(BIN / "ansible"), "localhost", "-c", "local", "-m", module, "-a", json.dumps(args), *flags],
        cwd=ROOT,
        env={
            **os.environ,
            "ANSIBLE_LIBRARY": str(ROOT / "roles" / role / "library"),
            "ANSIBLE_LOAD_CALLBACK_PLUGINS": "1",
            "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.json",
        },
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    # ansible.cfg's timing callbacks print around the JSON.
    report, _ = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{") :])
    return report["plays"][0]["tasks"][0]["hosts"]["localhost"]


def on_target(
    command: str, port: int = 2222, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess:
    """Run a shell command as root (the deploy user, through sudo) on the target whose sshd is
    on 127.0.0.1:port."""
    result = subprocess.run(
        [
            "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={SSH / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-i", str(SSH / "id_ed25519"), "-p", str(port),
            f"{DEPLOY_USER}@127.0.0.1", f"sudo -n /bin/sh -c {shlex.quote(command)}",
        ],
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result


def run(*argv: str, timeout: float = 1200) -> subprocess.CompletedProcess:
    """A command from the project's folder, its output kept (stdout and stderr in .output)."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False)
    result.output = result.stdout + result.stderr
    return result


def start_target(container: str, ssh_port: int, http_port: int) -> None:
    """Another test target beside the demo's, made by the demo's own playbook."""
    target = {
        "container": container,
        "hostname": container.removeprefix("flaskstack-"),
        "ssh_port": ssh_port,
        "published": [f"127.0.0.1:{http_port}:80"],
    }
    started = run(
        str(BIN / "ansible-playbook"), "playbooks/local_target.yml", "--tags", "target",
        "-e", json.dumps({"local_targets": [target]}),
    )  # fmt: skip
    assert started.returncode == 0, started.output[-3000:]


@contextlib.contextmanager
def twin_target(container: str, ssh_port: int, http_port: int):
    """A bare target of a benchmark's own (start_target), made fresh (whatever an earlier run
    left under that name is removed first) and removed when the block ends, however it ends."""
    subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
    try:
        start_target(container, ssh_port, http_port)
        yield
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, check=False)
