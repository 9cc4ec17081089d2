#!/usr/bin/python
"""Module flaskstack_state: is this host as the last complete site.yml run left it?"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import stat
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: flaskstack_state
short_description: Compare a host with the record of the last complete run, or write that record
description:
  - A run of site.yml that would change nothing still costs a module run per task. This
    module lets a run skip a host when both what the run is given (O(inputs), a digest the
    control node makes of the code, the inventory and the variables) and what the host is
    (its settings files, packages, units, firewall and kernel settings, each app's releases)
    are as they were at the end of the last complete run.
  - The host's state is a map of one entry per file, link and folder under O(paths) (type,
    mode, owner and, where asked, a digest of the content), per unit in O(units) and every
    unit enabled under /etc/systemd/system (its ActiveState), per command in O(commands)
    (a digest of its output) and per kernel setting named in the sysctl.d files under
    O(paths) (its live value).
  - With O(write) the state is recorded with O(inputs) in O(record) (never in check mode).
    Without it, the result says whether the host is unchanged, and if not, why; a host that
    is not unchanged (or with O(compare) false, any host) loses its record then, before the
    run changes anything (never in check mode): a run stopped half-way, killed or failed,
    leaves no record behind, and the next run runs every task whatever the host looks like.
options:
  inputs: {description: The control node's digest of this run's inputs., type: str, required: true}
  record: {description: Where the record is kept (root's only)., type: path, required: true}
  write: {description: Record this state instead of comparing., type: bool, default: false}
  compare:
    description: Compare with the record; false (every task runs anyway) only removes it.
    type: bool
    default: true
  max_age: {description: Seconds a record stays good (0 never)., type: int, default: 86400}
  paths:
    description: Files and folders whose entries make up the state.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path (a glob: each match)., type: str, required: true}
      content: {description: Digest each file's content too., type: bool, default: true}
      depth: {description: How deep to go under a folder (-1 all the way)., type: int, default: -1}
      exclude:
        description: Names (globs) left out anywhere under it.
        type: list
        elements: str
        default: []
  units:
    description: More units whose ActiveState is part of the state.
    type: list
    elements: str
    default: []
  commands:
    description: Commands whose output is part of the state (an absent program counts as absent).
    type: list
    elements: list
    default: []
author: flaskstack
"""

RETURN = r"""
unchanged: {description: Whether the host is as recorded (never with O(write))., type: bool, returned: always}
reason:
  description: Why it is not (the first few differences), or when it was recorded.
  type: str
  returned: always
entries: {description: How many entries the state has., type: int, returned: always}
record_kept:
  description: The host gets every task but its record could not be removed (the module fails).
  type: bool
  returned: on that failure
"""

VERSION = 1


def _digest(path):
    sha = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 16), b""):
            sha.update(block)
    return sha.hexdigest()


def _entry(path, info, content):
    kind = stat.S_IFMT(info.st_mode)
    described = f"{oct(stat.S_IMODE(info.st_mode))} {info.st_uid}:{info.st_gid}"
    if kind == stat.S_IFLNK:
        return f"link -> {os.readlink(path)}"
    if kind == stat.S_IFDIR:
        return f"dir {described}"
    if kind == stat.S_IFREG:
        if not content:
            return f"file {described}"
        try:
            return f"file {described} {_digest(path)}"
        except OSError as error:
            return f"file {described} unreadable ({error.strerror})"
    return f"other {described}"


def walk(root, content=True, depth=-1, exclude=()):
    """Each entry under root (root too) as {path: description}; nothing for a missing root."""
    found = {}

    def excluded(name):
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)

    def visit(path, level):
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        found[path] = _entry(path, info, content)
        if not stat.S_ISDIR(info.st_mode) or level == depth:
            return
        try:
            names = sorted(os.listdir(path))
        except OSError as error:
            found[path] += f" unlistable ({error.strerror})"
            return
        for name in names:
            if not excluded(name):
                visit(os.path.join(path, name), level + 1)

    visit(root, 0)
    return found


def sysctl_values(files):
    """The live value of each key the given sysctl.d files set."""
    found = {}
    for path in files:
        try:
            with open(path, encoding="utf-8") as handle:
                lines = handle.read().splitlines()
        except OSError:
            continue
        for line in lines:
            line = line.strip()
            if not line or line[0] in "#;" or "=" not in line:
                continue
            key = line.split("=", 1)[0].strip().lstrip("-")
            proc = "/proc/sys/" + key.replace(".", "/")
            try:
                with open(proc, encoding="utf-8") as handle:
                    found[f"sysctl {key}"] = " ".join(handle.read().split())
            except OSError:
                found[f"sysctl {key}"] = "unreadable"
    return found


def unit_states(run, units):
    """ActiveState of each unit, in one systemctl call."""
    units = sorted(set(units))
    if not units:
        return {}
    rc, out, err = run(["systemctl", "show", "--property=Id,ActiveState", "--", *units])
    if rc != 0:
        return {"units": f"systemctl show failed: {err.strip()}"}
    found = {}
    for block, unit in zip(out.strip().split("\n\n"), units, strict=False):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        found[f"unit {unit}"] = props.get("ActiveState", "?")
    return found


def enabled_units(system_dir="/etc/systemd/system"):
    """The units enabled under system_dir (the links in its .wants and .requires folders)."""
    units = set()
    folders = glob.glob(os.path.join(system_dir, "*.wants")) + glob.glob(
        os.path.join(system_dir, "*.requires")
    )
    for folder in folders:
        # A template (name@.service) has no state of its own: only its instances (name@1.service).
        units.update(name for name in os.listdir(folder) if "@." not in name)
    return units


def command_outputs(run, commands):
    found = {}
    for argv in commands:
        key = "command " + " ".join(argv)
        program = argv[0] if os.path.isabs(argv[0]) else None
        if program is not None and not os.path.exists(program):
            found[key] = "absent"
            continue
        rc, out, err = run(list(argv))
        found[key] = f"rc={rc} " + hashlib.sha256((out + "\0" + err).encode()).hexdigest()
    return found


def state(run, paths, units, commands):
    """The host's state: one description per entry."""
    found = {}
    sysctl_files = []
    for spec in paths:
        for root in sorted(glob.glob(spec["path"])) or [spec["path"]]:
            walked = walk(root, spec.get("content", True), spec.get("depth", -1), spec.get("exclude") or ())
            found.update(walked)
            sysctl_files += [p for p in walked if fnmatch.fnmatchcase(p, "*/sysctl.d/*.conf")]
    found.update(sysctl_values(sorted(sysctl_files)))
    found.update(unit_states(run, list(units) + sorted(enabled_units())))
    found.update(command_outputs(run, commands))
    return found


def differences(recorded, now, limit=5):
    """The first few differences between two states, as a user reads them."""
    said = []
    for key in sorted(set(recorded) | set(now)):
        if recorded.get(key) == now.get(key):
            continue
        if key not in now:
            said.append(f"{key} is gone")
        elif key not in recorded:
            said.append(f"{key} is new")
        elif key.startswith(("unit ", "sysctl ")):
            said.append(f"{key} is {now[key]} (was {recorded[key]})")
        else:
            said.append(f"{key} changed")
    if len(said) > limit:
        said = [*said[:limit], f"{len(said) - limit} more"]
    return said


def compare(record, inputs, now, max_age, clock=time.time):
    """(unchanged, reason) of this state against the record (a dict, or None)."""
    if not record or record.get("version") != VERSION:
        return False, "no record of a complete run on this host"
    age = clock() - record.get("at", 0)
    if max_age and age > max_age:
        hours = int(age // 3600)
        return False, f"the last complete run was {hours} h ago (flaskstack_skip_unchanged_for: {max_age} s)"
    if record.get("inputs") != inputs:
        return (
            False,
            "this run's inputs (code, inventory, variables, app sources) are not the last complete run's",
        )
    said = differences(record.get("state", {}), now)
    if said:
        return False, "the host changed since the last complete run: " + "; ".join(said)
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(record["at"]))
    return True, f"as the last complete run left it ({when}), with the same inputs"


def read_record(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_record(path, inputs, now, clock=time.time):
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".last-run.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"version": VERSION, "at": clock(), "inputs": inputs, "state": now}, handle, sort_keys=True)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def forget(path, check_mode):
    """Remove the record: this run will change the host, and only its end may record it again.
    Bookkeeping, like the write: not a change to the host's configuration."""
    if check_mode:
        return
    try:
        os.remove(path)
    except FileNotFoundError:
        return
    # Gone for good before the run changes anything, even if the host loses power.
    folder = os.open(os.path.dirname(path), os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def main():
    module = AnsibleModule(
        argument_spec={
            "inputs": {"type": "str", "required": True},
            "record": {"type": "path", "required": True},
            "write": {"type": "bool", "default": False},
            "compare": {"type": "bool", "default": True},
            "max_age": {"type": "int", "default": 86400},
            "paths": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "str", "required": True},
                    "content": {"type": "bool", "default": True},
                    "depth": {"type": "int", "default": -1},
                    "exclude": {"type": "list", "elements": "str", "default": []},
                },
            },
            "units": {"type": "list", "elements": "str", "default": []},
            "commands": {"type": "list", "elements": "list", "default": []},
        },
        supports_check_mode=True,
    )
    params = module.params

    def run(argv):
        program = module.get_bin_path(argv[0]) if not os.path.isabs(argv[0]) else argv[0]
        if program is None:
            return 127, "", f"{argv[0]}: not found"
        return module.run_command([program, *argv[1:]], environ_update={"LC_ALL": "C"})

    record = params["record"]
    # The record and its temporary files are not part of what they record.
    ours = [os.path.basename(record), ".last-run.*"]
    paths = [dict(spec, exclude=[*spec["exclude"], *ours]) for spec in params["paths"]]
    if params["write"]:
        if not module.check_mode:
            # The record's folder made before the state is read, so the state recorded is the
            # one the next run finds (on a host's first run, the folder is new).
            os.makedirs(os.path.dirname(record), mode=0o755, exist_ok=True)
        now = state(run, paths, params["units"], params["commands"])
        if not module.check_mode:
            write_record(record, params["inputs"], now)
        # Bookkeeping, like a fact cache: not a change to the host's configuration.
        module.exit_json(changed=False, unchanged=False, reason="recorded", entries=len(now))
    unchanged, reason, entries = False, "flaskstack_skip_unchanged is off", 0
    if params["compare"]:
        try:
            now = state(run, paths, params["units"], params["commands"])
            unchanged, reason = compare(read_record(record), params["inputs"], now, params["max_age"])
            entries = len(now)
        except Exception as exc:  # noqa: BLE001 - a host that cannot be read gets every task
            reason = f"its state could not be read ({type(exc).__name__}: {exc})"
    if not unchanged:
        try:
            forget(record, module.check_mode)
        except OSError as exc:
            module.fail_json(
                msg=f"every task must run on this host, but the record of its last complete run "
                f"({record}) could not be removed first: {exc}",
                record_kept=True,
            )
    module.exit_json(changed=False, unchanged=unchanged, reason=reason, entries=entries)


if __name__ == "__main__":
    main()
