"""`make demo` end to end: the embedded target over a real SSH connection.

Runs what a newcomer runs, twice: the second run must change nothing. Then the
site answers on 127.0.0.1:8080 from this machine, through the container's nginx.
The demo is left running, as `make demo` leaves it (`make clean` removes it).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.targets import BIN, RECORD, on_target, run

ROOT = Path(__file__).resolve().parent.parent
URL = "http://127.0.0.1:8080"

pytestmark = pytest.mark.target


def changed_count(output: str, host: str) -> int:
    counts = re.findall(rf"^{host}\s*:\s*ok=\d+\s+changed=(\d+)", output, re.MULTILINE)
    assert counts, output[-3000:]
    return sum(int(c) for c in counts)


@pytest.fixture(scope="module")
def demo_runs(demo_target, make_demo):
    """The first `make demo` (every change's diff shown) and a second one, at -vvv with
    diffs: everything Ansible is willing to show of a run."""
    return demo_target, make_demo(
        ANSIBLE_VERBOSITY="3", ANSIBLE_DIFF_ALWAYS="true", DEMO_ARGS="-e flaskstack_skip_unchanged=false"
    )


def test_make_demo_prints_the_url_and_the_first_response(demo_runs):
    first, _ = demo_runs
    assert f"flaskstack demo: {URL}" in first
    assert re.search(r'GET /healthz -> 200 \{.*"status":"ok"', first)


def test_second_make_demo_changes_nothing(demo_runs):
    _, second = demo_runs
    assert "Nothing to do: this host is" not in second  # every task ran (DEMO_ARGS), none changed
    assert changed_count(second, "demo") == 0
    assert changed_count(second, "localhost") == 0


def test_a_run_with_nothing_to_do_skips_the_host(demo_runs):
    """The second run ran every task and recorded the host; the next finds it as that run left
    it and skips it before its facts are read: a handful of tasks, nothing changed."""
    result = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local")
    assert result.returncode == 0, result.output[-3000:]
    flat = " ".join(result.output.split())
    assert "Nothing to do: this host is as the last complete run left it" in flat, result.output[-3000:]
    recap = re.search(r"^demo\s*:\s*ok=(\d+)\s+changed=(\d+)", result.output, re.MULTILINE)
    assert recap and int(recap.group(2)) == 0, result.output[-3000:]
    assert int(recap.group(1)) < 20, result.output[-3000:]  # of the 200 a full run has
    assert "Gathering Facts" not in result.output and "facts | Read the host's facts" not in result.output
    # Nor the inventory's checks: given what its last complete run was given, it passed them.
    assert "assert | Check the apps, the groups and the batch" not in result.output


def test_input_the_app_model_refuses_is_refused_before_the_host_is_asked(demo_runs):
    """The checks come after the skip (a host given what its last complete run was given
    passed them then), but input the app model refuses is never compared with a record: it
    is refused naming the variable, the host is not asked (its record stays), and the next
    run with the inventory as it is still finds nothing to do."""
    app = {"name": "Bad Name", "src": "../../app", "entry_point": "hello:create_app()", "server_names": ["a"]}
    refused = run(
        str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local",
        "-e", json.dumps({"flaskstack_apps": [app]}),
    )  # fmt: skip
    assert refused.returncode != 0
    assert 'flaskstack_apps[0].name is "Bad Name"' in " ".join(refused.output.split()), refused.output[-3000:]
    # Had the host been asked, its record would be gone (a host that differs loses it).
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local")
    assert again.returncode == 0, again.output[-3000:]
    assert "Nothing to do: this host is as the last complete run left it" in " ".join(again.output.split())


# Where a run writes that the record leaves out, each for a reason: logs, caches and the
# package manager's bookkeeping (its status file is recorded); the services' own data; the
# users' homes (Ansible's temporary files; the demo's deploy user is local_target.yml's); the
# distribution's files (the packages are recorded); and what each app writes or keeps under
# its folder: a release's files (written once, by the release tool), the wheelhouse and
# uploads a deploy brings, the app's data, backups, and the last good settings. And the files
# in /etc the record leaves out by name (flaskstack/unchanged.py: the system rewrites
# them; the loader's cache follows the packages), and the record itself.
LEFT_OUT = re.compile(
    r"^/(var/(log|cache|tmp|backups|spool|mail|www)/|var/lib/(?!flaskstack/)|tmp/|root/|home/|usr/(?!local/)"
    r"|srv/[^/]+/(releases|wheelhouse|incoming|backups|settings-last-good|shared/data)/"
    r"|etc/(resolv\.conf|adjtime|mtab|ld\.so\.cache|\.pwd\.lock)$|var/lib/flaskstack/last-run\.json$)"
)


def test_a_run_writes_nothing_the_record_leaves_out(demo_runs):
    """Every file and link written since the demo's container started (its first run was
    cold: every role's every file) is one the record of the last complete run holds, or one
    of the kinds it leaves out on purpose: so no change a run would make goes unseen."""
    started = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.StartedAt}}", "flaskstack-demo"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    find = f"find / -xdev -newermt '{started}' \\( -type f -o -type l \\) -print"
    written = on_target(find).stdout.splitlines()
    recorded = json.loads(on_target(f"cat {RECORD}").stdout)["state"]
    outside = [path for path in written if path and path not in recorded and not LEFT_OUT.match(path)]
    assert outside == []
    assert "/etc/nginx/sites-available/hello.conf" in recorded and "/srv/hello/current" in recorded


def test_a_host_changed_by_hand_gets_every_task_and_is_put_right(demo_runs):
    """A settings file edited, a timer stopped, a package removed: the next run says so and
    runs every task, which puts each back; the run after that skips the host again."""
    site = "/etc/nginx/sites-available/hello.conf"
    before = on_target(f"sha256sum {site}").stdout
    on_target(
        f"echo '# edited by hand' >> {site} && systemctl stop apt-daily-upgrade.timer"
        " && DEBIAN_FRONTEND=noninteractive apt-get remove -y -q needrestart"
    )
    result = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local")
    assert result.returncode == 0, result.output[-3000:]
    flat = " ".join(result.output.split())
    assert "Every task runs: the host changed since the last complete run:" in flat, result.output[-3000:]
    assert f"{site} changed" in flat and "unit apt-daily-upgrade.timer is inactive (was active)" in flat
    assert "/var/lib/dpkg/status changed" in flat
    assert on_target(f"sha256sum {site}").stdout == before
    assert on_target("systemctl is-active apt-daily-upgrade.timer").stdout.strip() == "active"
    assert on_target("dpkg-query -W -f '${Status}' needrestart").stdout == "install ok installed"
    again = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local")
    said = re.findall(r"(?:Nothing to do|Every task runs): [^']*", " ".join(again.output.split()))
    assert said and said[0].startswith("Nothing to do: this host is as the last complete run left it"), said


def test_a_run_killed_half_way_leaves_no_record_and_the_next_runs_every_task(demo_runs):
    """ansible-playbook killed (SIGKILL, the whole process group) once the host is past the
    comparison: the record is gone before anything could change, so the next run does not
    trust the host to be as the last complete run left it, runs every task and records."""
    on_target(f"test -f {RECORD}")  # the earlier tests' last run recorded
    argv = [
        str(BIN / "ansible-playbook"),
        "site.yml",
        "-i",
        "inventory/local",
        "-e",
        "flaskstack_skip_unchanged=false",
    ]
    killed = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        # (on_target fails on an SSH error: only the host's own answer counts as gone)
        while on_target(f"if test -e {RECORD}; then echo kept; else echo gone; fi").stdout.strip() != "gone":
            assert killed.poll() is None, "the run ended before its record was removed"
            assert time.monotonic() < deadline, "the record is still there 120 s into the run"
            time.sleep(0.2)
        time.sleep(2)  # further in: reading facts, installing packages
    finally:
        os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    result = run(str(BIN / "ansible-playbook"), "site.yml", "-i", "inventory/local")
    assert result.returncode == 0, result.output[-3000:]
    flat = " ".join(result.output.split())
    assert "Every task runs: no record of a complete run on this host." in flat, result.output[-3000:]
    assert changed_count(result.output, "demo") == 0, result.output[-3000:]
    on_target(f"test -f {RECORD}")


def test_site_answers_from_this_machine(demo_runs):
    with urllib.request.urlopen(URL + "/", timeout=10) as response:
        assert response.status == 200
        assert "Hello from flaskstack" in response.read().decode()
    with urllib.request.urlopen(URL + "/healthz", timeout=10) as response:
        health = json.loads(response.read())
    assert health["status"] == "ok"
    assert re.fullmatch(r"[0-9a-f]{12}", health["release"])


def test_target_is_a_systemd_host_reached_over_ssh(demo_runs):
    """The inventory's path: SSH to 127.0.0.1:2222 with the demo's key and known_hosts."""
    ssh = ROOT / ".demo" / "ssh"
    result = subprocess.run(
        [
            "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={ssh / 'known_hosts'}",
            "-o", "StrictHostKeyChecking=yes", "-i", str(ssh / "id_ed25519"), "-p", "2222",
            "deploy@127.0.0.1", "cat /proc/1/comm; systemctl is-active nginx.service hello.service",
        ],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.split() == ["systemd", "active", "active"]


def test_secrets_never_appear_in_the_runs_diffs_or_verbose_output(demo_runs):
    """No secret value in the first run's diffs (the files holding them were written then)
    nor in the second's -vvv output (every module's arguments and results). --check --diff on
    a converged host is a step of the default scenario (the whole baseline), of the workers
    scenario and of the layout target."""
    first, second = demo_runs
    secret = (ROOT / ".demo" / "secrets" / "hello_secret_key").read_text().strip()
    assert len(secret) >= 32
    broker = (ROOT / ".demo" / "secrets" / "hello_broker_password").read_text().strip()
    assert len(broker) >= 32
    assert "ESTABLISH SSH CONNECTION FOR USER: deploy" in second  # -vvv: the connection, every task
    if changed_count(first, "demo"):  # a fresh demo (CI's): its files' diffs are shown
        assert "--- before" in first
    assert "FLASK_SECRET_KEY" in second  # the key's name may show; its value may not
    assert "REDIS_URL" in second or "broker_password" in second
    for output in (first, second):
        assert secret not in output
        assert broker not in output


def test_a_broken_nginx_setting_never_goes_live(demo_runs):
    """A value nginx rejects fails the run at `nginx -t`; the live site and the page stay as they were."""
    ssh = ROOT / ".demo" / "ssh"
    read_site = [
        "ssh", "-o", "BatchMode=yes", "-o", f"UserKnownHostsFile={ssh / 'known_hosts'}",
        "-i", str(ssh / "id_ed25519"), "-p", "2222", "deploy@127.0.0.1",
        "cat /etc/nginx/sites-available/hello.conf",
    ]  # fmt: skip
    before = subprocess.run(read_site, capture_output=True, text=True, timeout=60, check=True).stdout
    result = subprocess.run(
        [ROOT / ".venv/bin/ansible-playbook", "site.yml", "-i", "inventory/local",
         "-e", "nginx_client_max_body_size='10 megabytes'"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-3000:]
    assert "failed to validate" in output, output[-3000:]
    after = subprocess.run(read_site, capture_output=True, text=True, timeout=60, check=True).stdout
    assert after == before
    with urllib.request.urlopen(URL + "/healthz", timeout=10) as response:
        assert response.status == 200


def test_a_firewall_that_shuts_ssh_out_undoes_itself(demo_runs):
    """A rule of the inventory's own that drops new SSH connections: Ansible cannot connect
    through the new rules, so it never confirms them, and the host puts the old ones back by
    itself. The run fails saying so; SSH and the site work as before; the next good run
    applies the good rules."""
    site = [str(ROOT / ".venv/bin/ansible-playbook"), "site.yml", "-i", "inventory/local"]
    bad = {"host_firewall_rules": ["tcp dport 22 drop"], "host_firewall_confirm_timeout": 30}
    before = on_target("nft list table inet flaskstack").stdout
    result = subprocess.run(
        [*site, "-e", json.dumps(bad)], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    output = " ".join((result.stdout + result.stderr).split())
    assert result.returncode != 0, output[-3000:]
    assert (
        "The new firewall (/etc/nftables.conf) was not kept on demo: no new SSH connection got through it"
        in output
    ), output[output.find("fatal:") - 200 :][:4000]
    assert "the host put the previous rules back by itself, and Ansible reached it again" in output
    # Reached over a new SSH connection: the rules in force are the old ones, on disk too.
    assert on_target("nft list table inet flaskstack").stdout == before
    assert "dport 22 drop" not in on_target("cat /etc/nftables.conf").stdout
    assert "not confirmed" in on_target("journalctl -u flaskstack-firewall-rollback --no-pager -n 20").stdout
    with urllib.request.urlopen(URL + "/healthz", timeout=10) as response:
        assert response.status == 200
    again = subprocess.run(site, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    assert "Managed by flaskstack" in on_target("cat /etc/nftables.conf").stdout


def test_every_rendered_file_names_its_template(demo_runs):
    """A file found on the server leads to its template in one step: the header names it."""
    # Only the header lines: app.env holds a secret below its header.
    found = on_target(
        "grep -rH -m1 'Managed by flaskstack' /etc /usr/local /srv 2>/dev/null || true"
    ).stdout.splitlines()
    headers = dict(line.split(":", 1) for line in found)
    expected = {
        "/etc/nginx/nginx.conf": "templates/etc/nginx/nginx.conf.j2",
        "/etc/nginx/sites-available/_default.conf": "templates/etc/nginx/sites-available/_default.conf.j2",
        "/etc/nginx/sites-available/hello.conf": "templates/etc/nginx/sites-available/app.conf.j2",
        "/etc/systemd/system/hello.socket": "templates/etc/systemd/system/app.socket.j2",
        "/etc/systemd/system/hello.service": "templates/etc/systemd/system/app.service.j2",
        # The demo's worker, scheduler and timer (one template with the web unit), and Redis.
        "/etc/systemd/system/hello-worker@.service": "templates/etc/systemd/system/app.service.j2",
        "/etc/systemd/system/hello-scheduler@.service": "templates/etc/systemd/system/app.service.j2",
        "/etc/systemd/system/hello-purge.service": "templates/etc/systemd/system/app.service.j2",
        "/etc/systemd/system/hello-purge.timer": "templates/etc/systemd/system/app.timer.j2",
        "/etc/redis/flaskstack.conf": "templates/etc/redis/flaskstack.conf.j2",
        "/etc/flaskstack/hello/app.env": "templates/etc/flaskstack/app/app.env.j2",
        "/etc/flaskstack/hello/gunicorn.conf.py": "templates/etc/flaskstack/app/gunicorn.conf.py.j2",
        "/etc/flaskstack/hello/release.json": "templates/etc/flaskstack/app/release.json.j2",
        "/usr/local/sbin/flaskstack-nginx-check": "templates/usr/local/sbin/flaskstack-nginx-check.j2",
        "/usr/local/sbin/flaskstack-release": "templates/usr/local/sbin/flaskstack-release.j2",
        # The host baseline's and nginx's unit drop-in.
        "/etc/nftables.conf": "templates/etc/nftables.conf.j2",
        "/usr/local/sbin/flaskstack-firewall": "templates/usr/local/sbin/flaskstack-firewall.j2",
        "/etc/ssh/sshd_config.d/00-flaskstack.conf": "templates/etc/ssh/sshd_config.d/00-flaskstack.conf.j2",
        "/etc/sysctl.d/90-flaskstack.conf": "templates/etc/sysctl.d/90-flaskstack.conf.j2",
        "/etc/apt/apt.conf.d/52flaskstack-upgrades": "templates/etc/apt/apt.conf.d/52flaskstack-upgrades.j2",
        "/etc/systemd/system/nginx.service.d/flaskstack.conf": (
            "templates/etc/systemd/system/nginx.service.d/flaskstack.conf.j2"
        ),
    }
    for path, template in expected.items():
        assert path in headers, f"{path} has no flaskstack header: {sorted(headers)}"
        assert f"from {template}:" in headers[path], headers[path]
    for path, header in headers.items():
        named = re.search(r"from (\S+?):? local changes", header)
        assert named, f"{path}: {header}"
        assert (ROOT / named.group(1).rstrip(":")).is_file(), f"{path} names {named.group(1)}"
    # The release tool's code is the checkout's module, copied as it is.
    module = on_target("cat /usr/local/lib/flaskstack/flaskstack_release.py").stdout
    assert module == (ROOT / "flaskstack" / "release.py").read_text()
