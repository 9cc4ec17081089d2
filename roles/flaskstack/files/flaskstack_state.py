"""flaskstack's record of a host as the last complete site.yml run left it (flaskstack_skip_unchanged).

A run of site.yml that would change nothing still costs a module run per task. This script
lets a run skip a host when both what the run is given ("inputs", a digest the control node
makes of the code, the inventory and the variables: flaskstack/unchanged.py) and what the
host is (its settings files, packages, units, firewall and kernel settings, each app's
releases) are as they were at the end of the last complete run.

It is not an Ansible module: roles/flaskstack/tasks/unchanged.yml and record.yml send it with
`raw` (python3 -c <this file> <arguments as JSON>), one SSH round trip that imports nothing
of Ansible's: a module run cost 0.45 s for one host and 1.0 s for five (its AnsiballZ
payload built on the control node, then unpacked and imported on each host), and it is the
only module a run with nothing to do ran. Standard library only.

Arguments (one JSON object):
  inputs    the control node's digest of this run's inputs (required)
  provision_inputs
            the same but for the apps' code (flaskstack/unchanged.py; default none)
  record    where the record is kept, root's only (required)
  write     record this state with the inputs instead of comparing (default false)
  provisioned_at
            with write: when the provision play last ran, if this run skipped it (the
            provisioned_at that the comparison answered); default now
  compare   compare with the record; false (every task runs anyway) only removes it (default true)
  max_age   seconds a record stays good, 0 never (default 86400)
  paths     files and folders whose entries make up the state: [{path (a glob: each match),
            content (digest each file, default true), depth (-1 all the way), exclude
            (names, globs, left out anywhere under it), deploy (the deploy plays write it:
            the apps' folders; an entry belongs to the deepest path it lies under)}]
  units     more units whose ActiveState is part of the state (besides every unit enabled
            under /etc/systemd/system)
  commands  commands (argv lists) whose output is part of the state; an absent program counts
            as absent
The state is one entry per file, link and folder under paths (type, mode, owner and, where
asked, a digest of the content), per unit (its ActiveState), per command (a digest of its
output) and per kernel setting named in the sysctl.d files under paths (its live value).

It prints one line of JSON: unchanged (never with write), reason (why not, the first few
differences, or when it was recorded), entries, and record_kept: true when every task must
run but the record could not be removed first (the task fails on it). provision_unchanged:
true when the host is not unchanged, but only in its apps' code (the provision inputs are the
record's) and only in the paths marked deploy: the provision play is skipped, the deploy
plays run; provisioned_at then says when the provision play last ran, for the record that
run writes. A record's age (max_age) counts from then: a host that only ever gets new code
is still provisioned again once max_age has passed. A host that is not
unchanged (or with compare false, any host) loses its record, before the run changes
anything: a run stopped half-way, killed or failed, leaves no record behind, and the next
run runs every task whatever the host looks like.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time

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


def provisioned_at(record):
    """When the provision play last ran on the host: the record's run, unless that run skipped
    it (then the run before, and so on)."""
    return record.get("provisioned_at", record.get("at", 0))


def untrusted(record, max_age, clock=time.time):
    """Why the record cannot be compared with at all, or None."""
    if not record or record.get("version") != VERSION:
        return "no record of a complete run on this host"
    age = clock() - provisioned_at(record)
    if max_age and age > max_age:
        hours = int(age // 3600)
        return f"the host was last provisioned {hours} h ago (flaskstack_skip_unchanged_for: {max_age} s)"
    return None


def compare(record, inputs, now, max_age, clock=time.time):
    """(unchanged, reason) of this state against the record (a dict, or None)."""
    why = untrusted(record, max_age, clock)
    if why:
        return False, why
    if not inputs:
        return False, (
            "no digest of this run's inputs (the app model refused them, they could not be read, "
            "or the apps were given where the digest cannot see them, such as a play's vars)"
        )
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


def deployed(path, paths):
    """Whether an entry of the state belongs to a path marked deploy: the deepest of the paths
    (globs) it is or lies under decides (an app's home under the apps' root is the app's; a
    folder beside the homes is not)."""
    found = [
        spec for spec in paths
        if any(fnmatch.fnmatchcase(path, root) for root in (spec["path"], spec["path"].rstrip("/") + "/*"))
    ]  # fmt: skip
    return bool(found) and bool(max(found, key=lambda spec: len(spec["path"])).get("deploy"))


def provision_unchanged(record, provision_inputs, now, paths, max_age, clock=time.time):
    """Whether only the apps' code and folders differ from the record: the provision inputs
    are the record's, and every difference in the state belongs to a path marked deploy.
    Called when the host is not unchanged."""
    if untrusted(record, max_age, clock) or not provision_inputs:
        return False
    if record.get("provision_inputs") != provision_inputs:
        return False
    recorded = record.get("state", {})
    return all(recorded.get(key) == now.get(key) or deployed(key, paths) for key in set(recorded) | set(now))


def read_record(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None


def write_record(path, inputs, now, clock=time.time, provision_inputs="", provisioned=None):
    fd, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".last-run.")
    at = clock()
    record = {"version": VERSION, "at": at, "inputs": inputs, "state": now}
    record["provisioned_at"] = provisioned or at
    if provision_inputs:
        record["provision_inputs"] = provision_inputs
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(record, handle, sort_keys=True)
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def forget(path):
    """Remove the record: this run will change the host, and only its end may record it again.
    Bookkeeping, like the write: not a change to the host's configuration."""
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


def run(argv):
    """A command's (rc, stdout, stderr), in the C locale; rc 127 for a program not found."""
    program = argv[0] if os.path.isabs(argv[0]) else shutil.which(argv[0])
    if program is None:
        return 127, "", f"{argv[0]}: not found"
    result = subprocess.run(
        [program, *argv[1:]],
        capture_output=True,
        text=True,
        check=False,
        stdin=subprocess.DEVNULL,
        env={**os.environ, "LC_ALL": "C"},
    )
    return result.returncode, result.stdout, result.stderr


def answer(args):
    """What the script prints for these arguments (a dict), having done what they ask."""
    record = args["record"]
    units, commands = args.get("units", []), args.get("commands", [])
    # The record and its temporary files are not part of what they record.
    ours = [os.path.basename(record), ".last-run.*"]
    paths = [dict(spec, exclude=[*spec.get("exclude", []), *ours]) for spec in args.get("paths", [])]
    if args.get("write"):
        # The record's folder made before the state is read, so the state recorded is the
        # one the next run finds (on a host's first run, the folder is new).
        os.makedirs(os.path.dirname(record), mode=0o755, exist_ok=True)
        now = state(run, paths, units, commands)
        write_record(
            record,
            args["inputs"],
            now,
            provision_inputs=args.get("provision_inputs", ""),
            provisioned=args.get("provisioned_at"),
        )
        return {"unchanged": False, "reason": "recorded", "entries": len(now)}
    unchanged, reason, entries, provision = False, "flaskstack_skip_unchanged is off", 0, False
    provisioned = None
    if args.get("compare", True):
        try:
            now = state(run, paths, units, commands)
            found, max_age = read_record(record), args.get("max_age", 86400)
            unchanged, reason = compare(found, args["inputs"], now, max_age)
            entries = len(now)
            provision = not unchanged and provision_unchanged(
                found, args.get("provision_inputs", ""), now, paths, max_age
            )
            if provision:
                provisioned = provisioned_at(found)
                # (No apostrophe: the message is shown as YAML, which would double it.)
                said = differences(found.get("state", {}), now)
                reason = "as the last complete run left it, but for the code and releases of its apps" + (
                    f" ({'; '.join(said)})" if said else ""
                )
        except Exception as exc:  # noqa: BLE001 - a host that cannot be read gets every task
            reason = f"its state could not be read ({type(exc).__name__}: {exc})"
    if not unchanged:
        try:
            forget(record)
        except OSError as exc:
            return {
                "unchanged": False,
                "record_kept": True,
                "reason": f"every task must run on this host, but the record of its last complete run "
                f"({record}) could not be removed first: {exc}",
            }
    said = {"unchanged": unchanged, "provision_unchanged": provision, "reason": reason, "entries": entries}
    return {**said, "provisioned_at": provisioned} if provision else said


if __name__ == "__main__":
    print(json.dumps(answer(json.loads(sys.argv[1]))), flush=True)
