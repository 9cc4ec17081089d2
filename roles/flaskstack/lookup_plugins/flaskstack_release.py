"""Package an app's source into a release: one id, one archive, on the control node.

The release id is a content hash: the same source (and the same app server
packages) always gives the same id, so a second ``ansible-playbook`` run finds
the release already on the host and changes nothing, and every host of one
deploy gets the same id. The archive holds the source plus a ``REVISION`` file
(the id, as Capistrano writes it), written last so that its presence on the host
means the whole archive was unpacked.
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path

DOCUMENTATION = r"""
name: flaskstack_release
short_description: Package an app's source as a release (content-hashed id and archive)
description:
  - Hashes the app's source tree (paths, contents, executable bits) and the extra strings
    into a 12-character release id, and writes C(<cache_dir>/releases/<name>-<id>.tar.gz)
    once. Returns a dict with C(id), C(archive) and C(packages) (the app server's and the
    worker class's packages, installed beside the app's requirements and part of the id).
options:
  _terms:
    description: The app's source directory.
    required: true
  name:
    description: The app's name (used in the archive's file name).
    required: true
  exclude:
    description: Glob patterns matched against every path component; matches are left out.
    type: list
    default: []
  server:
    description: The app's app server (gunicorn, uwsgi).
    required: true
  worker_class:
    description: The app's worker class (sync, gthread, gevent).
    required: true
  server_packages:
    description: Packages of each app server (C(flaskstack_server_packages)).
    type: dict
    required: true
  worker_packages:
    description: Packages of each worker class (C(flaskstack_worker_packages)).
    type: dict
    default: {}
  cache_dir:
    description: Where the archive is written.
    required: true
"""

REVISION_FILE = "REVISION"


@dataclass(frozen=True)
class Release:
    id: str
    archive: str


def source_files(src: Path, exclude: list[str]) -> list[Path]:
    """The files of a release, relative to ``src``, sorted; excluded names never entered."""
    found: list[Path] = []
    for root, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if not _excluded(d, exclude))
        for name in sorted(files):
            if name == REVISION_FILE or _excluded(name, exclude):
                continue
            path = Path(root, name)
            if path.is_file():
                found.append(path.relative_to(src))
    return sorted(found, key=lambda p: p.as_posix())


def _excluded(name: str, exclude: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in exclude)


def release_id(src: Path, exclude: list[str], extra: list[str]) -> str:
    """A 12-hex-digit content hash of the source tree and the extra strings."""
    digest = hashlib.sha256()
    for rel in source_files(src, exclude):
        path = src / rel
        executable = os.access(path, os.X_OK)
        digest.update(f"{rel.as_posix()}\0{int(executable)}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    for item in extra:
        digest.update(f"extra\0{item}\0".encode())
    return digest.hexdigest()[:12]


def app_packages(
    server: str,
    worker_class: str,
    server_packages: dict[str, list[str]],
    worker_packages: dict[str, list[str]],
) -> list[str]:
    """What a release's venv gets beside the app's requirements: its app server and worker library."""
    return [str(p) for p in server_packages.get(server, [])] + [
        str(p) for p in worker_packages.get(worker_class, [])
    ]


def build_release(src: Path, name: str, exclude: list[str], extra: list[str], cache_dir: Path) -> Release:
    """Return the release for ``src``, writing its archive unless it is already cached."""
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a directory")
    rid = release_id(src, exclude, extra)
    archive = cache_dir / "releases" / f"{name}-{rid}.tar.gz"
    if not archive.exists():
        archive.parent.mkdir(parents=True, exist_ok=True)
        partial = archive.with_suffix(f".partial-{os.getpid()}")
        with tarfile.open(partial, "w:gz") as tar:
            for rel in source_files(src, exclude):
                tar.add(src / rel, arcname=rel.as_posix(), filter=_normalise)
            data = f"{rid}\n".encode()
            info = tarfile.TarInfo(REVISION_FILE)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        partial.replace(archive)
    return Release(id=rid, archive=str(archive))


def _normalise(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Files belong to root in the archive; the host decides ownership."""
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    info.mode = 0o755 if info.mode & 0o111 else 0o644
    return info


try:  # The Ansible wrapper; the functions above serve the fabfile and tests too.
    from ansible.errors import AnsibleError
    from ansible.plugins.lookup import LookupBase
except ImportError:  # pragma: no cover - imported outside Ansible
    LookupBase = object  # type: ignore[assignment,misc]
else:

    class LookupModule(LookupBase):
        def run(self, terms, variables=None, **kwargs):
            self.set_options(var_options=variables, direct=kwargs)
            results = []
            for term in terms:
                packages = app_packages(
                    self.get_option("server"),
                    self.get_option("worker_class"),
                    self.get_option("server_packages"),
                    self.get_option("worker_packages"),
                )
                try:
                    release = build_release(
                        Path(term),
                        self.get_option("name"),
                        list(self.get_option("exclude")),
                        packages,
                        Path(self.get_option("cache_dir")),
                    )
                except OSError as exc:
                    raise AnsibleError(f"cannot package {term}: {exc}") from exc
                results.append({"id": release.id, "archive": release.archive, "packages": packages})
            return results
