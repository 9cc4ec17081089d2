"""flaskstack's code pushes: `fab deploy`, `rollback`, `releases`, `status`, `logs`, `run`.

`ansible-playbook site.yml` provisions a host and deploys; `fab deploy` pushes a
code change to hosts it provisioned, in seconds. Both read the same inventory
(hosts, group_vars, host_vars, vault) through Ansible's own inventory code, and
both leave the on-host work to the same tool, `flaskstack-release` (installed by
the app role): this file only packages, uploads and calls it.

    fab deploy                      # every app of inventory/local, every host
    fab deploy -i inventory/production --app shop --limit web1.example.com
    fab rollback                    # back to the previous release
    fab rollback --release 3f2a9c0e1b7d
    fab releases | fab status | fab logs
    fab run 'flask --app hello db current'   # a one-off command, as the app runs

A deploy runs in phases, each on every host at once, and stops before the next
phase when any host fails: connect and lock (read what the host has, taking each
app's deploy lock in the same call), package on this
machine (release archive; wheelhouse only when the requirements changed),
upload and prepare, migrate once (apps with migrate_once), then activate, batch
by batch (--batch; one host at a time behind load balancers, every host at once
without). So an unreachable host or a requirement without a wheel stops the
deploy before any host switches. Behind load balancers (the inventory's group
flaskstack_lb) each host of a batch leaves their pools and its requests finish
before it switches, and comes back once it answers there (flaskstack-pool, the
tool the deploy play uses too). A failed batch stops the rollout: its hosts go
back to the releases they had (--rollback-all: every host that switched).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import secrets
import shlex
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from fabric import Connection, task
from invoke.exceptions import Exit
from paramiko import RejectPolicy, SSHException

from flaskstack import model
from flaskstack.packaging import (
    WheelhouseError,
    build_wheelhouse,
    git_note,
    package,
    wheelhouse_archive,
    wheelhouse_notes,
)

ROOT = Path(__file__).resolve().parent
TOOL = model.TOOL
# Ansible's settings are the project's (an inventory's templates/ folder is not inventory),
# wherever fab is started from, unless the caller names others.
os.environ.setdefault("ANSIBLE_CONFIG", str(ROOT / "ansible.cfg"))
# The app keys a code push reads; the others (env, TLS, nginx settings, secrets) are never
# templated here, so a vault or a variable they name need not be at hand.
FAB_KEYS = ("name", "state", "src", "requirements", "exclude", "server", "worker_class", "entry_point")
# (Everything that goes into a release's id is among them: fab and Ansible name a release alike.)
FAB_KEYS += ("migrate_once", "server_names", "shared_dirs", "shared_files")
# (And what the report of a project's shape reads.)
FAB_KEYS += ("static_dir", "static_url")
# (And which workers and timers an app has: fab logs --process; their commands are no secret.)
FAB_KEYS += ("workers", "timers")
# (And which requirements may be built here from their source: the wheelhouse's.)
FAB_KEYS += ("build_from_source",)
DEFAULT_INVENTORY = os.environ.get("FLASKSTACK_INVENTORY", str(ROOT / "inventory" / "local"))
GROUP = "flaskstack"
# The load balancers in front of the app hosts, if the inventory has them.
LB_GROUP = "flaskstack_lb"
POOL_TOOL = model.POOL_TOOL

INVENTORY_HELP = {
    "inventory": f"the Ansible inventory (default {DEFAULT_INVENTORY}, or $FLASKSTACK_INVENTORY)",
    "app": "only this app (default: every present app)",
    "limit": "only these hosts, comma-separated (default: every host of the group flaskstack)",
    "vault_password_file": "the vault password file (default $ANSIBLE_VAULT_PASSWORD_FILE)",
}


class DeployError(Exception):
    """What failed, where: the message names the host and the app."""


# -- the inventory, read as Ansible reads it -------------------------------------------------


@dataclass
class Host:
    name: str
    address: str
    port: int
    user: str
    key_file: str | None
    become: bool
    known_hosts: list[str]
    # Present apps, resolved by the app model as the flaskstack role resolves them.
    apps: list[dict]
    # The inventory's apps as fab reads them (FAB_KEYS), and their defaults: what the
    # model checks before a code push.
    fab_apps: list[dict]
    defaults: dict
    cache_dir: Path
    platforms: dict[str, list[str]]
    pip_args: list[str]
    info: dict = field(default_factory=dict)
    connection: Connection | None = None
    # The deploy lock's token once this run holds it: every tool command then shows it.
    lock_token: str = ""
    # Behind load balancers: the most seconds to wait for a host's requests when it
    # leaves the pools (app_drain_timeout; None: flaskstack-pool's own default).
    drain_timeout: int | None = None
    # The inventory's rolling deploy settings, as the deploy play reads them:
    # flaskstack_batch ("" if unset) and app_rollback_all.
    batch: str = ""
    rollback_all: bool = False


_plugins_ready = False


def load_inventory(
    inventory: str,
    limit: str = "",
    vault_password_file: str = "",
    sources: dict | None = None,
    group: str = GROUP,
) -> list[Host]:
    """The hosts of the group `flaskstack` (or group: LB_GROUP, the load balancers), with
    their apps and connection settings (sources: app name -> a source folder to push
    instead of its src, fab deploy --src).

    Variables come from Ansible itself, as a play of the flaskstack role sees them
    (its defaults beneath the inventory's group_vars, host_vars and vault), and
    each host's apps from the app model (flaskstack/model.py), as the role
    resolves them. Only the keys a code push reads are templated (FAB_KEYS):
    secrets, the environment and TLS are ansible-playbook's.
    """
    from ansible.inventory.manager import InventoryManager
    from ansible.module_utils.parsing.convert_bool import boolean
    from ansible.parsing.dataloader import DataLoader
    from ansible.parsing.vault import get_file_vault_secret
    from ansible.plugins.loader import init_plugin_loader
    from ansible.template import Templar
    from ansible.utils.vars import combine_vars
    from ansible.vars.manager import VariableManager

    global _plugins_ready
    if not _plugins_ready:  # once per process, as ansible-playbook does
        init_plugin_loader([])
        _plugins_ready = True
    loader = DataLoader()
    password_file = vault_password_file or os.environ.get("ANSIBLE_VAULT_PASSWORD_FILE", "")
    if password_file:
        secret = get_file_vault_secret(filename=password_file, loader=loader)
        secret.load()
        loader.set_vault_secrets([("default", secret)])
    if not Path(inventory).exists():
        raise DeployError(f"inventory {inventory} does not exist")
    manager = InventoryManager(loader=loader, sources=[inventory])
    variables = VariableManager(loader=loader, inventory=manager)
    # The flaskstack role's defaults, beneath every variable of the inventory, as a play of
    # the role sees the variables read here. Read as a file: loading the role into a play
    # (its tasks and argument specs) took about 0.15 s of each fab command, for its defaults
    # alone. Not here, so not in what fab templates: a play's own variables (ansible_play_hosts
    # and the like), the role's vars/ (internal constants) and its filter and lookup plugins.
    role_defaults = loader.load_from_file(
        str(ROOT / "roles" / "flaskstack" / "defaults" / "main.yml"), trusted_as_template=True
    )
    names = [h.strip() for h in limit.split(",") if h.strip()]
    hosts = []
    for host in manager.get_hosts(group) if group in manager.groups else []:
        if names and host.name not in names:
            continue
        hostvars = combine_vars(role_defaults, variables.get_vars(host=host))
        templar = Templar(loader=loader, variables=hostvars)

        def var(name, default=None, templar=templar, hostvars=hostvars):
            return templar.template(hostvars[name]) if name in hostvars else default

        raw_apps = hostvars.get("flaskstack_apps", [])
        if not isinstance(raw_apps, list):
            raw_apps = templar.template(raw_apps)
        apps = [{k: templar.template(v) for k, v in raw.items() if k in FAB_KEYS} for raw in raw_apps]
        for app, raw in zip(apps, raw_apps, strict=True):
            # Config files' paths are part of a release (their links); their content is not read.
            if isinstance(raw.get("config_files"), list):
                app["config_files"] = [
                    {"path": templar.template(c["path"])} for c in raw["config_files"] if isinstance(c, dict)
                ]
        for app in apps:
            if app.get("name") in (sources or {}):
                app["src"] = sources[app["name"]]
        problems = model.name_errors(apps)
        if problems:
            raise DeployError(f"{host.name}: " + "\n".join(problems))
        defaults = var("flaskstack_app_defaults")
        layout = model.Layout(var("flaskstack_root"), var("flaskstack_config_dir"), var("flaskstack_run_dir"))
        resolved = model.resolve(
            apps,
            defaults,
            layout,
            server_packages=var("flaskstack_server_packages"),
            worker_packages=var("flaskstack_worker_packages", {}),
            health_host=var("app_health_host", ""),
            base_dir=str(var("inventory_dir", inventory)),
            # As the flaskstack role says (resolve.yml): the one host that runs the scheduler.
            scheduler_here=host.name
            == var("flaskstack_scheduler_host", (manager.get_groups_dict().get(GROUP) or [""])[0]),
        )
        common_args = " ".join(str(var(k, "")) for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
        known_hosts = [
            arg.split("=", 1)[1] for arg in shlex.split(common_args) if arg.startswith("UserKnownHostsFile=")
        ]
        hosts.append(
            Host(
                name=host.name,
                address=str(var("ansible_host", host.name)),
                port=int(var("ansible_port", 22)),
                user=str(var("ansible_user", getpass.getuser())),
                key_file=var("ansible_ssh_private_key_file"),
                become=bool(var("ansible_become", False)),
                known_hosts=known_hosts or [str(Path.home() / ".ssh" / "known_hosts")],
                apps=[a for a in resolved if a["state"] == "present"],
                fab_apps=apps,
                defaults=defaults,
                cache_dir=Path(var("flaskstack_cache_dir")),
                platforms=var("flaskstack_wheel_platforms", {}),
                pip_args=list(var("flaskstack_pip_download_args", [])),
                drain_timeout=None if var("app_drain_timeout") is None else int(var("app_drain_timeout")),
                batch=str(var("flaskstack_batch", "")),
                # As the play's `| bool` reads it.
                rollback_all=boolean(var("app_rollback_all", False), strict=False),
            )
        )
    if not hosts and group == GROUP:
        raise DeployError(
            f"no host of the group {GROUP} in {inventory}" + (f" matches {limit}" if limit else "")
        )
    return hosts


# -- talking to hosts ---------------------------------------------------------------------------

_print_lock = threading.Lock()


def say(host: str, text: str) -> None:
    with _print_lock:
        for line in text.rstrip().splitlines():
            print(f"[{host}] {line}", flush=True)


def connect(host: Host) -> Connection:
    """An SSH connection that trusts only known host keys, as Ansible's ssh does by default."""
    kwargs = {"key_filename": host.key_file} if host.key_file else {}
    conn = Connection(host.address, user=host.user, port=host.port, connect_timeout=10, connect_kwargs=kwargs)
    conn.client.set_missing_host_key_policy(RejectPolicy())
    for path in host.known_hosts:
        if Path(path).is_file():
            conn.client.load_host_keys(path)
    try:
        conn.open()
    except OSError as exc:  # refused, timed out, no route
        raise DeployError(f"{host.name} ({host.address}:{host.port}) is unreachable: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - paramiko's authentication and host key errors
        raise DeployError(f"{host.name} ({host.address}:{host.port}): SSH failed: {exc}") from None
    return conn


def as_root(host: Host, argv: list[str]) -> str:
    """A command line that runs argv as root: through sudo for a deploy user (ansible_become)."""
    line = shlex.join(argv)
    return f"sudo -n {line}" if host.become and host.user != "root" else line


def failed(host: Host, what: str, status: int, *outputs: str) -> DeployError:
    """What a command on a host said when it failed (its exit status if it said nothing)."""
    detail = "\n".join(x for x in (output.rstrip() for output in outputs) if x) or f"exit {status}"
    return DeployError(f"{host.name}: {what} failed:\n{detail}")


def remote(host: Host, argv: list[str], what: str, check: bool = True, root: bool = True) -> str:
    """Run the release tool (or another command) on a host, as root (root=False: as the SSH user)."""
    if argv[:1] == [TOOL] and host.lock_token:
        argv = [TOOL, "--lock-token", host.lock_token, *argv[1:]]
    command = as_root(host, argv) if root else shlex.join(argv)
    result = host.connection.run(command, hide=True, warn=True, in_stream=False)
    if check and result.exited != 0:
        raise failed(host, what, result.exited, result.stdout, result.stderr)
    return result.stdout


# Writes what it reads from stdin to "$1" only if it is all there ("$2" bytes): a stream cut
# short (the connection lost: sshd hangs up the command) leaves nothing under that name, and
# its partial file is removed.
RECEIVE = (
    "trap 'rm -f \"$1.part\"; exit 1' HUP INT TERM PIPE; "
    'install -m 0600 -o root -g root /dev/stdin "$1.part" || { rm -f "$1.part"; exit 1; }; '
    'got=$(stat -c %s "$1.part"); '
    'if [ "$got" != "$2" ]; then '
    'rm -f "$1.part"; echo "cut short: $got of $2 bytes arrived" >&2; exit 1; fi; '
    'mv -f "$1.part" "$1"'
)
UPLOAD_TIMEOUT = 120  # seconds without progress: a stalled link, a sudo waiting for a password


def upload(host: Host, local: str, path: str) -> None:
    """Put a local file at path in the app's upload folder (root's only), root-owned and 0600:
    streamed over the connection into one shell command run as root (through sudo for a
    deploy user, the same command for root), with no copy of the file left anywhere else."""
    size = Path(local).stat().st_size
    command = as_root(host, ["sh", "-c", RECEIVE, "receive", path, str(size)])
    channel = None
    try:
        channel = host.connection.client.get_transport().open_session()
        channel.settimeout(UPLOAD_TIMEOUT)
        channel.exec_command(command)
        try:
            with open(local, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 16), b""):
                    channel.sendall(block)
            channel.shutdown_write()
        except OSError:
            # The command ended before it took everything (sudo refused, the disk full): what
            # it said is still buffered. A connection that is gone has no exit status: raise.
            if not channel.exit_status_ready():
                raise
        error = b"".join(iter(lambda: channel.recv_stderr(1 << 16), b""))
        status = channel.recv_exit_status()
    except (OSError, SSHException) as exc:  # the connection lost or stalled on the way
        raise DeployError(f"{host.name}: upload of {path} failed: {exc or type(exc).__name__}") from None
    finally:
        if channel is not None:
            channel.close()
    if status != 0:
        raise failed(host, f"upload of {path}", status, error.decode(errors="replace"))


def on_every_host(hosts: list[Host], work, title: str, timing=sys.stdout) -> list[str]:
    """Run work(host) on every host at once; the errors, one message per host. The phase's
    time goes to timing (stderr where stdout is a command's own output: fab run)."""
    start = time.monotonic()
    errors = []
    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        futures = {pool.submit(work, host): host for host in hosts}
        for future, host in futures.items():
            try:
                future.result()
            except DeployError as exc:
                errors.append(str(exc))
                say(host.name, f"FAILED: {exc}")
    with _print_lock:
        print(f"== {title}: {time.monotonic() - start:.2f}s", file=timing, flush=True)
    return errors


def selected(host: Host, app: str) -> list[dict]:
    apps = [a for a in host.apps if not app or a["name"] == app]
    if app and not apps:
        raise DeployError(f"{host.name}: no present app named {app} in the inventory")
    return apps


def open_hosts(
    inventory: str,
    limit: str,
    vault_password_file: str,
    app: str = "",
    src: str | None = None,
    timing=sys.stdout,
    one: bool = False,
    load_balancers: list[Host] | None = None,
    lock: DeployLock | None = None,
    check=None,
) -> list[Host]:
    """The hosts (with one, the first only), connected and asked what they have. With src (a
    code push: "" for the inventory's own source, else the folder given), the app model's
    checks of what is pushed come first: each selected app's source folder and requirements;
    then check(hosts), the caller's own (an error message, or None), still before any host is
    contacted. load_balancers (from load_balancers()) are connected in the same phase, every
    one required. With lock (deploy_lock()), each selected app's deploy lock is taken on every
    host in the same call that asks what it has: the connect is the lock."""
    try:
        hosts = load_inventory(inventory, limit, vault_password_file, {app: src} if src else None)
        if one:
            hosts = hosts[:1]
        for host in hosts:
            selected(host, app)
            if src is not None:
                problems = model.source_errors(host.fab_apps, host.defaults, only=app)
                if problems:
                    raise DeployError(f"{host.name}: " + "\n".join(problems))
        problem = check(hosts) if check else None
        if problem:
            raise DeployError(problem)
    except DeployError as exc:
        raise Exit(f"fab: {exc}", code=2) from None

    def open_one(host: Host) -> None:
        host.connection = connect(host)
        argv = [TOOL, "info"]
        if lock:
            # Counted as taken from here: whatever the call below leaves on the host (it
            # undoes its own locks when it fails, unless the connection drops first), the
            # release at the end tries it; an unlock with this run's token touches no one
            # else's lock.
            lock.taken.append(host)
            names = [a["name"] for a in selected(host, app)]
            argv += [f"--lock={n}" for n in names] + ["--holder", lock.holder, "--token", lock.token]
        try:
            said = remote(host, argv, f"{TOOL} info (is the host provisioned?)")
        except DeployError as exc:
            said = str(exc).split(" failed:\n", 1)[-1]
            if lock and "unrecognized arguments: --lock" in said:
                raise DeployError(
                    f"{host.name}: its {TOOL} is older than this fab (no `info --lock`): "
                    "run ansible-playbook site.yml first"
                ) from None
            if lock and "locked for a deploy" in said:  # provisioned, and someone else deploys
                raise DeployError(f"{host.name}: {said}") from None
            raise
        if lock:
            host.lock_token = lock.token
        host.info = json.loads(said)
        for a in selected(host, app):
            if a["name"] not in host.info["apps"]:
                raise DeployError(
                    f"{host.name}: app {a['name']} is not provisioned there: "
                    "run ansible-playbook site.yml first"
                )

    load_balancers = load_balancers or []
    lbs = {id(lb) for lb in load_balancers}
    every = [*hosts, *load_balancers]

    def open_any(host: Host) -> None:
        (open_load_balancer if id(host) in lbs else open_one)(host)

    title = "connect" + (" and lock" if lock else "") + (" (and to the load balancers)" if lbs else "")
    errors = on_every_host(every, open_any, title, timing)
    if errors:
        # With lock, deploy_lock() releases what was taken on the hosts that answered.
        raise Exit("fab: " + "\n".join(errors) + ("\nnothing changed" if lock else ""), code=1)
    return hosts


def load_balancers(inventory: str, vault_password_file: str) -> list[Host]:
    """The inventory's load balancers (all of them, whatever --limit says), not connected."""
    try:
        return load_inventory(inventory, "", vault_password_file, group=LB_GROUP)
    except DeployError as exc:
        raise Exit(f"fab: {exc}", code=2) from None


def open_load_balancer(lb: Host) -> None:
    """Connect to a load balancer and ask it what its pool is: a rolling deploy takes hosts
    out of every one."""
    lb.connection = connect(lb)
    lb.info = json.loads(
        remote(lb, [POOL_TOOL, "status", "--json"], "the pool (is the load balancer provisioned?)")
    )


def open_load_balancers(inventory: str, vault_password_file: str) -> list[Host]:
    """The load balancers that can be asked what their pool is (fab status): one that cannot
    is left out, and said so."""
    lbs = load_balancers(inventory, vault_password_file)
    if lbs:
        on_every_host(lbs, open_load_balancer, "connect to the load balancers")
    return [lb for lb in lbs if lb.info]


@dataclass
class DeployLock:
    """A run's deploy locks: open_hosts(lock=) takes them, deploy_lock() releases them."""

    holder: str
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    taken: list[Host] = field(default_factory=list)


@contextlib.contextmanager
def deploy_lock(app: str, holder: str):
    """Each selected app's deploy lock on every host, for the whole of this run (as `kamal
    lock`): taken with the connect (open_hosts(lock=...)), before anything changes, and
    released at the end whatever happens (a killed client leaves it: `fab unlock --force`).
    A lock held elsewhere stops the run at the connect, with nothing changed."""
    lock = DeployLock(holder)
    try:
        yield lock
    finally:

        def release(host: Host) -> None:
            for a in selected(host, app):
                argv = [TOOL, "unlock", a["name"], "--token", lock.token]
                try:
                    remote(host, argv, f"{a['name']}: unlock", check=False)
                except Exception as exc:  # noqa: BLE001 - a connection gone: say so, go on
                    say(host.name, f"{a['name']}: deploy lock not released ({exc}): fab unlock --force")
            host.lock_token = ""

        with ThreadPoolExecutor(max_workers=max(1, len(lock.taken))) as pool:  # every host at once
            list(pool.map(release, lock.taken))


# -- tasks ----------------------------------------------------------------------------------------


@task(
    help={
        **INVENTORY_HELP,
        "src": "deploy this source folder instead of the app's src (needs --app)",
        "allow-older": "put back a release that served before the live one (else refused)",
        "batch": "hosts switched at a time, count or percentage (default 1 behind load balancers, else all)",
        "rollback-all": "when a batch fails, send every host that switched back, not that batch only",
    }
)
def deploy(
    c,
    inventory=DEFAULT_INVENTORY,
    app="",
    limit="",
    src="",
    vault_password_file="",
    allow_older=False,
    batch="",
    rollback_all=False,
):
    """Push each app's code to every host; health-gated, switched back by itself on failure.

    Phases, each on every host at once; a failure on any host stops the deploy
    before the next phase: connect and lock, package (release archive; wheelhouse only if
    the requirements changed), upload and prepare, migrate once (migrate_once
    apps, first host), then activate (check, init, migrate, answer, switch,
    restart, health; switched back on failure) batch by batch, each host of a
    batch out of the load balancers' pools meanwhile. A failed batch goes back to
    the releases it had and stops the rollout. Exits 1 with the host, app and
    reason, and what every host serves.
    """
    started = time.monotonic()
    if src and not app:
        raise Exit("fab: --src needs --app (which app the folder is)", code=2)
    if src and not Path(src).is_dir():
        raise Exit(f"fab: --src {src} is not a directory", code=2)
    if batch and model.batch_error(batch):
        raise Exit("fab: " + model.batch_error(batch).replace("flaskstack_batch", "--batch", 1), code=2)
    lbs = load_balancers(inventory, vault_password_file)
    who = f"fab deploy by {getpass.getuser()}@{socket.gethostname()}"

    def batch_size(hosts: list[Host]) -> str:
        # --batch, else the inventory's flaskstack_batch (as the deploy play reads it).
        return batch or hosts[0].batch or model.default_batch(bool(lbs))

    with deploy_lock(app, who) as lock:
        # The app hosts and the load balancers in one phase, which takes the locks too; the
        # batch size is checked before any host is contacted.
        hosts = open_hosts(
            inventory,
            limit,
            vault_password_file,
            app,
            src=str(Path(src).resolve()) if src else "",
            load_balancers=lbs,
            lock=lock,
            check=lambda hosts: model.batch_error(batch_size(hosts)),
        )
        size = batch_size(hosts)
        rollback_all = rollback_all or hosts[0].rollback_all
        # Package on this machine, once per app and target Python: the release id is a
        # content hash, so every host gets the same id and the same code.
        plan: dict[tuple[str, str], dict] = {}
        t0 = time.monotonic()
        for host in hosts:
            python, arch = host.info["python"], host.info["architecture"]
            for a in selected(host, app):
                folder = Path(a["src"]).resolve()  # --src's folder when given (open_hosts)
                try:
                    project, release = package(a, host.cache_dir)
                    key, wheels = build_wheelhouse(
                        a["name"], project, a["server_packages"], python, arch,
                        host.platforms.get(arch, []), host.pip_args, host.cache_dir,
                        a.get("build_from_source") or [],
                    )  # fmt: skip
                except (OSError, WheelhouseError) as exc:
                    raise Exit(f"fab: packaging {a['name']} for {host.name} failed: {exc}", code=1) from None
                plan[host.name, a["name"]] = {
                    "release": release,
                    "key": key,
                    "wheels": wheels,
                    "note": f"{who}, {git_note(folder)}",
                }
        ids = sorted({(a, p["release"].id) for (_, a), p in plan.items()})
        print(
            f"== package: {time.monotonic() - t0:.2f}s  " + ", ".join(f"{a} {i}" for a, i in ids), flush=True
        )
        shown = {a["name"]: a["project"] for host in hosts for a in selected(host, app)}
        built = {a: wheelhouse_notes(p["wheels"]) for (_, a), p in plan.items()}
        for name, project in shown.items():
            lines = [f"{name}: {project['description']}", *project["notes"], *built[name]]
            print("\n".join(f"   {line}" for line in lines))

        def prepare(host: Host) -> None:
            for a in selected(host, app):
                p = plan[host.name, a["name"]]
                have = host.info["apps"][a["name"]]
                if p["release"].id in have["releases"]:
                    say(host.name, f"{a['name']}: release {p['release'].id} is on the host already")
                    continue
                t = time.monotonic()
                # Where ansible-playbook uploads too (the app role's upload folder, root's only).
                archive = model.release_paths(a, p["release"].id)["upload_archive"]
                wheels = model.wheelhouse_upload(a, p["key"])
                argv = [TOOL, "prepare", a["name"], p["release"].id, "--archive", archive]
                argv += ["--wheelhouse", p["key"]]
                files = [(p["release"].archive, archive)]
                if p["key"] not in have["wheelhouses"]:
                    files.append((str(wheelhouse_archive(p["wheels"])), wheels))
                    argv += ["--wheelhouse-archive", wheels]
                prepared = False
                try:
                    for local, path in files:
                        upload(host, local, path)
                    sent = "code and wheelhouse" if len(files) > 1 else "code"
                    say(host.name, f"{a['name']}: upload {sent} {time.monotonic() - t:.2f}s")
                    # A prepare that succeeds has removed what it was given.
                    say(host.name, remote(host, [*argv, "--remove-archive"], f"{a['name']}: prepare"))
                    prepared = True
                finally:
                    if not prepared:  # an upload or a prepare that failed: nothing left behind
                        remote(host, ["rm", "-f", archive, wheels], "clean up", check=False)

        errors = on_every_host(hosts, prepare, "upload and prepare")
        if errors:
            raise Exit(
                "fab deploy: stopped before any switch; every host still serves its live release", code=1
            )

        # A database the hosts share is migrated once, from the first host, before any switch.
        first = hosts[0]
        for a in selected(first, app):
            rid = plan[first.name, a["name"]]["release"].id
            if a["migrate_once"] and first.info["apps"][a["name"]]["live"] != rid:
                try:
                    say(first.name, remote(first, [TOOL, "migrate", a["name"], rid], f"{a['name']}: migrate"))
                except DeployError as exc:
                    raise Exit(f"fab deploy: {exc}\nstopped before any switch", code=1) from None

        rollout = model.batches(hosts, size)
        if len(rollout) > 1:
            print(
                f"== rolling: {len(rollout)} batches of {model.batch_size(size, len(hosts))} (--batch {size})"
            )
        # Per host: the apps that switched in this run.
        switched: dict[str, list[str]] = {}
        done: list[Host] = []
        for number, group in enumerate(rollout, 1):
            title = f"batch {number}/{len(rollout)} ({', '.join(h.name for h in group)})"
            title = title if len(rollout) > 1 else "activate"

            # The batch's hosts leave each load balancer's pools (the apps that switch on
            # each) in one call: one nginx reload and one drain for the batch, not one per
            # host in turn (flaskstack-pool changes a pool one call at a time). Hosts whose
            # apps or drain timeouts differ go in calls of their own.
            calls: dict[tuple, list[Host]] = {}
            for host in group:
                names = tuple(
                    a["name"]
                    for a in selected(host, app)
                    if host.info["apps"][a["name"]]["live"] != plan[host.name, a["name"]]["release"].id
                )
                calls.setdefault((names, host.drain_timeout), []).append(host)

            # (host, app) each load balancer says it took out of the app's pool: flaskstack-pool
            # keeps a host that is the last one there (a batch of every host, one app host).
            out_on: dict[str, set[tuple[str, str]]] = {lb.name: set() for lb in lbs}
            out_everywhere: set[tuple[str, str]] = set()

            def leave(lb: Host, calls: dict[tuple, list[Host]] = calls, out_on=out_on) -> None:
                for (names, _), leaving in calls.items():
                    out_on[lb.name] |= pool([lb], "out", leaving, list(names), who)

            def switch(host: Host, out_everywhere=out_everywhere) -> None:
                for a in selected(host, app):
                    p = plan[host.name, a["name"]]
                    argv = [TOOL, "activate", a["name"], p["release"].id, "--note", p["note"]]
                    argv += ["--allow-older"] if allow_older else []
                    argv += ["--skip-migrate"] if a["migrate_once"] else []
                    # Out of every pool (leave, above): a preloaded server's start is its check.
                    argv += ["--out-of-pool"] if lbs and (host.name, a["name"]) in out_everywhere else []
                    say(host.name, f"{a['name']}: activate {p['release'].id}")
                    out = remote(host, argv, a["name"])
                    say(host.name, out)
                    if "ACTIVATED" in out:
                        switched.setdefault(host.name, []).append(a["name"])
                # Every app: one that a killed deploy left out comes back with this one.
                pool(lbs, "in", [host], [a["name"] for a in selected(host, app)], who)

            errors = on_every_host(lbs, leave, "out of the pools") if lbs else []
            out_everywhere.update(set.intersection(*out_on.values()) if out_on else set())
            errors = errors or on_every_host(group, switch, title)
            if not errors:
                done += group
                continue
            # A failed batch: its hosts go back (with --rollback-all, then those of the
            # earlier batches, one at a time), then every host says what it serves.
            took = time.monotonic() - started

            def back(host: Host) -> None:
                go_back(host, lbs, switched.get(host.name, []), [a["name"] for a in selected(host, app)], who)

            failed_back = on_every_host(group, back, "back: " + ", ".join(h.name for h in group))
            for host in done if rollback_all else []:
                failed_back += on_every_host([host], back, f"back: {host.name}")
            print(serving(hosts, app), flush=True)
            kept = (
                f"; {', '.join(h.name for h in done)} keep the new release"
                if done and not rollback_all
                else ""
            )
            raise Exit(
                f"fab deploy: failed after {took:.2f}s in {title} (see above): the rollout stopped, "
                + ("every host that switched was sent back" if rollback_all else "that batch was sent back")
                + kept
                + (
                    f"; going back FAILED on {len(failed_back)} host(s): see 'Now serving'"
                    if failed_back
                    else ""
                )
            )
        print(f"fab deploy: done in {time.monotonic() - started:.2f}s", flush=True)


def pool(lbs: list[Host], command: str, hosts: list[Host], apps: list[str], who: str) -> set[tuple[str, str]]:
    """flaskstack-pool on every load balancer: take the hosts out of each app's pool (and let
    their requests finish; they share a drain timeout), or put them back in once each answers
    there (`in --check`). For "out", the (host, app) that every one of them took out."""
    if not lbs or not apps or not hosts:
        return set()
    argv = [POOL_TOOL, command, *[host.name for host in hosts], *[f"--app={name}" for name in apps]]
    argv += [f"--why={who}"] if command == "out" else ["--check"]
    timeout = hosts[0].drain_timeout
    argv += [f"--timeout={timeout}"] if command == "out" and timeout is not None else []
    names = ", ".join(host.name for host in hosts)
    out = {(host.name, app) for host in hosts for app in apps} if command == "out" else set()
    for lb in lbs:
        said = remote(lb, argv, f"{command} of the pool: {names}")
        say(lb.name, said)
        lines = set(said.splitlines())
        out = {(name, app) for name, app in out if f"{name}: out of the pool of {app}" in lines}
    return out


def go_back(host: Host, lbs: list[Host], switched: list[str], apps: list[str], who: str) -> None:
    """Return the apps that switched on a host in this run to the release each had live
    before it, as they came: out of the pools, rollback (health-gated), and every app of the
    run back in the pools once it answers there."""
    names = [n for n in switched if host.info["apps"][n]["live"]]
    pool(lbs, "out", [host], names, who)
    for name in names:
        before = host.info["apps"][name]["live"]
        argv = [TOOL, "rollback", name, before, "--note", f"{who}, rolling deploy stopped"]
        say(host.name, remote(host, argv, f"{name}: back to {before}"))
    pool(lbs, "in", [host], apps, who)


def serving(hosts: list[Host], app: str) -> str:
    """What every host serves now, from each host's own answer."""
    lines = ["Now serving:"]
    for host in hosts:
        try:
            apps = json.loads(remote(host, [TOOL, "info"], "info"))["apps"]
            lines.append(
                f"  {host.name}: " + ", ".join(f"{n} {apps[n]['live']}" for n in apps if not app or n == app)
            )
        except (DeployError, ValueError) as exc:
            lines.append(f"  {host.name}: no answer ({exc})")
    return "\n".join(lines)


@task(help={**INVENTORY_HELP, "release": "the release id to go back to (default: the previous one)"})
def rollback(c, inventory=DEFAULT_INVENTORY, app="", limit="", release="", vault_password_file=""):
    """Put the previous release (or --release ID) live again, health-gated, on every host."""
    started = time.monotonic()
    note = f"fab rollback by {getpass.getuser()}@{socket.gethostname()}"

    def back(host: Host) -> None:
        for a in selected(host, app):
            argv = [TOOL, "rollback", a["name"], *([release] if release else []), "--note", note]
            say(host.name, f"{a['name']}: rollback")
            say(host.name, remote(host, argv, f"{a['name']}: rollback"))

    with deploy_lock(app, note) as lock:
        hosts = open_hosts(inventory, limit, vault_password_file, app, lock=lock)
        errors = on_every_host(hosts, back, "rollback")
    took = time.monotonic() - started
    if errors:
        raise Exit(f"fab rollback: failed after {took:.2f}s", code=1)
    print(f"fab rollback: done in {took:.2f}s", flush=True)


@task(help=INVENTORY_HELP)
def releases(c, inventory=DEFAULT_INVENTORY, app="", limit="", vault_password_file=""):
    """List each app's releases on every host, newest first (live, previous, ready)."""
    hosts = open_hosts(inventory, limit, vault_password_file, app)
    for host in hosts:
        for a in selected(host, app):
            say(host.name, f"{a['name']}:\n" + remote(host, [TOOL, "releases", a["name"]], "releases"))


@task(help=INVENTORY_HELP)
def status(c, inventory=DEFAULT_INVENTORY, app="", limit="", vault_password_file=""):
    """Show each app's live and previous release, service state and health on every host,
    and, behind load balancers, whether each load balancer has it in the app's pool."""
    hosts = open_hosts(inventory, limit, vault_password_file, app)
    lbs = open_load_balancers(inventory, vault_password_file)
    for host in hosts:
        for a in selected(host, app):
            text = remote(host, [TOOL, "status", a["name"]], "status")
            for lb in lbs:
                where = lb.info.get(a["name"], {}).get(host.name)
                if where is None:
                    text += f"pool     {lb.name}: not in its pool (run ansible-playbook site.yml)\n"
                elif where["in_pool"]:
                    text += f"pool     {lb.name}: in\n"
                else:
                    text += f"pool     {lb.name}: OUT since {where['since']} ({where['why']})\n"
            say(host.name, text)


@task(help={**INVENTORY_HELP, "force": "release the lock even though this run does not hold it"})
def unlock(c, inventory=DEFAULT_INVENTORY, app="", limit="", force=False, vault_password_file=""):
    """Show who holds each app's deploy lock; with --force, release it (its deploy is gone)."""
    hosts = open_hosts(inventory, limit, vault_password_file, app)
    for host in hosts:
        for a in selected(host, app):
            if force:
                say(host.name, remote(host, [TOOL, "unlock", a["name"], "--force"], "unlock"))
            else:
                found = json.loads(remote(host, [TOOL, "status", a["name"], "--json"], "status"))
                say(host.name, f"{a['name']}: {found.get('lock', 'not locked')}")
    if not force:
        print("fab unlock: nothing released (release a lock whose deploy is gone with --force)")


@task(
    positional=["command"],
    help={
        **INVENTORY_HELP,
        "command": "the command, as one argument: fab run 'flask --app hello routes'",
        "app": "the app (needed when the host serves more than one)",
        "limit": "the host (default: the first host of the group flaskstack)",
    },
)
def run(c, command, inventory=DEFAULT_INVENTORY, app="", limit="", vault_password_file=""):
    """Run a one-off command in an app's live release on one host, as the app runs.

    As the app user, with the app's environment and its service's sandbox, in the
    live release (`flask --app hello db current`, a data fix, a shell script of the
    app's); its output is streamed and its exit status is fab's. Standard input
    is not passed on: for an interactive shell, SSH to the host and run
    `flaskstack-release run APP -- COMMAND` there.
    """
    if not command.strip():
        raise Exit("fab run: give the command, for example: fab run 'flask --app hello routes'", code=2)
    hosts = open_hosts(inventory, limit, vault_password_file, app, timing=sys.stderr, one=True)
    host = hosts[0]
    apps = selected(host, app)
    if len(apps) != 1:
        names = ", ".join(a["name"] for a in apps)
        raise Exit(f"fab run: {host.name} serves {names}: say which with --app", code=2)
    line = as_root(host, [TOOL, "run", apps[0]["name"], "--", *shlex.split(command)])
    print(f"[{host.name}] {apps[0]['name']}: {command}", file=sys.stderr, flush=True)
    result = host.connection.run(line, warn=True, hide=False, in_stream=False)
    if result.exited != 0:
        raise Exit(code=result.exited)


@task(
    help={
        **INVENTORY_HELP,
        "lines": "how many journal lines per app (default 50)",
        "process": "a worker's or timer's name (its workers/timers), or all (default: the app server)",
    }
)
def logs(c, inventory=DEFAULT_INVENTORY, app="", limit="", lines=50, process="", vault_password_file=""):
    """Show the last lines of each app server's journal on every host (--process: a worker's
    or a timer's, or all of the app's, merged in time order)."""
    hosts = open_hosts(inventory, limit, vault_password_file, app)
    for host in hosts:
        for a in selected(host, app):
            try:
                units = model.log_units(a, process)
            except ValueError as exc:
                raise Exit(f"fab: {host.name}: {exc}", code=2) from None
            argv = ["journalctl", *[f"--unit={unit}" for unit in units], "-n", str(int(lines))]
            argv += ["--no-pager", "-o", "short-iso"]
            say(host.name, f"{a['name']}:\n" + remote(host, argv, "journalctl"))
