"""Helpers of the target tests: a command on a test target over the demo's SSH key."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SSH = ROOT / ".demo" / "ssh"


def on_target(command: str, port: int = 2222, check: bool = True) -> subprocess.CompletedProcess:
    """Run a shell command as root on the target whose sshd is on 127.0.0.1:port."""
    result = subprocess.run(
        [
            "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={SSH / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=accept-new", "-i", str(SSH / "id_ed25519"), "-p", str(port),
            "root@127.0.0.1", command,
        ],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, f"{command}: {result.stdout}{result.stderr}"
    return result
