#!/usr/bin/python3
"""flaskstack-pool: which app hosts a load balancer sends each app's requests to.

The one implementation of "take hosts out of the pool, drain them, check them, put them
back", used by a rolling deploy of `ansible-playbook` (playbooks/deploy.yml) and of
`fab deploy` alike. It runs on each load balancer (group flaskstack_lb) and owns the
`server` lines of each app's nginx upstream: the nginx role writes the pool's settings
(every app host of the inventory, never a run's batch) to SETTINGS and the site includes
<upstream_dir>/<app>.conf, which this tool writes from the settings and from which hosts
are out of the pool (STATE).

On a host this module is /usr/local/lib/flaskstack/flaskstack_pool.py, run by
/usr/local/sbin/flaskstack-pool (templates/usr/local/sbin/flaskstack-pool.j2), which
names the settings and state files.

    flaskstack-pool render [--check]            write each app's server lines (the nginx role)
    flaskstack-pool out HOST... [--app A] [--why TEXT] [--timeout S]
    flaskstack-pool in  HOST... [--app A] [--check]
    flaskstack-pool check HOST... [--app A]     each app's health path on each host, as the LB reaches it
    flaskstack-pool status [--json]

out: the hosts get nginx's `down` flag (a host that would leave an app with no host in
its pool stays in, and the tool says so: its own restart is graceful), `nginx -t`, a
reload, then a wait until every nginx worker that had the old configuration has exited,
that is until every request it carried has finished (bounded by --timeout; long-lived
WebSockets are the usual reason to hit it). in: the flag goes, `nginx -t`, a reload
(none when every host named is in already); with --check only for the hosts that answer
each app's health path as this load balancer reaches them (the others stay out, and it
exits 1).
A failed `nginx -t` puts the previous files and state back and exits 1.

Only the Python standard library: it runs on the host's system Python.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import http.client
import json
import os
import subprocess
import sys
import time
from pathlib import Path

NGINX_PID = "/run/nginx.pid"
HEADER = "# Written by flaskstack-pool from {settings}: edit the inventory, not this file.\n"


class PoolError(Exception):
    """A message for the user; the command exits 1."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class Pool:
    def __init__(self, settings: str, state: str):
        self.settings_path = Path(settings)
        self.state_path = Path(state)
        try:
            self.settings = json.loads(self.settings_path.read_text())
        except FileNotFoundError:
            raise PoolError(f"{settings} is missing: not a load balancer (group flaskstack_lb)?") from None
        self.apps: dict = self.settings["apps"]
        self.upstream_dir = Path(self.settings["upstream_dir"])
        try:
            self.out: dict = json.loads(self.state_path.read_text()).get("out", {})
        except FileNotFoundError:
            self.out = {}

    # -- what is where -------------------------------------------------------------------

    def select(self, names: list[str]) -> list[str]:
        for name in names:
            if name not in self.apps:
                raise PoolError(f"no app {name} in this load balancer's pool (apps: {', '.join(self.apps)})")
        return names or list(self.apps)

    def hosts(self, app: str) -> list[str]:
        return [s["host"] for s in self.apps[app]["servers"]]

    def check_hosts(self, app: str, hosts: list[str]) -> None:
        unknown = [h for h in hosts if h not in self.hosts(app)]
        if unknown:
            raise PoolError(
                f"{app}: {', '.join(unknown)} not in its pool (hosts: {', '.join(self.hosts(app))})"
            )

    def is_out(self, app: str, host: str) -> bool:
        return host in self.out.get(app, {})

    def lines(self, app: str) -> str:
        text = HEADER.format(settings=self.settings_path)
        options = self.settings["server_options"]
        for server in self.apps[app]["servers"]:
            host, why = server["host"], self.out.get(app, {}).get(server["host"])
            down = " down" if why else ""
            note = f"  # {host}" + (f": out of the pool since {why['since']} ({why['why']})" if why else "")
            text += f"server {server['address']} {options}{down};{note}\n"
        return text

    # -- writing -------------------------------------------------------------------------

    def render(self, check: bool = False) -> list[str]:
        """Write each app's server lines: the files changed (or that would, with check). An app
        gone from the settings keeps its file: its site, which includes it, may still be
        enabled until the nginx role removes it; a file no site includes is inert."""
        changed = []
        for app in self.apps:
            path, text = self.upstream_dir / f"{app}.conf", self.lines(app)
            if not path.is_file() or path.read_text() != text:
                changed.append(str(path))
                if not check:
                    write_atomic(path, text)
        return changed

    def save_state(self) -> None:
        out = {app: hosts for app, hosts in self.out.items() if hosts and app in self.apps}
        write_atomic(self.state_path, json.dumps({"out": out}, indent=1, sort_keys=True) + "\n", 0o600)

    @contextlib.contextmanager
    def changing(self):
        """Change the state and the files, then `nginx -t`: on failure, put both back."""
        before_state = json.loads(json.dumps(self.out))
        before_files = {
            p: p.read_text() for p in (self.upstream_dir.glob("*.conf") if self.upstream_dir.is_dir() else [])
        }
        yield
        self.save_state()
        self.render()
        test = subprocess.run(["nginx", "-t", "-q"], capture_output=True, text=True, check=False)
        if test.returncode != 0:
            self.out = before_state
            self.save_state()
            for path, text in before_files.items():
                write_atomic(path, text)
            raise PoolError(f"nginx -t refused the new pool (nothing changed): {test.stderr.strip()}")


# -- nginx's workers -----------------------------------------------------------------------


def nginx_workers() -> set[int]:
    """The running nginx's workers (children of the master in NGINX_PID), those serving and
    those still shutting down after an earlier reload: any of them may carry a request."""
    try:
        master = Path(NGINX_PID).read_text().strip()
    except OSError:
        return set()
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").strip()
            parent = next(x for x in (entry / "status").read_text().splitlines() if x.startswith("PPid:"))
        except (OSError, StopIteration):
            continue
        if cmdline.startswith(b"nginx: worker process") and parent.split()[1] == master:
            found.add(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return cmdline.startswith(b"nginx: worker process")


def reload_nginx() -> set[int]:
    """Reload nginx; the workers that had the old configuration."""
    old = nginx_workers()
    result = subprocess.run(["systemctl", "reload", "nginx"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PoolError(f"systemctl reload nginx failed: {(result.stderr or result.stdout).strip()}")
    return old


def drain(old: set[int], timeout: float) -> tuple[float, int]:
    """Wait until the old workers have exited (each once its requests are done): (seconds,
    how many were still running at the timeout)."""
    start = time.monotonic()
    while True:
        left = [pid for pid in old if alive(pid)]
        took = time.monotonic() - start
        if not left or took >= timeout:
            return took, len(left)
        # An idle worker is gone within tens of milliseconds of the reload: a short poll
        # (a few /proc reads) keeps the drain from adding a tenth of a second of its own.
        time.sleep(0.02)


def get(address: str, path: str, host_header: str, timeout: float) -> int:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host_header, "User-Agent": "flaskstack-pool"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


# -- commands ------------------------------------------------------------------------------


@contextlib.contextmanager
def locked(state: str):
    """One change of the pool at a time (two rollouts of different apps may share a host)."""
    Path(state).parent.mkdir(parents=True, exist_ok=True)
    with open(f"{state}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cmd_render(pool: Pool, args) -> int:
    for path in pool.render(check=args.check):
        print(f"{'would change' if args.check else 'changed'}: {path}")
    return 0


def cmd_out(pool: Pool, args) -> int:
    apps = pool.select(args.app)
    kept = []
    with pool.changing():
        for app in apps:
            pool.check_hosts(app, args.hosts)
            for host in args.hosts:
                in_pool = [h for h in pool.hosts(app) if not pool.is_out(app, h) and h != host]
                if not in_pool:
                    kept.append((app, host))
                    continue
                pool.out.setdefault(app, {})[host] = {"since": now(), "why": args.why}
    old = reload_nginx()
    took, left = drain(old, args.timeout)
    for app in apps:
        for host in args.hosts:
            if (app, host) in kept:
                print(
                    f"{host}: kept in the pool of {app}: it is the last host there "
                    "(its app server restarts gracefully on its own)"
                )
            else:
                print(f"{host}: out of the pool of {app}")
    if left:
        print(
            f"drain: {left} nginx worker(s) still carry requests after {took:.1f}s (--timeout): "
            "going on (long-lived connections, such as WebSockets, end with the app server's restart)"
        )
    else:
        print(f"drained in {took:.2f}s")
    return 0


def health(pool: Pool, app: str, host: str, timeout: float) -> tuple[bool, str]:
    """Whether the host answers the app's health path as this load balancer reaches it."""
    settings = pool.apps[app]
    server = next(s for s in settings["servers"] if s["host"] == host)
    what = f"{host}: {app}: GET {settings['health_path']} via {server['address']}"
    try:
        code = get(server["address"], settings["health_path"], settings["host_header"], timeout)
    except (OSError, http.client.HTTPException) as exc:
        return False, f"{what}: no answer ({exc})"
    return 200 <= code < 300, f"{what} -> {code}"


def cmd_in(pool: Pool, args) -> int:
    apps = pool.select(args.app)
    back, left = [], []
    for app in apps:
        pool.check_hosts(app, args.hosts)
        for host in args.hosts:
            if not pool.is_out(app, host):
                print(f"{host}: already in the pool of {app}")
                continue
            ok, said = health(pool, app, host, args.timeout) if args.check else (True, "")
            if said:
                print(said)
            (back if ok else left).append((app, host))
    if back:
        with pool.changing():
            for app, host in back:
                pool.out.get(app, {}).pop(host, None)
        reload_nginx()
    for app, host in back:
        print(f"{host}: in the pool of {app}")
    for app, host in left:
        print(f"{host}: LEFT OUT of the pool of {app}: it does not answer as the load balancer reaches it")
    return 1 if left else 0


def cmd_check(pool: Pool, args) -> int:
    failed = 0
    for app in pool.select(args.app):
        pool.check_hosts(app, args.hosts)
        for host in args.hosts:
            ok, said = health(pool, app, host, args.timeout)
            print(said)
            failed += not ok
    return 1 if failed else 0


def cmd_status(pool: Pool, args) -> int:
    status = {
        app: {
            h: ({"in_pool": False, **pool.out[app][h]} if pool.is_out(app, h) else {"in_pool": True})
            for h in pool.hosts(app)
        }
        for app in pool.apps
    }
    if args.json:
        print(json.dumps(status))
        return 0
    for app, hosts in status.items():
        for host, s in hosts.items():
            where = "in the pool" if s["in_pool"] else f"OUT of the pool since {s['since']} ({s['why']})"
            print(f"{app:<12} {host:<20} {where}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flaskstack-pool", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    render = sub.add_parser("render", help="write each app's server lines from the settings")
    render.add_argument("--check", action="store_true", help="only say what would change")
    for name, text in (
        ("out", "take hosts out of the pool and wait for their requests to finish"),
        ("in", "put hosts back into the pool"),
        ("check", "GET each app's health path on the hosts, as the load balancer reaches them"),
    ):
        c = sub.add_parser(name, help=text)
        c.add_argument("hosts", nargs="+", metavar="HOST", help="inventory names of app hosts")
        c.add_argument("--app", action="append", default=[], help="only this app (repeat; default: all)")
        if name == "out":
            c.add_argument("--why", default="flaskstack-pool out", help="noted in the state and the config")
        if name == "in":
            c.add_argument("--check", action="store_true", help="only hosts that answer (check) go back in")
        c.add_argument("--timeout", type=float, default=30.0 if name == "out" else 10.0, help="seconds")
    status = sub.add_parser("status", help="which hosts each app's pool has, and which are out")
    status.add_argument("--json", action="store_true")
    return p


COMMANDS = {"render": cmd_render, "out": cmd_out, "in": cmd_in, "check": cmd_check, "status": cmd_status}


def main(argv: list[str], settings: str, state: str) -> int:
    args = parser().parse_args(argv)
    try:
        with locked(state) if args.command in ("render", "out", "in") else contextlib.nullcontext():
            return COMMANDS[args.command](Pool(settings, state), args)
    except PoolError as exc:
        print(f"flaskstack-pool: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover - the host runs it through its wrapper
    sys.exit(main(sys.argv[1:], "/etc/flaskstack/pool.json", "/var/lib/flaskstack/pool.json"))
