#!/usr/bin/python
"""Module flaskstack_files: many small settings files and lines in one module run."""

from __future__ import annotations

import grp
import os
import pwd
import re
import shlex
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: flaskstack_files
short_description: Write many small files and set lines in existing ones, in one run
description:
  - >-
    The host role's settings are a dozen small files and a few lines in files the
    distribution owns; the app server role's are each app's settings and units; the app,
    nginx, PostgreSQL and Redis roles have their tools' code and settings. One task per
    file costs a module run each (the template action runs two, stat and then copy or file;
    about half a second on a host, more under load); this module does them all in one,
    with check mode and diff (of content, links and removals; owner and mode changes are
    reported by path). Files are read and written as they are, with no newline
    translation (a file changed to CRLF line ends by hand is put back).
  - >-
    Each file in O(files) is written whole (atomically: a temporary file in the same
    folder, then renamed), with the given owner, group and mode, its missing parent
    folders made root's with mode 0755.
  - >-
    Each entry of O(lines) works as M(ansible.builtin.lineinfile) with O(regexp) and
    O(line) does: the last line that matches is replaced, or the line is added at the end.
  - >-
    In this order: the paths in O(absent) are removed, the files written (each that
    changes validated first, when it has a command to), the O(links) made.
options:
  absent:
    description: Files or links removed (a folder is an error).
    type: list
    elements: path
    default: []
  files:
    description: Files written whole.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content: {description: The whole content., type: str, required: true}
      mode: {description: Octal mode as a string., type: str, default: "0644"}
      owner:
        description: The file's owner (a name); one that does not exist fails the run, and in
          check mode is only reported (a run would have made an app's user by then).
        type: str
        default: root
      group: {description: "The file's group (a name), as O(files[].owner).", type: str, default: root}
      validate:
        description:
          - A command run on the new content before it replaces the file (C(%s), its
            temporary path, is required); if it fails, the module fails with its output and
            the file stays as it was (what this run removed or wrote before it stays so).
        type: str
  links:
    description: Symbolic links made, or pointed again (a file in their place is an error).
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: The link., type: path, required: true}
      src: {description: What it points to., type: path, required: true}
  lines:
    description: Lines set in existing files.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: An existing file (or one of O(files))., type: path, required: true}
      regexp: {description: The line to replace (Python regular expression)., type: str, required: true}
      line: {description: The line it becomes., type: str, required: true}
author: flaskstack
"""

EXAMPLES = r"""
- name: Write the settings
  flaskstack_files:
    files:
      - path: /etc/sysctl.d/90-example.conf
        content: "kernel.sysrq = 0\n"
    lines:
      - {path: /etc/login.defs, regexp: '^UMASK\s', line: "UMASK\t027"}
"""

RETURN = r"""
changed_paths:
  description: The files and links this run wrote or removed, or would (in check mode).
  type: list
  elements: str
  returned: success
"""


def _read(path):
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _make_parents(path):
    missing = []
    folder = os.path.dirname(path)
    while folder and not os.path.isdir(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    for folder in reversed(missing):
        os.mkdir(folder, 0o755)
        os.chmod(folder, 0o755)  # noqa: S103 - a settings folder under /etc, as Debian makes them
        os.chown(folder, 0, 0)


def _write(module, path, content, attrs, validate):
    tmp_fd, tmp_path = tempfile.mkstemp(prefix=".flaskstack-", dir=os.path.dirname(path))
    try:
        with os.fdopen(tmp_fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(content)
        os.chown(tmp_path, attrs[1], attrs[2])
        os.chmod(tmp_path, attrs[0])
        if validate:
            argv = [arg.replace("%s", tmp_path) for arg in shlex.split(validate)]
            rc, out, err = module.run_command(argv)
            if rc != 0:  # the temporary file goes below, as on any other failure
                module.fail_json(
                    msg=f"{path} failed to validate (rc {rc}), left as it was: {(err or out).strip()}"
                )
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)
        raise


def _set_lines(text, edits):
    """lineinfile's regexp/line rule, for every edit of one file, in order."""
    lines = text.splitlines(keepends=True)
    for regexp, line in edits:
        pattern = re.compile(regexp)
        found = [i for i, existing in enumerate(lines) if pattern.search(existing.rstrip("\r\n"))]
        if found:
            lines[found[-1]] = line + "\n"
        else:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += "\n"
            lines.append(line + "\n")
    return "".join(lines)


def _entries(**options):
    """An option that is a list of entries, each with these options."""
    return {"type": "list", "elements": "dict", "default": [], "options": options}


def main():
    module = AnsibleModule(
        argument_spec={
            "files": _entries(
                path={"type": "path", "required": True},
                content={"type": "str", "required": True},
                mode={"type": "str", "default": "0644"},
                owner={"type": "str", "default": "root"},
                group={"type": "str", "default": "root"},
                validate={"type": "str"},
            ),
            "links": _entries(
                path={"type": "path", "required": True}, src={"type": "path", "required": True}
            ),
            "absent": {"type": "list", "elements": "path", "default": []},
            "lines": _entries(
                path={"type": "path", "required": True},
                regexp={"type": "str", "required": True},
                line={"type": "str", "required": True},
            ),
        },
        supports_check_mode=True,
    )

    wanted = {}  # path -> (content, (mode, owner's id, group's id), or None to keep them)
    validates = {}  # path -> its validate command, if any
    # Everything that would stop the run half-way is refused before anything changes.
    for entry in module.params["files"]:
        if entry["validate"] is not None and "%s" not in entry["validate"]:
            module.fail_json(msg=f"{entry['path']}: its validate command has no %s (the new content's path)")
        ids = []
        for kind, find in (
            ("owner", lambda name: pwd.getpwnam(name).pw_uid),
            ("group", lambda name: grp.getgrnam(name).gr_gid),
        ):
            try:
                ids.append(find(entry[kind]))
            except KeyError:
                # In check mode an app's user or group may not exist yet (a run would make it).
                if not module.check_mode:
                    module.fail_json(msg=f"{entry['path']}: no {kind} named {entry[kind]}")
                ids.append(-1)
        try:
            mode = int(entry["mode"], 8)
        except ValueError:
            module.fail_json(msg=f"{entry['path']}: mode {entry['mode']!r} is not an octal number")
        wanted[entry["path"]] = (entry["content"], (mode, *ids))
        validates[entry["path"]] = entry["validate"]
    edits = {}
    for entry in module.params["lines"]:
        edits.setdefault(entry["path"], []).append((entry["regexp"], entry["line"]))
    for path, file_edits in edits.items():
        before = wanted[path][0] if path in wanted else _read(path)
        if before is None:
            module.fail_json(msg=f"{path} does not exist: its lines cannot be set")
        attrs = wanted[path][1] if path in wanted else None
        wanted[path] = (_set_lines(before, file_edits), attrs)

    for path in module.params["absent"]:
        if os.path.isdir(path) and not os.path.islink(path):
            module.fail_json(msg=f"{path} is a folder: only files and links are removed")
    for entry in module.params["links"]:
        if os.path.lexists(entry["path"]) and not os.path.islink(entry["path"]):
            module.fail_json(
                msg=f"{entry['path']} exists and is not a link: it cannot become a link to {entry['src']}"
            )

    changed_paths, diffs = [], []
    for path in module.params["absent"]:
        if not os.path.lexists(path):
            continue
        changed_paths.append(path)
        if module._diff:
            diffs.append(
                {"before_header": path, "after_header": path, "before": "present\n", "after": "absent\n"}
            )
        if not module.check_mode:
            os.unlink(path)

    for path, (content, attrs) in wanted.items():
        before = _read(path)
        stat = os.stat(path) if before is not None else None
        content_changed = before != content
        # A whole file gets its mode, owner and group; a file only edited keeps its own (as
        # lineinfile).
        attrs_changed = (
            stat is not None
            and attrs is not None
            and (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid) != attrs
        )
        if not content_changed and not attrs_changed:
            continue
        changed_paths.append(path)
        if content_changed and module._diff:
            diffs.append(
                {
                    "before_header": path if before is not None else "/dev/null",
                    "after_header": path,
                    "before": before or "",
                    "after": content,
                }
            )
        if module.check_mode:
            continue
        if content_changed:
            _make_parents(path)
            if attrs is None:
                attrs = (stat.st_mode & 0o7777, stat.st_uid, stat.st_gid)
            _write(module, path, content, attrs, validates.get(path))
        else:
            os.chown(path, attrs[1], attrs[2])
            os.chmod(path, attrs[0])

    for entry in module.params["links"]:
        path, src = entry["path"], entry["src"]
        if os.path.islink(path) and os.readlink(path) == src:
            continue
        changed_paths.append(path)
        if module._diff:
            before = f"link to {os.readlink(path)}\n" if os.path.islink(path) else ""
            diffs.append(
                {"before_header": path, "after_header": path, "before": before, "after": f"link to {src}\n"}
            )
        if module.check_mode:
            continue
        _make_parents(path)
        tmp_path = os.path.join(os.path.dirname(path), f".flaskstack-link-{os.getpid()}")
        if os.path.lexists(tmp_path):
            os.unlink(tmp_path)
        os.symlink(src, tmp_path)
        try:
            os.replace(tmp_path, path)
        except BaseException:
            os.unlink(tmp_path)
            raise

    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
