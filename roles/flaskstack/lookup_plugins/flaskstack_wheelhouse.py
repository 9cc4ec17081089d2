"""Build an app's wheelhouse on the control node, for the target's Python and architecture.

Targets never reach PyPI: the control node downloads binary wheels for the
target (``pip download --only-binary=:all: --python-version --platform``) and
ships them. A wheelhouse is named by the target's Python, its architecture and
a hash of what gets installed, so it is built once and reused by every host and
every deploy until the requirements change. The python role (through this
lookup) and ``fab deploy`` (importing :func:`build_wheelhouse`) share it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

DOCUMENTATION = r"""
name: flaskstack_wheelhouse
short_description: Build (once) an app's wheelhouse for a target Python and architecture
description:
  - Downloads binary wheels for the app's requirements file and the extra packages into
    C(<cache_dir>/wheelhouse/<name>/<key>) unless that folder is complete already, and
    returns a dict with C(key), C(path) and C(archive) (the folder as one tar file, the
    form in which it is uploaded). The key is C(cp<version>-<arch>-<hash>).
options:
  _terms:
    description: The app's requirements file on the control node.
    required: true
  name:
    description: The app's name.
    required: true
  packages:
    description: Packages installed beside the requirements (the app server, worker libraries).
    type: list
    default: []
  python:
    description: The target's Python version, C(3.11).
    required: true
  architecture:
    description: The target's architecture, C(x86_64).
    required: true
  platforms:
    description: Wheel platform tags to accept for that architecture.
    type: list
    default: []
  pip_args:
    description: Extra arguments for C(pip download).
    type: list
    default: []
  cache_dir:
    description: The control node's cache folder.
    required: true
"""

# The wheelhouse's copies of what to install; the last one written marks it complete.
REQUIREMENTS = "requirements.txt"
SERVER_REQUIREMENTS = "server-requirements.txt"


class WheelhouseError(Exception):
    """pip could not find wheels for the target: the message carries pip's reason."""


def wheelhouse_key(requirements: bytes, packages: list[str], python: str, architecture: str) -> str:
    digest = hashlib.sha256(requirements + b"\0" + "\n".join(packages).encode()).hexdigest()[:12]
    return f"cp{python.replace('.', '')}-{architecture}-{digest}"


def build_wheelhouse(
    name: str,
    requirements: Path,
    packages: list[str],
    python: str,
    architecture: str,
    platforms: list[str],
    pip_args: list[str],
    cache_dir: Path,
) -> tuple[str, Path]:
    """Return (key, folder) of the app's wheelhouse, downloading it unless it is complete."""
    try:
        content = requirements.read_bytes()
    except OSError as exc:
        raise WheelhouseError(f"{name}: cannot read {requirements}: {exc.strerror}") from None
    key = wheelhouse_key(content, packages, python, architecture)
    folder = cache_dir / "wheelhouse" / name / key
    if (folder / SERVER_REQUIREMENTS).is_file():
        return key, folder
    partial = folder.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        (partial / REQUIREMENTS).write_bytes(content)
        (partial / "packages.txt").write_text("".join(f"{p}\n" for p in packages))
        argv = [
            sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet",
            "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
            *[arg for tag in platforms for arg in ("--platform", tag)],
            "--dest", str(partial), *pip_args,
            "-r", str(partial / REQUIREMENTS), "-r", str(partial / "packages.txt"),
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            reason = "\n".join((result.stderr or result.stdout).strip().splitlines()[-8:])
            raise WheelhouseError(
                f"{name}: pip cannot get wheels of {requirements} for CPython {python} on "
                f"{architecture}:\n{reason}"
            )
        (partial / "packages.txt").rename(partial / SERVER_REQUIREMENTS)
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete one
        try:
            partial.rename(folder)
        except OSError:
            # Another process (a second host of the same run) finished it first.
            if not (folder / SERVER_REQUIREMENTS).is_file():
                raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return key, folder


def wheelhouse_archive(folder: Path) -> Path:
    """The wheelhouse as one uncompressed tar (wheels are compressed already), made once."""
    archive = folder.with_name(folder.name + ".tar")
    if not archive.exists():
        partial = archive.with_name(f"{archive.name}.partial-{os.getpid()}")
        with tarfile.open(partial, "w") as tar:
            for path in sorted(folder.iterdir()):
                tar.add(path, arcname=path.name)
        partial.replace(archive)
    return archive


try:  # The Ansible wrapper; the function above serves the fabfile too.
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
                try:
                    key, folder = build_wheelhouse(
                        self.get_option("name"),
                        Path(term),
                        [str(p) for p in self.get_option("packages")],
                        str(self.get_option("python")),
                        str(self.get_option("architecture")),
                        [str(p) for p in self.get_option("platforms")],
                        [str(a) for a in self.get_option("pip_args")],
                        Path(self.get_option("cache_dir")),
                    )
                except WheelhouseError as exc:
                    raise AnsibleError(str(exc)) from None
                results.append({"key": key, "path": str(folder), "archive": str(wheelhouse_archive(folder))})
            return results
