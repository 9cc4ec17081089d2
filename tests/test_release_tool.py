"""flaskstack-release, the on-host release tool, run as a command on real folders.

Each test builds a host layout in a temporary folder: the app's release.json
(isolation "none": commands run as this user, without systemd), a wheelhouse
with one real wheel, release archives made by the control node's own packaging
code, and a real HTTP server on the app's unix socket that answers as the live
release (`current`) says. The tool's restart command is `true`: the test server
reads `current` on every request, as a restarted app server would.
"""

from __future__ import annotations

import http.server
import json
import os
import shutil
import signal
import socketserver
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from flaskstack import model
from flaskstack.packaging import build_release
from flaskstack.release import VENV

ROOT = Path(__file__).resolve().parent.parent
# The tool as the host's wrapper runs it (templates/usr/local/sbin/flaskstack-release.j2),
# with this test's config folder: argv[1] is the folder, the rest the tool's arguments.
TOOL = "import sys; from flaskstack.release import main; sys.exit(main(sys.argv[2:], config_dir=sys.argv[1]))"
WHEELHOUSE = "cp311-x86_64-test"

# The app's code: a factory whose health answer comes from a file of the release
# (or ANSWER in its env file), so a test can ship a release that fails before the
# switch (answer.txt) or only once it is live (live.txt, or BROKEN_WHEN_SERVED in
# the env file, read by the socket's server).
APP = """
import os, tinydep
HERE = os.path.dirname(__file__)
STATUS = os.environ.get("ANSWER") or open(os.path.join(HERE, "answer.txt")).read().strip()
def create_app():
    def app(environ, start_response):
        start_response(STATUS, [("Content-Type", "text/plain")])
        return [b"release " + os.environ.get("MARK", "").encode()]
    return app
"""


def make_wheel(folder: Path, name: str = "tinydep") -> Path:
    """<name> 1.0: one module and a console script, as a real wheel."""
    info = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": f"def main():\n    print('{name}')\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        f"{info}/entry_points.txt": f"[console_scripts]\n{name} = {name}:main\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    path = folder / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as wheel:
        for member, text in {**files, f"{info}/RECORD": record}.items():
            wheel.writestr(member, text)
    return path


class Host:
    """One app's folders on a pretend host, and the tool run against them."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.config_dir = tmp / "etc"
        self.home = tmp / "srv" / "site"
        self.socket = tmp / "site.sock"
        # The layout of an app "site" as the app model derives it.
        layout = model.Layout(root=str(tmp / "srv"), config_dir=str(self.config_dir), run_dir=str(tmp))
        paths = model.paths(
            {"name": "site", "server_names": ["site.test"], "shared_dirs": ["instance"]}, layout
        )
        assert (paths["home"], paths["socket"]) == (str(self.home), str(self.socket))
        self.settings = {
            "name": "site",
            **{k: paths[k] for k in ("home", "releases_dir", "current", "shared_dir")},
            **{k: paths[k] for k in ("wheelhouse_dir", "history_file", "lock_file", "env_file", "socket")},
            "shared": paths["shared"],
            "writable_paths": paths["writable_paths"],
            "backups_dir": paths["backups_dir"],
            "backup_command": "",
            "keep_backups": 2,
            "user": os.environ.get("USER", "root"),
            "group": "unused",
            "service": "site.service",
            "socket_unit": "site.socket",
            "restart_command": ["true"],
            "server": "uwsgi",  # the generic import path: module, then factory()
            "entry_point": "siteapp:create_app()",
            "health_path": "/healthz",
            "health_host": "site.test",
            "health_timeout": 2,
            "init_command": "",
            "migrate_command": "",
            "keep_releases": 5,
            "isolation": "none",
        }
        self.write_settings()
        self.env_file = self.config_dir / "site" / "app.env"
        self.env_file.write_text('MARK="from the env file"\n')
        wheelhouse = self.home / "wheelhouse" / WHEELHOUSE
        wheelhouse.mkdir(parents=True)
        make_wheel(wheelhouse)
        (wheelhouse / "requirements.txt").write_text("tinydep==1.0\n")
        (wheelhouse / "server-requirements.txt").write_text("")
        (self.home / "shared" / "instance").mkdir(parents=True)

    def write_settings(self, **changes) -> None:
        self.settings.update(changes)
        (self.config_dir / "site").mkdir(parents=True, exist_ok=True)
        (self.config_dir / "site" / "release.json").write_text(json.dumps(self.settings))

    def tool(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", TOOL, str(self.config_dir), *args], cwd=ROOT,
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip

    def release(
        self,
        label: str,
        answer: str = "200 OK",
        live: str = "200",
        broken: bool = False,
        extra: dict | None = None,
    ) -> str:
        """Package a release (control node code), upload and prepare it; its id."""
        src = self.tmp / "src" / label
        (src / "siteapp").mkdir(parents=True)
        for name, text in (extra or {}).items():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_text(text)
        code = "this is not python(" if broken else APP + f"\nLABEL = {label!r}\n"
        (src / "siteapp" / "__init__.py").write_text(code)
        (src / "siteapp" / "answer.txt").write_text(answer)
        (src / "live.txt").write_text(live)
        (src / "requirements.txt").write_text("tinydep==1.0\n")
        release = build_release(src, "site", [], [], self.tmp / "cache")
        result = self.prepare(release)
        assert result.returncode == 0, result.stdout + result.stderr
        return release.id

    def prepare(self, release, wheelhouse: str = WHEELHOUSE) -> subprocess.CompletedProcess:
        """`flaskstack-release prepare` of a packaged release, uploaded as fab and Ansible do."""
        archive = self.upload(release.archive)
        return self.tool("prepare", "site", release.id, "--archive", archive, "--wheelhouse", wheelhouse)

    def upload(self, archive: str) -> str:
        """Where fab and Ansible put an archive: the app's upload folder (the tool takes no other)."""
        folder = self.home / "incoming"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(archive, folder / Path(archive).name)
        return str(folder / Path(archive).name)

    def live(self) -> str | None:
        current = self.home / "current"
        return Path(os.readlink(current)).name if current.is_symlink() else None

    def releases(self) -> list[dict]:
        return json.loads(self.tool("releases", "site", "--json").stdout)


class LiveServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def host(tmp_path):
    host = Host(tmp_path)

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            try:
                text = (host.home / "current" / "live.txt").read_text().strip()
                if "BROKEN_WHEN_SERVED" in host.env_file.read_text():
                    text = "503"
                if text == "garbage":  # an answer http.client rejects (BadStatusLine)
                    self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                    return
                code = int(text)
            except (OSError, ValueError):
                code = 502
            self.send_response(code)
            self.end_headers()
            self.wfile.write(f"{self.path} {self.headers['Host']}".encode())

        def log_message(self, *args):
            pass

        def address_string(self):
            return "unix"

    server = LiveServer(str(host.socket), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield host
    server.shutdown()
    server.server_close()


def test_a_good_release_goes_live_and_is_recorded(host):
    first = host.release("one")
    result = host.tool("activate", "site", first, "--note", "first deploy")
    assert result.returncode == 0, result.stderr
    assert f"ACTIVATED {first}" in result.stdout
    for step in ("check", "switch", "restart", "health"):
        assert f"  {step}" in result.stdout
    # No init or migrate command: one import of the app builds it and answers /healthz.
    check = next(line for line in result.stdout.splitlines() if line.startswith("  check"))
    assert "builds; GET /healthz answered 200 OK (check and answer in one import)" in check
    assert "  answer" not in result.stdout
    assert host.live() == first
    history = [json.loads(line) for line in (host.home / "history.jsonl").read_text().splitlines()]
    assert history[-1] | {"time": None} == {
        "action": "deploy", "from": None, "note": "first deploy", "release": first, "time": None,
    }  # fmt: skip
    assert "siteapp:create_app() builds" in result.stdout


def test_shared_paths_outlive_releases(host):
    """instance/ of every release is one folder in shared/: what one release writes there,
    the next one reads, and what an archive brought at that path never serves."""
    first = host.release("one")
    link = host.home / "releases" / first / "instance"
    assert link.is_symlink() and os.readlink(link) == str(host.home / "shared" / "instance")
    (link / "app.db").write_text("rows of release one")
    src = host.tmp / "src" / "two"
    second = host.release("two", extra={"instance/app.db": "stale copy in the archive"})
    assert (host.home / "releases" / second / "instance" / "app.db").read_text() == "rows of release one"
    assert (src / "instance" / "app.db").is_file()  # the archive did carry it
    # Removing a release removes its link, never the shared data.
    assert host.tool("prune", "site", "--keep", "1").returncode == 0
    assert (host.home / "shared" / "instance" / "app.db").read_text() == "rows of release one"
    # The release's own code was byte-compiled: the app never writes __pycache__ there.
    assert list((host.home / "releases" / second / "siteapp" / "__pycache__").glob("*.pyc"))


def test_run_is_a_command_in_the_live_release_as_the_app(host):
    assert "no live release" in host.tool("run", "site", "--", "true").stderr
    first = host.release("one")
    assert host.tool("activate", "site", first).returncode == 0
    result = host.tool("run", "site", "--", "sh", "-c", 'echo "$MARK in $PWD"; echo oops >&2; exit 3')
    assert result.returncode == 3
    assert result.stdout == f"from the env file in {host.home / 'releases' / first}\n"
    assert result.stderr == "oops\n"
    assert "give the command" in host.tool("run", "site").stderr


def test_the_sandbox_is_read_from_the_service_unit(host):
    from flaskstack import release

    unit = host.tmp / "site.service"
    unit.write_text(
        "[Service]\nUser=site\nExecStart=/bin/true\n"
        f"{release.SANDBOX_BEGIN}\nProtectSystem=strict\n# a comment\n\nCapabilityBoundingSet=\n"
        f"{release.SANDBOX_END}\nRestart=on-failure\n"
    )
    host.write_settings(service_unit_file=str(unit))
    app = release.App("site", host.config_dir)
    assert release.sandbox(app) == ["ProtectSystem=strict", "CapabilityBoundingSet="]
    # The template writes exactly the markers the tool looks for.
    template = (ROOT / "templates" / "etc" / "systemd" / "system" / "app.service.j2").read_text()
    assert release.SANDBOX_BEGIN in template.splitlines()
    assert release.SANDBOX_END in template.splitlines()


def test_a_migration_is_preceded_by_a_backup_of_each_sqlite_database(host):
    """Before migrate_command: a consistent copy of every SQLite database in the writable paths
    and backup_command's output; the newest keep_backups kept; a failed migration names it."""
    import sqlite3

    database = host.home / "shared" / "instance" / "app.db"
    with sqlite3.connect(database) as db:
        db.execute("create table visit (n)")
        db.execute("insert into visit values (1)")
    (host.home / "shared" / "instance" / "notes.txt").write_text("not a database")
    host.write_settings(migrate_command="echo migrated", backup_command="echo dump of $MARK")
    backups = host.home / "backups"
    for label in ("one", "two", "three"):
        result = host.tool("activate", "site", host.release(label))
        assert result.returncode == 0, result.stderr
        assert "backup " in result.stdout
    kept = sorted(backups.iterdir())
    assert len(kept) == 2  # keep_backups
    copy = kept[-1] / "shared" / "instance" / "app.db"
    with sqlite3.connect(copy) as db:
        assert db.execute("select n from visit").fetchall() == [(1,)]
    assert not (kept[-1] / "shared" / "instance" / "notes.txt").exists()
    assert (kept[-1] / "backup_command.out").read_text() == "dump of from the env file\n"
    host.write_settings(migrate_command="echo half-way; exit 4")
    failed = host.tool("activate", "site", host.release("four"))
    assert failed.returncode == 1
    newest = sorted(backups.iterdir())[-1]
    assert f"the data as it was before: {newest}" in failed.stderr


def test_a_migration_with_nothing_to_back_up_says_so(host):
    """An app on PostgreSQL with no backup_command (microblog as a new user deploys it): no
    SQLite database to copy, no command. An empty folder was said to be its backup, and named
    as "the data as it was before" when the migration failed."""
    for label, command in (("one", ""), ("one-b", "true")):  # "true": an app's way to say none
        host.write_settings(migrate_command="echo migrated", backup_command=command)
        result = host.tool("activate", "site", host.release(label))
        assert result.returncode == 0, result.stderr
        migrate = next(line for line in result.stdout.splitlines() if line.startswith("  migrate"))
        assert "no backup (no SQLite database in its writable paths, and no backup_command or one" in migrate
        assert not (host.home / "backups").exists() or not list((host.home / "backups").iterdir())
    host.write_settings(migrate_command="exit 4", backup_command="")
    failed = host.tool("activate", "site", host.release("two"))
    assert failed.returncode == 1
    assert "no backup was made before it (no SQLite database" in failed.stderr
    assert "the data as it was before" not in failed.stderr


def test_hash_pinned_requirements_install_beside_an_unpinned_app_server(host):
    """--hash pins put pip in hash-checking mode; the app server's packages, pinned by version
    only, must not break it: they are installed by a pip run of their own."""
    import hashlib

    wheelhouse = host.home / "wheelhouse" / WHEELHOUSE
    digest = hashlib.sha256((wheelhouse / "tinydep-1.0-py3-none-any.whl").read_bytes()).hexdigest()
    (wheelhouse / "requirements.txt").write_text(f"tinydep==1.0 --hash=sha256:{digest}\n")
    make_wheel(wheelhouse, "serverdep")
    (wheelhouse / "server-requirements.txt").write_text("serverdep==1.0\n")
    release = host.release("hashed")
    venv_bin = host.home / "releases" / release / "venv" / "bin"
    assert (venv_bin / "tinydep").is_file() and (venv_bin / "serverdep").is_file()


def test_activating_the_live_release_changes_nothing(host):
    first = host.release("one")
    host.tool("activate", "site", first)
    again = host.tool("activate", "site", first)
    assert again.returncode == 0
    assert f"unchanged {first}" in again.stdout
    actions = [json.loads(line)["action"] for line in (host.home / "history.jsonl").read_text().splitlines()]
    assert actions == ["pending", "deploy"]  # the second activate wrote nothing


def test_a_second_release_links_the_venv_and_fixes_its_paths(host):
    first = host.release("one")
    second = host.release("two")
    venvs = [host.home / "releases" / release / "venv" for release in (first, second)]
    # Each venv's scripts name its own path; the first one's were not touched.
    for venv in venvs:
        assert (venv / "bin" / "tinydep").read_text().splitlines()[0] == f"#!{venv}/bin/python"
    assert str(venvs[0]) not in (venvs[1] / "pyvenv.cfg").read_text()
    # The packages are the same files (hard links), not copies.
    module = (
        Path("lib")
        / "python{}.{}".format(*sys.version_info[:2])
        / "site-packages"
        / "tinydep"
        / "__init__.py"
    )
    assert (venvs[0] / module).stat().st_ino == (venvs[1] / module).stat().st_ino
    for venv in venvs:
        run = subprocess.run([venv / "bin" / "tinydep"], capture_output=True, text=True, check=True)
        assert run.stdout.strip() == "tinydep"


def test_a_release_that_does_not_import_never_goes_live(host):
    good = host.release("good")
    host.tool("activate", "site", good)
    bad = host.release("bad", broken=True)
    result = host.tool("activate", "site", bad)
    assert result.returncode == 1
    assert f"release {bad} does not build its app (siteapp:create_app())" in result.stderr
    assert "SyntaxError" in result.stderr
    assert f"nothing switched: {good} still live; discarded {bad}" in result.stderr
    assert host.live() == good
    assert not (host.home / "releases" / bad).exists()


def test_a_release_that_fails_its_health_path_before_the_switch_never_goes_live(host):
    good = host.release("good")
    host.tool("activate", "site", good)
    sick = host.release("sick", answer="503 Service Unavailable")
    result = host.tool("activate", "site", sick)
    assert result.returncode == 1
    assert f"release {sick} does not answer /healthz (one WSGI call, before it serves)" in result.stderr
    assert "GET /healthz answered 503 Service Unavailable" in result.stderr
    assert host.live() == good
    assert not (host.home / "releases" / sick).exists()


def test_a_release_that_fails_its_health_check_once_live_is_switched_back(host):
    good = host.release("good")
    host.tool("activate", "site", good)
    sick = host.release("sick-when-live", live="500")
    result = host.tool("activate", "site", sick)
    assert result.returncode == 1
    assert "health check through" in result.stderr and "-> 500" in result.stderr
    assert f"switched back to {good}, which answers; discarded {sick}" in result.stderr
    assert "  rollback ok" in result.stdout
    assert host.live() == good
    assert not (host.home / "releases" / sick).exists()
    assert json.loads((host.home / "history.jsonl").read_text().splitlines()[-1])["action"] == "auto-rollback"


def test_workers_stopped_after_the_switch_run_again_when_neither_release_answers(host, tmp_path, monkeypatch):
    """The workers are asked to stop as the web server restarts after the switch; when the
    release put back does not answer either (its database down, say), they are started
    again all the same, on it, as they would be running had they never been stopped."""
    good = host.release("good")
    assert host.tool("activate", "site", good).returncode == 0
    calls = tmp_path / "systemctl.log"
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f'#!/bin/sh\necho "$* @ $(readlink {host.home}/current)" >> {calls}\n')
    (fake / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    # Every restart from now on breaks the good release's answer: the way back fails too.
    breaks_good = ["sh", "-c", f"echo 500 > {host.home}/releases/{good}/live.txt"]
    host.write_settings(restart_command=breaks_good, worker_units=["site-worker@1.service"])
    sick = host.release("sick-when-live", live="500")
    result = host.tool("activate", "site", sick)
    assert result.returncode == 1
    said = calls.read_text().splitlines()
    assert f"stop --no-block -- site-worker@1.service @ {host.home}/releases/{sick}" in said, said
    # Started again with `current` on the release put back.
    assert said[-1] == f"restart -- site-worker@1.service @ {host.home}/releases/{good}", said
    assert host.live() == good


def test_rollback_goes_to_the_previous_release_and_back(host):
    first, second = host.release("one"), host.release("two")
    host.tool("activate", "site", first)
    host.tool("activate", "site", second)
    assert [(r["release"], r["state"]) for r in host.releases()] == [(second, "live"), (first, "previous")]
    back = host.tool("rollback", "site")
    assert back.returncode == 0, back.stderr
    assert host.live() == first
    assert host.tool("rollback", "site").returncode == 0
    assert host.live() == second
    assert host.tool("rollback", "site", first).returncode == 0
    assert host.live() == first
    missing = host.tool("rollback", "site", "0123456789ab")
    assert missing.returncode == 1
    assert "release 0123456789ab is not on this host" in missing.stderr
    assert host.live() == first


def test_rollback_without_a_previous_release_says_so(host):
    host.tool("activate", "site", host.release("one"))
    result = host.tool("rollback", "site")
    assert result.returncode == 1
    assert "site: no previous release to roll back to" in result.stderr


def test_migrate_runs_before_the_switch_and_a_failure_stops_the_deploy(host):
    log = host.home / "shared" / "migrations.log"
    host.write_settings(
        migrate_command=f'echo "$(cat REVISION) live=$(readlink {host.home}/current)" >> {log}'
    )
    first = host.release("one")
    host.tool("activate", "site", first)
    second = host.release("two")
    assert host.tool("activate", "site", second).returncode == 0
    lines = log.read_text().splitlines()
    # Each release migrated itself while the one before it was still live.
    assert lines == [f"{first} live=", f"{second} live={host.home}/releases/{first}"]
    host.write_settings(migrate_command="echo 'no such column' >&2; exit 3")
    third = host.release("three")
    result = host.tool("activate", "site", third)
    assert result.returncode == 1
    assert "site: migrate_command failed: exit 3" in result.stderr
    assert "no such column" in result.stderr
    assert host.live() == second


def test_migrate_when_changed_runs_the_migrations_only_when_their_files_change(host):
    """A code-only release with the migrations of the last migration skips migrate_command
    and imports the app once; new migration files run it (after its backup) as always;
    `migrate --force` runs it whatever the files say; a failed migration is forgotten."""
    log = host.home / "shared" / "migrations.log"
    host.write_settings(
        migrate_command=f"cat REVISION >> {log}; echo >> {log}", migrate_when_changed=["migrations"]
    )
    v1 = {"migrations/versions/001_first.py": "revision = '001'\n"}
    first = host.release("one", extra=v1)
    assert host.tool("activate", "site", first).returncode == 0
    code_only = host.release("two", extra=v1)
    result = host.tool("activate", "site", code_only)
    assert result.returncode == 0, result.stderr
    assert log.read_text().split() == [first]
    migrate = next(line for line in result.stdout.splitlines() if line.startswith("  migrate"))
    assert f"skipped: migrations as when {first} migrated at" in migrate
    assert "(check and answer in one import)" in result.stdout
    assert "  answer" not in result.stdout
    v2 = v1 | {"migrations/versions/002_second.py": "revision = '002'\n"}
    migrations = host.release("three", extra=v2)
    result = host.tool("activate", "site", migrations)
    assert result.returncode == 0, result.stderr
    assert log.read_text().split() == [first, migrations]
    assert "  answer" in result.stdout  # migrate ran between the gates: the app is imported again
    assert "backup " in next(line for line in result.stdout.splitlines() if line.startswith("  migrate"))
    # By hand, whatever the files say.
    assert host.tool("migrate", "site", migrations, "--force").returncode == 0
    assert log.read_text().split() == [first, migrations, migrations]
    # A migration that fails leaves the database unknown: the last one is forgotten, and the
    # next release runs migrate_command, even with the files of that last migration.
    host.write_settings(migrate_command="exit 3")
    v3 = v2 | {"migrations/versions/003_third.py": "revision = '003'\n"}
    assert host.tool("activate", "site", host.release("four", extra=v3)).returncode == 1
    host.write_settings(migrate_command=f"cat REVISION >> {log}; echo >> {log}")
    again = host.release("five", extra=v2)
    assert host.tool("activate", "site", again).returncode == 0
    assert log.read_text().split()[-1] == again


def test_init_command_runs_once_in_the_apps_life(host):
    log = host.home / "shared" / "init.log"
    host.write_settings(init_command=f"echo init >> {log}")
    host.tool("activate", "site", host.release("one"))
    host.tool("activate", "site", host.release("two"))
    assert log.read_text() == "init\n"


def test_prune_keeps_the_newest_releases_and_never_the_live_or_previous_one(host):
    host.write_settings(keep_releases=2)
    ids = []
    for n in range(4):
        ids.append(host.release(f"r{n}"))
        assert host.tool("activate", "site", ids[-1]).returncode == 0
    assert sorted(p.name for p in (host.home / "releases").iterdir()) == sorted(ids[2:])
    # A release prepared for the next deploy is newer than the live one: it stays.
    upcoming = host.release("upcoming")
    host.tool("prune", "site")
    assert (host.home / "releases" / upcoming).is_dir()
    host.tool("activate", "site", ids[3])
    # Rolled back: the live one is old, and the previous one must stay too.
    host.tool("rollback", "site", ids[2])
    host.write_settings(keep_releases=1)
    host.tool("prune", "site")
    assert sorted(p.name for p in (host.home / "releases").iterdir()) == sorted([ids[2], ids[3]])
    # The wheelhouse stays while a kept release was built from it.
    assert (host.home / "wheelhouse" / WHEELHOUSE).is_dir()


def test_prepare_without_the_wheelhouse_fails_and_leaves_no_release(host):
    src = host.tmp / "src" / "lonely"
    src.mkdir(parents=True)
    (src / "app.py").write_text("")
    release = build_release(src, "site", [], [], host.tmp / "cache")
    result = host.prepare(release, wheelhouse="cp311-nope")
    assert result.returncode == 1
    assert "no wheelhouse" in result.stderr and "cp311-nope" in result.stderr
    assert not (host.home / "releases" / release.id).exists()


def test_an_app_that_was_never_provisioned_is_named(host):
    result = host.tool("releases", "shop")
    assert result.returncode == 1
    assert "shop: no " in result.stderr and "run `ansible-playbook site.yml` first" in result.stderr


def test_status_and_info_describe_the_host(host):
    first = host.release("one")
    host.tool("activate", "site", first)
    status = json.loads(host.tool("status", "site", "--json").stdout)
    assert status["live"] == first
    assert status["health"] == "GET /healthz -> 200"
    info = json.loads(host.tool("info").stdout)
    assert info["apps"]["site"] == {"live": first, "releases": [first], "wheelhouses": [WHEELHOUSE]}
    assert info["python"] == "{}.{}.{}".format(*sys.version_info[:3])


def test_a_shared_database_is_migrated_once_then_every_host_skips_it(host):
    """migrate_once: `migrate` on the first host, then `activate --skip-migrate` everywhere."""
    log = host.home / "shared" / "migrations.log"
    host.write_settings(migrate_command=f"echo migrated >> {log}")
    release = host.release("one")
    migrated = host.tool("migrate", "site", release)
    assert migrated.returncode == 0, migrated.stderr
    assert "  migrate  ok" in migrated.stdout
    assert host.live() is None  # migrating switches nothing
    activated = host.tool("activate", "site", release, "--skip-migrate")
    assert activated.returncode == 0, activated.stderr
    assert "  migrate" not in activated.stdout
    assert log.read_text() == "migrated\n"


def test_a_src_layout_project_is_installed_as_a_wheel_and_each_release_keeps_its_own(host):
    """A pyproject.toml project: its wheel (built on the control node) is installed into the
    release's venv. The second release links the first one's venv and replaces the project in
    it: the first release must keep its own build (hard-linked files are never rewritten)."""
    from flaskstack.packaging import read_project

    paths = model.paths(
        {
            "name": "site",
            "server_names": ["site.test"],
            "shared_dirs": ["instance"],
            "project": {"from_venv": ["siteapp"]},
        },
        model.Layout(root=str(host.tmp / "srv"), config_dir=str(host.config_dir), run_dir=str(host.tmp)),
    )
    host.write_settings(shared=paths["shared"], writable_paths=paths["writable_paths"])
    releases = []
    for label in ("one", "two"):
        src = host.tmp / "src" / f"project-{label}"
        (src / "src" / "siteapp").mkdir(parents=True)
        (src / "src" / "siteapp" / "__init__.py").write_text(f"import tinydep\n\nLABEL = {label!r}\n")
        (src / "pyproject.toml").write_text(
            '[project]\nname = "siteapp"\nversion = "1.0"\ndescription = "test"\ndependencies = ["tinydep"]\n'
            '[build-system]\nrequires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n'
        )
        project = read_project(src)
        assert project.wheel and project.requirements == "tinydep\n"
        release = build_release(src, "site", [], [], host.tmp / "cache", project)
        assert not (src / "build").exists() and not list(src.glob("*.egg-info"))  # src stays as it was
        result = host.prepare(release)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "siteapp-1.0-py2.py3-none-any.whl installed" in result.stdout
        releases.append(release.id)
    for release, label in zip(releases, ("one", "two"), strict=True):
        venv = host.home / "releases" / release / "venv"
        code = "import siteapp; print(siteapp.LABEL, siteapp.__file__)"
        out = subprocess.run(
            [venv / "bin/python", "-c", code], capture_output=True, text=True, cwd=venv.parent
        )
        assert out.stdout.split() == [
            label,
            str(
                venv
                / "lib"
                / f"python{sys.version_info[0]}.{sys.version_info[1]}"
                / "site-packages"
                / "siteapp"
                / "__init__.py"
            ),
        ], out
        # Flask's instance folder of an installed app: the shared one.
        assert os.readlink(venv / "var" / "siteapp-instance") == str(host.home / "shared" / "instance")


def test_a_project_missing_a_dependency_is_refused_when_prepared(host):
    """pip check after the project's wheel: a dependency the wheelhouse lacks stops prepare."""
    from flaskstack.packaging import read_project

    src = host.tmp / "src" / "missing"
    (src / "siteapp").mkdir(parents=True)
    (src / "siteapp" / "__init__.py").write_text("")
    (src / "pyproject.toml").write_text(
        '[project]\nname = "siteapp"\nversion = "1.0"\ndescription = "test"\n'
        'dependencies = ["tinydep", "notinthewheelhouse"]\n'
        '[build-system]\nrequires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n'
    )
    release = build_release(src, "site", [], [], host.tmp / "cache", read_project(src))
    result = host.prepare(release)
    assert result.returncode != 0
    assert "notinthewheelhouse" in result.stdout + result.stderr
    assert not (host.home / "releases" / release.id).exists()


def test_a_project_that_does_not_build_says_why_in_the_backends_words(tmp_path):
    from flaskstack.packaging import WheelhouseError, read_project

    (tmp_path / "siteapp").mkdir()
    (tmp_path / "siteapp" / "__init__.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(
        '[project]\nname = "siteapp"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["flit_core<4"]\nbuild-backend = "flit_core.buildapi"\n'
    )
    with pytest.raises(WheelhouseError) as failed:
        build_release(tmp_path, "site", [], [], tmp_path / "cache", read_project(tmp_path))
    assert str(failed.value).splitlines()[1:] == [
        "flit_core.config.ConfigError: description must be specified under [project] "
        "or listed as a dynamic field"
    ]


def test_restart_goes_through_the_gates_and_keeps_serving_when_they_fail(host):
    """A settings change restarts the live release only if it builds and answers with them."""
    marker = host.tmp / "restarted"
    host.write_settings(restart_command=["touch", str(marker)])
    live = host.release("one")
    assert host.tool("activate", "site", live).returncode == 0
    marker.unlink()
    ok = host.tool("restart", "site")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert marker.exists() and f"site: restarted {live}" in ok.stdout
    marker.unlink()
    # Settings the app answers 500 with (here: its answer file).
    (host.home / "releases" / live / "siteapp" / "answer.txt").write_text("500 Internal Server Error")
    refused = host.tool("restart", "site")
    assert refused.returncode != 0
    assert "NOT restarted: the running site.service keeps serving" in refused.stderr, refused.stderr
    assert not marker.exists()
    assert host.live() == live


# -- faults: the client gone, signals, torn history, a process that died mid-activation --------


def history(host) -> list[dict]:
    return [
        json.loads(line) for line in (host.home / "history.jsonl").read_text().splitlines() if line.strip()
    ]


def test_a_torn_history_line_is_skipped_and_the_next_line_starts_on_its_own(host):
    first = host.release("one")
    assert host.tool("activate", "site", first).returncode == 0
    with (host.home / "history.jsonl").open("a") as log:
        log.write('{"action": "deploy", "release": "tor')  # a power cut mid-write
    assert host.tool("releases", "site").returncode == 0
    status = host.tool("status", "site")
    assert "1 torn line skipped" in status.stdout, status.stdout + status.stderr
    second = host.release("two")
    activated = host.tool("activate", "site", second)
    assert activated.returncode == 0, activated.stdout + activated.stderr
    assert host.live() == second
    lines = (host.home / "history.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["action"] == "deploy" and lines[-3].endswith('"tor')


def test_the_activation_finishes_when_its_client_goes_away(host):
    """The SSH client killed: stdout is a closed pipe. The tool does not stop at its next print."""
    first = host.release("one")
    proc = subprocess.Popen(
        [sys.executable, "-c", TOOL, str(host.config_dir), "activate", "site", first],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    proc.stdout.close()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 0
    assert host.live() == first and history(host)[-1]["action"] == "deploy"


def test_a_signal_after_the_switch_switches_back(host):
    first = host.release("one")
    host.tool("activate", "site", first)
    second = host.release("two", live="500")  # fails its health once live: the tool waits, retrying
    host.write_settings(health_timeout=30)
    proc = subprocess.Popen(
        [sys.executable, "-c", TOOL, str(host.config_dir), "activate", "site", second],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 60
    while host.live() != second and time.monotonic() < deadline:
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "interrupted (SIGTERM)" in err and f"switched back to {first}, which answers" in err
    assert host.live() == first
    assert [e["action"] for e in history(host)][-2:] == ["pending", "auto-rollback"]


def test_an_answer_http_client_rejects_switches_back(host):
    first = host.release("one")
    host.tool("activate", "site", first)
    second = host.release("two", live="garbage")
    result = host.tool("activate", "site", second)
    assert result.returncode == 1
    assert "BadStatusLine" in result.stderr and f"switched back to {first}" in result.stderr
    assert host.live() == first


def test_a_first_release_that_fails_its_health_is_taken_down_and_not_already_live(host):
    first = host.release("one", live="500")
    host.write_settings(stop_command=["true"])
    result = host.tool("activate", "site", first)
    assert result.returncode == 1
    assert "nothing serves site now" in result.stderr, result.stderr
    assert host.live() is None and history(host)[-1]["action"] == "failed"


def test_already_live_is_not_enough_it_must_answer(host):
    first = host.release("one")
    assert host.tool("activate", "site", first).returncode == 0
    (host.home / "releases" / first / "live.txt").write_text("500")
    again = host.tool("activate", "site", first)
    assert again.returncode == 1 and "health check" in again.stderr


@pytest.mark.parametrize("answers, outcome", [("200", "deploy"), ("500", "auto-rollback")])
def test_an_activation_that_died_after_the_switch_is_finished_by_the_next_command(host, answers, outcome):
    """kill -9 (or a power cut) between the switch and the history line: the pending line tells
    the next command what to check."""
    first = host.release("one")
    host.tool("activate", "site", first)
    second = host.release("two", live=answers)
    # What the dead process left: a pending line, and current moved.
    with (host.home / "history.jsonl").open("a") as log:
        log.write(json.dumps({"action": "pending", "from": first, "note": "deploy: fab", "release": second,
                              "time": "2026-11-25T00:00:00.000000Z"}) + "\n")  # fmt: skip
    os.remove(host.home / "current")
    os.symlink(host.home / "releases" / second, host.home / "current")
    result = host.tool("restart", "site")
    assert "recover" in result.stdout, result.stdout + result.stderr
    assert host.live() == (second if answers == "200" else first)
    assert outcome in [e["action"] for e in history(host)][-2:]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["status", "../site"], "'../site' is not an app name"),
        (
            ["prepare", "site", "x", "--archive", "/etc/shadow", "--wheelhouse", "k"],
            "/etc/shadow is not in the app's upload folder",
        ),
        (
            ["prepare", "site", "x", "--archive", "{incoming}/x.tar.gz", "--wheelhouse", "k",
             "--wheelhouse-archive", "/etc/passwd", "--remove-archive"],
            "/etc/passwd is not in the app's upload folder",
        ),
    ],
)  # fmt: skip
def test_the_tool_takes_only_its_own_names_and_files(host, argv, message):
    (host.home / "incoming").mkdir(exist_ok=True)
    (host.home / "incoming" / "x.tar.gz").write_bytes(b"")
    result = host.tool(*[a.format(incoming=host.home / "incoming") for a in argv])
    assert result.returncode != 0 and message in result.stderr, result.stderr
    assert Path("/etc/passwd").exists()


def test_a_release_prepared_already_is_kept_and_its_new_upload_removed(host):
    """fab sends a release only when the host lacks it, but one prepared meanwhile (by
    ansible-playbook) must not leave its second upload behind in the upload folder."""
    release = host.release("one")
    uploaded = [path for path in (host.home / "incoming").iterdir() if release in path.name]
    assert uploaded, "the release's upload is not where prepare was given it"
    again = host.tool(
        "prepare",
        "site",
        release,
        "--archive",
        str(uploaded[0]),
        "--wheelhouse",
        WHEELHOUSE,
        "--remove-archive",
    )
    assert again.returncode == 0 and "is already prepared" in again.stdout, again.stdout + again.stderr
    assert not uploaded[0].exists()


def test_a_multi_line_env_value_reaches_the_command_exactly(host):
    """As the appserver role writes it (templates/etc/flaskstack/app/app.env.j2) and systemd reads it."""
    value = '-----BEGIN KEY-----\nabc"def\\ghi\n-----END KEY-----'
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    (host.config_dir / "site" / "app.env").write_text(f'# env\nPEM="{escaped}"\nMARK="after"\n')
    host.tool("activate", "site", host.release("one"))
    code = "import os; print(repr(os.environ['PEM']), os.environ['MARK'])"
    result = host.tool("run", "site", "--", sys.executable, "-c", code)
    assert result.stdout.strip() == f"{value!r} after", result.stdout + result.stderr


def test_the_deploy_lock_keeps_out_every_other_deploy_and_restart(host):
    release = host.release("one")
    taken = host.tool("lock", "site", "--holder", "fab deploy by ana@laptop", "--token", "t1")
    assert taken.returncode == 0, taken.stderr
    # A second deploy, ansible-playbook's restart, a rollback: all refused, naming the holder.
    for argv in (["activate", "site", release], ["restart", "site"], ["rollback", "site"]):
        refused = host.tool(*argv)
        assert refused.returncode == 1 and "locked for a deploy by fab deploy by ana@laptop" in refused.stderr
    second = host.tool("lock", "site", "--holder", "ansible-playbook by bo@ci", "--token", "t2")
    assert second.returncode == 1 and "fab unlock --force" in second.stderr
    assert "locked for a deploy by fab deploy by ana@laptop" in host.tool("status", "site").stdout
    # The holder's own commands go through; its unlock releases it; a stranger's needs --force.
    assert host.tool("--lock-token", "t1", "activate", "site", release).returncode == 0
    assert host.tool("unlock", "site", "--token", "t2").returncode == 1
    assert host.tool("unlock", "site", "--token", "t1").returncode == 0
    assert host.tool("lock", "site", "--holder", "x", "--token", "t3").returncode == 0
    forced = host.tool("unlock", "site", "--force")
    assert forced.returncode == 0 and "deploy lock of x released" in forced.stdout
    assert host.tool("restart", "site").returncode == 0


def test_info_takes_every_named_deploy_lock_or_none(host):
    """fab deploy's connect: `info --lock` takes each app's deploy lock in the call that reads
    the host; one held by someone else leaves none of this call's own behind, says whose it
    is, and prints no answer fab could take for a connected host."""
    other = host.tmp / "srv" / "other"
    (host.config_dir / "other").mkdir()
    (host.config_dir / "other" / "release.json").write_text(
        json.dumps({**host.settings, "name": "other", "home": str(other)})
    )
    locks = {"site": host.home / "deploy.lock", "other": other / "deploy.lock"}
    held = host.tool("lock", "other", "--holder", "ansible-playbook by bo@ci", "--token", "t0")
    assert held.returncode == 0, held.stderr
    fab = ["info", "--lock", "site", "--lock", "other"]
    fab += ["--holder", "fab deploy by ana@laptop", "--token", "t1"]
    refused = host.tool(*fab)
    assert refused.returncode == 1 and refused.stdout == "", refused.stdout + refused.stderr
    assert "other: locked for a deploy by ansible-playbook by bo@ci" in refused.stderr
    assert not locks["site"].exists(), "the lock this call took on site was left behind"
    assert json.loads(locks["other"].read_text())["token"] == "t0"
    assert host.tool("unlock", "other", "--token", "t0").returncode == 0
    taken = host.tool(*fab)
    assert taken.returncode == 0, taken.stderr
    assert sorted(json.loads(taken.stdout)["apps"]) == ["other", "site"]
    assert {name: json.loads(path.read_text())["token"] for name, path in locks.items()} == {
        "site": "t1",
        "other": "t1",
    }
    assert host.tool(*fab).returncode == 0  # the same deploy asking again
    # A listing that fails once the locks are taken (another app's settings torn): none kept.
    for name in locks:
        assert host.tool("unlock", name, "--token", "t1").returncode == 0
    (host.config_dir / "torn").mkdir()
    (host.config_dir / "torn" / "release.json").write_text("{")
    torn = host.tool(*fab)
    assert torn.returncode != 0 and torn.stdout == "", torn.stdout + torn.stderr
    assert not [name for name, path in locks.items() if path.exists()], "locks left by a failed info"
    (host.config_dir / "torn" / "release.json").unlink()
    unnamed = host.tool("info", "--lock", "site")
    assert unnamed.returncode == 1 and "info --lock needs --holder and --token" in unnamed.stderr


def test_a_deploy_may_not_put_back_an_older_release_unless_asked(host):
    """A config-only run from an old checkout after a newer deploy: refused, saying why."""
    older, newer = host.release("one"), host.release("two")
    host.tool("activate", "site", older, "--note", "first")
    host.tool("activate", "site", newer, "--note", "fab deploy by ana@laptop, git abc1234")
    refused = host.tool("activate", "site", older)
    assert refused.returncode == 1 and host.live() == newer
    assert f"release {older} is older than the live {newer}" in refused.stderr
    assert "fab deploy by ana@laptop, git abc1234" in refused.stderr
    # Going back on purpose: a rollback, or asked for.
    assert host.tool("activate", "site", older, "--allow-older").returncode == 0
    # Forward again after a rollback: the newer release first served after the older one.
    assert host.tool("activate", "site", newer).returncode == 0


def test_settings_that_fail_are_put_back_as_the_app_last_answered_with_them(host):
    """The settings files are copied each time the app answers with them; new ones that fail
    the gates, or the health check once restarted, are replaced by those copies."""
    kept = host.home / "settings-last-good"
    host.write_settings(settings_files=[str(host.env_file)], good_settings_dir=str(kept))
    live = host.release("one")
    assert host.tool("activate", "site", live).returncode == 0
    good = host.env_file.read_text()
    assert (kept.stat().st_mode & 0o777, json.loads((kept / "index.json").read_text())["release"]) == (
        0o700,
        live,
    )
    # Settings the app does not answer with: refused by the gates, put back, nothing restarted.
    host.env_file.write_text(good + 'ANSWER="500 Internal Server Error"\n')
    refused = host.tool("restart", "site")
    assert refused.returncode != 0
    assert f"NOT restarted: the running site.service keeps serving {live}; settings put back as {live}" in (
        refused.stderr
    ), refused.stderr
    assert host.env_file.read_text() == good
    # Settings that fail only once served: restarted, failed, put back and restarted again.
    host.env_file.write_text(good + 'BROKEN_WHEN_SERVED="1"\n')
    failed = host.tool("restart", "site")
    assert failed.returncode != 0
    assert "health check through" in failed.stderr
    assert f"settings put back as {live} last answered with them" in failed.stderr, failed.stderr
    assert "site restarted with them and answers" in failed.stderr
    assert host.env_file.read_text() == good
    # A new release deployed with such settings: switched back, with the settings it answered with.
    host.env_file.write_text(good + 'BROKEN_WHEN_SERVED="1"\n')
    two = host.release("two")
    switched = host.tool("activate", "site", two)
    assert switched.returncode != 0
    assert (
        f"switched back to {live}, which answers" in switched.stderr
        and "settings put back" in switched.stderr
    )
    assert (host.live(), host.env_file.read_text()) == (live, good)
    # Settings it answers with are kept: the next failure goes back to them.
    newer = good + 'MARK="newer"\n'
    host.env_file.write_text(newer)
    assert host.tool("restart", "site").returncode == 0
    host.env_file.write_text(newer + 'ANSWER="500 Internal Server Error"\n')
    assert host.tool("restart", "site").returncode != 0
    assert host.env_file.read_text() == newer


def test_a_backup_goes_on_while_the_app_writes_beside_its_database(host):
    """SQLite's journal comes and goes with every write the live app makes: a file listed and
    gone before it is read is skipped, not a failed migration (seen under the bench's load)."""
    from flaskstack import release

    instance = host.home / "shared" / "instance"
    stop = threading.Event()

    def churn():  # a writer's rollback journal: created and deleted, over and over
        journal = instance / "app.db-journal"
        while not stop.is_set():
            journal.write_bytes(b"x" * 64)
            journal.unlink()

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    try:
        app = release.App("site", host.config_dir)
        for n in range(300):
            release.backup(app, f"r{n}")
    finally:
        stop.set()
        writer.join()


def preloaded_server(host) -> list[str]:
    """A restart command that does what a preloaded gunicorn's start does first: import the
    live release's app in its venv (a release that does not import fails the restart)."""
    current = host.home / "current"
    code = "import sys; sys.path.insert(0, sys.argv[1]); import siteapp"
    return [str(current / VENV / "bin/python"), "-c", code, str(current)]


def test_out_of_the_pool_a_preloaded_servers_start_is_the_check(host):
    """--out-of-pool (fab deploy and the deploy play behind load balancers) with gunicorn
    preloading the app: no separate import before the switch; a release that does not
    import fails the restart and is switched back, one whose first answer is not 2xx is
    switched back at once (not after health_timeout)."""
    good = host.release("good")
    assert host.tool("activate", "site", good).returncode == 0
    # (The gates of a gunicorn app import gunicorn, which this test's wheelhouse lacks: the
    # first release went live as the fixture's uwsgi app.)
    host.write_settings(
        server="gunicorn", preload=True, health_timeout=30, restart_command=preloaded_server(host)
    )

    new = host.release("new")
    result = host.tool("activate", "site", new, "--out-of-pool")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "by the restart: out of every pool" in result.stdout
    assert "one import" not in result.stdout
    assert host.live() == new

    bad = host.release("bad", broken=True)
    result = host.tool("activate", "site", bad, "--out-of-pool")
    assert result.returncode == 1
    assert "restart of site.service failed" in result.stderr and "SyntaxError" in result.stderr
    assert f"switched back to {new}, which answers; discarded {bad}" in result.stderr
    assert host.live() == new

    sick = host.release("sick-when-live", live="503")
    started = time.monotonic()
    result = host.tool("activate", "site", sick, "--out-of-pool")
    assert result.returncode == 1
    assert "-> 503" in result.stderr and "its first answer, which must be 2xx" in result.stderr
    assert time.monotonic() - started < 20, "waited for health_timeout (30 s) instead"
    assert f"switched back to {new}, which answers; discarded {sick}" in result.stderr
    assert host.live() == new


@pytest.mark.parametrize(
    "settings", [{"server": "gunicorn", "preload": False}, {"server": "uwsgi", "preload": True}]
)
def test_out_of_the_pool_the_gates_still_run_unless_gunicorn_preloads(host, settings):
    good = host.release("good")
    assert host.tool("activate", "site", good).returncode == 0
    host.write_settings(**settings)
    new = host.release("new")
    result = host.tool("activate", "site", new, "--out-of-pool")
    assert "by the restart" not in result.stdout
    if settings["server"] == "uwsgi":
        assert result.returncode == 0 and "(check and answer in one import)" in result.stdout
    else:  # the gate ran: it imports gunicorn's loader, which this test's wheelhouse lacks
        assert result.returncode == 1 and "  check    FAILED" in result.stdout
        assert f"release {new} does not build its app" in result.stderr
        assert f"nothing switched: {good} still live" in result.stderr
