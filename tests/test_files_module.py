"""The flaskstack_files module (roles/flaskstack/library): many files and lines in one run.

Run through Ansible itself (ad hoc, on this machine), as a task runs it: check mode, diff,
a second run that changes nothing, lineinfile's rule for lines, and a clear failure.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys

import pytest

from tests.targets import BIN, ROOT, module_here


def files_module(args: dict, *flags: str) -> dict:
    return module_here("flaskstack", "flaskstack_files", args, *flags)


@pytest.mark.skipif(os.geteuid() != 0, reason="writes files owned by root, as on a host")
def test_files_and_lines_are_written_once_checked_first_and_diffed(tmp_path):
    defs = tmp_path / "login.defs"
    defs.write_text("#UMASK\t022\nUMASK\t022\nOTHER 1\n")
    new = tmp_path / "made" / "deep" / "settings.conf"
    args = {
        "files": [{"path": str(new), "content": "a = 1\n", "mode": "0640"}],
        "lines": [
            {"path": str(defs), "regexp": r"^\s*#?\s*UMASK\s", "line": "UMASK\t027"},
            {"path": str(defs), "regexp": r"^PASS_MAX_DAYS\s", "line": "PASS_MAX_DAYS\t365"},
        ],
    }

    checked = files_module(args, "--check", "--diff")
    assert checked["changed"] is True
    assert sorted(checked["changed_paths"]) == sorted([str(new), str(defs)])
    assert not new.parent.parent.exists(), "check mode wrote"
    assert defs.read_text() == "#UMASK\t022\nUMASK\t022\nOTHER 1\n"
    assert any(d["after"] == "a = 1\n" and d["before_header"] == "/dev/null" for d in checked["diff"])

    done = files_module(args)
    assert done["changed"] is True
    assert new.read_text() == "a = 1\n"
    assert oct(new.stat().st_mode & 0o777) == "0o640"
    assert oct(new.parent.stat().st_mode & 0o777) == "0o755"
    # lineinfile's rule: the last matching line is replaced, a missing one added at the end.
    assert defs.read_text() == "#UMASK\t022\nUMASK\t027\nOTHER 1\nPASS_MAX_DAYS\t365\n"

    again = files_module(args)
    assert again["changed"] is False and again["changed_paths"] == []

    new.chmod(0o644)
    assert files_module(args)["changed_paths"] == [str(new)]
    assert oct(new.stat().st_mode & 0o777) == "0o640"

    # Line ends changed by hand are put back: files are compared as they are.
    new.write_bytes(b"a = 1\r\n")
    assert files_module(args)["changed_paths"] == [str(new)]
    assert new.read_bytes() == b"a = 1\n"


def test_lines_in_a_missing_file_fail_and_name_it(tmp_path):
    missing = tmp_path / "nope.conf"
    result = files_module({"lines": [{"path": str(missing), "regexp": "^x", "line": "x"}]})
    assert result.get("failed") is True
    assert f"{missing} does not exist" in result["msg"]


@pytest.mark.skipif(os.geteuid() != 0, reason="gives files to other users, as on a host")
def test_a_file_gets_its_owner_and_group_and_a_missing_one_is_named(tmp_path):
    """As an app's env file (root:<app> 0640) or Redis' settings (redis:redis): the owner and
    group are set, and put back when changed by hand. A group that does not exist fails the
    run naming the file and the group; in check mode it is only reported (on a fresh host
    the run would have made the app's group by then)."""
    settings = tmp_path / "app.env"
    args = {
        "files": [
            {"path": str(settings), "content": "A=1\n", "mode": "0640", "owner": "daemon", "group": "daemon"}
        ]
    }
    assert files_module(args)["changed_paths"] == [str(settings)]
    daemon = pwd.getpwnam("daemon")
    assert (settings.stat().st_uid, settings.stat().st_gid) == (daemon.pw_uid, daemon.pw_gid)
    os.chown(settings, 0, 0)
    assert files_module(args)["changed_paths"] == [str(settings)]
    assert (settings.stat().st_uid, settings.stat().st_gid) == (daemon.pw_uid, daemon.pw_gid)
    assert files_module(args)["changed"] is False

    missing = {"files": [{**args["files"][0], "group": "no-such-group-here"}]}
    checked = files_module(missing, "--check")
    assert checked["changed_paths"] == [str(settings)] and not checked.get("failed"), checked
    failed = files_module(missing)
    assert (
        failed.get("failed") is True and f"{settings}: no group named no-such-group-here" in failed["msg"]
    ), failed
    assert (settings.stat().st_uid, settings.stat().st_gid) == (daemon.pw_uid, daemon.pw_gid)


@pytest.mark.skipif(os.geteuid() != 0, reason="writes files owned by root, as on a host")
def test_absent_paths_go_first_a_file_that_fails_its_check_stays_and_links_are_made(tmp_path):
    """As nginx's sites: a disabled site removed, each file checked by a command before it
    replaces the live one (a failed check names the file and leaves it as it was), and each
    site enabled by a link, pointed again when it points elsewhere."""
    available, enabled = tmp_path / "available", tmp_path / "enabled"
    available.mkdir()
    enabled.mkdir()
    (available / "old.conf").write_text("old\n")
    (enabled / "old.conf").symlink_to(available / "old.conf")
    (enabled / "site.conf").symlink_to(available / "old.conf")
    site = available / "site.conf"
    site.write_text("live\n")
    # The check refuses content that says "broken".
    check = f'{sys.executable} -c \'import sys; sys.exit(b"broken" in open(sys.argv[1], "rb").read())\' %s'
    args = {
        "absent": [str(enabled / "old.conf"), str(available / "old.conf"), str(tmp_path / "never-there")],
        "files": [{"path": str(site), "content": "broken\n", "validate": check}],
        "links": [{"path": str(enabled / "site.conf"), "src": str(site)}],
    }

    failed = files_module(args)
    assert failed.get("failed") is True and f"{site} failed to validate" in failed["msg"], failed
    assert site.read_text() == "live\n" and not [p for p in available.iterdir() if p.name.startswith(".")]
    assert not (available / "old.conf").exists(), "absent paths go first"

    args["files"][0]["content"] = "new\n"
    checked = files_module(args, "--check")
    assert checked["changed_paths"] == [str(site), str(enabled / "site.conf")], checked
    assert site.read_text() == "live\n" and os.readlink(enabled / "site.conf") == str(available / "old.conf")
    done = files_module(args)
    assert done["changed_paths"] == [str(site), str(enabled / "site.conf")], done
    assert site.read_text() == "new\n" and os.readlink(enabled / "site.conf") == str(site)
    assert files_module(args)["changed"] is False

    # A file where a link should be stops the run before anything changes.
    (enabled / "site.conf").unlink()
    (enabled / "site.conf").write_text("a file, not a link\n")
    args["files"][0]["content"] = "newer\n"
    refused = files_module(args)
    assert refused.get("failed") is True and "is not a link" in refused["msg"], refused
    assert site.read_text() == "new\n"


def test_its_documentation_reads_and_names_every_option():
    """ansible-doc reads the module's documentation (YAML that a stray colon breaks), and it
    names the options the module takes."""
    library = ROOT / "roles/flaskstack/library"
    result = subprocess.run(
        [str(BIN / "ansible-doc"), "--json", "-M", str(library), "flaskstack_files"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)["flaskstack_files"]["doc"]
    assert sorted(doc["options"]) == ["absent", "files", "lines", "links"]
    assert sorted(doc["options"]["files"]["suboptions"]) == [
        "content",
        "group",
        "mode",
        "owner",
        "path",
        "validate",
    ]
