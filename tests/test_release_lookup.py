"""The control node's packaging of a release (flaskstack/packaging.py)."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from flaskstack.packaging import (
    BUILT_FROM_SOURCE,
    REVISION_FILE,
    SERVER_REQUIREMENTS,
    Project,
    WheelhouseError,
    build_release,
    build_wheelhouse,
    read_project,
    release_id,
    source_files,
    wheelhouse_key,
    wheelhouse_notes,
)

EXCLUDE = ["__pycache__", "*.pyc", "tests"]


@pytest.fixture
def src(tmp_path):
    root = tmp_path / "src"
    (root / "pkg" / "static").mkdir(parents=True)
    (root / "pkg" / "__init__.py").write_text("app = object()\n")
    (root / "pkg" / "static" / "style.css").write_text("body {}\n")
    (root / "requirements.txt").write_text("Flask==3.1.3\n")
    (root / "pkg" / "__pycache__").mkdir()
    (root / "pkg" / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"\0")
    (root / "tests").mkdir()
    (root / "tests" / "test_x.py").write_text("def test(): pass\n")
    return root


def test_excluded_names_are_left_out(src):
    files = [p.as_posix() for p in source_files(src, EXCLUDE)]
    assert files == ["pkg/__init__.py", "pkg/static/style.css", "requirements.txt"]


def test_same_content_gives_the_same_id_whatever_the_mtimes(src):
    first = release_id(src, EXCLUDE, [])
    (src / "pkg" / "__init__.py").touch()
    assert release_id(src, EXCLUDE, []) == first
    assert len(first) == 12


@pytest.mark.parametrize(
    "change",
    [
        lambda s: (s / "pkg" / "__init__.py").write_text("app = None\n"),
        lambda s: (s / "pkg" / "new.py").write_text(""),
        lambda s: (s / "pkg" / "static" / "style.css").rename(s / "pkg" / "static" / "site.css"),
        lambda s: (s / "pkg" / "__init__.py").chmod(0o755),
    ],
    ids=["content", "new file", "rename", "executable bit"],
)
def test_any_change_to_the_release_changes_the_id(src, change):
    before = release_id(src, EXCLUDE, [])
    change(src)
    assert release_id(src, EXCLUDE, []) != before


def test_excluded_files_do_not_change_the_id(src):
    before = release_id(src, EXCLUDE, [])
    (src / "tests" / "test_x.py").write_text("changed\n")
    assert release_id(src, EXCLUDE, []) == before


def test_app_server_packages_are_part_of_the_id(src):
    assert release_id(src, EXCLUDE, ["gunicorn==23.0.0"]) != release_id(src, EXCLUDE, ["gunicorn==22.0.0"])


def test_archive_holds_the_source_and_ends_with_revision(src, tmp_path):
    release = build_release(src, "app", EXCLUDE, [], tmp_path / "cache")
    with tarfile.open(release.archive) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names[-1] == REVISION_FILE
        assert tar.extractfile(REVISION_FILE).read().decode() == release.id + "\n"
        assert set(names) == {
            "pkg/__init__.py",
            "pkg/static/style.css",
            "requirements.txt",
            "REVISION",
        }
        assert all(m.uid == 0 and m.gid == 0 for m in members)


def test_archive_is_built_once_per_id(src, tmp_path):
    cache = tmp_path / "cache"
    first = build_release(src, "app", EXCLUDE, [], cache)
    mtime = (cache / "releases" / f"app-{first.id}.tar.gz").stat().st_mtime_ns
    again = build_release(src, "app", EXCLUDE, [], cache)
    assert again == first
    assert (cache / "releases" / f"app-{first.id}.tar.gz").stat().st_mtime_ns == mtime


def test_missing_source_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        build_release(tmp_path / "nope", "app", [], [], tmp_path / "cache")


def test_requirements_includes_are_read_as_pip_reads_them(tmp_path):
    from flaskstack.packaging import WheelhouseError, read_requirements, wheelhouse_key

    (tmp_path / "requirements").mkdir()
    (tmp_path / "requirements" / "base.txt").write_text("flask==3.1.3 \\\n    --hash=sha256:aa  # pinned\n")
    (tmp_path / "requirements" / "prod.txt").write_text("-r base.txt\n-c ../constraints.txt\ngunicorn\n")
    (tmp_path / "constraints.txt").write_text("# only versions\nmarkupsafe<4\n")
    reqs, cons = read_requirements(tmp_path / "requirements" / "prod.txt")
    assert reqs == "flask==3.1.3 --hash=sha256:aa\ngunicorn\n"
    assert cons == "markupsafe<4\n"
    key = wheelhouse_key(f"{reqs}\0{cons}".encode(), [], "3.11", "x86_64")
    # An included file's change is a new wheelhouse.
    (tmp_path / "requirements" / "base.txt").write_text("flask==3.1.4\n")
    reqs, cons = read_requirements(tmp_path / "requirements" / "prod.txt")
    assert wheelhouse_key(f"{reqs}\0{cons}".encode(), [], "3.11", "x86_64") != key
    (tmp_path / "constraints.txt").unlink()
    with pytest.raises(
        WheelhouseError, match=r"prod\.txt includes \.\./constraints\.txt, which does not exist"
    ):
        read_requirements(tmp_path / "requirements" / "prod.txt")


def test_a_wheelhouse_another_process_finished_first_is_kept(tmp_path, monkeypatch):
    """Two runs (a second host, or test scenarios run in parallel) download the same
    wheelhouse at once: the one that finishes second keeps the first one's folder, which
    the first may be reading, instead of replacing it."""
    project = Project(
        shape="requirements", requirements="Flask==3.1.3\n", constraints="", files=("requirements.txt",)
    )
    key = wheelhouse_key(b"Flask==3.1.3\n\0", ["gunicorn"], "3.11", "x86_64")
    theirs = tmp_path / "wheelhouse" / "hello" / key

    def download(argv, **kwargs):
        # While this process downloads, the other one completes the same folder.
        theirs.mkdir(parents=True, exist_ok=True)
        (theirs / "flask-3.1.3-py3-none-any.whl").write_text("theirs")
        (theirs / SERVER_REQUIREMENTS).write_text("gunicorn\n")
        return subprocess.CompletedProcess(argv, 0, "", "")

    monkeypatch.setattr(subprocess, "run", download)
    got_key, folder = build_wheelhouse("hello", project, ["gunicorn"], "3.11", "x86_64", [], [], tmp_path)
    assert (got_key, folder) == (key, theirs)
    assert (folder / "flask-3.1.3-py3-none-any.whl").read_text() == "theirs"
    assert sorted(p.name for p in folder.parent.iterdir()) == [key]  # no partial left behind


def wheels_of(folder: Path) -> list[str]:
    return sorted(p.name.split("-")[0].lower() for p in folder.glob("*.whl"))


def test_a_wheelhouse_follows_the_targets_environment_markers(tmp_path):
    """redis 5.0.1 needs async-timeout where python_full_version <= "3.11.2" (Debian 12's
    Python). pip evaluates markers for the Python it runs on, whatever --python-version
    says: on a control node with 3.11.7 it was left out and the host's venv could not be
    installed. Real pip against the index."""
    (tmp_path / "requirements.txt").write_text("redis==5.0.1\n")
    project = read_project(tmp_path)
    _, debian = build_wheelhouse("app", project, [], "3.11.2", "x86_64", [], [], tmp_path / "cache")
    assert wheels_of(debian) == ["async_timeout", "redis"]
    _, newer = build_wheelhouse("app", project, [], "3.11.9", "x86_64", [], [], tmp_path / "cache")
    assert wheels_of(newer) == ["redis"]


def test_a_requirement_with_a_source_distribution_only_is_built_here(tmp_path):
    """langdetect 1.0.9 (microblog's) has no wheel on PyPI. Its build code would run here, so
    only when the app names it in build_from_source (else the message says to); then it is a
    pure-Python wheel for any target, and its own requirements (six) come from the index as
    usual. With --hash pins it cannot be (the built wheel's hash is not the pinned file's)."""
    (tmp_path / "requirements.txt").write_text("langdetect==1.0.9\n")
    args = ("app", read_project(tmp_path), [], "3.11.2", "x86_64", [], [], tmp_path / "c")
    with pytest.raises(WheelhouseError, match=r"add langdetect to the app's build_from_source"):
        build_wheelhouse(*args)
    _, folder = build_wheelhouse(*args, ["LangDetect"])
    assert wheels_of(folder) == ["langdetect", "six"]
    assert (folder / BUILT_FROM_SOURCE).read_text() == "langdetect==1.0.9\n"
    assert wheelhouse_notes(folder) == [
        "built here from source distributions (no wheel on the index, pure Python): langdetect==1.0.9"
    ]
    (tmp_path / "requirements.txt").write_text(
        "langdetect==1.0.9 --hash=sha256:cbc1fef89f8d062739774bd51eda3da3274006b3661d199c2655f6b3f6d605a0\n"
    )
    hashed = ("app", read_project(tmp_path), [], "3.11.2", "x86_64", [], [], tmp_path / "c", ["langdetect"])
    with pytest.raises(
        WheelhouseError, match=r"langdetect==1\.0\.9 may have only a source distribution: with --hash"
    ):
        build_wheelhouse(*hashed)
