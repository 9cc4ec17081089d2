"""The app model: an inventory's apps, checked, merged with their defaults, and laid out.

Both drivers of a deploy read apps through this module: Ansible (the flaskstack
role's lookup ``flaskstack_apps`` and filter ``flaskstack_app_errors``) and
``fab deploy`` (fabfile.py). Each derived fact (a path, a unit name, the health
check's Host) is computed here and nowhere else.

Ansible's argument specs check types and choices first; :func:`app_errors` checks
what a spec cannot say (a name's shape, unique names and host names, the source
tree on the control node, values that would break a rendered file). Messages
name the variable exactly (``flaskstack_apps[1].name``) and never a secret.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from flaskstack import packaging, templates
from flaskstack.release import NAME_RE, PROJECT_WHEEL_DIR, RELEASE_SETTINGS, REVISION, VENV

# Where the on-host tool lives. The module (flaskstack/release.py, standard
# library only) is copied to TOOL_MODULE; TOOL is a small wrapper rendered from
# templates/usr/local/sbin/flaskstack-release.j2 that names the config folder.
TOOL = "/usr/local/sbin/flaskstack-release"
TOOL_MODULE = "/usr/local/lib/flaskstack/flaskstack_release.py"
# A load balancer's pool tool (flaskstack/pool.py), the same way: module and wrapper.
POOL_TOOL = "/usr/local/sbin/flaskstack-pool"
POOL_TOOL_MODULE = "/usr/local/lib/flaskstack/flaskstack_pool.py"

# The keys an app never carries into a fact, a template variable or -v output:
# only the task that writes them reads them, from flaskstack_apps.
SECRET_KEYS = ("secret_env", "tls_certificate_key", "config_files", "database_password", "broker_password")

# The forms of a config file's content (config_files): a template of the inventory's,
# or a dict rendered as Python assignments or as KEY="value" lines.
CONFIG_FORMS = ("template", "python", "dotenv")

# Each app server's settings file, in the app's config folder.
SERVER_CONFIG = {"gunicorn": "gunicorn.conf.py", "uwsgi": "uwsgi.ini"}

# module:callable, or module:factory(args), as gunicorn and uWSGI take it.
ENTRY_POINT_RE = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\(.*\))?$"
)
# A host name (labels of letters, digits and '-'), an optional leading '*.',
# an IPv4 address, or '_' (nginx's catch-all).
SERVER_NAME_RE = re.compile(
    r"^(_|(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)$"
)
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
STATIC_URL_RE = re.compile(r"^/([^\s;{}]*/)?$")
STATIC_DIR_RE = re.compile(r"^[^/\s;{}][^\s;{}]*$")
HEALTH_PATH_RE = re.compile(r"^/\S*$")
HEADER_BAD_RE = re.compile(r'["\n{}]')
PEM_CERT = "-----BEGIN CERTIFICATE-----"
PEM_KEY_RE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")


@dataclass(frozen=True)
class Layout:
    """Where flaskstack keeps things on a host: flaskstack_root, _config_dir, _run_dir."""

    root: str
    config_dir: str
    run_dir: str

    def host(self) -> dict:
        """The host-wide paths the roles use (the fact flaskstack_host)."""
        return {
            "root": self.root,
            "config_dir": self.config_dir,
            "run_dir": self.run_dir,
            "tool": TOOL,
            "tool_module": TOOL_MODULE,
            # On the control node: the module that becomes tool_module.
            "tool_source": str(Path(__file__).with_name("release.py")),
            "pool_tool": POOL_TOOL,
            "pool_tool_module": POOL_TOOL_MODULE,
            "pool_tool_source": str(Path(__file__).with_name("pool.py")),
            # The pool's settings (the nginx role's) and which hosts are out (the tool's).
            "pool_settings": f"{self.config_dir}/pool.json",
            "pool_state": "/var/lib/flaskstack/pool.json",
        }


# A rolling deploy's batch: a count of hosts or a percentage of them (Ansible's `serial`).
BATCH_RE = re.compile(r"^([1-9][0-9]*)(%?)$")


def batch_error(batch) -> str:
    """Why a batch (flaskstack_batch, fab deploy --batch) is not one, or ""."""
    match = None if isinstance(batch, bool) else BATCH_RE.match(str(batch))
    if not match or (match.group(2) and int(match.group(1)) > 100):
        return (
            f"flaskstack_batch is {_json(batch)}: it must be a number of hosts (1, 2, ...) or a "
            "percentage of them from 1% to 100%, how many hosts switch at a time"
        )
    return ""


def batch_size(batch, count: int) -> int:
    """How many of count hosts switch at a time, as Ansible's `serial` counts them: a
    percentage rounds down, to one host at least."""
    number, percent = BATCH_RE.match(str(batch)).groups()
    # As ansible.utils.helpers.pct_to_int does, float and all.
    size = int(int(number) / 100.0 * count) if percent else int(number)
    return max(1, min(size, count))


def batches(hosts: list, batch) -> list[list]:
    """The hosts in the order they switch, batch by batch."""
    size = batch_size(batch, len(hosts))
    return [hosts[i : i + size] for i in range(0, len(hosts), size)]


def default_batch(load_balanced: bool) -> str:
    """Behind load balancers one host at a time (the others serve); alone, every host at
    once (as a deploy always was: each host's own switch is graceful)."""
    return "1" if load_balanced else "100%"


def merge(defaults: dict, app: dict) -> dict:
    """An app with the defaults beneath its own keys."""
    return {**defaults, **app}


def _present(app: dict) -> bool:
    return app.get("state", "present") == "present"


def _is_port(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535


def _json(value) -> str:
    """A value as the messages show it (as JSON)."""
    return json.dumps(value)


UNSET = object()


def app_ports(app: dict) -> list:
    """The ports nginx answers an app on: its HTTP port, and with TLS its HTTPS port too."""
    return [app.get("http_port")] + ([app.get("https_port")] if app.get("tls", "off") != "off" else [])


def app_errors(apps: list, defaults: dict, keep_releases=UNSET, base_dir: str | None = None) -> list[str]:
    """Every problem of the inventory's apps that an argument spec cannot express.

    One message per problem found, first problem of each app only, each naming
    its variable. An empty list means the apps can be deployed. keep_releases is
    app_keep_releases when it is set.
    """
    errors = name_errors(apps)
    if errors:
        return errors
    claims: Counter = Counter()
    for i, raw in enumerate(apps):
        app = merge(defaults, raw)
        for problem in _headers(raw) + _server_worker(app):
            errors.append(f"flaskstack_apps[{i}]{problem}")
        if not _present(app):
            continue
        problem = (
            _settings(app) or _database(app) or _broker(app) or _processes(app) or _shared(app)
            or _config_files(app, base_dir) or _source(app) or _certificate(app) or _snippets(app, base_dir)
        )  # fmt: skip
        if problem:
            errors.append(f"flaskstack_apps[{i}].{problem}")
        # Host names are case-insensitive.
        ports = app_ports(app)
        names = {str(host).lower().rstrip(".") for host in app.get("server_names") or []}
        claims.update({f"{host}:{port}" for host in names for port in ports})
    errors += unit_name_errors(apps) + broker_db_errors(apps, defaults)
    shared = [claim for claim, n in claims.items() if n > 1]
    if shared:
        errors.append(f"flaskstack_apps: more than one present app answers for {', '.join(shared)}.")
    if keep_releases is not UNSET and not _at_least_one(keep_releases):
        errors.append(
            f"app_keep_releases is {keep_releases}: keep at least 1 release (the live one and the "
            "previous one always stay besides)."
        )
    return errors


# Names an app may not take: an app's name becomes a system user, a group and systemd units
# (<name>.service, <name>.socket), so an account or a service of the system's would be taken
# over (the users task would lock root; an app named www-data would run as nginx's user).
# The host's own accounts and units are checked there too (assert.yml).
RESERVED_NAMES = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "adm",
        "tty",
        "disk",
        "kmem",
        "dialout",
        "cdrom",
        "floppy",
        "tape",
        "sudo",
        "audio",
        "dip",
        "video",
        "plugdev",
        "staff",
        "users",
        "operator",
        "shadow",
        "utmp",
        "input",
        "sgx",
        "kvm",
        "render",
        "crontab",
        "netdev",
        "messagebus",
        "sshd",
        "ssh",
        "nginx",
        "postgres",
        "postgresql",
        "redis",
        "redis-server",
        "mysql",
        "mariadb",
        "syslog",
        "rsyslog",
        "cron",
        "dbus",
        "getty",
        "systemd",
        "networking",
        "network",
        "ntp",
        "chrony",
        "polkitd",
        "polkit",
        "tss",
        "uuidd",
        "avahi",
        "ubuntu",
        "debian",
        "admin",
        "wheel",
        "docker",
        "containerd",
        "certbot",
        "unattended-upgrades",
        "apt",
        "dpkg",
        "flaskstack",
    ]
)


def name_errors(apps: list) -> list[str]:
    """Problems of the apps' names: each must be a valid user and unit name, and unique."""
    errors: list[str] = []
    for i, raw in enumerate(apps):
        name = raw.get("name") if isinstance(raw, dict) else None
        if not isinstance(name, str) or not NAME_RE.match(name):
            errors.append(
                f"flaskstack_apps[{i}].name is {_json(str(name))}: use 1 to 31 lower-case letters, digits, "
                "'-' or '_', starting with a letter (it becomes a system user and systemd unit name)."
            )
    if errors:
        return errors
    for i, raw in enumerate(apps):
        name = raw["name"]
        if name in RESERVED_NAMES or name.startswith(("systemd-", "_")):
            errors.append(
                f"flaskstack_apps[{i}].name is {_json(name)}: a name of the system's (an account or a "
                "service); an app's name becomes its system user and systemd units: choose another."
            )
    if errors:
        return errors
    counts = Counter(app["name"] for app in apps)
    duplicates = [name for name, n in counts.items() if n > 1]
    if duplicates:
        return [f"flaskstack_apps has duplicate names: {', '.join(duplicates)}."]
    return []


def source_errors(apps: list, defaults: dict, only: str = "") -> list[str]:
    """What a code push needs of each present app on the control node: its source folder and
    project (fab deploy reads no other setting). Whether the entry point's module is
    there is the host's check gate's to say: it says why in the app's own words.
    only: just this app."""
    errors = []
    for i, raw in enumerate(apps):
        app = merge(defaults, raw)
        if not _present(app) or (only and app["name"] != only):
            continue
        problem = _src_and_entry_point(app) or _source(app, modules=False)
        if problem:
            errors.append(f"flaskstack_apps[{i}].{problem}")
    return errors


def _at_least_one(value) -> bool:
    try:
        return int(value) >= 1
    except (TypeError, ValueError):
        return False


def _src_and_entry_point(app: dict) -> str:
    """The first problem of a present app's src and entry_point settings, or ''."""
    n, src, entry = app["name"], app.get("src"), app.get("entry_point")
    if not isinstance(src, str) or not src:
        return f"src ({n}) is required: the app's source directory on the control node."
    if not isinstance(entry, str) or not ENTRY_POINT_RE.match(entry):
        shown = _json(str(entry) if entry is not None else "missing")
        return (
            f"entry_point ({n}) is {shown}: use module:callable, "
            'for example "hello:app" or "hello:create_app()".'
        )
    return ""


def _settings(app: dict) -> str:
    """The first problem of a present app's own settings, as 'key (name) ...', or ''."""
    n = app["name"]
    names = app.get("server_names") or []
    if problem := _src_and_entry_point(app):
        return problem
    if not names:
        return f"server_names ({n}) is required: the host names nginx answers for."
    bad = [h for h in names if not isinstance(h, str) or not SERVER_NAME_RE.match(h)]
    if bad:
        return f"server_names ({n}) has malformed names: {_json(bad)}."
    for key in ("http_port", "https_port"):
        if not _is_port(app.get(key)):
            return f"{key} ({n}) is {_json(app.get(key))}: use a port from 1 to 65535."
    if app.get("tls") != "off" and app["https_port"] == app["http_port"]:
        return f"https_port ({n}) is the same as its http_port ({app['http_port']})."
    if not STATIC_URL_RE.match(str(app.get("static_url"))):
        return f"static_url ({n}) is {_json(app.get('static_url'))}: it must start and end with '/'."
    static_dir = str(app.get("static_dir"))
    if not STATIC_DIR_RE.match(static_dir) or ".." in static_dir.split("/"):
        return f"static_dir ({n}) is {_json(static_dir)}: use a folder relative to src, without '..'."
    if not HEALTH_PATH_RE.match(str(app.get("health_path"))):
        return f"health_path ({n}) is {_json(app.get('health_path'))}: it must start with '/'."
    if not isinstance(app.get("backup_command", ""), str):
        return (
            f"backup_command ({n}) is {_json(app.get('backup_command'))}: give a command as a string "
            '(backup_command: "true" for none: YAML reads a bare true as a boolean).'
        )
    if not _at_least_one(app.get("keep_backups", 1)):
        return f"keep_backups ({n}) is {_json(app.get('keep_backups'))}: keep at least 1."
    keys = list(app.get("env") or {}) + list(app.get("secret_env") or {})
    bad = [k for k in keys if not ENV_KEY_RE.match(str(k))]
    if bad:
        return f"env or .secret_env ({n}) has keys that are not environment variable names: {_json(bad)}."
    for key in ("env", "secret_env"):
        # Values never shown (secret_env's are secrets): only the keys that are wrong.
        wrong = [
            str(k) for k, v in (app.get(key) or {}).items()
            if not isinstance(v, (str, int, float, bool)) or "\0" in str(v)
        ]  # fmt: skip
        if wrong:
            return (
                f"{key} ({n}) has values that are not text (a list, a dict, a null, or a NUL byte): "
                f"{_json(wrong)}; a multi-line value (a PEM key) is fine."
            )
    return ""


def _database(app: dict) -> str:
    """The first problem of a present app's database settings, or ''. The password's value
    is never shown; only whether it is there."""
    n, database = app["name"], app.get("database") or ""
    if database not in ("", "postgresql"):
        return f"database ({n}) is {_json(database)}: use postgresql, or leave it empty for none."
    if not database:
        return ""
    env = str(app.get("database_env"))
    if not ENV_KEY_RE.match(env):
        return f"database_env ({n}) is {_json(app.get('database_env'))}: use an environment variable name."
    if env in (app.get("env") or {}) or env in (app.get("secret_env") or {}):
        return (
            f"database_env ({n}) is {env}, which env or secret_env sets too: the database's URL goes there."
        )
    password = app.get("database_password")
    if not isinstance(password, str) or not password:
        return (
            f"database_password ({n}) is not set: with database postgresql the app's role needs a "
            "password; keep it in a vault (ansible-vault encrypt_string) and name it here."
        )
    return ""


def _broker(app: dict) -> str:
    """The first problem of a present app's broker settings (Redis), or ''. The password's
    value is never shown; only whether it is there."""
    n, broker = app["name"], app.get("broker") or ""
    if broker not in ("", "redis"):
        return f"broker ({n}) is {_json(broker)}: use redis, or leave it empty for none."
    if not broker:
        return ""
    env = str(app.get("broker_env"))
    taken = list(app.get("env") or {}) + list(app.get("secret_env") or {})
    if not ENV_KEY_RE.match(env):
        return f"broker_env ({n}) is {_json(app.get('broker_env'))}: use an environment variable name."
    if env in taken or (app.get("database") and env == app.get("database_env")):
        return (
            f"broker_env ({n}) is {env}, which env, secret_env or database_env sets too: "
            "the broker's URL goes there."
        )
    db = app.get("broker_db")
    if not isinstance(db, int) or isinstance(db, bool) or not 0 <= db <= 15:
        return f"broker_db ({n}) is {_json(db)}: use a Redis database number from 0 to 15."
    password = app.get("broker_password")
    if not isinstance(password, str) or not password or any(c.isspace() for c in password):
        return (
            f"broker_password ({n}) is not set (or has a space): with broker redis the app's Redis user "
            "needs a password; keep it in a vault (ansible-vault encrypt_string) and name it here."
        )
    return ""


# Background processes (workers) and scheduled jobs (timers): their keys and defaults.
WORKER_DEFAULTS = {"count": 1, "stop_timeout": 300, "stop_signal": "SIGTERM", "scheduler": False}
TIMER_DEFAULTS = {"random_delay": 0, "persistent": True, "every_host": False, "timeout": 3600}
# The signals a worker may be asked to stop with (its graceful shutdown's).
STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGQUIT", "SIGHUP", "SIGUSR1", "SIGUSR2", "SIGWINCH")


def _is_int(value, least: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def command_argv(command) -> list[str]:
    """A process's command as its arguments, split as a shell would (quotes), or [] when it
    is not a command (empty, not text, or with an unbalanced quote)."""
    # A line break would end the ExecStart= line and begin a directive of the command's own.
    if not isinstance(command, str) or any(c in command for c in "\0\n\r"):
        return []
    try:
        return shlex.split(command)
    except ValueError:
        return []


def _processes(app: dict) -> str:
    """The first problem of a present app's workers and timers, or ''. What systemd alone
    can judge (an OnCalendar expression) is checked on the host, before any change."""
    n = app["name"]
    seen: set[str] = set()
    for key, defaults in (("workers", WORKER_DEFAULTS), ("timers", TIMER_DEFAULTS)):
        entries = app.get(key) or []
        if not isinstance(entries, list):
            return f"{key} ({n}) is not a list."
        for j, raw in enumerate(entries):
            where = f"{key}[{j}] ({n})"
            if not isinstance(raw, dict):
                return f"{where} is not a dict: give name and command."
            entry = {**defaults, **raw}
            unknown = sorted(
                set(raw) - {"name", "command", *defaults, *(["on_calendar"] if key == "timers" else [])}
            )
            if unknown:
                return f"{where} has unknown keys {_json(unknown)}."
            name = entry.get("name")
            if not isinstance(name, str) or not NAME_RE.match(name):
                return (
                    f"{where}.name is {_json(str(name))}: use 1 to 31 lower-case letters, digits, '-' or "
                    "'_', "
                    f"starting with a letter (it becomes the systemd unit {n}-<name>)."
                )
            if name in seen:
                return f"{where}.name is {_json(name)}, which another of the app's workers or timers has."
            seen.add(name)
            where = f"{key}[{j}].command ({n}, {name})"
            if not command_argv(entry.get("command")):
                return (
                    f"{where} is {_json(entry.get('command'))}: give the command to run on one line, as a "
                    "shell would split it (quotes balanced; no pipes: wrap those in sh -c '...')."
                )
            problem = _worker(entry) if key == "workers" else _timer(entry)
            if problem:
                return f"{key}[{j}].{problem} ({n}, {name})."
    return ""


def _worker(entry: dict) -> str:
    if not _is_int(entry["count"], 1) or entry["count"] > 64:
        return f"count is {_json(entry['count'])}: run 1 to 64 instances"
    if not _is_int(entry["stop_timeout"], 1):
        return (
            f"stop_timeout is {_json(entry['stop_timeout'])}: the seconds a running job gets to finish (>= 1)"
        )
    signal = str(entry["stop_signal"]).upper()
    if ("SIG" + signal if not signal.startswith("SIG") else signal) not in STOP_SIGNALS:
        return f"stop_signal is {_json(entry['stop_signal'])}: use one of {', '.join(STOP_SIGNALS)}"
    if not isinstance(entry["scheduler"], bool):
        return f"scheduler is {_json(entry['scheduler'])}: true (on the scheduler host only) or false"
    return ""


def _timer(entry: dict) -> str:
    calendar = entry.get("on_calendar")
    if not isinstance(calendar, str) or not calendar.strip() or "\n" in calendar:
        return f"on_calendar is {_json(calendar)}: give a systemd calendar expression (daily, *-*-* 03:00:00)"
    if not _is_int(entry["random_delay"], 0):
        return f"random_delay is {_json(entry['random_delay'])}: seconds (>= 0) to spread the start over"
    if not _is_int(entry["timeout"], 1):
        return f"timeout is {_json(entry['timeout'])}: the seconds a run may take before it is stopped (>= 1)"
    for flag in ("persistent", "every_host"):
        if not isinstance(entry[flag], bool):
            return f"{flag} is {_json(entry[flag])}: true or false"
    return ""


def broker_db_errors(apps: list, defaults: dict) -> list[str]:
    """Apps sharing a Redis take a database each: in one database, Celery's default queue
    (`celery`) is every app's, and one app's workers would take another's jobs."""
    taken: dict = {}
    for i, raw in enumerate(apps):
        app = merge(defaults, raw) if isinstance(raw, dict) else {}
        if _present(app) and app.get("broker") == "redis":
            taken.setdefault(app.get("broker_db"), []).append(f"flaskstack_apps[{i}] ({app.get('name')})")
    return [
        f"broker_db is {_json(db)} for {' and '.join(names)}: apps that share Redis need a database "
        "each (0 to 15), or one app's workers take another's jobs."
        for db, names in taken.items()
        if len(names) > 1
    ]


def unit_name_errors(apps: list) -> list[str]:
    """Each worker's and timer's systemd unit is <app>-<name>: it may not be another app's
    name, or another app's worker's or timer's (app a-b's x and app a's b-x would share one)."""
    owners: dict[str, str] = {
        str(raw.get("name")): f"the app {raw.get('name')}" for raw in apps if isinstance(raw, dict)
    }
    errors = []
    for i, raw in enumerate(apps):
        if not isinstance(raw, dict):
            continue
        for key in ("workers", "timers"):
            entries = raw.get(key) if isinstance(raw.get(key), list) else []
            for j, entry in enumerate(entries):
                if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                    continue
                unit = f"{raw.get('name')}-{entry['name']}"
                where = f"flaskstack_apps[{i}].{key}[{j}].name"
                if unit in owners and owners[unit] != where:
                    errors.append(
                        f"{where} is {_json(entry['name'])}: its unit {unit} is {owners[unit]}'s too; "
                        "rename one."
                    )
                owners.setdefault(unit, where)
    return errors


def _source(app: dict, modules: bool = True) -> str:
    """The first problem of a present app's source tree on the control node, or ''.
    modules=False: the entry point's module is left to the host's check gate."""
    n = app["name"]
    src = Path(app["src"]).resolve()
    if not src.is_dir():
        return f"src ({n}): {src} is not a directory on the control node."
    try:
        project = packaging.read_project(src, app["requirements"])
    except packaging.WheelhouseError as exc:
        return f"{exc.setting} ({n}): {exc}."
    if problem := _migrate_when_changed(app, src):
        return problem
    module = app["entry_point"].split(":")[0]
    found = module_file(src, module)
    if modules and not project.wheel and found and found.parts[len(src.parts)] == "src":
        return (
            f"entry_point ({n}): module {_json(module)} is in {src}/src (the src layout), which only an "
            "installed project can import: give it a pyproject.toml with a [project] table (PEP 621) "
            "and a [build-system]."
        )
    # An installed project's modules may lie anywhere its build backend is told to look.
    if modules and not found and not project.wheel:
        path = module.replace(".", "/")
        return (
            f"entry_point ({n}): module {_json(module)} is not in {src} (no {path}.py or {path}/__init__.py)."
        )
    return ""


def _migrate_when_changed(app: dict, src: Path) -> str:
    """The first problem of migrate_when_changed, or '': paths inside the release that the
    source has. A misspelt path would never change, and the migrations would never run."""
    paths = app.get("migrate_when_changed") or []
    if not isinstance(paths, list):
        return f"migrate_when_changed ({app['name']}) is {_json(paths)}: give a list of paths."
    for j, path in enumerate(paths):
        where = f"migrate_when_changed[{j}] ({app['name']})"
        if not _in_release(path):
            return f"{where} is {_json(path)}: use a path inside the release, relative to it, without '..'."
        if not (src / path).exists():
            return f"{where}: {src / path} does not exist: the migrations would never be seen to change."
    if paths and not app.get("migrate_command"):
        return f"migrate_when_changed ({app['name']}) is set but migrate_command is empty."
    return ""


def module_file(src: Path, module: str) -> Path | None:
    """Where a module's file lies in a source tree: at its root, or in src/ (the src layout)."""
    path = module.replace(".", "/")
    for base in (src, src / "src"):
        for candidate in (base / f"{path}.py", base / path / "__init__.py"):
            if candidate.is_file():
                return candidate
    return None


def project(app: dict) -> dict:
    """How a present app's source is installed, as the deploy reports it: shape
    ("requirements", "project" or "wheel"), a description, notes, and the packages an
    installed project's code is imported from the venv by (its src/ packages, and the
    entry point's module unless it lies at the source's root): Flask keeps their instance
    folders in the venv. {} when the source cannot be read (the checks say why)."""
    src = Path(str(app.get("src"))).resolve()
    try:
        found = packaging.read_project(src, app.get("requirements") or packaging.REQUIREMENTS)
    except (packaging.WheelhouseError, OSError):
        return {}
    module = str(app.get("entry_point")).split(":")[0]
    located = module_file(src, module)
    from_venv: list[str] = []
    if found.wheel:
        with contextlib.suppress(OSError):
            from_venv = sorted(p.parent.name for p in (src / "src").glob("*/__init__.py"))
        if not (located and located.parts[len(src.parts)] != "src"):
            # Flask names the folder after the app's import name: the package's, or the module's.
            from_venv += [
                name for name in dict.fromkeys([module.split(".")[0], module]) if name not in from_venv
            ]
    notes = list(found.notes)
    static = str(app.get("static_dir"))
    if not (src / static).is_dir():
        exclude = list(app.get("exclude") or [])
        others = sorted(
            p.relative_to(src).as_posix()
            for pattern in ("static", "*/static", "*/*/static")
            for p in src.glob(pattern)
            if p.is_dir() and not any(packaging.excluded(part, exclude) for part in p.relative_to(src).parts)
        )
        notes.append(
            f"static_dir {static} is not in the source: nginx answers 404 under {app.get('static_url')}"
            + (f" (set static_dir: {others[0]})" if others else "")
        )
    return {
        "shape": found.shape,
        "description": found.describe() + ("; imported from the venv" if from_venv else ""),
        "notes": notes,
        "from_venv": from_venv,
        # A pin under a marker (gunicorn; sys_platform == "win32") may not hold on the host.
        "named": sorted(
            {packaging.package_name(line) for line in found.requirements.splitlines() if ";" not in line}
            - {""}
        ),
    }


def postgresql_backup(app: dict) -> str:
    """The dump of a database: postgresql app's own database before each migration, as the
    app (its role owns what its migrations made), in pg_dump's custom format (pg_restore)."""
    return f'pg_dump --format=custom --no-owner "${app.get("database_env") or "DATABASE_URL"}"'


def _certificate(app: dict) -> str:
    """What a present app with `tls: provided` lacks, or ''. Never shows the key."""
    if app.get("tls") != "provided":
        return ""
    cert, key = app.get("tls_certificate"), app.get("tls_certificate_key")
    problem = (
        "tls_certificate is missing" if cert is None
        else "tls_certificate is not PEM" if PEM_CERT not in str(cert)
        else "tls_certificate_key is missing" if key is None
        else "tls_certificate_key is not a PEM private key" if not PEM_KEY_RE.search(str(key))
        else ""
    )  # fmt: skip
    if not problem:
        return ""
    return (
        f"{problem} ({app['name']}): tls: provided needs tls_certificate (a PEM certificate chain) "
        "and tls_certificate_key (a PEM private key)."
    )


# Names in a release that are flaskstack's own: no shared path may take their place.
RELEASE_OWN = (VENV, REVISION, PROJECT_WHEEL_DIR)


def in_shared_dir(path: str, shared_dirs: list[str]) -> bool:
    """A path inside one of the shared folders (reached through its link, needing none of its own)."""
    return any(path.startswith(folder + "/") for folder in shared_dirs)


def config_paths(raw: dict) -> list[str]:
    """The paths (in the release) of an app's config files."""
    return [c.get("path") for c in raw.get("config_files") or [] if isinstance(c, dict)]


def _config_files(app: dict, base_dir: str | None) -> str:
    """The first malformed config file of a present app, or ''. Never shows a value."""
    for j, config in enumerate(app.get("config_files") or []):
        where = f"config_files[{j}] ({app['name']})"
        forms = [form for form in CONFIG_FORMS if isinstance(config, dict) and form in config]
        if not isinstance(config, dict) or not isinstance(config.get("path"), str) or len(forms) != 1:
            return f"{where}: give a path and one of template, python (a dict) or dotenv (a dict)."
        if forms != ["template"] and not isinstance(config[forms[0]], dict):
            return f"{where}.{forms[0]} is not a dict of settings."
        if forms == ["python"] and [k for k in config["python"] if not ENV_KEY_RE.match(str(k))]:
            return f"{where}.python has keys that are not Python names."
        if forms == ["template"] and not snippet_file(config["template"], base_dir).is_file():
            return f"{where}.template: {snippet_file(config['template'], base_dir)} does not exist."
    return ""


def _in_release(path) -> bool:
    """A path inside a release, relative to it: no leading or trailing '/', no '.' or '..'."""
    return (
        isinstance(path, str) and bool(path) and all(part not in ("", ".", "..") for part in path.split("/"))
    )


def _shared(app: dict) -> str:
    """The first shared path of a present app that is not a plain path inside the release."""
    seen: list[str] = []
    dirs = [p for p in app.get("shared_dirs") or [] if isinstance(p, str)]
    for key in ("shared_dirs", "shared_files", "config_files"):
        paths = config_paths(app) if key == "config_files" else app.get(key) or []
        for j, path in enumerate(paths):
            where = f"{key}[{j}] ({app['name']})"
            if not _in_release(path) or path.split("/")[0] in RELEASE_OWN:
                return (
                    f"{where} is {_json(path)}: use a path inside the release, relative to it, "
                    "without '..' (not venv or REVISION)."
                )
            if key == "config_files" and in_shared_dir(path, dirs):
                continue  # a file in a shared folder: it needs no link of its own
            for other in seen:
                if path == other or path.startswith(other + "/") or other.startswith(path + "/"):
                    return f"{where} is {_json(path)}: it overlaps the shared path {_json(other)}."
            seen.append(path)
    return ""


def snippet_file(src: str, base_dir: str | None) -> Path:
    """An nginx snippet's template file: relative paths start at the inventory's templates/ folder."""
    return (templates.inventory_templates(base_dir or ".") / src).resolve()


def _snippets(app: dict, base_dir: str | None) -> str:
    """The first malformed entry of a present app's nginx_snippets, or ''."""
    for j, snippet in enumerate(app.get("nginx_snippets") or []):
        where = f"nginx_snippets[{j}]"
        if not isinstance(snippet, dict) or ("content" in snippet) == ("src" in snippet):
            return (
                f"{where} ({app['name']}): give either content (nginx directives) or src "
                "(a template file in the inventory's templates/ folder)."
            )
        if "src" in snippet and not snippet_file(snippet["src"], base_dir).is_file():
            return f"{where}.src ({app['name']}): {snippet_file(snippet['src'], base_dir)} does not exist."
    return ""


def _headers(raw: dict) -> list[str]:
    values = [str(raw.get("referrer_policy", "")), str(raw.get("content_security_policy", ""))]
    if any(HEADER_BAD_RE.search(v) for v in values):
        return [
            f" ({raw['name']}): referrer_policy and content_security_policy may not contain "
            "'\"', '{', '}' or a line break (they become nginx header values)."
        ]
    return []


def _server_worker(app: dict) -> list[str]:
    if app.get("server") == "uwsgi" and app.get("worker_class") == "gevent":
        return [
            f'.worker_class ({app["name"]}) is "gevent", which flaskstack runs under gunicorn only: '
            "use worker_class sync or gthread with server uwsgi."
        ]
    # A templated value may arrive as a string.
    preload = str(app.get("preload", False)).lower() in ("true", "yes", "on", "1")
    if preload and app.get("worker_class") == "gevent":
        return [
            f'.preload ({app["name"]}) is true with worker_class "gevent": gevent patches the standard '
            "library in each worker, after a preloaded app was imported without it; use preload: false, "
            "or worker_class sync or gthread."
        ]
    return []


def resolve(
    apps: list,
    defaults: dict,
    layout: Layout,
    *,
    server_packages: dict,
    worker_packages: dict,
    health_host: str = "",
    base_dir: str | None = None,
    scheduler_here: bool = True,
) -> list[dict]:
    """Each app with its defaults merged in and every path and name the roles use.

    Secrets (secret_env, tls_certificate_key) are left out: only the tasks that
    write them read them, from flaskstack_apps; secret_env_keys names them.
    nginx_snippets' src become absolute paths (relative ones start at the
    templates/ folder of base_dir, the inventory's folder). scheduler_here: this host is
    the scheduler host (flaskstack_scheduler_host), which alone runs the workers marked
    `scheduler` and the timers not marked `every_host`.
    """
    resolved = []
    for raw in apps:
        app = {k: v for k, v in merge(defaults, raw).items() if k not in SECRET_KEYS}
        app["secret_env_keys"] = list(raw.get("secret_env") or {})
        # Only the paths of config files: their content may hold secrets.
        app["config_paths"] = config_paths(raw)
        # src as the inventory gives it (for the site's comment), path to read it from.
        app["nginx_snippets"] = [
            {**s, "path": str(snippet_file(s["src"], base_dir))} if "src" in s else dict(s)
            for s in app.get("nginx_snippets") or []
        ]
        app["project"] = project(app) if _present(app) else {}
        if app.get("database") == "postgresql" and not app.get("backup_command"):
            app["backup_command"] = postgresql_backup(app)
        # An app that pins its app server (gunicorn==21.2.0 in its requirements, as many do for
        # Heroku or Docker) gets its own: flaskstack's pin beside it could never be installed.
        named = app["project"].get("named", [])
        packages = app_packages(app, server_packages, worker_packages)
        theirs = {p: pinned for p in packages if (pinned := packaging.package_name(p)) in named}
        app["server_packages"] = [p for p in packages if p not in theirs]
        if theirs:  # named: the project was read, so it has its notes
            app["project"]["notes"] += [
                f"{pinned}: the app's requirements pin it, so theirs is installed, not {p}"
                for p, pinned in theirs.items()
            ]
        app.update(paths(app, layout, health_host))
        # An absent app's workers and timers go by their unit files (processes --all).
        app.update(processes(app if _present(app) else {"name": app["name"]}, scheduler_here))
        # What a release is made of besides its source: part of its content-hashed id.
        app["release_extra"] = (
            app["server_packages"]
            + [f"shared {s['kind']} {s['path']}" for s in app["shared"]]
            # How it is installed (a release of a built project carries its wheel).
            + ([f"install {app['project']['shape']}"] if app["project"].get("shape") == "wheel" else [])
        )
        resolved.append(app)
    return resolved


def python_settings(settings: dict) -> str:
    """A dict as Python assignments (a Flask config file: app.config.from_pyfile)."""
    return "".join(f"{key} = {value!r}\n" for key, value in sorted(settings.items()))


def app_packages(app: dict, server_packages: dict, worker_packages: dict) -> list[str]:
    """What a release's venv gets beside the app's requirements: its app server and worker library."""
    return [str(p) for p in server_packages.get(app.get("server"), [])] + [
        str(p) for p in worker_packages.get(app.get("worker_class"), [])
    ]


def paths(app: dict, layout: Layout, health_host: str = "") -> dict:
    """The names and paths of one app on a host."""
    name = app["name"]
    home = f"{layout.root}/{name}"
    # Shared paths: in every release a link to <home>/shared/<path>, kept across releases.
    shared = [
        {"path": path, "kind": kind, "target": f"{home}/shared/{path}"}
        for key, kind in (("shared_dirs", "dir"), ("shared_files", "file"))
        for path in app.get(key) or []
    ]
    # An installed project's Flask instance folder is <venv>/var/<module>-instance (Flask's
    # docs: "Deploying to Production"): linked to the same shared instance folder, so data
    # and config files live in one place whichever shape the project has.
    if "instance" in (app.get("shared_dirs") or []):
        shared += [
            {"path": f"{VENV}/var/{name}-instance", "kind": "dir", "target": f"{home}/shared/instance"}
            for name in (app.get("project") or {}).get("from_venv") or []
        ]
    # Config files live in shared/ too; one outside every shared folder gets a link of its own.
    dirs = [s["path"] for s in shared if s["kind"] == "dir"]
    linked_configs = [
        {"path": path, "kind": "config", "target": f"{home}/shared/{path}"}
        for path in app.get("config_paths") or []
        if not in_shared_dir(path, dirs)
    ]
    config = f"{layout.config_dir}/{name}"
    names = app.get("server_names") or [name]
    tls = app.get("tls", "off")
    # certbot keeps its certificates in its own folder (named by --cert-name); the other modes in the app's.
    certificates = f"/etc/letsencrypt/live/{name}" if tls == "acme" else f"{config}/tls"
    found = {
        "user": name,
        "group": name,
        "home": home,
        "releases_dir": f"{home}/releases",
        "current": f"{home}/current",
        "shared_dir": f"{home}/shared",
        "data_dir": f"{home}/shared/data",
        "shared": shared + linked_configs,
        # All the app server may write (its sandbox's ReadWritePaths): not its config files.
        "writable_paths": list(dict.fromkeys([f"{home}/shared/data"] + [item["target"] for item in shared])),
        "configs": [{"path": p, "target": f"{home}/shared/{p}"} for p in app.get("config_paths") or []],
        # Folders config files need in shared/ that no shared_dirs entry makes.
        "config_folders": [
            f"{home}/shared/{p}" for p in _config_folders(app.get("config_paths") or [], dirs)
        ],
        "wheelhouse_dir": f"{home}/wheelhouse",
        "upload_dir": f"{home}/incoming",
        # Copies of the app's SQLite databases (and backup_command's output) before each migration.
        "backups_dir": f"{home}/backups",
        # The settings files as they were when the app last answered with them (root's only:
        # the env file holds secrets); see settings_files below.
        "good_settings_dir": f"{home}/settings-last-good",
        "history_file": f"{home}/history.jsonl",
        "lock_file": f"{home}/.flaskstack-release.lock",
        # Held for a whole deploy (every host, every step), by fab or ansible-playbook.
        "deploy_lock_file": f"{home}/deploy.lock",
        # The last migration this host ran to the end, and its migrate_when_changed digest.
        "migrated_file": f"{home}/migrated.json",
        "config_dir": config,
        "env_file": f"{config}/app.env",
        # The app server's settings: gunicorn.conf.py or uwsgi.ini.
        "server_config": f"{config}/{SERVER_CONFIG.get(app.get('server'), 'gunicorn.conf.py')}",
        "release_settings": f"{config}/{RELEASE_SETTINGS}",
        # Self-signed and provided certificates; certbot keeps ACME's in its own folder.
        "tls_dir": f"{config}/tls",
        "tls_certificate_file": f"{certificates}/fullchain.pem",
        "tls_certificate_key_file": f"{certificates}/privkey.pem",
        "socket": f"{layout.run_dir}/{name}.sock",
        "socket_unit": f"{name}.socket",
        "service": f"{name}.service",
        "socket_unit_file": f"/etc/systemd/system/{name}.socket",
        "service_unit_file": f"/etc/systemd/system/{name}.service",
        # The live release's programs: the unit starts the app server from here.
        "current_bin": f"{home}/current/{VENV}/bin",
        # certbot's name for the app's certificate (/etc/letsencrypt/live/<name>/).
        "acme_cert_name": name,
        "nginx_site": f"{name}.conf",
        "health_host": health_host or names[0],
    }
    # The files a restart reads: flaskstack-release copies them each time the app answers with
    # them, and puts those copies back when later ones fail the gates or the health check.
    found["settings_files"] = [found[key] for key in ("env_file", "server_config", "service_unit_file")] + [
        config["target"] for config in found["configs"]
    ]
    return found


def _count(value) -> int:
    return value if _is_int(value, 1) else 1


def systemd_quote(arg: str) -> str:
    """One argument as systemd's ExecStart= reads it: double-quoted, with its own escapes;
    '%' and '$' doubled (no specifier, no variable expansion)."""
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{escaped}"'


def _exec(command) -> str:
    """A command as ExecStart= arguments."""
    return " ".join(systemd_quote(arg) for arg in command_argv(command))


def processes(app: dict, scheduler_here: bool = True) -> dict:
    """An app's workers and timers, with their systemd units, and which of them run on this
    host. A worker is a template unit <app>-<name>@.service with one instance per count
    (<app>-<name>@1.service, ...); a timer is <app>-<name>.timer starting the one-shot
    <app>-<name>.service (systemd never starts a second run while one is running)."""
    name = app["name"]
    unit_dir = "/etc/systemd/system"
    workers, timers = [], []

    # Malformed entries (which the checks name) are left out: fab resolves before it checks.
    def entries(key: str) -> list[dict]:
        found = app.get(key) if isinstance(app.get(key), list) else []
        return [e for e in found if isinstance(e, dict) and isinstance(e.get("name"), str)]

    for raw in entries("workers"):
        worker = {**WORKER_DEFAULTS, **raw}
        signal = str(worker["stop_signal"]).upper()
        unit = f"{name}-{worker['name']}"
        workers.append({
            **worker,
            "stop_signal": signal if signal.startswith("SIG") else "SIG" + signal,
            # {instance} in the command: the instance's number (a Celery node name: -n w{instance}@%h).
            "exec": _exec(worker.get("command")).replace("{instance}", "%i"),
            "unit": f"{unit}@.service",
            "unit_file": f"{unit_dir}/{unit}@.service",
            "instances": [f"{unit}@{i}.service" for i in range(1, _count(worker["count"]) + 1)],
            "here": scheduler_here or not worker["scheduler"],
        })  # fmt: skip
    for raw in entries("timers"):
        timer = {**TIMER_DEFAULTS, **raw}
        unit = f"{name}-{timer['name']}"
        timers.append({
            **timer,
            "exec": _exec(timer.get("command")),
            "service": f"{unit}.service",
            "service_file": f"{unit_dir}/{unit}.service",
            "timer": f"{unit}.timer",
            "timer_file": f"{unit_dir}/{unit}.timer",
            "here": scheduler_here or timer["every_host"],
        })  # fmt: skip
    here_workers = [w for w in workers if w["here"]]
    here_timers = [t for t in timers if t["here"]]
    return {
        "workers": workers,
        "timers": timers,
        # On this host: the worker instances a deploy restarts (after the web's health
        # check), and every unit file of the app's workers and timers that belongs here.
        "worker_units": [unit for w in here_workers for unit in w["instances"]],
        "timer_units": [t["timer"] for t in here_timers],
        "process_unit_files": [w["unit_file"] for w in here_workers]
        + [path for t in here_timers for path in (t["service_file"], t["timer_file"])],
        # Every unit file flaskstack writes for the app's workers and timers starts so.
        "process_unit_prefix": f"{unit_dir}/{name}-",
    }


def log_units(app: dict, process: str = "") -> list[str]:
    """The systemd units whose journal `fab logs` shows: the app server's (process ""), one
    worker's or timer's (its name), or all of them ("all"). A worker's instances by pattern.
    Raises ValueError naming the app's processes for a name it does not have."""
    workers = {w["name"]: [w["unit"].replace("@.service", "@*.service")] for w in app.get("workers") or []}
    timers = {t["name"]: [t["service"], t["timer"]] for t in app.get("timers") or []}
    if not process:
        return [app["service"]]
    if process == "all":
        return [app["service"]] + [u for units in (*workers.values(), *timers.values()) for u in units]
    if process in workers or process in timers:
        return workers.get(process) or timers[process]
    known = ", ".join([*workers, *timers]) or "none"
    raise ValueError(f"{app['name']} has no worker or timer named {process!r} (it has: {known}; or use all)")


def _config_folders(paths: list[str], shared_dirs: list[str]) -> list[str]:
    """The folders (relative to shared/) that config files need, less the shared folders."""
    folders: list[str] = []
    for path in paths:
        parts = path.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            folder = "/".join(parts[:depth])
            if folder not in shared_dirs and folder not in folders:
                folders.append(folder)
    return folders


def release_paths(app: dict, release_id: str) -> dict:
    """Where one release of an app lives, and where its archive is uploaded to."""
    return {
        "release_id": release_id,
        "release_dir": f"{app['releases_dir']}/{release_id}",
        "upload_archive": f"{app['upload_dir']}/{release_id}.tar.gz",
    }


def wheelhouse_upload(app: dict, key: str) -> str:
    """Where a wheelhouse's tar is uploaded to."""
    return f"{app['upload_dir']}/{key}.tar"
