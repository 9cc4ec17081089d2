#!/usr/bin/python
"""Module flaskstack_files: many small settings files and lines in one module run."""

from __future__ import annotations

import os
import re
import tempfile

from ansible.module_utils.basic import AnsibleModule

DOCUMENTATION = r"""
module: flaskstack_files
short_description: Write many small files and set lines in existing ones, in one run
description:
  - The host role's settings are a dozen small files and a few lines in files the
    distribution owns. One task per file costs a module run each (about half a second on
    a host, more under load); this module does them all in one, with check mode and diff.
  - Each file in O(files) is written whole (atomically: a temporary file in the same
    folder, then renamed), its missing parent folders made root's with mode 0755.
  - Each entry of O(lines) works as M(ansible.builtin.lineinfile) with O(regexp) and
    O(line) does: the last line that matches is replaced, or the line is added at the end.
options:
  files:
    description: Files written whole.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: Absolute path., type: path, required: true}
      content: {description: The whole content., type: str, required: true}
      mode: {description: Octal mode as a string., type: str, default: "0644"}
  lines:
    description: Lines set in existing files.
    type: list
    elements: dict
    default: []
    suboptions:
      path: {description: An existing file., type: path, required: true}
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
  description: The files this run wrote or would write (in check mode).
  type: list
  elements: str
  returned: always
"""


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
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


def _write(path, content, mode):
    tmp_fd, tmp_path = tempfile.mkstemp(prefix=".flaskstack-", dir=os.path.dirname(path))
    try:
        with os.fdopen(tmp_fd, "w", encoding="utf-8") as handle:
            handle.write(content)
        os.chmod(tmp_path, mode)
        os.chown(tmp_path, 0, 0)
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


def main():
    module = AnsibleModule(
        argument_spec={
            "files": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "content": {"type": "str", "required": True},
                    "mode": {"type": "str", "default": "0644"},
                },
            },
            "lines": {
                "type": "list",
                "elements": "dict",
                "default": [],
                "options": {
                    "path": {"type": "path", "required": True},
                    "regexp": {"type": "str", "required": True},
                    "line": {"type": "str", "required": True},
                },
            },
        },
        supports_check_mode=True,
    )

    wanted = {}  # path -> (content, mode or None to keep)
    for entry in module.params["files"]:
        wanted[entry["path"]] = (entry["content"], int(entry["mode"], 8))
    edits = {}
    for entry in module.params["lines"]:
        edits.setdefault(entry["path"], []).append((entry["regexp"], entry["line"]))
    for path, file_edits in edits.items():
        before = wanted[path][0] if path in wanted else _read(path)
        if before is None:
            module.fail_json(msg=f"{path} does not exist: its lines cannot be set")
        mode = wanted[path][1] if path in wanted else None
        wanted[path] = (_set_lines(before, file_edits), mode)

    changed_paths, diffs = [], []
    for path, (content, mode) in wanted.items():
        before = _read(path)
        stat = os.stat(path) if before is not None else None
        content_changed = before != content
        # A whole file is root's with its mode; a file only edited keeps its own (as lineinfile).
        attrs_changed = (
            stat is not None
            and mode is not None
            and ((stat.st_mode & 0o7777) != mode or (stat.st_uid, stat.st_gid) != (0, 0))
        )
        if not content_changed and not attrs_changed:
            continue
        changed_paths.append(path)
        if content_changed:
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
            _write(path, content, mode if mode is not None else stat.st_mode & 0o7777)
        else:
            os.chmod(path, mode)
            os.chown(path, 0, 0)

    module.exit_json(changed=bool(changed_paths), changed_paths=changed_paths, diff=diffs)


if __name__ == "__main__":
    main()
