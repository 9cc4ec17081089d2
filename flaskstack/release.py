#!/usr/bin/python3
"""flaskstack-release: prepare, activate, roll back, list and prune an app's releases.

The one on-host implementation of a flaskstack deploy: `ansible-playbook`
(roles/app) and `fab deploy` (fabfile.py) both call it, so both deploy, check,
switch and roll back the same way. It reads each app's settings from
<config dir>/<app>/release.json, which the app role writes.

On a host this module is /usr/local/lib/flaskstack/flaskstack_release.py, run
by /usr/local/sbin/flaskstack-release (templates/usr/local/sbin/flaskstack-release.j2),
which names the config folder (flaskstack_config_dir): no argument can point
the tool elsewhere.

    flaskstack-release info
    flaskstack-release prepare  APP ID --archive FILE --wheelhouse KEY [--wheelhouse-archive FILE]
    flaskstack-release migrate  APP ID [--force]
    flaskstack-release run      APP -- COMMAND [ARGS...]
    flaskstack-release activate APP ID [--skip-migrate] [--allow-older] [--out-of-pool] [--note TEXT]
    flaskstack-release rollback APP [ID]
    flaskstack-release releases APP [--json]
    flaskstack-release status   APP [--json]
    flaskstack-release prune    APP [--keep N]

Layout (per app): <home>/releases/<id>/ (code, REVISION, venv/), <home>/current
-> releases/<id>, <home>/shared/, <home>/wheelhouse/<key>/, <home>/history.jsonl
(one line per switch: when, which release, from which, how).

activate runs, in order, and stops at the first failure:
  check    the release imports and builds its app as its app server will (as the
           app user, with the app's environment)
  init     the init command, once in the app's life
  migrate  the migrate command, once per deploy (skipped with --skip-migrate, or when
           the migrate_when_changed paths are those of the host's last migration)
  answer   the app, built in a process of its own, answers its health path (in the
           check's process when neither init nor migrate runs between them)
  switch   `current` -> the release, atomically (rename of a new symlink)
  restart  the app service (systemd holds the socket: no connection is refused)
  health   the health path answers 2xx through the app's socket
With --out-of-pool (the host is out of every load balancer's pool) and gunicorn preloading
the app, check and answer are left to restart and health when nothing runs between them:
the server imports the app before it is ready, and the first answer must be 2xx
(start_is_gate). A failure before the switch leaves everything as it was and discards the new
release; a failure after it switches back, restarts and checks the previous
release, then discards the new one. Either way the command exits 1 with the reason.

Only the Python standard library: it runs on the host's system Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import http.client
import io
import json
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REVISION = "REVISION"
# Each release's virtualenv, in the release; and each app's settings, in <config dir>/<app>/.
VENV = "venv"
RELEASE_SETTINGS = "release.json"
# A wheelhouse's copy of the app server's requirements, the last file written into it.
WHEELHOUSE_COMPLETE = "server-requirements.txt"
VENV_MARKER = ".flaskstack-complete"
# In a release of a pyproject.toml project: its wheel, built on the control node.
PROJECT_WHEEL_DIR = ".flaskstack-wheel"
# The lines of the service unit between these two are its sandbox
# (templates/etc/systemd/system/app.service.j2 writes them).
SANDBOX_BEGIN = "# --- sandbox: every gate and `flaskstack-release run` get these lines too ---"
SANDBOX_END = "# --- end of sandbox ---"
INIT_MARKER = ".flaskstack-init-done"
# An app's name: a system user and a systemd unit name (the app model checks it too).
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,30}$")

# Run inside the release's venv as the app user: build the app as its app server
# would (argv: server, entry point) and say so on a line that starts with BUILT, then,
# with a path, call it once as WSGI with a GET of that path and require a 2xx (said on a
# line that starts with ANSWERED: what the app prints meanwhile is not taken for it), in the
# same process (the check and answer gates in one import of the app when nothing runs
# between them). No socket, no traffic: the live release keeps serving while this runs.
BUILT, ANSWERED = "flaskstack-check: ", "flaskstack-answer: "
CHECK = r"""
import io, sys
server, entry = sys.argv[1], sys.argv[2]
if server == "gunicorn":
    from gunicorn.util import import_app
    app = import_app(entry)
else:
    import importlib
    module, _, target = entry.partition(":")
    obj = importlib.import_module(module)
    app = getattr(obj, target[:-2])() if target.endswith("()") else getattr(obj, target)
if not callable(app):
    sys.exit(entry + " is not a WSGI callable")
# Where Flask will write (its instance folder): a place the app cannot write is said
# here, before the switch, instead of in the first write's 500.
import os
folder = getattr(app, "instance_path", None)
if isinstance(folder, str):
    probe = folder
    while not os.path.exists(probe) and os.path.dirname(probe) != probe:
        probe = os.path.dirname(probe)
    state = "writable" if os.access(probe, os.W_OK) else "READ-ONLY to the app (not a shared path)"
    print("%s%s builds; its instance folder %s is %s" % (BUILT, entry, folder, state), flush=True)
else:
    print("%s%s builds" % (BUILT, entry), flush=True)
if len(sys.argv) > 3:
    path, host = sys.argv[3], sys.argv[4]
    path_info, _, query = path.partition("?")
    environ = {
        "REQUEST_METHOD": "GET", "SCRIPT_NAME": "", "PATH_INFO": path_info,
        "QUERY_STRING": query, "SERVER_NAME": host, "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": host, "REMOTE_ADDR": "127.0.0.1",
        "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
        "wsgi.errors": sys.stderr, "wsgi.multithread": False,
        "wsgi.multiprocess": True, "wsgi.run_once": False,
    }
    status = []
    def start_response(s, headers, exc_info=None):
        status.append(s)
        return lambda data: None
    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        getattr(result, "close", lambda: None)()
    if not status or not status[0][:1] == "2":
        sys.exit("GET %s answered %s: %s" % (path, status[0] if status else "nothing",
                                            body[:300].decode("utf-8", "replace")))
    print("%sGET %s answered %s" % (ANSWERED, path, status[0]))
""".replace("BUILT", repr(BUILT)).replace("ANSWERED", repr(ANSWERED))


class ReleaseError(Exception):
    """A step failed; the message says which, for which app and release, and why."""


class Interrupted(BaseException):
    """SIGTERM (or SIGINT) while the tool changes an app: handled like any failure."""


# History actions besides deploy, rollback and auto-rollback (the ones that put a release
# live): an activation about to switch, one that failed with nothing to switch back to,
# and a pending one found not to have switched.
PENDING, FAILED, ABANDONED = "pending", "failed", "abandoned"
SERVED = ("deploy", "rollback", "auto-rollback")


def _interrupted(signum, frame):
    # Once: the switch-back that follows must not be cut short by a second signal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def deferred_signals():
    """SIGINT and SIGTERM wait until the block is done (a switch-back is never half done)."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


class SafeOutput(io.TextIOBase):
    """stdout that outlives its reader: a client that went away (EPIPE, EIO) loses the rest of
    the output, and the tool goes on to the end (the history records what happened)."""

    def __init__(self, stream):
        self.stream, self.lost = stream, False

    def write(self, text: str) -> int:
        if not self.lost:
            try:
                self.stream.write(text)
                self.stream.flush()
            except OSError:
                self.lost = True
        return len(text)

    def flush(self) -> None:
        if not self.lost:
            try:
                self.stream.flush()
            except OSError:
                self.lost = True


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in a folder durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """A small file written whole and durably: a temporary file beside it, then a rename."""
    tmp = path.with_name(f".{path.name}.flaskstack-{os.getpid()}")
    with tmp.open("w") as handle:
        handle.write(text + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# -- settings and layout -------------------------------------------------------------


class App:
    """One app's settings (release.json) and the paths derived from them."""

    def __init__(self, name: str, config_dir: Path):
        if not NAME_RE.match(name):
            raise ReleaseError(f"{name!r} is not an app name (flaskstack_apps[].name: {NAME_RE.pattern})")
        path = config_dir / name / RELEASE_SETTINGS
        try:
            self.cfg = json.loads(path.read_text())
        except FileNotFoundError:
            raise ReleaseError(
                f"{name}: no {path}: the app is not provisioned on this host "
                "(run `ansible-playbook site.yml` first)"
            ) from None
        self.name = name
        # The layout comes from the app model (flaskstack/model.py), written here by the app role.
        self.home = Path(self.cfg["home"])
        self.releases_dir = Path(self.cfg["releases_dir"])
        self.current = Path(self.cfg["current"])
        self.shared_dir = Path(self.cfg["shared_dir"])
        self.wheelhouse_dir = Path(self.cfg["wheelhouse_dir"])
        self.history_file = Path(self.cfg["history_file"])
        self.lock_file = Path(self.cfg["lock_file"])
        self.deploy_lock_file = Path(self.cfg.get("deploy_lock_file") or self.home / "deploy.lock")
        self.migrated_file = Path(self.cfg.get("migrated_file") or self.home / "migrated.json")
        self.user = self.cfg["user"]
        # "systemd": commands run as the app user through systemd-run, with the
        # app's env file exactly as the service reads it. "none": as the calling
        # user, for the tool's own tests outside a systemd host.
        self.isolation = self.cfg.get("isolation", "systemd")

    def upload(self, path: str) -> Path:
        """An uploaded archive: only from the app's own upload folder (root's), never a path
        elsewhere (the tool runs as root; whoever may run it must not make it read or delete
        any file)."""
        folder = Path(self.cfg.get("upload_dir") or self.home / "incoming").resolve()
        found = Path(path).resolve()
        if found.parent != folder:
            raise ReleaseError(f"{self.name}: {path} is not in the app's upload folder {folder}")
        return found

    def remove_uploads(self, *paths: str | Path | None) -> None:
        """Delete uploaded archives once used (each only from the app's upload folder)."""
        for path in paths:
            if path:
                self.upload(str(path)).unlink(missing_ok=True)

    def release_dir(self, release: str) -> Path:
        if not release or "/" in release or release.startswith("."):
            raise ReleaseError(f"{self.name}: {release!r} is not a release id")
        return self.releases_dir / release

    def live(self) -> str | None:
        """The release `current` points to, or None before the first deploy."""
        try:
            return Path(os.readlink(self.current)).name
        except OSError:
            return None

    def prepared(self, release: str) -> bool:
        path = self.release_dir(release)
        return (path / REVISION).is_file() and (path / VENV / VENV_MARKER).is_file()

    def releases(self) -> list[str]:
        """Prepared releases, oldest first: by their last activation, or by when they
        were prepared if they never served (a release prepared for a deploy counts as new)."""
        if not self.releases_dir.is_dir():
            return []
        last = {}
        for entry in self.served():
            when = datetime.strptime(entry["time"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            last[entry["release"]] = when.timestamp()
        names = [p.name for p in self.releases_dir.iterdir() if p.is_dir() and self.prepared(p.name)]
        return sorted(names, key=lambda name: last.get(name, (self.releases_dir / name).stat().st_mtime))

    def history(self) -> list[dict]:
        """Every readable line of the history; a torn one (a crash mid-write, a full disk) is
        skipped and counted in self.torn, never fatal."""
        try:
            lines = self.history_file.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        entries, self.torn = [], 0
        for line in lines:
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and isinstance(entry.get("release"), str) and "time" in entry:
                entries.append(entry)
            else:
                self.torn += 1
        return entries

    def served(self) -> list[dict]:
        """The history's lines that put a release live (not pending, failed or abandoned ones)."""
        return [entry for entry in self.history() if entry.get("action") in SERVED]

    def previous(self) -> str | None:
        """The release that was live before the live one and is still on disk."""
        live = self.live()
        for entry in reversed(self.served()):
            was = entry.get("from")
            if entry["release"] == live and was and was != live and self.prepared(was):
                return was
        # No record (a host deployed before the history existed): the newest other release.
        others = [r for r in self.releases() if r != live]
        return others[-1] if others else None

    def has_wheelhouse(self, key: str) -> bool:
        """The wheelhouse <key> is here (it is unpacked aside and renamed into place whole)."""
        return (self.wheelhouse_dir / key / WHEELHOUSE_COMPLETE).is_file()

    def ever_live(self, release: str) -> bool:
        return any(entry["release"] == release for entry in self.served())

    def record(self, release: str, previous: str | None, action: str, note: str) -> None:
        entry = {
            "time": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "release": release,
            "from": previous,
            "action": action,
            "note": note,
        }
        line = json.dumps(entry, sort_keys=True) + "\n"
        fd = os.open(self.history_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            # A torn last line (no newline) must not swallow this one.
            if os.fstat(fd).st_size and not self.history_file.read_bytes().endswith(b"\n"):
                line = "\n" + line
            os.write(fd, line.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def deploy_lock(self) -> dict | None:
        """Who holds the app's deploy lock (holder, since, token), or None."""
        try:
            held = json.loads(self.deploy_lock_file.read_text())
        except FileNotFoundError:
            return None
        except ValueError:  # torn: still a lock, of someone unknown
            held = {}
        return held if isinstance(held, dict) else {}

    def check_deploy_lock(self, token: str | None) -> None:
        """A command that changes the app runs only if nobody else holds its deploy lock."""
        held = self.deploy_lock()
        if held is not None and held.get("token") != token:
            raise ReleaseError(f"{self.name}: {describe_lock(held)}")

    @contextlib.contextmanager
    def lock(self, wait: float = 120):
        """One deploy per app at a time on a host."""
        self.home.mkdir(parents=True, exist_ok=True)
        with self.lock_file.open("w") as handle:
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ReleaseError(f"{self.name}: another deploy holds the lock") from None
                    time.sleep(0.5)
            yield


# -- running things --------------------------------------------------------------------


def step(name: str):
    """Print a step's name, its result and its duration, as `fab deploy` shows them."""

    class Step:
        def __enter__(self):
            self.start = time.monotonic()
            return self

        def __exit__(self, kind, exc, tb):
            took = time.monotonic() - self.start
            outcome = "ok" if kind is None else "FAILED"
            print(f"  {name:<8} {outcome:<6} {took:6.2f}s  {getattr(self, 'detail', '')}".rstrip())
            sys.stdout.flush()
            return False

    return Step()


def failure(what: str, result: subprocess.CompletedProcess) -> ReleaseError:
    """A command's failure: what failed, its exit status and the last lines it said."""
    detail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-12:]
    return ReleaseError(f"{what}: exit {result.returncode}\n    " + "\n    ".join(detail))


def run(argv: list[str], what: str, **kwargs) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        raise failure(what, result)
    return result.stdout.strip()


def sandbox(app: App) -> list[str]:
    """The service unit's sandbox, as its own lines say it (between SANDBOX_BEGIN and
    SANDBOX_END): the one list, which the gates and `run` get as systemd-run properties,
    so what would fail in the service fails before the switch."""
    lines, inside = [], False
    for line in Path(app.cfg["service_unit_file"]).read_text().splitlines():
        text = line.strip()
        if text == SANDBOX_BEGIN:
            inside = True
        elif text == SANDBOX_END:
            return lines
        elif inside and text and not text.startswith("#"):
            lines.append(text)
    raise ReleaseError(
        f"{app.name}: no sandbox in {app.cfg['service_unit_file']} (run ansible-playbook site.yml)"
    )


def release_path(app: App, release: str) -> str:
    """The PATH of commands in a release: its venv's programs first."""
    return f"{app.release_dir(release)}/{VENV}/bin:/usr/local/bin:/usr/bin:/bin"


def release_command(app: App, release: str, argv: list[str]) -> tuple[list[str], dict]:
    """A command in a release as the app user, with the app's environment and the
    service's sandbox: (argv, subprocess keyword arguments)."""
    rel = app.release_dir(release)
    path = release_path(app, release)
    if app.isolation == "none":
        env = {"PATH": path, "HOME": str(rel), "LANG": "C.UTF-8", **read_env_file(app)}
        return argv, {"cwd": rel, "env": env}
    return [
        "systemd-run", "--quiet", "--wait", "--pipe", "--collect",
        f"--uid={app.user}", f"--gid={app.cfg['group']}",
        f"--property=EnvironmentFile={app.cfg['env_file']}",
        f"--property=WorkingDirectory={rel}", f"--setenv=PATH={path}",
        *[f"--property={line}" for line in sandbox(app)],
        "--", *argv,
    ], {}  # fmt: skip


def in_release(app: App, release: str, argv: list[str], what: str) -> str:
    """Run a command in a release (release_command), its output captured."""
    command, kwargs = release_command(app, release, argv)
    return run(command, what, stdin=subprocess.DEVNULL, **kwargs)


def read_env_file(app: App) -> dict[str, str]:
    """The env file as systemd reads it (isolation none only): KEY="value" assignments, as
    the appserver role writes them, a value's line breaks kept, \\" and \\\\ unescaped."""
    try:
        text = Path(app.cfg["env_file"]).read_text()
    except FileNotFoundError:
        return {}
    return {
        found.group(1): re.sub(r"\\(.)", r"\1", found.group(2), flags=re.S)
        for found in ENV_ASSIGNMENT.finditer(text)
    }


ENV_ASSIGNMENT = re.compile(r'^([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"', re.M | re.S)


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


def get_health(app: App) -> tuple[int, str]:
    """One GET of the health path through the app's socket, as nginx sends it."""
    conn = UnixHTTPConnection(app.cfg["socket"], timeout=10)
    try:
        conn.request("GET", app.cfg["health_path"], headers={"Host": app.cfg["health_host"]})
        response = conn.getresponse()
        return response.status, response.read(300).decode("utf-8", "replace")
    finally:
        conn.close()


def wait_healthy(app: App, first_answer: bool = False) -> str:
    """Wait until the health path answers 2xx through the socket, or raise. With first_answer,
    the first HTTP answer decides (the answer gate's rule: one call, 2xx or refused); only
    no answer yet is waited out."""
    deadline = time.monotonic() + float(app.cfg["health_timeout"])
    last = "no answer"
    while True:
        try:
            status, body = get_health(app)
            if 200 <= status < 300:
                return f"GET {app.cfg['health_path']} -> {status}"
            last = f"GET {app.cfg['health_path']} -> {status} {body.strip()[:200]}"
            if first_answer:
                raise ReleaseError(
                    f"{app.name}: health check through {app.cfg['socket']} failed: {last} "
                    "(its first answer, which must be 2xx: the server's start was the release's gate)"
                )
        except (OSError, http.client.HTTPException) as exc:  # an answer http.client rejects too
            last = f"GET {app.cfg['health_path']}: {why(exc)}"
        if time.monotonic() > deadline:
            raise ReleaseError(f"{app.name}: health check through {app.cfg['socket']} failed: {last}")
        time.sleep(0.5)


def restart(app: App) -> None:
    """Restart the app server. A start that fails says why in the server's own words (its
    last journal lines: a traceback of the app's import, with preload)."""
    custom = app.cfg.get("restart_command")
    try:
        run(
            custom or ["systemctl", "restart", app.cfg["service"]],
            f"{app.name}: restart of {app.cfg['service']} failed",
        )
    except ReleaseError as exc:
        if custom:
            raise
        raise ReleaseError(f"{exc}\n  its log:\n    {unit_log(app.cfg['service'], 20)}") from None


def start_is_gate(app: App, out_of_pool: bool) -> bool:
    """Whether the app server's own start can stand for the check gate: on a host out of
    every load balancer's pool (fab deploy and the deploy play take it out before it
    switches, and put it back only once it answers), with gunicorn preloading the app. That
    server imports the app, as the app, in its sandbox, before it tells systemd it is ready,
    so a release that does not build fails the restart; the first answer of the health check
    after it must be 2xx, as the answer gate's one call. A refused release is switched back
    before the host has had a request, and the app is imported once per deploy instead of
    twice. Anywhere else requests reach the server as soon as it starts: the gates run first."""
    return out_of_pool and app.cfg.get("server") == "gunicorn" and bool(app.cfg.get("preload"))


# -- workers and timers (the app's background processes) ----------------------------------


def systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)


def unit_states(units: list[str]) -> dict[str, dict]:
    """systemd's ActiveState, SubState, NRestarts, InvocationID and MainPID of each unit."""
    if not units:
        return {}
    props = "ActiveState,SubState,NRestarts,InvocationID,MainPID,Id"
    out = systemctl("show", f"--property={props}", "--", *units).stdout
    states = {}
    for block in out.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if fields.get("Id"):
            states[fields["Id"]] = fields
    return states


def unit_log(unit: str, lines: int = 8) -> str:
    out = subprocess.run(
        ["journalctl", "--no-pager", "--output=cat", f"--lines={lines}", f"--unit={unit}"],
        capture_output=True, text=True, check=False,
    ).stdout.strip()  # fmt: skip
    return "\n    ".join(out.splitlines()[-lines:]) or "(no log)"


# A restarted worker has settled when its main process has been up worker_settle seconds and
# then slept, using under IDLE_CPU of a CPU, for two seconds (its imports are done: it waits
# for jobs),
# or has been up SETTLE_LIMIT seconds. On a loaded machine an app's imports take longer:
# a fixed wait alone would call a worker up that crashes a moment later.
IDLE_CPU = 0.05
SETTLE_LIMIT = 60.0


def cpu_seconds(pid: str) -> float | None:
    """CPU time a sleeping process has used (user + system), or None if it is gone or is
    running or waiting on the disk (state R or D: not waiting for jobs yet)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] != "S":
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def begin_stopping_workers(app: App) -> None:
    """Ask systemd to stop the app's workers, without waiting (their graceful stop lets
    running jobs finish: a Celery worker's takes 1.5-2.5 s with nothing running). Called as
    the web server restarts, so that stop overlaps the restart and the health check;
    restart_workers, after the health check, waits for it and then starts them. The
    workers are down from the switch until then (jobs wait in the queue), where they were
    down for their stop and start only. Only where whatever follows starts them again, on
    one release or the other: an activation after its switch (switch_back, even when the
    release it goes back to does not answer either; recover). A restart with new settings
    keeps them running until its health check passed (settings_back may have none to put
    back)."""
    units = list(app.cfg.get("worker_units") or [])
    if units:
        systemctl("stop", "--no-block", "--", *units)


def start_workers(app: App, release: str | None, *, restart: bool = False) -> None:
    """Start the app's workers, only if `current` is release (the one they ran before); with
    restart, restart them (some may run the failed release: restart_workers had started them
    on it), else one already up is left alone. After an activation stopped part-way, which
    may have asked them to stop (begin_stopping_workers) and not started them again: where
    `current` is still the failed release (the way back stopped before its switch), they
    are left stopped rather than started on it."""
    units = list(app.cfg.get("worker_units") or [])
    if units and release and app.live() == release:
        systemctl("reset-failed", "--", *units)
        systemctl("restart" if restart else "start", "--", *units)


def restart_workers(app: App) -> str:
    """Restart the app's workers on this host (started after its web server passed its
    health check, never before; begin_stopping_workers may have asked them to stop
    already): systemd stops each with its graceful signal and waits for its running
    jobs (up to its stop_timeout), then starts it from the live release. Each must then
    settle (see IDLE_CPU) without being restarted by systemd; one that exits or restarts
    first fails the step, with its last log lines. The app's timers are (re)started too."""
    units = list(app.cfg.get("worker_units") or [])
    timers = list(app.cfg.get("timer_units") or [])
    if timers:  # restarted: a changed schedule counts from now (a missed run is kept)
        run(["systemctl", "restart", "--", *timers], f"{app.name}: the timers did not start")
    if not units:
        return f"{len(timers)} timers" if timers else "none"
    systemctl("reset-failed", "--", *units)  # one that gave up (start limit) may start again
    run(["systemctl", "restart", "--", *units], f"{app.name}: the workers did not restart")
    begun = time.monotonic()
    started = unit_states(units)
    settle = float(app.cfg.get("worker_settle", 3))
    waiting, used = set(units), {}
    while waiting:
        time.sleep(1.0)
        now = unit_states(units)
        # Up, and the same process systemd started (not one it restarted after a crash).
        bad = [
            unit for unit in units
            if now.get(unit, {}).get("ActiveState") != "active"
            or now[unit].get("InvocationID") != started.get(unit, {}).get("InvocationID")
        ]  # fmt: skip
        if bad:
            raise ReleaseError(
                f"{app.name}: worker {bad[0]} did not stay up after its restart "
                f"(its last lines):\n    {unit_log(bad[0])}"
            )
        up = time.monotonic() - begun
        for unit in list(waiting):
            cpu = cpu_seconds(now[unit].get("MainPID", "0"))
            # Idle: asleep, and under IDLE_CPU in each of the last two seconds.
            last = used.get(unit)
            idle_now = (
                cpu is not None and last is not None and last[0] is not None and cpu - last[0] < IDLE_CPU
            )
            quiet = idle_now and last[1]
            used[unit] = (cpu, idle_now)
            if (up >= settle and quiet) or up >= max(settle, SETTLE_LIMIT):
                waiting.discard(unit)
    took = time.monotonic() - begun
    return f"{len(units)} restarted, settled in {took:.1f}s" + (f"; {len(timers)} timers" if timers else "")


def stop_workers(app: App) -> bool:
    """Stop the app's workers and timers (its first release failed: nothing of it runs)."""
    units = list(app.cfg.get("worker_units") or []) + list(app.cfg.get("timer_units") or [])
    return not units or systemctl("stop", "--", *units).returncode == 0


def switch(app: App, release: str) -> None:
    """Point `current` at a release: a new symlink renamed over the old one (atomic)."""
    tmp = app.current.parent / f".{app.current.name}-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(app.release_dir(release), tmp)
    os.replace(tmp, app.current)
    fsync_dir(app.current.parent)


def discard(app: App, release: str) -> str:
    """Remove a release that never served (a failed deploy leaves only this behind)."""
    if release == app.live() or app.ever_live(release):
        return f"kept {release} (it has served before)"
    shutil.rmtree(app.release_dir(release), ignore_errors=True)
    return f"discarded {release}"


# -- settings: the ones the app last answered with ---------------------------------------

SETTINGS_INDEX = "index.json"


def _same_file(path: Path, copy: Path) -> bool:
    """Same bytes, mode and owner."""
    try:
        a, b = path.stat(), copy.stat()
    except FileNotFoundError:
        return False
    same = (a.st_mode, a.st_uid, a.st_gid, a.st_size) == (b.st_mode, b.st_uid, b.st_gid, b.st_size)
    return same and path.read_bytes() == copy.read_bytes()


def _copy_file(src: Path, dest: Path) -> None:
    """dest as src (bytes, mode, owner), durably, replacing any dest in one rename."""
    tmp = dest.with_name(f".{dest.name}.flaskstack-{os.getpid()}")
    shutil.copy2(src, tmp)
    if os.geteuid() == 0:
        st = src.stat()
        os.chown(tmp, st.st_uid, st.st_gid)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, dest)


def kept_settings(app: App) -> dict:
    """The settings files as the app last answered with them: {"release", "time", "files":
    {path: its copy's name, or None if the file did not exist}}; {} if none are kept."""
    folder = app.cfg.get("good_settings_dir")
    try:
        kept = json.loads((Path(folder) / SETTINGS_INDEX).read_text()) if folder else {}
    except (OSError, ValueError):
        return {}
    return kept if isinstance(kept, dict) and isinstance(kept.get("files"), dict) else {}


def settings_changed(app: App, kept: dict) -> list[str]:
    """The settings files that differ from their kept copies (only files kept then and now)."""
    folder = Path(app.cfg.get("good_settings_dir") or ".")
    return [
        path
        for path, copy in kept.get("files", {}).items()
        if path in (app.cfg.get("settings_files") or [])
        and not (_same_file(Path(path), folder / copy) if copy else not Path(path).exists())
    ]


def keep_settings(app: App, release: str) -> None:
    """After the app answered with the settings on disk: copies of them, to put back if later
    settings fail (a new folder renamed into place; a crash meanwhile only loses the copies)."""
    files, folder = app.cfg.get("settings_files") or [], app.cfg.get("good_settings_dir")
    if not files or not folder:
        return
    kept = kept_settings(app)
    if kept and set(kept["files"]) == set(files) and not settings_changed(app, kept):
        return
    folder = Path(folder)
    new, old = folder.with_name(folder.name + ".new"), folder.with_name(folder.name + ".old")
    for stale in (new, old):
        shutil.rmtree(stale, ignore_errors=True)
    new.mkdir(mode=0o700)
    copies: dict[str, str | None] = {}
    for i, name in enumerate(files):
        path = Path(name)
        copies[name] = f"{i}-{path.name}" if path.exists() else None
        if copies[name]:
            _copy_file(path, new / copies[name])
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    index = {"release": release, "time": now, "files": copies}
    (new / SETTINGS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
    fsync_dir(new)
    if folder.exists():
        folder.rename(old)
    new.rename(folder)
    fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def restore_settings(app: App) -> str:
    """Put back the settings files the app last answered with, where they differ; reload
    systemd if its unit was one. What it did, in words ("" if nothing differed)."""
    kept = kept_settings(app)
    changed = settings_changed(app, kept)
    if not changed:
        return ""
    folder = Path(app.cfg["good_settings_dir"])
    for name in changed:
        copy = kept["files"][name]
        if copy:
            _copy_file(folder / copy, Path(name))
        else:
            Path(name).unlink()
        fsync_dir(Path(name).parent)
    if app.cfg.get("service_unit_file") in changed:
        argv = app.cfg.get("daemon_reload_command") or ["systemctl", "daemon-reload"]
        run(argv, f"{app.name}: systemctl daemon-reload after putting its unit back failed")
    return (
        f"settings put back as {kept.get('release')} last answered with them ({kept.get('time')}): "
        + ", ".join(changed)
    )


# -- commands --------------------------------------------------------------------------


def cmd_info(args) -> int:
    """What `fab deploy` needs to know of this host, as JSON. With --lock, the named apps'
    deploy locks are taken first, in the same call (a deploy's connect is its lock too: one
    round trip and one start of this tool fewer); all or none: if one is held by someone
    else, those this call took are released and nothing is printed but why."""
    if args.lock and not (args.holder and args.token):
        raise ReleaseError("info --lock needs --holder and --token")
    locked = []
    try:
        for name in args.lock:
            app = App(name, args.config_dir)
            if take_deploy_lock(app, args.holder, args.token)[0]:
                locked.append(app)
        return print_info(args)
    except BaseException:  # a lock held elsewhere, an unreadable app, a signal: none kept
        for app in locked:
            app.deploy_lock_file.unlink(missing_ok=True)
        raise


def print_info(args) -> int:
    apps = {}
    if args.config_dir.is_dir():
        for path in sorted(args.config_dir.glob(f"*/{RELEASE_SETTINGS}")):
            app = App(path.parent.name, args.config_dir)
            wheelhouses = (
                sorted(p.name for p in app.wheelhouse_dir.iterdir() if app.has_wheelhouse(p.name))
                if app.wheelhouse_dir.is_dir()
                else []
            )
            apps[app.name] = {"live": app.live(), "releases": app.releases(), "wheelhouses": wheelhouses}
    info = {
        # The full version: environment markers can tell 3.11.2 from 3.11.7 (the wheelhouse's).
        "python": "{}.{}.{}".format(*sys.version_info[:3]),
        "architecture": platform.machine(),
        "apps": apps,
    }
    print(json.dumps(info, sort_keys=True))
    return 0


def install_wheelhouse(app: App, key: str, archive: Path | None) -> Path:
    """The wheelhouse <key> on this host, unpacked from its uploaded tar if missing."""
    wheelhouse = app.wheelhouse_dir / key
    if app.has_wheelhouse(key):
        return wheelhouse
    if archive is None or not archive.is_file():
        raise ReleaseError(f"{app.name}: no wheelhouse {wheelhouse} on this host, and no archive of it")
    partial = app.wheelhouse_dir / f".{key}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True, mode=0o755)
    run(["tar", "-xf", str(archive), "-C", str(partial), "--no-same-owner"], f"unpack {archive}")
    shutil.rmtree(wheelhouse, ignore_errors=True)
    os.replace(partial, wheelhouse)
    return wheelhouse


def pip_wheel() -> str | None:
    """The pip wheel the system ships for ensurepip (Debian: /usr/share/python-wheels)."""
    stdlib = Path(os.__file__).parent
    for pattern in ("/usr/share/python-wheels/pip-*.whl", f"{stdlib}/ensurepip/_bundled/pip-*.whl"):
        found = sorted(Path("/").glob(pattern.lstrip("/")))
        if found:
            return str(found[-1])
    return None


def pip_command(venv: Path, wheel: str | None) -> list[str]:
    """pip for a venv: run from the system's pip wheel when there is one (a venv made
    --without-pip), else the venv's own."""
    return [str(venv / "bin/python"), *([f"{wheel}/pip"] if wheel else ["-m", "pip"])]


def build_venv(app: App, rel: Path, wheelhouse: Path, key: str) -> str:
    """rel/venv with the wheelhouse's packages: hard-linked from a release built from the
    same wheelhouse when there is one (a code-only deploy), else installed from it. Built
    by this tool's user (root on a host), so the app can read it and never change it."""
    venv = rel / VENV
    # Only a venv of this tool's user is linked from: hard links share files, and the
    # app user owned the venvs of releases prepared before releases became root's.
    same = [
        r for r in reversed(app.releases())
        if venv_key(app, r) == key and r != rel.name
        and (app.release_dir(r) / VENV).stat().st_uid == os.geteuid()
    ]  # fmt: skip
    if same:
        source = app.release_dir(same[0]) / VENV
        # Hard links: no data is copied and no disk is spent. The files of a venv are
        # never changed in place after it is built; pip replaces files, never rewrites them.
        run(["cp", "-al", str(source), str(venv)], f"link the venv of {same[0]}")
        # The source's mark of a complete venv: this one is complete only when prepare says so.
        (venv / VENV_MARKER).unlink()
        # A venv names its own path in its scripts' #! lines, activate scripts and
        # pyvenv.cfg: those get a new file of their own (the source keeps its inode).
        old, new = str(source).encode(), str(venv).encode()
        for path in [*sorted((venv / "bin").iterdir()), venv / "pyvenv.cfg"]:
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                if old in data:
                    stat = path.stat()
                    fresh = path.with_name(f".{path.name}.flaskstack")
                    fresh.write_bytes(data.replace(old, new))
                    os.chmod(fresh, stat.st_mode & 0o7777)
                    os.replace(fresh, path)
        return f"linked from {same[0]} (same wheelhouse {key})"
    python = app.cfg.get("python") or sys.executable
    pip = pip_wheel()
    # Without ensurepip's copy of pip (3 s): pip runs from the system's wheel instead.
    run([python, "-m", "venv", *(["--without-pip"] if pip else []), str(venv)], "create the venv")
    install = [
        *pip_command(venv, pip), "install", "--quiet", "--no-index", "--no-cache-dir",
        "--disable-pip-version-check", "--find-links", str(wheelhouse),
    ]  # fmt: skip
    files = ["requirements.txt", WHEELHOUSE_COMPLETE]
    # --hash pins put pip in hash-checking mode for all it installs at once: the app server's
    # packages (pinned by version only) are installed by a run of their own.
    hashes = "--hash" in (wheelhouse / files[0]).read_text()
    for part in [files[:1], files[1:]] if hashes else [files]:
        args = [arg for name in part for arg in ("-r", str(wheelhouse / name))]
        run(install + args, f"install {' and '.join(part)} from {wheelhouse}")
    return f"installed from wheelhouse {key}"


def install_project(rel: Path) -> str:
    """Install the release's own wheel (a pyproject.toml project) into its venv, without
    dependencies (the wheelhouse gave them), then let pip check that none is missing.
    A venv linked from another release has that release's build of the project: it is
    replaced (pip removes its files, which unlinks them, and writes new ones)."""
    wheels = sorted((rel / PROJECT_WHEEL_DIR).glob("*.whl"))
    if not wheels:
        return ""
    pip = pip_command(rel / VENV, pip_wheel())
    quiet = ["--quiet", "--disable-pip-version-check"]
    run([*pip, "install", *quiet, "--no-index", "--no-cache-dir", "--no-deps", "--force-reinstall",
         str(wheels[0])], f"install {wheels[0].name}")  # fmt: skip
    run([*pip, "check", "--disable-pip-version-check"], f"pip check of the venv after {wheels[0].name}")
    return f"; {wheels[0].name} installed"


def link_shared(app: App, rel: Path, in_venv: bool = False) -> str:
    """Replace each shared path of the release by a link into <home>/shared (Capistrano's
    linked_dirs): what the archive had there goes, the shared copy is the one that lives.
    in_venv: the links inside the venv instead (an installed project's instance folder),
    made once the venv is there."""
    linked = []
    for item in app.cfg["shared"]:
        if item["path"].startswith(f"{VENV}/") != in_venv:
            continue
        link = rel / item["path"]
        if link.is_symlink() or link.is_file():
            link.unlink()
        elif link.is_dir():
            shutil.rmtree(link)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(item["target"], link)
        linked.append(item["path"])
    return f"shared: {', '.join(linked)}" if linked else ""


def compile_release(app: App, rel: Path) -> None:
    """Byte-compile the release's own code: the app may not write __pycache__ in it. A file
    that does not compile is left to the check gate, which says why in the app's words."""
    skip = [str(rel / VENV)] + [str(rel / item["path"]) for item in app.cfg["shared"]]
    pattern = "|".join(f"^{re.escape(path)}(/|$)" for path in skip)
    argv = [str(rel / VENV / "bin/python"), "-m", "compileall", "-q", "-x", pattern, str(rel)]
    subprocess.run(argv, capture_output=True, check=False)


def venv_key(app: App, release: str) -> str | None:
    try:
        return (app.release_dir(release) / VENV / VENV_MARKER).read_text().strip() or None
    except OSError:
        return None


def cmd_prepare(args) -> int:
    app = App(args.app, args.config_dir)
    rel = app.release_dir(args.release)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        if app.prepared(args.release):
            if args.remove_archive:  # not needed: not kept either
                app.remove_uploads(args.archive, args.wheelhouse_archive)
            print(f"{app.name}: release {args.release} is already prepared")
            return 0
        archive = app.upload(args.archive)
        if not archive.is_file():
            raise ReleaseError(f"{app.name}: no release archive {archive} on this host")
        upload = app.upload(args.wheelhouse_archive) if args.wheelhouse_archive else None
        if "/" in args.wheelhouse or args.wheelhouse.startswith("."):
            raise ReleaseError(f"{app.name}: {args.wheelhouse!r} is not a wheelhouse key")
        shutil.rmtree(rel, ignore_errors=True)  # what a failed attempt left
        try:
            with step("wheels") as s:
                had = app.has_wheelhouse(args.wheelhouse)
                wheelhouse = install_wheelhouse(app, args.wheelhouse, upload)
                s.detail = f"wheelhouse {args.wheelhouse} {'reused' if had else 'unpacked'}"
            app.releases_dir.mkdir(parents=True, exist_ok=True)
            # The release is root's and read-only to the app (files 0644, folders 0755, as
            # packed): it writes only its shared paths, linked in below.
            rel.mkdir(mode=0o755)
            with step("unpack") as s, archive.open("rb") as data:
                run(["tar", "-xzf", "-", "-C", str(rel), "--no-same-owner"], "unpack", stdin=data)
                s.detail = link_shared(app, rel)
            with step("venv") as s:
                s.detail = build_venv(app, rel, wheelhouse, args.wheelhouse) + install_project(rel)
                link_shared(app, rel, in_venv=True)
                compile_release(app, rel)
                # Written last, as a new file: its presence means the whole release is there.
                # Everything written so far is on disk before the mark says so: a crash must
                # not leave a "prepared" release of empty files for later ones to link from.
                os.sync()
                mark = rel / VENV / f".{VENV_MARKER}.partial"
                mark.write_text(args.wheelhouse + "\n")
                os.replace(mark, rel / VENV / VENV_MARKER)
                fsync_dir(rel / VENV)
        except (ReleaseError, OSError) as exc:
            shutil.rmtree(rel, ignore_errors=True)
            raise ReleaseError(f"{app.name}: release {args.release} could not be prepared: {exc}") from None
        finally:
            if args.remove_archive:
                app.remove_uploads(archive, upload)
    print(f"{app.name}: release {args.release} prepared")
    return 0


SQLITE_MAGIC = b"SQLite format 3\x00"


NO_BACKUP = "no SQLite database in its writable paths, and no backup_command or one that printed nothing"


def backup(app: App, release: str) -> Path | None:
    """A consistent copy, before a migration, of every SQLite database in the app's writable
    paths (SQLite's online backup), and the standard output of backup_command (for another
    database: `pg_dump "$DATABASE_URL"`), in <home>/backups/<time>-before-<release>/, root's
    only. The newest keep_backups are kept. None when there was nothing to copy (NO_BACKUP):
    an empty folder would be said, and read, as a backup."""
    # Named to sort by time (to the microsecond: two deploys in one second stay in order).
    folder = Path(app.cfg["backups_dir"]) / f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S.%fZ}-before-{release}"
    folder.mkdir(parents=True, mode=0o700)
    os.chmod(folder.parent, 0o700)
    copied = False
    for root in map(Path, app.cfg["writable_paths"]):
        files = (
            [root]
            if root.is_file()
            else sorted(p for p in root.rglob("*") if p.is_file())
            if root.is_dir()
            else []
        )
        for path in files:
            # The live app writes meanwhile: its database's journal comes and goes.
            try:
                with path.open("rb") as head:
                    if head.read(16) != SQLITE_MAGIC:
                        continue
            except FileNotFoundError:
                continue
            copy = folder / path.relative_to(app.home)
            copied = True
            copy.parent.mkdir(parents=True, exist_ok=True)
            source = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                with contextlib.closing(sqlite3.connect(copy)) as target:
                    source.backup(target)
            finally:
                source.close()
    command = app.cfg["backup_command"]
    if command:
        argv, kwargs = release_command(app, release, ["/bin/sh", "-ec", command])
        with (folder / "backup_command.out").open("wb") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, check=False, **kwargs)
        if result.returncode != 0:
            detail = result.stderr.decode("utf-8", "replace").strip().splitlines()[-12:]
            raise ReleaseError(
                f"{app.name}: backup_command failed: exit {result.returncode}\n    " + "\n    ".join(detail)
            )
    # Nothing copied and nothing printed (no command, or backup_command: "true"): no backup.
    if not copied and not (command and (folder / "backup_command.out").stat().st_size):
        shutil.rmtree(folder)
        return None
    kept = sorted(p for p in folder.parent.iterdir() if p.is_dir())
    for old in kept[: max(0, len(kept) - int(app.cfg["keep_backups"]))]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def migrations(app: App, release: str) -> str | None:
    """A digest of the release's migrate_when_changed paths (every file under each, by its
    path and bytes; a missing path counts as missing), or None when the app has none."""
    paths = app.cfg.get("migrate_when_changed") or []
    if not paths:
        return None
    rel, digest = app.release_dir(release), hashlib.sha256()
    for name in sorted(paths):
        top = rel / name
        files = [top] if top.is_file() else sorted(top.rglob("*")) if top.is_dir() else []
        digest.update(f"{name}\0{'present' if files else 'missing'}\0".encode())
        for path in files:
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(rel)}\0".encode() + path.read_bytes() + b"\0")
    return digest.hexdigest()


def last_migration(app: App) -> dict:
    """The migration this host last ran to the end: {release, time, migrations}, or {}."""
    try:
        found = json.loads(app.migrated_file.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def migration_skipped(app: App, found: str | None, force: bool = False) -> str:
    """Why migrate_command would not run ('' if it would): there is none, or the release's
    migrate_when_changed digest (found) is the one of the last migration on this host
    (force: whatever the digest says)."""
    if not app.cfg.get("migrate_command"):
        return "no migrate_command"
    last = {} if force else last_migration(app)
    if found is not None and found == last.get("migrations"):
        return (
            f"skipped: {', '.join(app.cfg['migrate_when_changed'])} as when {last.get('release')} "
            f"migrated at {last.get('time')} (migrate_when_changed)"
        )
    return ""


def run_migration(app: App, release: str, found: str | None) -> str:
    """migrate_command in the release, after a backup; found (the release's digest) is
    recorded as the last migration once it ran to the end."""
    command = app.cfg["migrate_command"]
    # Forgotten first: a migration that fails half-way leaves the database unknown.
    app.migrated_file.unlink(missing_ok=True)
    saved = backup(app, release)
    try:
        out = in_release(app, release, ["/bin/sh", "-ec", command], f"{app.name}: migrate_command failed")
    except ReleaseError as exc:
        before = (
            f"the data as it was before: {saved} (README: restore a backup)"
            if saved
            else (f"no backup was made before it ({NO_BACKUP})")
        )
        raise ReleaseError(f"{exc}\n  {before}") from None
    if found is not None:
        when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_atomic(app.migrated_file, json.dumps({"release": release, "time": when, "migrations": found}))
    made = f"backup {saved.name}" if saved else f"no backup ({NO_BACKUP})"
    return f"{made}; " + (out.splitlines() or [command])[-1][:100]


def migrate(app: App, release: str, force: bool = False) -> str:
    """migrate_command in the release, unless migration_skipped says why not."""
    found = migrations(app, release)
    return migration_skipped(app, found, force) or run_migration(app, release, found)


def cmd_run(args) -> int:
    """A one-off command in the live release, as the app does: its user, environment and
    sandbox; output streamed, exit status passed through."""
    app = App(args.app, args.config_dir)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise ReleaseError(
            "run: give the command after --, for example: run hello -- flask --app hello routes"
        )
    live = app.live()
    if live is None:
        raise ReleaseError(f"{app.name}: no live release to run {command[0]} in")
    # As a shell would find it, with the PATH the command gets: the release's venv first.
    found = shutil.which(command[0], path=release_path(app, live))
    if found is None:
        raise ReleaseError(f"{app.name}: no command {command[0]} in release {live}'s venv or the system")
    argv, kwargs = release_command(app, live, [found, *command[1:]])
    return subprocess.run(argv, check=False, **kwargs).returncode


def cmd_migrate(args) -> int:
    app = App(args.app, args.config_dir)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        if not app.prepared(args.release):
            raise ReleaseError(f"{app.name}: release {args.release} is not prepared on this host")
        with step("migrate") as s:
            s.detail = migrate(app, args.release, force=args.force)
    return 0


def gates(app: App, release: str, answer: bool) -> tuple[str, str]:
    """The check gate: the release builds its app as the app server would, as the app, in
    its sandbox. With answer, the answer gate too, in the same process: the app answers its
    health path 2xx, called once as WSGI (no socket, no traffic). What each said, or raise
    naming the gate that failed."""
    python = str(app.release_dir(release) / VENV / "bin/python")
    server, entry, path = app.cfg["server"], app.cfg["entry_point"], app.cfg["health_path"]
    argv = [python, "-c", CHECK, server, entry, *([path, app.cfg["health_host"]] if answer else [])]
    command, kwargs = release_command(app, release, argv)
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL, **kwargs
    )
    said = result.stdout.splitlines()
    built = [line[len(BUILT) :] for line in said if line.startswith(BUILT)]
    answered = [line[len(ANSWERED) :] for line in said if line.startswith(ANSWERED)]
    # An app that ends the process itself (os._exit at import) says neither line, whatever its exit.
    if result.returncode != 0 or not built or (answer and not answered):
        if not built:
            raise failure(f"{app.name}: release {release} does not build its app ({entry})", result)
        raise failure(
            f"{app.name}: release {release} does not answer {path} (one WSGI call, before it serves)", result
        )
    return built[0], answered[0] if answer else ""


def why(exc: BaseException) -> str:
    """A failure in words: the tool's own message, or what else stopped it."""
    if isinstance(exc, ReleaseError):
        return str(exc)
    if isinstance(exc, (KeyboardInterrupt, Interrupted)):
        return f"interrupted ({exc or 'SIGINT'})"
    return f"{type(exc).__name__}: {exc}"


def first_served(app: App, release: str) -> dict | None:
    """The history line of a release's first time live, or None if it never served."""
    return next((entry for entry in app.served() if entry["release"] == release), None)


def refuse_older(app: App, release: str, live: str | None) -> None:
    """A deploy may not put back a release that first served before the live one did: that
    would silently undo a newer deploy (a config-only ansible-playbook run from an old
    checkout after a fab deploy). Going back is a rollback, or is asked for."""
    old, new = first_served(app, release), first_served(app, live) if live else None
    if old and new and old["time"] < new["time"]:
        raise ReleaseError(
            f"{app.name}: release {release} is older than the live {live} (it first served at {old['time']}, "
            f"{live} at {new['time']}: {new.get('note') or new.get('action')}); "
            "deploying it would undo that. "
            "Deploy the live release's code, or go back on purpose: fab rollback, or --allow-older "
            "(ansible-playbook: -e app_allow_older=true)"
        )


def activate(
    app: App,
    release: str,
    *,
    do_migrate: bool,
    action: str,
    note: str,
    allow_older: bool = True,
    out_of_pool: bool = False,
) -> bool:
    """Put a prepared release live, or leave the live one serving and raise.

    Whatever stops it once `current` has moved (a failed restart or health check, a
    signal, an error of any kind) switches back to the release that was live, which is
    checked again; an app's first release that fails is taken down rather than left
    serving unchecked. A pending line in the history before the switch lets the next
    command finish the job if this process dies (recover)."""
    if not app.prepared(release):
        raise ReleaseError(f"{app.name}: release {release} is not prepared on this host")
    live = app.live()
    if not allow_older and live != release:
        refuse_older(app, release, live)
    if live == release:
        with step("health") as s:  # live is not enough: it must answer
            s.detail = wait_healthy(app)
        print(f"{app.name}: release {release} is already live")
        return False
    try:
        init = "" if (app.shared_dir / INIT_MARKER).exists() else app.cfg.get("init_command") or ""
        found = migrations(app, release) if do_migrate else None
        skipped = migration_skipped(app, found) if do_migrate else "--skip-migrate"
        # Nothing to run between the gates: one import of the app does both, or none at all
        # where the server's start is the gate (start_is_gate).
        together = not init and bool(skipped)
        by_start = together and start_is_gate(app, out_of_pool)
        with step("check") as s:
            if by_start:
                s.detail = "by the restart: out of every pool, the preloaded server imports the app first"
            else:
                built, answered = gates(app, release, answer=together)
                s.detail = f"{built}; {answered} (check and answer in one import)" if together else built
        if init:
            with step("init") as s:
                in_release(app, release, ["/bin/sh", "-ec", init], f"{app.name}: init_command failed")
                (app.shared_dir / INIT_MARKER).touch()
                s.detail = init
        if do_migrate:
            with step("migrate") as s:
                s.detail = skipped or run_migration(app, release, found)
        if not together:
            with step("answer") as s:
                s.detail = gates(app, release, answer=True)[1]
    except BaseException as exc:  # noqa: BLE001 - a signal too: nothing has switched
        with deferred_signals():
            back = restore_settings(app) if live else ""
            raise ReleaseError(
                f"{why(exc)}\n  nothing switched: {live or 'no release'} still live; {discard(app, release)}"
                + (f"\n  {back}" if back else "")
            ) from None
    app.record(release, live, PENDING, f"{action}: {note}")
    try:
        with step("switch") as s:
            switch(app, release)
            s.detail = f"current -> releases/{release} (was {live or 'none'})"
        begin_stopping_workers(app)
        with step("restart"):
            restart(app)
        with step("health") as s:
            s.detail = wait_healthy(app, first_answer=by_start)
        with step("workers") as s:
            s.detail = restart_workers(app)
    except BaseException as exc:  # noqa: BLE001 - whatever stops it, the release it put live goes
        with deferred_signals():
            raise ReleaseError(f"{why(exc)}\n  {switch_back(app, release, live)}") from None
    app.record(release, live, action, note)
    keep_settings(app, release)
    try:
        prune(app, int(app.cfg["keep_releases"]))
    except (OSError, ReleaseError) as exc:  # the release is live and recorded: say so, do not fail
        print(f"  prune    FAILED          {exc} (the release is live; nothing else changed)")
    return True


def switch_back(app: App, release: str, live: str | None) -> str:
    """After a failed activation of release: the previous one live again (checked), or, for an
    app's first release, nothing serving. Records what it did; says it in words."""
    if live is None:
        with step("take down") as s:
            with contextlib.suppress(FileNotFoundError):
                app.current.unlink()
            fsync_dir(app.current.parent)
            # The socket too: left listening, each connection would start a service that cannot
            # run (no current) until systemd's start limit. The next activation's restart starts it
            # again (the service requires it).
            units = [app.cfg["service"], app.cfg["socket_unit"]]
            argv = app.cfg.get("stop_command") or ["systemctl", "stop", *units]
            try:
                stopped = subprocess.run(argv, capture_output=True, check=False).returncode == 0
                stopped = stop_workers(app) and stopped
            except OSError:
                stopped = False
            s.detail = "current removed, " + (
                " and ".join(units) + " stopped" if stopped else "the service did not stop"
            )
        app.record(
            release,
            None,
            FAILED,
            f"{release} failed after the switch (restart, health or workers); it was the first release",
        )
        return f"no previous release: nothing serves {app.name} now; {discard(app, release)}"
    try:
        with step("rollback") as s:
            back = restore_settings(app)
            switch(app, live)
            if not app.cfg.get("restart_command"):
                # A start that failed counts toward systemd's start limit, as does the automatic
                # restart it may have queued: the one that matters now must not be refused for it.
                systemctl("reset-failed", app.cfg["service"])
            restart(app)
            s.detail = f"current -> releases/{live}; {wait_healthy(app)}"
    except BaseException:
        # The release it went back to does not answer either (its database down?): its
        # workers, asked to stop after the switch (or started on the failed release, if one
        # of them is what failed), run it again all the same, as they would have had they
        # never been stopped.
        start_workers(app, live, restart=True)
        raise
    workers = ""
    try:
        with step("workers") as s:  # they may have started on the release that failed
            s.detail = restart_workers(app)
    except ReleaseError as exc:  # the web answers on the release it had: say so, and record it
        workers = f"; ITS WORKERS DO NOT STAY UP EITHER: {exc}"
    app.record(
        live,
        release,
        "auto-rollback",
        f"{release} failed after the switch (restart, health or workers){workers[:200]}",
    )
    return (
        f"switched back to {live}, which answers; {discard(app, release)}"
        + (f"; {back}" if back else "")
        + workers
    )


def recover(app: App) -> None:
    """Finish what an activation that died after its pending line left (a killed process, a
    power cut): the release it switched to stays if it answers, else the one before it
    comes back. Run under the app's lock by every command that changes the app."""
    entries = app.history()
    if not entries or entries[-1].get("action") != PENDING:
        return
    pending = entries[-1]
    release, before = pending["release"], pending.get("from")
    action, _, note = str(pending.get("note", "")).partition(": ")
    with step("recover") as s:
        if app.live() != release:
            app.record(app.live() or "", release, ABANDONED, f"an activation of {release} did not switch")
            # Or it switched back and died before its workers were started again.
            start_workers(app, before)
            s.detail = f"an interrupted activation of {release} had not switched"
            return
        try:
            restart(app)  # the process that died may not have restarted it: the new code must run
            wait_healthy(app)
            restart_workers(app)
            app.record(release, before, action or "deploy", f"{note} (finished after an interruption)")
            keep_settings(app, release)
            s.detail = f"{release} was switched to and answers: recorded"
        except ReleaseError as exc:
            s.detail = f"{release} was switched to and does not answer ({exc}): " + switch_back(
                app, release, before
            )


def cmd_activate(args) -> int:
    app = App(args.app, args.config_dir)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        recover(app)
        changed = activate(
            app, args.release, do_migrate=not args.skip_migrate, action="deploy", note=args.note,
            allow_older=args.allow_older, out_of_pool=args.out_of_pool,
        )  # fmt: skip
    print(f"{app.name}: {'ACTIVATED' if changed else 'unchanged'} {args.release}")
    return 0


def cmd_restart(args) -> int:
    """Restart the live release with the settings now on disk (env file, config files, units),
    through the gates: the app must build and answer with them, as the app, in its sandbox,
    before the running processes are replaced; else they keep serving."""
    app = App(args.app, args.config_dir)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        recover(app)
        live = app.live()
        if live is None:
            print(f"{app.name}: no live release, nothing to restart")
            return 0
        try:
            with step("check") as s:
                built, answered = gates(app, live, answer=True)
                s.detail = f"{built}; {answered} (check and answer in one import)"
        except BaseException as exc:  # noqa: BLE001 - a signal too: nothing has restarted
            with deferred_signals():
                back = restore_settings(app) or (
                    "the new settings stay on disk (none it answered with are kept to put back): a "
                    "process that starts from now on fails the same way until they are fixed"
                )
                service = app.cfg["service"]
                raise ReleaseError(
                    f"{why(exc)}\n  NOT restarted: the running {service} keeps serving {live}; {back}"
                ) from None
        try:
            with step("restart"):
                restart(app)
            with step("health") as s:
                s.detail = wait_healthy(app)
            with step("workers") as s:
                s.detail = restart_workers(app)
        except BaseException as exc:  # noqa: BLE001 - whatever stops it, the old settings come back
            with deferred_signals():
                raise ReleaseError(f"{why(exc)}\n  {settings_back(app, live)}") from None
        keep_settings(app, live)
    print(f"{app.name}: restarted {live} with its current settings")
    return 0


def settings_back(app: App, live: str) -> str:
    """After the live release failed its health check with new settings: the kept ones back,
    and the app restarted with them (checked). Says what it did."""
    with step("settings back") as s:
        back = restore_settings(app)
        if not back:
            s.detail = "none kept that differ"
            return f"{app.name} does not answer with its new settings, and none it answered with are kept"
        restart(app)
        s.detail = f"{back}; {wait_healthy(app)}"
    with step("workers") as s:
        s.detail = restart_workers(app)
    return f"{back}; {app.name} restarted with them and answers"


def cmd_rollback(args) -> int:
    app = App(args.app, args.config_dir)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        recover(app)
        target = args.release or app.previous()
        if not target:
            raise ReleaseError(f"{app.name}: no previous release to roll back to")
        if not app.prepared(target):
            raise ReleaseError(
                f"{app.name}: release {target} is not on this host "
                f"(see `flaskstack-release releases {app.name}`)"
            )
        changed = activate(app, target, do_migrate=False, action="rollback", note=args.note)
    print(f"{app.name}: {'ACTIVATED' if changed else 'unchanged'} {target}")
    return 0


def prune(app: App, keep: int) -> None:
    """Keep the newest `keep` releases (never the live or the previous one) and their wheelhouses."""
    releases = app.releases()
    protected = {app.live(), app.previous()}
    removed = []
    for release in releases[: max(0, len(releases) - keep)]:
        if release not in protected:
            shutil.rmtree(app.release_dir(release), ignore_errors=True)
            removed.append(release)
    used = {venv_key(app, release) for release in app.releases()}
    if app.wheelhouse_dir.is_dir():
        for wheelhouse in app.wheelhouse_dir.iterdir():
            if wheelhouse.name not in used:
                shutil.rmtree(wheelhouse, ignore_errors=True)
                removed.append(f"wheelhouse {wheelhouse.name}")
    if removed:
        print(f"  prune    ok              removed {', '.join(removed)}")


def describe_lock(held: dict) -> str:
    """A held deploy lock in words, with what to do about it."""
    since = held.get("since")
    age = ""
    if since:
        with contextlib.suppress(ValueError):
            then = datetime.strptime(since, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            minutes = int((datetime.now(timezone.utc) - then).total_seconds() // 60)
            age = f", {minutes} min ago"
    return (
        f"locked for a deploy by {held.get('holder') or 'someone unknown'} (since {since or '?'}{age}); "
        "wait for it to finish, or if it is gone (its client killed), `fab unlock --force`"
    )


def take_deploy_lock(app: App, holder: str, token: str) -> tuple[bool, str]:
    """Take the app's deploy lock for one deploy (every host, every step): fab and
    ansible-playbook take it on every host before they change anything, and release it at
    the end. The token proves a command belongs to the holder's deploy. Whether this call
    took it (not already this deploy's), and that in words; a lock someone else holds raises."""
    entry = {
        "holder": holder,
        "token": token,
        "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    app.home.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(app.deploy_lock_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        held = app.deploy_lock() or {}
        if held.get("token") == token:
            return False, f"{app.name}: deploy lock already held by this deploy"
        raise ReleaseError(f"{app.name}: {describe_lock(held)}") from None
    try:
        os.write(fd, json.dumps(entry, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    fsync_dir(app.deploy_lock_file.parent)
    return True, f"{app.name}: deploy lock taken by {holder}"


def cmd_lock(args) -> int:
    """Take the app's deploy lock (take_deploy_lock)."""
    print(take_deploy_lock(App(args.app, args.config_dir), args.holder, args.token)[1])
    return 0


def cmd_unlock(args) -> int:
    """Release the deploy lock: the holder's own (its token), or anyone's with --force."""
    app = App(args.app, args.config_dir)
    held = app.deploy_lock()
    if held is None:
        print(f"{app.name}: not locked")
        return 0
    if held.get("token") != args.token and not args.force:
        raise ReleaseError(f"{app.name}: {describe_lock(held)}")
    app.deploy_lock_file.unlink(missing_ok=True)
    print(f"{app.name}: deploy lock of {held.get('holder') or 'someone unknown'} released")
    return 0


def cmd_prune(args) -> int:
    app = App(args.app, args.config_dir)
    with app.lock():
        app.check_deploy_lock(args.lock_token)
        prune(app, args.keep if args.keep is not None else int(app.cfg["keep_releases"]))
    return 0


def release_rows(app: App) -> list[dict]:
    live, previous = app.live(), app.previous()
    last = {}
    for entry in app.served():
        last[entry["release"]] = entry
    rows = []
    for release in reversed(app.releases()):
        entry = last.get(release, {})
        rows.append(
            {
                "release": release,
                "state": "live" if release == live else "previous" if release == previous else "ready",
                "activated": entry.get("time"),
                "action": entry.get("action"),
                "note": entry.get("note", ""),
            }
        )
    return rows


def cmd_releases(args) -> int:
    app = App(args.app, args.config_dir)
    rows = release_rows(app)
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'release':<14} {'state':<9} {'activated':<21} {'by':<14} note")
    for row in rows:
        print(
            f"{row['release']:<14} {row['state']:<9} {row['activated'] or '-':<21} "
            f"{row['action'] or '-':<14} {row['note']}".rstrip()
        )
    return 0


def cmd_status(args) -> int:
    app = App(args.app, args.config_dir)
    service = app.cfg["service"]
    active = subprocess.run(
        ["systemctl", "is-active", service], capture_output=True, text=True, check=False
    ).stdout.strip() if shutil.which("systemctl") else "unknown"  # fmt: skip
    try:
        code, _ = get_health(app)
        health = f"GET {app.cfg['health_path']} -> {code}"
    except (OSError, http.client.HTTPException) as exc:
        health = f"no answer: {why(exc)}"
    entries = app.history()
    status = {
        "app": app.name,
        "live": app.live(),
        "previous": app.previous(),
        "service": active,
        "health": health,
    }
    if entries and entries[-1].get("action") == PENDING:
        status["pending"] = (
            f"an activation of {entries[-1]['release']} was interrupted (the next deploy checks it)"
        )
    states = unit_states(list(app.cfg.get("worker_units") or []) + list(app.cfg.get("timer_units") or []))
    if states:
        status["processes"] = ", ".join(
            f"{unit} {state.get('ActiveState', '?')}" for unit, state in sorted(states.items())
        )
    held = app.deploy_lock()
    if held is not None:
        status["lock"] = describe_lock(held).partition(";")[0]
    if getattr(app, "torn", 0):
        status["history"] = (
            f"{app.torn} torn line skipped" if app.torn == 1 else f"{app.torn} torn lines skipped"
        )
    if args.json:
        print(json.dumps(status))
    else:
        for key, value in status.items():
            print(f"{key:<9} {value}")
    return 0


def ours(path: Path, app: App) -> bool:
    """A unit file flaskstack wrote for one of the app's workers or timers (its Description
    names the app), not another app's whose name starts the same."""
    try:
        return f"Description=flaskstack app {app.name}: " in path.read_text()
    except OSError:
        return False


def cmd_processes(args) -> int:
    """Bring the app's workers and timers on this host in line with release.json (which the
    app role writes from the inventory): --phase stop stops, disables and removes the units
    no longer wanted here (a worker removed, fewer instances, the scheduler moved to another
    host); --phase start enables the wanted ones, and starts them if a release is live.
    Ansible runs the stop phase on every host before the start phase on any, so a scheduler
    never runs on two hosts at once. --check: say what would change. Prints JSON."""
    app = App(args.app, args.config_dir)
    prefix = str(app.cfg.get("process_unit_prefix") or f"/etc/systemd/system/{app.name}-")
    unit_dir, stem = Path(prefix).parent, Path(prefix).name
    # --all: none is wanted (the app is being removed).
    wanted_files = set() if args.all else set(app.cfg.get("process_unit_files") or [])
    wanted = (
        [] if args.all else list(app.cfg.get("worker_units") or []) + list(app.cfg.get("timer_units") or [])
    )
    found = [
        f for f in sorted(unit_dir.glob(f"{stem}*")) if f.is_file() and not f.is_symlink() and ours(f, app)
    ]
    templates = {f.name for f in found if f.name.endswith("@.service")}
    # Enabled units: the links in the .wants folders (an instance of one of our templates,
    # or one of our timers).
    enabled = sorted({
        link.name for link in unit_dir.glob(f"*.wants/{stem}*")
        if (link.name.endswith(".timer") and ours(unit_dir / link.name, app))
        or ("@" in link.name and link.name.split("@")[0] + "@.service" in templates)
    })  # fmt: skip
    result: dict = {"changed": False}
    with app.lock():
        if args.phase == "stop":
            stale_files = [str(f) for f in found if str(f) not in wanted_files]
            # What runs, enabled or not: an instance of one of the app's
            # templates, or one of its timers or timer jobs (their files are the app's).
            names = {f.name for f in found}
            listed = systemctl("list-units", "--all", "--plain", "--no-legend", f"{stem}*").stdout
            running = [
                line.split()[0] for line in listed.splitlines()
                if len(line.split()) > 2 and line.split()[2] in ("active", "activating", "reloading")
            ]  # fmt: skip
            loaded = [
                u for u in running if u in names or ("@" in u and u.split("@")[0] + "@.service" in templates)
            ]
            # A wanted timer's job may be running: it stays (it is no unit of its own in wanted).
            keep = set(wanted) | {
                u.removesuffix(".timer") + ".service" for u in wanted if u.endswith(".timer")
            }
            stale_units = sorted({u for u in [*enabled, *loaded] if u not in keep})
            result.update(stopped=stale_units, removed=stale_files, changed=bool(stale_units or stale_files))
            if result["changed"] and not args.check:
                if stale_units:
                    run(
                        ["systemctl", "disable", "--now", "--", *stale_units],
                        f"{app.name}: stopping {stale_units}",
                    )
                for path in stale_files:
                    Path(path).unlink(missing_ok=True)
                run(["systemctl", "daemon-reload"], "systemctl daemon-reload")
        else:
            to_enable = [u for u in wanted if u not in enabled]
            live = app.live() is not None and not args.enable_only
            states = unit_states(wanted) if live else {}
            to_start = [
                u
                for u in wanted
                if live and states.get(u, {}).get("ActiveState") not in ("active", "activating")
            ]
            result.update(enabled=to_enable, started=to_start, changed=bool(to_enable or to_start))
            if to_enable and not args.check:
                run(["systemctl", "enable", "--", *to_enable], f"{app.name}: enabling {to_enable}")
            if to_start and not args.check:
                run(["systemctl", "start", "--", *to_start], f"{app.name}: starting {to_start}")
    print(json.dumps(result, sort_keys=True))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flaskstack-release", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--lock-token", default=None, help="the deploy lock's token: this command is part of that deploy"
    )
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("lock", help="take the app's deploy lock (fab and ansible-playbook do, on every host)")
    s.add_argument("app")
    s.add_argument("--holder", required=True, help="who deploys: shown to whoever finds the lock")
    s.add_argument("--token", required=True, help="a secret of the deploy's, given to its later commands")
    s.set_defaults(func=cmd_lock)
    s = sub.add_parser("unlock", help="release the deploy lock (--force: someone else's)")
    s.add_argument("app")
    s.add_argument("--token")
    s.add_argument("--force", action="store_true")
    s.set_defaults(func=cmd_unlock)
    s = sub.add_parser("info", help="this host's Python, architecture and apps, as JSON")
    s.add_argument("--lock", action="append", default=[], metavar="APP", help="take APP's deploy lock first")
    s.add_argument("--holder", help="with --lock: who deploys")
    s.add_argument("--token", help="with --lock: the deploy's secret")
    s.set_defaults(func=cmd_info)
    s = sub.add_parser("prepare", help="unpack a release and build its venv from a wheelhouse")
    s.add_argument("app")
    s.add_argument("release")
    s.add_argument("--archive", required=True, help="the release archive on this host")
    s.add_argument("--wheelhouse", required=True, help="the wheelhouse key under <home>/wheelhouse/")
    s.add_argument("--wheelhouse-archive", help="the wheelhouse as a tar, unpacked if the key is missing")
    s.add_argument("--remove-archive", action="store_true", help="delete the uploaded archives once used")
    s.set_defaults(func=cmd_prepare)
    s = sub.add_parser("run", help="a command in the live release, as the app (user, environment, sandbox)")
    s.add_argument("app")
    s.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    s.set_defaults(func=cmd_run)
    s = sub.add_parser("migrate", help="run the migrate command in a prepared release")
    s.add_argument("app")
    s.add_argument("release")
    s.add_argument(
        "--force", action="store_true", help="run it even if the migrate_when_changed paths are unchanged"
    )
    s.set_defaults(func=cmd_migrate)
    s = sub.add_parser("activate", help="check, migrate, switch, restart and health-check a release")
    s.add_argument("app")
    s.add_argument("release")
    s.add_argument("--skip-migrate", action="store_true", help="another host runs the migrations")
    s.add_argument(
        "--allow-older", action="store_true", help="put back a release that served before the live one"
    )
    s.add_argument("--note", default="", help="kept in the history (who, which commit)")
    s.add_argument(
        "--out-of-pool",
        action="store_true",
        help="the host is out of every load balancer's pool: a preloaded gunicorn's start is the check",
    )
    s.set_defaults(func=cmd_activate)
    s = sub.add_parser("restart", help="restart the live release with its settings now, through the gates")
    s.add_argument("app")
    s.set_defaults(func=cmd_restart)
    s = sub.add_parser("rollback", help="put the previous release (or the given one) live again")
    s.add_argument("app")
    s.add_argument("release", nargs="?")
    s.add_argument("--note", default="", help="kept in the history")
    s.set_defaults(func=cmd_rollback)
    s = sub.add_parser("releases", help="the releases on this host, newest first")
    s.add_argument("app")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_releases)
    s = sub.add_parser("status", help="live release, service state and health")
    s.add_argument("app")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("processes", help="bring the app's workers and timers on this host in line")
    s.add_argument("app")
    s.add_argument("--phase", choices=["stop", "start"], required=True)
    s.add_argument("--check", action="store_true", help="say what would change, change nothing")
    s.add_argument("--all", action="store_true", help="with --phase stop: every one of them (the app goes)")
    s.add_argument(
        "--enable-only", action="store_true", help="with --phase start: start none (a deploy will)"
    )
    s.set_defaults(func=cmd_processes)
    s = sub.add_parser("prune", help="remove old releases and unused wheelhouses")
    s.add_argument("app")
    s.add_argument("--keep", type=int)
    s.set_defaults(func=cmd_prune)
    return p


def main(argv: list[str] | None, config_dir: str) -> int:
    """Run one command; config_dir is where <app>/release.json live (the wrapper names it)."""
    args = parser().parse_args(argv)
    args.config_dir = Path(config_dir)
    # The releases it unpacks and the venvs it builds must be readable by the app's user,
    # whatever umask the login that ran it had (the host role's login umask is 027).
    os.umask(0o022)
    if args.command != "run":  # run's command is the client's: it goes with it
        # The client may go away (Ctrl-C, a dropped connection) at any time: the tool finishes
        # what it started, or undoes it, and the history says which.
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, _interrupted)
        signal.signal(signal.SIGTERM, _interrupted)
        sys.stdout, sys.stderr = SafeOutput(sys.stdout), SafeOutput(sys.stderr)
    try:
        return args.func(args)
    except ReleaseError as exc:
        print(f"flaskstack-release: {exc}", file=sys.stderr)
        return 1
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"flaskstack-release: {why(exc)}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(
        "flaskstack-release: run it as /usr/local/sbin/flaskstack-release, which names the config folder"
    )
