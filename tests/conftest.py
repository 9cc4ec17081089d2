"""Shared helpers for the control-node tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@pytest.fixture
def run_site(tmp_path):
    """Run the real site.yml against this machine, in check mode, with given group vars.

    The host is the control node itself (connection local) and the run is in check
    mode, so a regression in the input checks cannot change this machine; the tests
    assert that the run stopped inside the flaskstack role's checks, before any
    role that changes a host started (task order is the same without --check).
    """

    def run(
        group_vars: dict, groups: dict | None = None, others: dict | None = None, env_more: dict | None = None
    ) -> subprocess.CompletedProcess:
        """groups: {group: host vars of "badinput" in it} (default: the flaskstack group);
        others: {group: [more hosts in it]} (this machine too); env_more: more environment for
        the run (the local connection passes it on to the host's commands: SSH_CONNECTION,
        HOME play an SSH login's)."""
        inventory = tmp_path / "inventory"
        (inventory / "group_vars").mkdir(parents=True)
        local = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable}
        hosts = {
            group: {"hosts": {"badinput": {**local, **more}}}
            for group, more in (groups or {"flaskstack": {}}).items()
        }
        for group, names in (others or {}).items():
            hosts.setdefault(group, {"hosts": {}})["hosts"].update({name: dict(local) for name in names})
        (inventory / "hosts.yml").write_text(yaml.safe_dump(hosts))
        (inventory / "group_vars" / "all.yml").write_text(yaml.safe_dump(group_vars))
        env = dict(
            os.environ,
            ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            FLASKSTACK_CACHE_DIR=str(tmp_path / "cache"),
            PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        )
        # Not this machine's own SSH session, if any: the host checks read SSH_CONNECTION.
        env.pop("SSH_CONNECTION", None)
        env.update(env_more or {})
        return subprocess.run(
            [BIN / "ansible-playbook", "site.yml", "-i", str(inventory), "--check"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    return run


def _make_demo(**env: str) -> str:
    """Run `make demo` as a newcomer does, with more environment if given (Ansible's
    ANSIBLE_VERBOSITY, ANSIBLE_DIFF_ALWAYS); its output."""
    result = subprocess.run(
        ["make", "demo"], cwd=ROOT, env={**os.environ, **env}, capture_output=True, text=True,
        timeout=1200, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    return output


@pytest.fixture(scope="session")
def make_demo():
    """`make demo`, to run again (the demo target's own tests run it twice)."""
    return _make_demo


@pytest.fixture(scope="session")
def demo_target(make_demo) -> str:
    """The demo target, provisioned by `make demo` once per test session on a fresh container
    (as a newcomer's first `make demo`: a container an earlier run or another checkout left may
    serve a newer release, which a deploy of this tree's app rightly refuses), showing every
    change's diff (as --diff does: the secrets test reads it); that run's output."""
    subprocess.run(["docker", "rm", "-f", "flaskstack-demo"], capture_output=True, check=False)
    return make_demo(ANSIBLE_DIFF_ALWAYS="true")
